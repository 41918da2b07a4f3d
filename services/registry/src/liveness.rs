//! Liveness from heartbeat arrival: a pure state machine, with the time passed in.
//!
//! An agent is ALIVE while heartbeats arrive, SUSPECT once it has missed
//! [`LivenessPolicy::suspect_after_missed`] of them, UNAVAILABLE once it has
//! missed [`LivenessPolicy::unavailable_after_missed`], and ALIVE again
//! (recovered) at its next heartbeat. Only heartbeats (and re-registrations,
//! which the caller treats as heartbeats) move an agent back up; only the
//! passing of time, judged by [`evaluate`], moves it down.
//!
//! Times are milliseconds on one clock chosen by the caller (Unix time in
//! milliseconds is the natural choice, since records carry timestamps);
//! nothing here reads a clock, so tests are exact.
//!
//! A heartbeat due at `last + k * interval` counts as missed only once that
//! instant has passed: with the defaults an agent whose last heartbeat was at
//! `t` is still ALIVE at `t + 3000` and SUSPECT from `t + 3001`.
//!
//! `LIVENESS_UNSPECIFIED` means "never judged". The registry stores new
//! agents as ALIVE (registration is the first sign of life), so it should not
//! appear in stored records; if it does, [`evaluate`] treats it like ALIVE and
//! [`on_heartbeat`] makes it ALIVE with a [`TransitionKind::Alive`].

use std::time::Duration;

use concord_wire::v1::Liveness;

/// When missed heartbeats make an agent suspect, then unavailable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LivenessPolicy {
    /// How often agents are expected to send heartbeats; must match the
    /// interval the agents use. Default 1 s.
    pub heartbeat_interval: Duration,
    /// Missed heartbeats after which an ALIVE agent becomes SUSPECT.
    pub suspect_after_missed: u32,
    /// Missed heartbeats after which an agent becomes UNAVAILABLE; greater
    /// than `suspect_after_missed`.
    pub unavailable_after_missed: u32,
}

impl Default for LivenessPolicy {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(1),
            suspect_after_missed: 3,
            unavailable_after_missed: 6,
        }
    }
}

/// Why a [`LivenessPolicy`] is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The interval is below the resolution of the clock (1 ms).
    #[error("heartbeat interval must be at least 1 ms")]
    IntervalTooShort,
    /// An agent would be suspect before missing anything.
    #[error("suspect_after_missed must be at least 1")]
    SuspectTooSoon,
    /// The unavailable threshold does not come after the suspect one.
    #[error(
        "unavailable_after_missed ({unavailable}) must be greater than suspect_after_missed ({suspect})"
    )]
    UnavailableNotAfterSuspect {
        /// The configured suspect threshold.
        suspect: u32,
        /// The configured unavailable threshold.
        unavailable: u32,
    },
}

impl LivenessPolicy {
    /// Checks the policy; call it when loading configuration. The functions
    /// of this module accept any policy (an unusable one only judges oddly:
    /// with `unavailable_after_missed <= suspect_after_missed` agents skip
    /// SUSPECT), so this is where mistakes get reported.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.heartbeat_interval < Duration::from_millis(1) {
            return Err(PolicyError::IntervalTooShort);
        }
        if self.suspect_after_missed == 0 {
            return Err(PolicyError::SuspectTooSoon);
        }
        if self.unavailable_after_missed <= self.suspect_after_missed {
            return Err(PolicyError::UnavailableNotAfterSuspect {
                suspect: self.suspect_after_missed,
                unavailable: self.unavailable_after_missed,
            });
        }
        Ok(())
    }

    /// The interval in whole milliseconds, at least 1.
    fn interval_ms(&self) -> u64 {
        u64::try_from(self.heartbeat_interval.as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// The instant at which `missed` heartbeats after `last_heartbeat_ms`
    /// count as missed (the first millisecond past their due time).
    fn missed_at(&self, last_heartbeat_ms: u64, missed: u32) -> u64 {
        last_heartbeat_ms
            .saturating_add(self.interval_ms().saturating_mul(u64::from(missed)))
            .saturating_add(1)
    }
}

/// What a [`Transition`] means, one event type per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransitionKind {
    /// ALIVE (or never judged) → SUSPECT: heartbeats are late.
    Suspect,
    /// ALIVE, SUSPECT (or never judged) → UNAVAILABLE: heartbeats stopped.
    Unavailable,
    /// SUSPECT or UNAVAILABLE → ALIVE: a heartbeat arrived again.
    Recovered,
    /// Never judged → ALIVE: first heartbeat of a record stored without
    /// liveness (see the module docs; normally registration sets ALIVE).
    Alive,
}

