//! Per-agent circuit breakers: stop sending work to an agent that keeps failing, then probe it.
//!
//! Pure state: time is passed in as `now_ms`, milliseconds on one monotonic
//! clock chosen by the caller; nothing here reads a clock.
//!
//! # States
//!
//! - **Closed**: attempts flow. Each failure counts; a success resets the
//!   count. [`BreakerPolicy::failure_threshold`] consecutive failures open
//!   the breaker.
//! - **Open**: no attempts until the cooldown has passed. The first cooldown
//!   is [`BreakerPolicy::cooldown`]; each time a probe fails it doubles, up
//!   to [`BreakerPolicy::max_cooldown`]. Closing resets it.
//! - **HalfOpen**: the cooldown has passed. Exactly one attempt, the probe,
//!   may be in flight. Its success closes the breaker, its failure opens it
//!   again with a longer cooldown, and [`Breakers::release_probe`] (the
//!   probe was cancelled, or never sent) lets another probe go.
//!
//! Open turns into HalfOpen by the passing of time alone, so it is evaluated
//! lazily: [`Breakers::state`] reports HalfOpen once `now_ms` reaches the end
//! of the cooldown, without any call in between.
//!
//! # Results are about the agent, not about one attempt
//!
//! Outcomes are recorded per agent, not per attempt, because the caller
//! cannot always tell a probe's result from that of an attempt sent before
//! the breaker opened. The rules keep that harmless:
//!
//! - while Open (cooldown running), results are ignored: they belong to
//!   attempts sent before the breaker opened and say nothing new;
//! - while HalfOpen, any success closes and any failure re-opens, whether or
//!   not it came from the probe: both are fresh evidence about the agent.
//!
//! # Use with the router
//!
//! When building routing candidates, set `breaker_open` to
//! `breakers.is_open(id, now)` (a look that reserves nothing). For each agent
//! the router then picks, call [`Breakers::allow`] before sending: it
//! reserves the half-open probe and returns `true` (it returns `false` only
//! if the state changed in between). Every allowed attempt must end in
//! [`Breakers::record_success`], [`Breakers::record_failure`] or
//! [`Breakers::release_probe`], or a half-open breaker stays blocked.
//!
//! Only agents with recent failures are tracked: a breaker that is Closed
//! with no failures is not stored, so memory follows the number of failing
//! agents, not the size of the fleet.

use std::time::Duration;

use crate::IdMap;

/// When breakers open and how long they stay open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Consecutive failures that open a closed breaker. Default 5; 0 is read as 1.
    pub failure_threshold: u32,
    /// How long a breaker stays open the first time. Default 10 s.
    pub cooldown: Duration,
    /// Longest cooldown after repeated probe failures (the cooldown doubles
    /// per failed probe up to this). Default 60 s; set it equal to
    /// `cooldown` for a fixed cooldown.
    pub max_cooldown: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            cooldown: Duration::from_secs(10),
            max_cooldown: Duration::from_secs(60),
        }
    }
}

/// Why a [`BreakerPolicy`] is unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BreakerPolicyError {
    /// A breaker would open before any failure.
    #[error("breaker failure_threshold must be at least 1")]
    ZeroThreshold,
    /// A zero cooldown would make the breaker pointless.
    #[error("breaker cooldown must be at least 1 ms")]
    ZeroCooldown,
    /// The cap is below the first cooldown.
    #[error("breaker max_cooldown ({max:?}) must not be below cooldown ({cooldown:?})")]
    MaxBelowCooldown {
        /// The configured first cooldown.
        cooldown: Duration,
        /// The configured cap.
        max: Duration,
    },
}

impl BreakerPolicy {
    /// Checks the policy; call it when loading configuration. [`Breakers`]
    /// accepts any policy (a zero threshold is read as 1, a cap below the
    /// cooldown as the cooldown), so this is where mistakes get reported.
    pub fn validate(&self) -> Result<(), BreakerPolicyError> {
        if self.failure_threshold == 0 {
            return Err(BreakerPolicyError::ZeroThreshold);
        }
        if self.cooldown < Duration::from_millis(1) {
            return Err(BreakerPolicyError::ZeroCooldown);
        }
        if self.max_cooldown < self.cooldown {
            return Err(BreakerPolicyError::MaxBelowCooldown {
                cooldown: self.cooldown,
                max: self.max_cooldown,
            });
        }
        Ok(())
    }

