//! Time as a service sees it: the system clock in production, a manual
//! clock in tests, so rules that depend on time (liveness, leases, retries,
//! deadlines) are checked at chosen moments without sleeping.
//!
//! A clock answers two questions: the wall time ([`Clock::now`], for what
//! is stored, signed or compared with other hosts) and a monotonic instant
//! ([`Clock::instant`], for timers and durations, which must not jump when
//! the wall clock is corrected).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    /// The wall time.
    fn now(&self) -> DateTime<Utc>;

    /// A monotonic instant.
    fn instant(&self) -> Instant;

    /// The wall time in milliseconds since the Unix epoch.
    fn unix_ms(&self) -> i64 {
        self.now().timestamp_millis()
    }
}

impl std::fmt::Debug for dyn Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Clock({})", self.now())
    }
}

/// The real time.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn instant(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told to; its wall time and its instant move
/// together.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<(DateTime<Utc>, Instant)>>);

impl ManualClock {
    /// Starts at the current real time (rounded to microseconds, the
    /// precision Postgres keeps, so stored and compared times agree).
    pub fn new() -> Self {
        let now = Utc::now();
        let wall = DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now);
        Self(Arc::new(Mutex::new((wall, Instant::now()))))
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let mut now = self.0.lock().expect("clock lock poisoned");
        now.0 += chrono::Duration::from_std(by).expect("duration in range");
        now.1 += by;
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        self.0.lock().expect("clock lock poisoned").0
    }

    fn instant(&self) -> Instant {
        self.0.lock().expect("clock lock poisoned").1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_its_wall_time_and_instant_together_and_only_when_told() {
        let clock = ManualClock::new();
        let (wall, instant) = (clock.now(), clock.instant());
        assert_eq!(clock.now(), wall);
        assert_eq!(clock.instant(), instant);
        clock.advance(Duration::from_millis(1_500));
        assert_eq!(clock.now() - wall, chrono::Duration::milliseconds(1_500));
        assert_eq!(clock.instant() - instant, Duration::from_millis(1_500));
        assert_eq!(clock.unix_ms(), wall.timestamp_millis() + 1_500);
    }

    #[test]
    fn a_manual_clock_starts_at_microsecond_precision() {
        let clock = ManualClock::new();
        assert_eq!(clock.now().timestamp_subsec_nanos() % 1_000, 0);
    }

    #[test]
    fn the_system_clock_is_the_real_time() {
        let before = Utc::now();
        let now = SystemClock.now();
        assert!(now >= before && now <= Utc::now());
        assert!(SystemClock.instant() <= Instant::now());
    }
}