impl TransitionKind {
    /// Lowercase name, as used in event types (`agent.suspect`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Suspect => "suspect",
            Self::Unavailable => "unavailable",
            Self::Recovered => "recovered",
            Self::Alive => "alive",
        }
    }
}

/// A change of liveness: store `to` and publish an event of `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// Liveness before.
    pub from: Liveness,
    /// Liveness after.
    pub to: Liveness,
    /// What happened.
    pub kind: TransitionKind,
}

/// How many heartbeats are overdue at `now_ms`: those whose due time
/// (`last + k * interval`, k ≥ 1) lies strictly before `now_ms`. A clock that
/// went backwards (`now_ms < last_heartbeat_ms`) counts as no time passed.
pub fn missed_heartbeats(last_heartbeat_ms: u64, now_ms: u64, policy: &LivenessPolicy) -> u64 {
    match now_ms.saturating_sub(last_heartbeat_ms) {
        0 => 0,
        elapsed => (elapsed - 1) / policy.interval_ms(),
    }
}

/// The liveness the time since the last heartbeat alone calls for.
pub fn judge(last_heartbeat_ms: u64, now_ms: u64, policy: &LivenessPolicy) -> Liveness {
    let missed = missed_heartbeats(last_heartbeat_ms, now_ms, policy);
    if missed >= u64::from(policy.unavailable_after_missed) {
        Liveness::Unavailable
    } else if missed >= u64::from(policy.suspect_after_missed) {
        Liveness::Suspect
    } else {
        Liveness::Alive
    }
}

/// The transition, if any, that the passing of time causes for an agent in
/// `current` whose last heartbeat (or registration) was at
/// `last_heartbeat_ms`. Only ever moves down: ALIVE → SUSPECT → UNAVAILABLE,
/// or ALIVE → UNAVAILABLE in one step when the check comes late. An
/// UNAVAILABLE agent stays so, without further transitions, until
/// [`on_heartbeat`].
pub fn evaluate(
    current: Liveness,
    last_heartbeat_ms: u64,
    now_ms: u64,
    policy: &LivenessPolicy,
) -> Option<Transition> {
    let to = judge(last_heartbeat_ms, now_ms, policy);
    let kind = match (current, to) {
        (Liveness::Unspecified | Liveness::Alive, Liveness::Suspect) => TransitionKind::Suspect,
        (Liveness::Unspecified | Liveness::Alive | Liveness::Suspect, Liveness::Unavailable) => {
            TransitionKind::Unavailable
        }
        _ => return None,
    };
    Some(Transition {
        from: current,
        to,
        kind,
    })
}

/// The transition, if any, caused by a heartbeat from an agent in `current`:
/// SUSPECT or UNAVAILABLE → ALIVE is [`TransitionKind::Recovered`]; an ALIVE
/// agent has none (the caller still records the heartbeat time).
pub fn on_heartbeat(current: Liveness) -> Option<Transition> {
    let kind = match current {
        Liveness::Alive => return None,
        Liveness::Suspect | Liveness::Unavailable => TransitionKind::Recovered,
        Liveness::Unspecified => TransitionKind::Alive,
    };
    Some(Transition {
        from: current,
        to: Liveness::Alive,
        kind,
    })
}

