//! Time as the registry sees it: the system clock in production, a manual
//! clock in tests so liveness transitions are checked without sleeping.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// The real time.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that moves only when told to.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<DateTime<Utc>>>);

impl ManualClock {
    /// Starts at the current real time (rounded to microseconds, the
    /// precision Postgres keeps, so stored and compared times agree).
    pub fn new() -> Self {
        let now = Utc::now();
        let micros = now.timestamp_micros();
        Self(Arc::new(Mutex::new(
            DateTime::from_timestamp_micros(micros).unwrap_or(now),
        )))
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: std::time::Duration) {
        let mut now = self.0.lock().expect("clock lock poisoned");
        *now += Duration::from_std(by).expect("duration in range");
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().expect("clock lock poisoned")
    }
}