    /// Cooldown for the `trip`-th consecutive opening (1 for the first), in
    /// milliseconds: `cooldown * 2^(trip - 1)`, capped at `max_cooldown`.
    fn cooldown_ms(&self, trip: u32) -> u64 {
        let base = millis(self.cooldown);
        let cap = millis(self.max_cooldown).max(base);
        let doublings = trip.saturating_sub(1).min(63);
        base.checked_mul(1 << doublings).unwrap_or(cap).min(cap)
    }
}

/// The state of one agent's breaker at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Attempts flow; `consecutive_failures` is below the threshold.
    Closed {
        /// Failures since the last success.
        consecutive_failures: u32,
    },
    /// No attempts until `retry_at_ms`.
    Open {
        /// When the breaker turns half-open.
        retry_at_ms: u64,
    },
    /// One probe may go.
    HalfOpen {
        /// Whether the probe has been sent (no other attempt may go).
        probe_in_flight: bool,
    },
}

impl BreakerState {
    /// Whether a new attempt may be sent now: closed, or half-open with no
    /// probe in flight. The negation is the router's `breaker_open`.
    pub fn admits(&self) -> bool {
        match self {
            Self::Closed { .. } => true,
            Self::Open { .. } => false,
            Self::HalfOpen { probe_in_flight } => !probe_in_flight,
        }
    }
}

/// A change worth an event or a metric, returned by the `record_*` methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerTransition {
    /// The breaker opened (from Closed, or again from HalfOpen).
    Opened {
        /// When it turns half-open.
        retry_at_ms: u64,
        /// The cooldown that started.
        cooldown: Duration,
    },
    /// A half-open breaker closed: the agent is trusted again.
    Closed,
}

/// One stored breaker. Absent from the map means Closed with no failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Breaker {
    phase: Phase,
    /// Consecutive openings without a close in between (sets the cooldown).
    trips: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Closed { failures: u32 },
    Open { until_ms: u64 },
    HalfOpen { probe: bool },
}

impl Breaker {
    /// The phase at `now_ms`: an open breaker whose cooldown has passed is half-open.
    fn phase_at(&self, now_ms: u64) -> Phase {
        match self.phase {
            Phase::Open { until_ms } if now_ms >= until_ms => Phase::HalfOpen { probe: false },
            phase => phase,
        }
    }
}

/// The breakers of all agents, keyed by agent id.
#[derive(Debug, Clone, Default)]
pub struct Breakers {
    policy: BreakerPolicy,
    breakers: IdMap<Breaker>,
}

impl Breakers {
    /// No agent tracked yet; every breaker starts Closed.
    pub fn new(policy: BreakerPolicy) -> Self {
        Self {
            policy,
            breakers: IdMap::default(),
        }
    }

    /// The policy in force.
    #[cfg(test)]
    pub fn policy(&self) -> &BreakerPolicy {
        &self.policy
    }

    /// The state of `agent_id`'s breaker at `now_ms`. Unknown agents are Closed.
    pub fn state(&self, agent_id: &str, now_ms: u64) -> BreakerState {
        let Some(breaker) = self.breakers.get(agent_id) else {
            return BreakerState::Closed {
                consecutive_failures: 0,
            };
        };
        match breaker.phase_at(now_ms) {
            Phase::Closed { failures } => BreakerState::Closed {
                consecutive_failures: failures,
            },
            Phase::Open { until_ms } => BreakerState::Open {
                retry_at_ms: until_ms,
            },
            Phase::HalfOpen { probe } => BreakerState::HalfOpen {
                probe_in_flight: probe,
            },
        }
    }

    /// Whether the breaker forbids a new attempt now (Open, or HalfOpen with
    /// its probe out). Reserves nothing: use it to fill
    /// `Candidate::breaker_open`.
    pub fn is_open(&self, agent_id: &str, now_ms: u64) -> bool {
        !self.state(agent_id, now_ms).admits()
    }

