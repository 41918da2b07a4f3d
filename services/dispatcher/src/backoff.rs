//! Retry pacing: exponential backoff with caller-supplied jitter, and whether to retry at all.
//!
//! Pure arithmetic: the randomness is a sample in `0..=1` passed in by the
//! caller (for example `rand::random::<f64>()`), so the same inputs always give
//! the same delay and tests are exact.
//!
//! The nominal delay before attempt `n + 1`, after `n` failed attempts, is
//! `base * factor^(n - 1)`, capped at `max`. Jitter spreads it uniformly over
//! `[d * (1 - jitter), d * (1 + jitter)]` (sample 0 gives the low end, 1 the
//! high end, 0.5 the nominal delay), and the result is capped at `max` again,
//! so no delay ever exceeds `max`. Retries of many tasks that failed together
//! (an agent died) then spread out instead of arriving as one burst.

use std::time::Duration;

/// How long to wait between attempts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackoffPolicy {
    /// Delay after the first failed attempt, before jitter. Default 200 ms.
    pub base: Duration,
    /// Growth per further failed attempt, at least 1. Default 2.
    pub factor: f64,
    /// Longest delay, jitter included. Default 30 s.
    pub max: Duration,
    /// Relative spread, from 0 (none) to 1 (anything from zero to twice the
    /// nominal delay). Default 0.2.
    pub jitter: f64,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(200),
            factor: 2.0,
            max: Duration::from_secs(30),
            jitter: 0.2,
        }
    }
}

/// Why a [`BackoffPolicy`] is unusable.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum BackoffPolicyError {
    /// `base` is longer than `max`.
    #[error("backoff base ({base:?}) must not exceed max ({max:?})")]
    BaseAboveMax {
        /// The configured base.
        base: Duration,
        /// The configured max.
        max: Duration,
    },
    /// `factor` is below 1 or not a finite number.
    #[error("backoff factor must be a finite number of at least 1, got {0}")]
    Factor(f64),
    /// `jitter` is outside `0..=1` or not a number.
    #[error("backoff jitter must be between 0 and 1, got {0}")]
    Jitter(f64),
}

impl BackoffPolicy {
    /// Checks the policy; call it when loading configuration. [`retry_delay`]
    /// accepts any policy (it never panics and never exceeds `max`), so this
    /// is where mistakes get reported.
    pub fn validate(&self) -> Result<(), BackoffPolicyError> {
        if self.base > self.max {
            return Err(BackoffPolicyError::BaseAboveMax {
                base: self.base,
                max: self.max,
            });
        }
        if !(self.factor.is_finite() && self.factor >= 1.0) {
            return Err(BackoffPolicyError::Factor(self.factor));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(BackoffPolicyError::Jitter(self.jitter));
        }
        Ok(())
    }

    /// The delay after `attempt` failed attempts before jitter:
    /// `base * factor^(attempt - 1)`, capped at `max`. Attempt 0 is read as 1.
    pub fn nominal_delay(&self, attempt: u32) -> Duration {
        if self.base.is_zero() {
            return Duration::ZERO;
        }
        let max = self.max.as_secs_f64();
        // Exponents beyond i32 overflow to infinity anyway.
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let nominal = self.base.as_secs_f64() * self.factor.powi(exponent);
        // A NaN factor makes a NaN delay: cap it too.
        if nominal.is_nan() || nominal >= max {
            return self.max;
        }
        secs_to_duration(nominal, self.max)
    }
}

/// The delay before the next attempt, after `attempt` failed attempts
/// (1-based; 0 is read as 1), given a jitter sample in `0..=1`.
///
/// Deterministic in its inputs. Samples outside `0..=1` are clamped; a NaN
/// sample counts as 0.5 (no jitter). Never exceeds `policy.max` and never
/// panics, however large `attempt` is.
pub fn retry_delay(attempt: u32, policy: &BackoffPolicy, jitter_sample: f64) -> Duration {
    let nominal = policy.nominal_delay(attempt);
    let jitter = if policy.jitter.is_nan() {
        0.0
    } else {
        policy.jitter.clamp(0.0, 1.0)
    };
    let sample = if jitter_sample.is_nan() {
        0.5
    } else {
        jitter_sample.clamp(0.0, 1.0)
    };
    let scale = 1.0 - jitter + 2.0 * jitter * sample;
    let jittered = nominal.as_secs_f64() * scale;
    if jittered.is_nan() || jittered >= policy.max.as_secs_f64() {
        return policy.max;
    }
    secs_to_duration(jittered, policy.max)
}