/// The first instant at which [`evaluate`] would return a transition for an
/// agent in `current` with no heartbeat after `last_heartbeat_ms`, or `None`
/// if time alone can never change it (UNAVAILABLE). Lets the caller schedule
/// its next check instead of sweeping every agent on a timer.
pub fn next_deadline(
    current: Liveness,
    last_heartbeat_ms: u64,
    policy: &LivenessPolicy,
) -> Option<u64> {
    let missed = match current {
        Liveness::Unavailable => return None,
        Liveness::Suspect => policy.unavailable_after_missed,
        Liveness::Unspecified | Liveness::Alive => policy
            .suspect_after_missed
            .min(policy.unavailable_after_missed),
    };
    Some(policy.missed_at(last_heartbeat_ms, missed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    const ALL: [Liveness; 4] = [
        Liveness::Unspecified,
        Liveness::Alive,
        Liveness::Suspect,
        Liveness::Unavailable,
    ];

    /// An arbitrary, non-zero last heartbeat.
    const T: u64 = 1_700_000_000_000;

    fn policy() -> LivenessPolicy {
        LivenessPolicy::default()
    }

    fn eval(current: Liveness, now: u64) -> Option<Transition> {
        evaluate(current, T, now, &policy())
    }

    fn transition(from: Liveness, to: Liveness, kind: TransitionKind) -> Option<Transition> {
        Some(Transition { from, to, kind })
    }

    #[test]
    fn default_policy_is_valid_and_as_documented() {
        let p = policy();
        assert_eq!(p.heartbeat_interval, Duration::from_secs(1));
        assert_eq!((p.suspect_after_missed, p.unavailable_after_missed), (3, 6));
        assert_eq!(p.validate(), Ok(()));
    }

    #[test]
    fn policy_validation() {
        let bad_interval = LivenessPolicy {
            heartbeat_interval: Duration::from_micros(999),
            ..policy()
        };
        assert_eq!(bad_interval.validate(), Err(PolicyError::IntervalTooShort));
        let zero_suspect = LivenessPolicy {
            suspect_after_missed: 0,
            ..policy()
        };
        assert_eq!(zero_suspect.validate(), Err(PolicyError::SuspectTooSoon));
        for unavailable in [0, 2, 3] {
            let p = LivenessPolicy {
                unavailable_after_missed: unavailable,
                ..policy()
            };
            assert_eq!(
                p.validate(),
                Err(PolicyError::UnavailableNotAfterSuspect {
                    suspect: 3,
                    unavailable
                })
            );
        }
        let error = PolicyError::UnavailableNotAfterSuspect {
            suspect: 3,
            unavailable: 2,
        };
        assert_eq!(
            error.to_string(),
            "unavailable_after_missed (2) must be greater than suspect_after_missed (3)"
        );
    }

    #[test]
    fn counts_missed_heartbeats_strictly_after_their_due_time() {
        let p = policy();
        for (now, missed) in [
            (T, 0),
            (T + 1, 0),
            (T + 1000, 0),
            (T + 1001, 1),
            (T + 2000, 1),
            (T + 2001, 2),
            (T + 3000, 2),
            (T + 3001, 3),
            (T + 60_000, 59),
            (T + 60_001, 60),
        ] {
            assert_eq!(missed_heartbeats(T, now, &p), missed, "at T+{}", now - T);
        }
    }

    #[test]
    fn a_clock_going_backwards_counts_as_no_time() {
        assert_eq!(missed_heartbeats(T, T - 10_000, &policy()), 0);
        for current in ALL {
            assert_eq!(eval(current, 0), None);
        }
    }

    #[test]
    fn judge_boundaries_at_exactly_n_intervals() {
        let p = policy();
        assert_eq!(judge(T, T, &p), Liveness::Alive);
        assert_eq!(judge(T, T + 3000, &p), Liveness::Alive);
        assert_eq!(judge(T, T + 3001, &p), Liveness::Suspect);
        assert_eq!(judge(T, T + 6000, &p), Liveness::Suspect);
        assert_eq!(judge(T, T + 6001, &p), Liveness::Unavailable);
        assert_eq!(judge(T, u64::MAX, &p), Liveness::Unavailable);
    }

    /// Every current state against every zone of elapsed time, including
    /// both sides of each boundary.
    #[test]
    fn evaluate_table() {
        use Liveness::*;
        use TransitionKind as K;
        let zones = [T, T + 3000, T + 3001, T + 6000, T + 6001, T + 1_000_000];
        let expected: [(Liveness, [Option<Transition>; 6]); 4] = [
            (
                Unspecified,
                [
                    None,
                    None,
                    transition(Unspecified, Suspect, K::Suspect),
                    transition(Unspecified, Suspect, K::Suspect),
                    transition(Unspecified, Unavailable, K::Unavailable),
                    transition(Unspecified, Unavailable, K::Unavailable),
                ],
            ),
            (
                Alive,
                [
                    None,
                    None,
                    transition(Alive, Suspect, K::Suspect),
                    transition(Alive, Suspect, K::Suspect),
                    transition(Alive, Unavailable, K::Unavailable),
                    transition(Alive, Unavailable, K::Unavailable),
                ],
            ),
            (
                Suspect,
                [
                    None,
                    None,
                    None,
                    None,
                    transition(Suspect, Unavailable, K::Unavailable),
                    transition(Suspect, Unavailable, K::Unavailable),
                ],
            ),
            (Unavailable, [None; 6]),
        ];
        for (current, results) in expected {
            for (now, want) in zones.into_iter().zip(results) {
                assert_eq!(eval(current, now), want, "{current:?} at T+{}", now - T);
            }
        }
    }

    #[test]
    fn on_heartbeat_table() {
        use Liveness::*;
        assert_eq!(on_heartbeat(Alive), None);
        assert_eq!(
            on_heartbeat(Suspect),
            transition(Suspect, Alive, TransitionKind::Recovered)
        );
        assert_eq!(
            on_heartbeat(Unavailable),
            transition(Unavailable, Alive, TransitionKind::Recovered)
        );
        assert_eq!(
            on_heartbeat(Unspecified),
            transition(Unspecified, Alive, TransitionKind::Alive)
        );
    }

    /// Of the 16 (from, to) pairs, exactly these can occur, each with one kind.
    #[test]
    fn reachable_pairs_are_exactly_the_designed_ones() {
        use Liveness::*;
        let mut seen = BTreeSet::new();
        for current in ALL {
            for offset in 0..8_000 {
                if let Some(t) = eval(current, T + offset) {
                    seen.insert((t.from, t.to, t.kind.as_str()));
                }
            }
            if let Some(t) = on_heartbeat(current) {
                seen.insert((t.from, t.to, t.kind.as_str()));
            }
        }
        let expected = BTreeSet::from([
            (Unspecified, Suspect, "suspect"),
            (Unspecified, Unavailable, "unavailable"),
            (Unspecified, Alive, "alive"),
            (Alive, Suspect, "suspect"),
            (Alive, Unavailable, "unavailable"),
            (Suspect, Unavailable, "unavailable"),
            (Suspect, Alive, "recovered"),
            (Unavailable, Alive, "recovered"),
        ]);
        assert_eq!(seen, expected);
        assert!(seen.iter().all(|(from, to, _)| from != to));
    }

    /// Drives one agent through silence, recovery and silence again, checking
    /// every 100 ms like a sweeping registry would, and records transitions.
    #[test]
    fn silent_agent_goes_suspect_then_unavailable_once_and_recovers() {
        let p = policy();
        let mut state = Liveness::Alive;
        let mut last = T;
        let mut log = Vec::new();
        let mut now = T;
        while now <= T + 30_000 {
            // One heartbeat at T+20s, after a long silence.
            if now == T + 20_000 {
                last = now;
                if let Some(t) = on_heartbeat(state) {
                    state = t.to;
                    log.push((now - T, t.kind));
                }
            }
            if let Some(t) = evaluate(state, last, now, &p) {
                assert_eq!(t.from, state);
                state = t.to;
                log.push((now - T, t.kind));
            }
            now += 100;
        }
        use TransitionKind as K;
        assert_eq!(
            log,
            [
                (3100, K::Suspect),
                (6100, K::Unavailable),
                (20_000, K::Recovered),
                (23_100, K::Suspect),
                (26_100, K::Unavailable),
            ]
        );
        assert_eq!(state, Liveness::Unavailable);
    }

    #[test]
    fn unavailable_stays_unavailable_without_heartbeats() {
        for offset in [0, 6001, 10_000, 1 << 40] {
            assert_eq!(eval(Liveness::Unavailable, T + offset), None);
        }
        assert_eq!(next_deadline(Liveness::Unavailable, T, &policy()), None);
    }

    #[test]
    fn regular_heartbeats_keep_an_agent_alive() {
        let p = policy();
        let mut state = Liveness::Alive;
        let mut last = T;
        for now in (T..T + 60_000).step_by(250) {
            // Heartbeats every 2.9 s: late, but never three intervals late.
            if (now - T) % 2_900 < 250 {
                last = now;
                assert_eq!(on_heartbeat(state), None);
            }
            assert_eq!(evaluate(state, last, now, &p), None, "at T+{}", now - T);
            state = judge(last, now, &p);
            assert_eq!(state, Liveness::Alive);
        }
    }

    #[test]
    fn late_check_jumps_straight_to_unavailable() {
        let t = eval(Liveness::Alive, T + 7_000).unwrap();
        assert_eq!((t.from, t.to), (Liveness::Alive, Liveness::Unavailable));
        assert_eq!(t.kind, TransitionKind::Unavailable);
    }

    #[test]
    fn next_deadline_is_the_first_instant_evaluate_fires() {
        let policies = [
            policy(),
            LivenessPolicy {
                heartbeat_interval: Duration::from_millis(250),
                suspect_after_missed: 1,
                unavailable_after_missed: 2,
            },
            LivenessPolicy {
                heartbeat_interval: Duration::from_secs(5),
                suspect_after_missed: 2,
                unavailable_after_missed: 10,
            },
        ];
        for p in policies {
            for current in [Liveness::Unspecified, Liveness::Alive, Liveness::Suspect] {
                let deadline = next_deadline(current, T, &p).unwrap();
                assert_eq!(evaluate(current, T, deadline - 1, &p), None);
                let t = evaluate(current, T, deadline, &p).unwrap();
                assert_eq!(t.from, current);
            }
        }
        assert_eq!(next_deadline(Liveness::Alive, T, &policy()), Some(T + 3001));
        assert_eq!(
            next_deadline(Liveness::Suspect, T, &policy()),
            Some(T + 6001)
        );
    }

    #[test]
    fn unusable_policies_still_judge_without_panicking() {
        // Unavailable not after suspect: agents skip SUSPECT.
        let p = LivenessPolicy {
            suspect_after_missed: 5,
            unavailable_after_missed: 2,
            ..policy()
        };
        assert_eq!(evaluate(Liveness::Alive, T, T + 2000, &p), None);
        let t = evaluate(Liveness::Alive, T, T + 2001, &p).unwrap();
        assert_eq!(t.to, Liveness::Unavailable);
        assert_eq!(next_deadline(Liveness::Alive, T, &p), Some(T + 2001));

        // A zero interval is read as 1 ms; huge values saturate.
        let p = LivenessPolicy {
            heartbeat_interval: Duration::ZERO,
            ..policy()
        };
        assert_eq!(judge(T, T + 3, &p), Liveness::Alive);
        assert_eq!(judge(T, T + 4, &p), Liveness::Suspect);
        let p = LivenessPolicy {
            heartbeat_interval: Duration::MAX,
            ..policy()
        };
        assert_eq!(judge(0, u64::MAX, &p), Liveness::Alive);
        assert_eq!(next_deadline(Liveness::Alive, u64::MAX, &p), Some(u64::MAX));
    }

    #[test]
    fn kind_names() {
        assert_eq!(TransitionKind::Suspect.as_str(), "suspect");
        assert_eq!(TransitionKind::Unavailable.as_str(), "unavailable");
        assert_eq!(TransitionKind::Recovered.as_str(), "recovered");
        assert_eq!(TransitionKind::Alive.as_str(), "alive");
    }
}