    /// Asks to send one attempt to `agent_id` now. Closed: yes. Open: no.
    /// HalfOpen: yes for the first caller, who holds the probe, then no until
    /// the probe's outcome is recorded or it is released.
    pub fn allow(&mut self, agent_id: &str, now_ms: u64) -> bool {
        let Some(breaker) = self.breakers.get_mut(agent_id) else {
            return true;
        };
        match breaker.phase_at(now_ms) {
            Phase::Closed { .. } => true,
            Phase::Open { .. } | Phase::HalfOpen { probe: true } => false,
            Phase::HalfOpen { probe: false } => {
                breaker.phase = Phase::HalfOpen { probe: true };
                true
            }
        }
    }

    /// Records a successful attempt. Closed: resets the failure count.
    /// HalfOpen: closes the breaker. Open (cooldown running): ignored.
    pub fn record_success(&mut self, agent_id: &str, now_ms: u64) -> Option<BreakerTransition> {
        let breaker = self.breakers.get(agent_id)?;
        match breaker.phase_at(now_ms) {
            Phase::Open { .. } => None,
            Phase::Closed { .. } => {
                self.breakers.remove(agent_id);
                None
            }
            Phase::HalfOpen { .. } => {
                self.breakers.remove(agent_id);
                Some(BreakerTransition::Closed)
            }
        }
    }

    /// Records a failed attempt (error, lease expiry, agent unavailable).
    /// Closed: counts it, and opens the breaker at the threshold. HalfOpen:
    /// opens it again with a doubled cooldown. Open (cooldown running):
    /// ignored, so late failures do not extend the cooldown.
    pub fn record_failure(&mut self, agent_id: &str, now_ms: u64) -> Option<BreakerTransition> {
        let threshold = self.policy.failure_threshold.max(1);
        let breaker = match self.breakers.get_mut(agent_id) {
            Some(breaker) => breaker,
            None => self
                .breakers
                .entry(agent_id.to_string())
                .or_insert(Breaker {
                    phase: Phase::Closed { failures: 0 },
                    trips: 0,
                }),
        };
        let trip = match breaker.phase_at(now_ms) {
            Phase::Open { .. } => return None,
            Phase::Closed { failures } => {
                let failures = failures.saturating_add(1);
                if failures < threshold {
                    breaker.phase = Phase::Closed { failures };
                    return None;
                }
                1
            }
            Phase::HalfOpen { .. } => breaker.trips.saturating_add(1),
        };
        let cooldown_ms = self.policy.cooldown_ms(trip);
        let retry_at_ms = now_ms.saturating_add(cooldown_ms);
        breaker.trips = trip;
        breaker.phase = Phase::Open {
            until_ms: retry_at_ms,
        };
        Some(BreakerTransition::Opened {
            retry_at_ms,
            cooldown: Duration::from_millis(cooldown_ms),
        })
    }

    /// Gives back a half-open probe that ended without an outcome (cancelled,
    /// or never sent), so another probe may go. No effect in other states.
    pub fn release_probe(&mut self, agent_id: &str) {
        if let Some(breaker) = self.breakers.get_mut(agent_id)
            && breaker.phase == (Phase::HalfOpen { probe: true })
        {
            breaker.phase = Phase::HalfOpen { probe: false };
        }
    }

    /// Drops everything known about `agent_id` (it deregistered): a later
    /// agent with the same id starts Closed.
    #[cfg(test)]
    pub fn forget(&mut self, agent_id: &str) {
        self.breakers.remove(agent_id);
    }