/// Whether a failed task gets another attempt: only when the failure is
/// retryable and fewer than `max_attempts` attempts have been made.
///
/// `attempts_made` counts every attempt so far, the failed one included; a
/// `max_attempts` of 0 allows nothing (validated tasks always carry at least 1).
pub fn should_retry(attempts_made: u32, max_attempts: u32, retryable: bool) -> bool {
    retryable && attempts_made < max_attempts
}

/// `secs` (not above `cap`) as a duration rounded to whole microseconds, so
/// float noise never shows (0.72 s is 720 ms, not 719.999999 ms); `cap` if
/// it is too large to be one.
fn secs_to_duration(secs: f64, cap: Duration) -> Duration {
    let micros = (secs.max(0.0) * 1e6).round();
    // `u64::MAX as f64` rounds up to 2^64, so `<` keeps the cast exact.
    if micros < u64::MAX as f64 {
        Duration::from_micros(micros as u64).min(cap)
    } else {
        cap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn default_policy_is_valid_and_as_documented() {
        let policy = BackoffPolicy::default();
        assert_eq!(policy.validate(), Ok(()));
        assert_eq!(policy.base, ms(200));
        assert_eq!(policy.factor, 2.0);
        assert_eq!(policy.max, Duration::from_secs(30));
        assert_eq!(policy.jitter, 0.2);
    }

    #[test]
    fn nominal_delay_grows_exponentially_up_to_max() {
        let policy = BackoffPolicy::default();
        for (attempt, expected) in [
            (0, 200),
            (1, 200),
            (2, 400),
            (3, 800),
            (4, 1_600),
            (5, 3_200),
            (6, 6_400),
            (7, 12_800),
            (8, 25_600),
            (9, 30_000),
            (10, 30_000),
            (1_000, 30_000),
        ] {
            assert_eq!(policy.nominal_delay(attempt), ms(expected), "{attempt}");
            assert_eq!(
                retry_delay(attempt, &policy, 0.5),
                ms(expected),
                "{attempt}"
            );
        }
    }

    #[test]
    fn jitter_spans_the_full_range() {
        let policy = BackoffPolicy::default();
        // Attempt 3: nominal 800 ms, jitter 20 %: 640..=960 ms.
        for (sample, expected) in [(0.0, 640), (0.25, 720), (0.5, 800), (0.75, 880), (1.0, 960)] {
            assert_eq!(retry_delay(3, &policy, sample), ms(expected), "{sample}");
        }
    }

    #[test]
    fn jitter_is_clamped_to_max() {
        let policy = BackoffPolicy::default();
        // Attempt 8: nominal 25.6 s; +20 % would be 30.72 s.
        assert_eq!(retry_delay(8, &policy, 1.0), Duration::from_secs(30));
        assert_eq!(retry_delay(8, &policy, 0.0), ms(20_480));
        // At the cap the low end still applies.
        assert_eq!(retry_delay(50, &policy, 0.0), Duration::from_secs(24));
        assert_eq!(retry_delay(50, &policy, 1.0), Duration::from_secs(30));
    }

    #[test]
    fn delays_are_deterministic_and_monotonic_in_the_sample() {
        let policy = BackoffPolicy::default();
        for attempt in [1, 2, 5, 9, 40] {
            let mut previous = Duration::ZERO;
            for step in 0..=100 {
                let sample = f64::from(step) / 100.0;
                let delay = retry_delay(attempt, &policy, sample);
                assert_eq!(delay, retry_delay(attempt, &policy, sample));
                assert!(delay >= previous, "{attempt} {sample}");
                assert!(delay <= policy.max);
                previous = delay;
            }
        }
    }

    #[test]
    fn odd_samples_are_tamed() {
        let policy = BackoffPolicy::default();
        assert_eq!(retry_delay(3, &policy, -3.0), ms(640));
        assert_eq!(retry_delay(3, &policy, 7.0), ms(960));
        assert_eq!(retry_delay(3, &policy, f64::NAN), ms(800));
        assert_eq!(retry_delay(3, &policy, f64::INFINITY), ms(960));
        assert_eq!(retry_delay(3, &policy, f64::NEG_INFINITY), ms(640));
    }

    #[test]
    fn large_attempts_never_overflow() {
        let policies = [
            BackoffPolicy::default(),
            BackoffPolicy {
                factor: 10.0,
                ..Default::default()
            },
            BackoffPolicy {
                max: Duration::MAX,
                ..Default::default()
            },
            BackoffPolicy {
                base: Duration::MAX,
                max: Duration::MAX,
                jitter: 0.9,
                ..Default::default()
            },
        ];
        for policy in &policies {
            for attempt in [31, 64, 1_024, 1 << 20, u32::MAX - 1, u32::MAX] {
                for sample in [0.0, 0.5, 1.0] {
                    let delay = retry_delay(attempt, policy, sample);
                    assert!(delay <= policy.max, "{policy:?} {attempt}");
                    assert!(delay > Duration::ZERO, "{policy:?} {attempt}");
                }
            }
        }
        assert_eq!(
            retry_delay(u32::MAX, &BackoffPolicy::default(), 1.0),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn degenerate_policies_do_not_panic() {
        let zero_base = BackoffPolicy {
            base: Duration::ZERO,
            ..Default::default()
        };
        assert_eq!(retry_delay(u32::MAX, &zero_base, 1.0), Duration::ZERO);

        let constant = BackoffPolicy {
            factor: 1.0,
            jitter: 0.0,
            ..Default::default()
        };
        for attempt in [1, 10, u32::MAX] {
            assert_eq!(retry_delay(attempt, &constant, 0.9), ms(200));
        }

        let nan_factor = BackoffPolicy {
            factor: f64::NAN,
            ..Default::default()
        };
        assert_eq!(retry_delay(2, &nan_factor, 0.5), Duration::from_secs(30));

        let nan_jitter = BackoffPolicy {
            jitter: f64::NAN,
            ..Default::default()
        };
        assert_eq!(retry_delay(2, &nan_jitter, 1.0), ms(400));

        let wide_jitter = BackoffPolicy {
            jitter: 5.0,
            ..Default::default()
        };
        assert_eq!(retry_delay(2, &wide_jitter, 0.0), Duration::ZERO);
        assert_eq!(retry_delay(2, &wide_jitter, 1.0), ms(800));

        let shrinking = BackoffPolicy {
            factor: 0.5,
            ..Default::default()
        };
        assert_eq!(retry_delay(2, &shrinking, 0.5), ms(100));
        assert_eq!(retry_delay(u32::MAX, &shrinking, 0.5), Duration::ZERO);
    }

    #[test]
    fn validate_reports_each_mistake() {
        let ok = BackoffPolicy::default();
        let cases = [
            (
                BackoffPolicy {
                    base: Duration::from_secs(31),
                    ..ok
                },
                "must not exceed max",
            ),
            (BackoffPolicy { factor: 0.9, ..ok }, "factor"),
            (
                BackoffPolicy {
                    factor: f64::INFINITY,
                    ..ok
                },
                "factor",
            ),
            (
                BackoffPolicy {
                    factor: f64::NAN,
                    ..ok
                },
                "factor",
            ),
            (BackoffPolicy { jitter: -0.1, ..ok }, "jitter"),
            (BackoffPolicy { jitter: 1.1, ..ok }, "jitter"),
            (
                BackoffPolicy {
                    jitter: f64::NAN,
                    ..ok
                },
                "jitter",
            ),
        ];
        for (policy, text) in cases {
            let error = policy.validate().expect_err(text);
            assert!(error.to_string().contains(text), "{error}");
        }
        for fine in [
            BackoffPolicy { jitter: 0.0, ..ok },
            BackoffPolicy { jitter: 1.0, ..ok },
            BackoffPolicy { factor: 1.0, ..ok },
            BackoffPolicy { base: ok.max, ..ok },
        ] {
            assert_eq!(fine.validate(), Ok(()), "{fine:?}");
        }
    }

    #[test]
    fn should_retry_table() {
        for (made, max, retryable, expected) in [
            (1, 3, true, true),
            (2, 3, true, true),
            (3, 3, true, false),
            (4, 3, true, false),
            (1, 3, false, false),
            (1, 1, true, false),
            (0, 1, true, true),
            (0, 0, true, false),
            (u32::MAX, u32::MAX, true, false),
            (u32::MAX - 1, u32::MAX, true, true),
        ] {
            assert_eq!(
                should_retry(made, max, retryable),
                expected,
                "{made} {max} {retryable}"
            );
        }
    }
}