    /// Keeps only the breakers of agents for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.breakers.retain(|agent, _| keep(agent));
    }

    /// How many agents have a breaker that is not Closed-with-no-failures.
    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.breakers.len()
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "agent-a";
    const B: &str = "agent-b";

    fn closed(consecutive_failures: u32) -> BreakerState {
        BreakerState::Closed {
            consecutive_failures,
        }
    }

    fn open(retry_at_ms: u64) -> BreakerState {
        BreakerState::Open { retry_at_ms }
    }

    fn half_open(probe_in_flight: bool) -> BreakerState {
        BreakerState::HalfOpen { probe_in_flight }
    }

    fn opened(retry_at_ms: u64, cooldown_ms: u64) -> Option<BreakerTransition> {
        Some(BreakerTransition::Opened {
            retry_at_ms,
            cooldown: Duration::from_millis(cooldown_ms),
        })
    }

    /// Default policy, `A` opened at t = 1000 (retry at 11 000).
    fn tripped() -> Breakers {
        let mut breakers = Breakers::default();
        for _ in 0..4 {
            assert_eq!(breakers.record_failure(A, 1_000), None);
        }
        assert_eq!(breakers.record_failure(A, 1_000), opened(11_000, 10_000));
        breakers
    }

    #[test]
    fn default_policy_is_valid_and_as_documented() {
        let policy = BreakerPolicy::default();
        assert_eq!(policy.validate(), Ok(()));
        assert_eq!(policy.failure_threshold, 5);
        assert_eq!(policy.cooldown, Duration::from_secs(10));
        assert_eq!(policy.max_cooldown, Duration::from_secs(60));
    }

    #[test]
    fn validate_reports_each_mistake() {
        let ok = BreakerPolicy::default();
        assert_eq!(
            BreakerPolicy {
                failure_threshold: 0,
                ..ok
            }
            .validate(),
            Err(BreakerPolicyError::ZeroThreshold)
        );
        assert_eq!(
            BreakerPolicy {
                cooldown: Duration::from_micros(999),
                ..ok
            }
            .validate(),
            Err(BreakerPolicyError::ZeroCooldown)
        );
        let error = BreakerPolicy {
            max_cooldown: Duration::from_secs(9),
            ..ok
        }
        .validate()
        .unwrap_err();
        assert!(error.to_string().contains("must not be below"), "{error}");
        assert_eq!(
            BreakerPolicy {
                max_cooldown: ok.cooldown,
                ..ok
            }
            .validate(),
            Ok(())
        );
    }

    #[test]
    fn unknown_agents_are_closed_and_untracked() {
        let mut breakers = Breakers::default();
        assert_eq!(breakers.state(A, 0), closed(0));
        assert!(!breakers.is_open(A, 0));
        assert!(breakers.allow(A, 0));
        assert_eq!(breakers.record_success(A, 0), None);
        breakers.release_probe(A);
        assert_eq!(breakers.tracked(), 0);
    }

    #[test]
    fn opens_after_consecutive_failures() {
        let mut breakers = Breakers::default();
        for n in 1..5 {
            assert_eq!(breakers.record_failure(A, 100 * u64::from(n)), None);
            assert_eq!(breakers.state(A, 500), closed(n));
            assert!(breakers.allow(A, 500));
        }
        assert_eq!(breakers.record_failure(A, 500), opened(10_500, 10_000));
        assert_eq!(breakers.state(A, 500), open(10_500));
        assert!(breakers.is_open(A, 500));
        assert!(!breakers.allow(A, 500));
        // Other agents are unaffected.
        assert_eq!(breakers.state(B, 500), closed(0));
        assert!(breakers.allow(B, 500));
    }

    #[test]
    fn a_success_resets_the_count() {
        let mut breakers = Breakers::default();
        for _ in 0..4 {
            breakers.record_failure(A, 0);
        }
        assert_eq!(breakers.record_success(A, 0), None);
        assert_eq!(breakers.state(A, 0), closed(0));
        assert_eq!(breakers.tracked(), 0);
        for _ in 0..4 {
            assert_eq!(breakers.record_failure(A, 0), None);
        }
        assert_eq!(breakers.state(A, 0), closed(4));
    }

    #[test]
    fn open_turns_half_open_when_the_cooldown_ends() {
        let breakers = tripped();
        assert_eq!(breakers.state(A, 10_999), open(11_000));
        assert!(breakers.is_open(A, 10_999));
        assert_eq!(breakers.state(A, 11_000), half_open(false));
        assert!(!breakers.is_open(A, 11_000));
        assert_eq!(breakers.state(A, u64::MAX), half_open(false));
    }

    #[test]
    fn half_open_allows_exactly_one_probe() {
        let mut breakers = tripped();
        assert!(!breakers.allow(A, 10_999));
        assert!(breakers.allow(A, 11_000));
        assert_eq!(breakers.state(A, 11_000), half_open(true));
        assert!(breakers.is_open(A, 11_000));
        for now in [11_000, 11_001, 50_000] {
            assert!(!breakers.allow(A, now));
        }
    }

    #[test]
    fn probe_success_closes() {
        let mut breakers = tripped();
        assert!(breakers.allow(A, 12_000));
        assert_eq!(
            breakers.record_success(A, 12_500),
            Some(BreakerTransition::Closed)
        );
        assert_eq!(breakers.state(A, 12_500), closed(0));
        assert_eq!(breakers.tracked(), 0);
        assert!(breakers.allow(A, 12_500));
        assert!(breakers.allow(A, 12_500));
    }

    #[test]
    fn probe_failure_reopens_with_doubled_cooldown_up_to_the_cap() {
        let mut breakers = tripped();
        let mut now = 11_000;
        for cooldown in [20_000, 40_000, 60_000, 60_000, 60_000] {
            assert!(breakers.allow(A, now));
            assert_eq!(
                breakers.record_failure(A, now),
                opened(now + cooldown, cooldown)
            );
            assert_eq!(breakers.state(A, now + cooldown - 1), open(now + cooldown));
            now += cooldown;
            assert_eq!(breakers.state(A, now), half_open(false));
        }
        // Closing resets the cooldown: the next trip waits 10 s again.
        assert!(breakers.allow(A, now));
        assert_eq!(
            breakers.record_success(A, now),
            Some(BreakerTransition::Closed)
        );
        for _ in 0..4 {
            assert_eq!(breakers.record_failure(A, now), None);
        }
        assert_eq!(
            breakers.record_failure(A, now),
            opened(now + 10_000, 10_000)
        );
    }

    #[test]
    fn fixed_cooldown_when_max_equals_cooldown() {
        let mut breakers = Breakers::new(BreakerPolicy {
            failure_threshold: 1,
            cooldown: Duration::from_secs(1),
            max_cooldown: Duration::from_secs(1),
        });
        assert_eq!(breakers.record_failure(A, 0), opened(1_000, 1_000));
        for round in 1..5 {
            let now = round * 1_000;
            assert!(breakers.allow(A, now));
            assert_eq!(breakers.record_failure(A, now), opened(now + 1_000, 1_000));
        }
    }

    #[test]
    fn release_probe_lets_another_probe_go() {
        let mut breakers = tripped();
        assert!(breakers.allow(A, 11_000));
        breakers.release_probe(A);
        assert_eq!(breakers.state(A, 11_000), half_open(false));
        assert!(breakers.allow(A, 11_000));
        assert!(!breakers.allow(A, 11_000));
    }

    #[test]
    fn release_probe_is_a_no_op_elsewhere() {
        let mut breakers = tripped();
        breakers.release_probe(A);
        assert_eq!(breakers.state(A, 5_000), open(11_000));
        // Lazily half-open, no probe out: stays so.
        breakers.release_probe(A);
        assert_eq!(breakers.state(A, 11_000), half_open(false));

        let mut counting = Breakers::default();
        counting.record_failure(A, 0);
        counting.release_probe(A);
        assert_eq!(counting.state(A, 0), closed(1));
    }

    #[test]
    fn results_while_open_are_ignored() {
        let mut breakers = tripped();
        assert_eq!(breakers.record_success(A, 5_000), None);
        assert_eq!(breakers.record_failure(A, 6_000), None);
        assert_eq!(breakers.state(A, 6_000), open(11_000));
        assert_eq!(breakers.state(A, 11_000), half_open(false));
    }

    #[test]
    fn results_after_the_cooldown_count_without_a_probe() {
        // A late success after the cooldown is fresh evidence: it closes.
        let mut breakers = tripped();
        assert_eq!(
            breakers.record_success(A, 11_000),
            Some(BreakerTransition::Closed)
        );
        assert_eq!(breakers.state(A, 11_000), closed(0));

        // A late failure re-opens with the doubled cooldown.
        let mut breakers = tripped();
        assert_eq!(breakers.record_failure(A, 11_000), opened(31_000, 20_000));
    }

    #[test]
    fn a_non_probe_result_while_the_probe_is_out_decides() {
        let mut breakers = tripped();
        assert!(breakers.allow(A, 11_000));
        assert_eq!(
            breakers.record_success(A, 11_100),
            Some(BreakerTransition::Closed)
        );
        // The probe's own result then lands on a closed breaker.
        assert_eq!(breakers.record_failure(A, 11_200), None);
        assert_eq!(breakers.state(A, 11_200), closed(1));
    }

    #[test]
    fn zero_threshold_is_read_as_one() {
        let mut breakers = Breakers::new(BreakerPolicy {
            failure_threshold: 0,
            ..Default::default()
        });
        assert_eq!(breakers.record_failure(A, 0), opened(10_000, 10_000));
    }

    #[test]
    fn cap_below_cooldown_is_read_as_the_cooldown() {
        let mut breakers = Breakers::new(BreakerPolicy {
            failure_threshold: 1,
            cooldown: Duration::from_secs(10),
            max_cooldown: Duration::from_secs(1),
        });
        assert_eq!(breakers.record_failure(A, 0), opened(10_000, 10_000));
        assert!(breakers.allow(A, 10_000));
        assert_eq!(breakers.record_failure(A, 10_000), opened(20_000, 10_000));
    }

    #[test]
    fn huge_times_and_trip_counts_saturate() {
        let mut breakers = Breakers::new(BreakerPolicy {
            failure_threshold: 1,
            cooldown: Duration::from_millis(1),
            max_cooldown: Duration::MAX,
        });
        let mut now = 0;
        let mut rounds = 0;
        while now < u64::MAX {
            let Some(BreakerTransition::Opened { retry_at_ms, .. }) =
                breakers.record_failure(A, now)
            else {
                panic!("did not open at {now}");
            };
            assert!(retry_at_ms > now);
            now = retry_at_ms;
            assert!(breakers.allow(A, now));
            rounds += 1;
            assert!(rounds < 100, "cooldown does not grow");
        }
        assert_eq!(breakers.state(A, u64::MAX), half_open(true));

        let mut late = Breakers::default();
        for _ in 0..5 {
            late.record_failure(B, u64::MAX - 1);
        }
        assert_eq!(late.state(B, u64::MAX - 1), open(u64::MAX));
        assert_eq!(late.policy().cooldown_ms(u32::MAX), 60_000);
    }

    #[test]
    fn forget_drops_the_breaker() {
        let mut breakers = tripped();
        breakers.record_failure(B, 0);
        assert_eq!(breakers.tracked(), 2);
        breakers.forget(A);
        assert_eq!(breakers.state(A, 0), closed(0));
        assert!(breakers.allow(A, 0));
        assert_eq!(breakers.tracked(), 1);
    }

    #[test]
    fn admits_table() {
        for (state, admits) in [
            (closed(0), true),
            (closed(4), true),
            (open(1), false),
            (half_open(false), true),
            (half_open(true), false),
        ] {
            assert_eq!(state.admits(), admits, "{state:?}");
        }
    }

    /// A scripted run through every transition, checked step by step.
    #[test]
    fn scripted_lifecycle() {
        #[derive(Debug)]
        enum Op {
            Fail,
            Succeed,
            Allow(bool),
            Release,
        }
        use Op::*;
        let policy = BreakerPolicy {
            failure_threshold: 2,
            cooldown: Duration::from_millis(100),
            max_cooldown: Duration::from_millis(250),
        };
        let mut breakers = Breakers::new(policy);
        let script: &[(u64, Op, BreakerState)] = &[
            (0, Allow(true), closed(0)),
            (0, Fail, closed(1)),
            (1, Succeed, closed(0)),
            (2, Fail, closed(1)),
            (3, Fail, open(103)),
            (50, Allow(false), open(103)),
            (50, Fail, open(103)),
            (103, Allow(true), half_open(true)),
            (104, Allow(false), half_open(true)),
            (105, Release, half_open(false)),
            (106, Allow(true), half_open(true)),
            (110, Fail, open(310)),
            (310, Allow(true), half_open(true)),
            (320, Fail, open(570)),
            (570, Allow(true), half_open(true)),
            (571, Fail, open(821)),
            (821, Allow(true), half_open(true)),
            (900, Succeed, closed(0)),
            (901, Fail, closed(1)),
            (902, Fail, open(1_002)),
        ];
        for (step, (now, op, expected)) in script.iter().enumerate() {
            match op {
                Fail => {
                    breakers.record_failure(A, *now);
                }
                Succeed => {
                    breakers.record_success(A, *now);
                }
                Allow(allowed) => assert_eq!(breakers.allow(A, *now), *allowed, "step {step}"),
                Release => breakers.release_probe(A),
            }
            assert_eq!(breakers.state(A, *now), *expected, "step {step}: {op:?}");
        }
    }
}
