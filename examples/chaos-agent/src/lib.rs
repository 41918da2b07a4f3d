//! The chaos agent: answers tasks after a configurable latency, fails at
//! configurable rates and can crash, for tests and benchmarks.
//!
//! Randomness is a pure function of the seed, the task id and the attempt
//! ([`ChaosAgent::plan`]): the same seed gives every task the same latency
//! and fate whatever the arrival order or concurrency, and a retry (a new
//! attempt) draws again. Crashes count tasks in arrival order.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use concord_sdk::{Agent, Capability, Task, TaskContext, TaskFailure, capability};
use serde_json::Value;

/// Error code of an injected retryable failure.
pub const RETRYABLE_CODE: &str = "chaos_retryable";
/// Error code of an injected permanent failure.
pub const PERMANENT_CODE: &str = "chaos_permanent";

/// How long each task takes.
///
/// Parsed from milliseconds: `50` (fixed) or `10..200` (uniform, inclusive).
///
/// ```
/// use std::time::Duration;
/// use concord_chaos_agent::Latency;
///
/// assert_eq!("50".parse::<Latency>(), Ok(Latency::Fixed(Duration::from_millis(50))));
/// assert_eq!(
///     "10..200".parse::<Latency>(),
///     Ok(Latency::Uniform { min: Duration::from_millis(10), max: Duration::from_millis(200) })
/// );
/// assert!("200..10".parse::<Latency>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Latency {
    /// Always this long.
    Fixed(Duration),
    /// Uniformly distributed between `min` and `max`.
    Uniform { min: Duration, max: Duration },
}

impl Default for Latency {
    fn default() -> Self {
        Self::Fixed(Duration::ZERO)
    }
}

impl FromStr for Latency {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let millis = |part: &str| {
            part.trim()
                .parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| {
                    format!("expected milliseconds (`50`) or a range (`10..200`), got {s:?}")
                })
        };
        match s.split_once("..") {
            None => Ok(Self::Fixed(millis(s)?)),
            Some((min, max)) => {
                let (min, max) = (millis(min)?, millis(max)?);
                if min > max {
                    return Err(format!(
                        "latency range {s:?} has its minimum above its maximum"
                    ));
                }
                Ok(Self::Uniform { min, max })
            }
        }
    }
}

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fixed(d) => write!(f, "{}", d.as_millis()),
            Self::Uniform { min, max } => write!(f, "{}..{}", min.as_millis(), max.as_millis()),
        }
    }
}

/// What the chaos agent does.
#[derive(Debug, Clone, PartialEq)]
pub struct ChaosConfig {
    /// The one capability it registers (default `chaos`).
    pub capability: String,
    /// Time each task takes before it is answered.
    pub latency: Latency,
    /// Probability (0..=1) of a retryable failure.
    pub failure_rate: f64,
    /// Probability (0..=1) of a permanent failure, drawn before the retryable one.
    pub permanent_failure_rate: f64,
    /// Abort the process (like a SIGKILL, mid-task, no reply) when the Nth
    /// task starts. `None`: never.
    pub crash_after: Option<u64>,
    /// Seed of every random draw.
    pub seed: u64,
}

impl Default for ChaosConfig {
    /// Capability `chaos`, no latency, no failures, no crash, seed 0.
    fn default() -> Self {
        Self {
            capability: "chaos".to_string(),
            latency: Latency::default(),
            failure_rate: 0.0,
            permanent_failure_rate: 0.0,
            crash_after: None,
            seed: 0,
        }
    }
}

/// A configuration value is out of range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChaosConfigError {
    #[error("{name} must be within 0..=1, got {value}")]
    Rate { name: &'static str, value: f64 },
    #[error("capability must not be empty")]
    Capability,
    #[error("crash_after must be at least 1")]
    CrashAfter,
}

/// How one attempt of a task ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Answers with the payload unchanged.
    Succeed,
    /// Answers with a retryable failure, code [`RETRYABLE_CODE`].
    FailRetryable,
    /// Answers with a permanent failure, code [`PERMANENT_CODE`].
    FailPermanent,
}

/// The latency and fate drawn for one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub latency: Duration,
    pub fate: Fate,
}

/// The chaos agent; see the [crate docs](crate).
///
/// ```
/// use concord_chaos_agent::{ChaosAgent, ChaosConfig, Fate};
///
/// let agent = ChaosAgent::new(ChaosConfig { failure_rate: 1.0, ..ChaosConfig::default() }).unwrap();
/// assert_eq!(agent.plan("t-1", 1).fate, Fate::FailRetryable);
/// ```
#[derive(Debug)]
pub struct ChaosAgent {
    config: ChaosConfig,
    started: AtomicU64,
}

impl ChaosAgent {
    /// Checks the configuration.
    pub fn new(config: ChaosConfig) -> Result<Self, ChaosConfigError> {
        for (name, value) in [
            ("failure_rate", config.failure_rate),
            ("permanent_failure_rate", config.permanent_failure_rate),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(ChaosConfigError::Rate { name, value });
            }
        }
        if config.capability.is_empty() {
            return Err(ChaosConfigError::Capability);
        }
        if config.crash_after == Some(0) {
            return Err(ChaosConfigError::CrashAfter);
        }
        Ok(Self {
            config,
            started: AtomicU64::new(0),
        })
    }

    /// Its configuration.
    pub fn config(&self) -> &ChaosConfig {
        &self.config
    }

    /// Tasks started so far.
    pub fn tasks_started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// The latency and fate of an attempt: a pure function of the seed, the
    /// task id and the attempt number.
    pub fn plan(&self, task_id: &str, attempt: u32) -> Plan {
        let mut state = self.config.seed
            ^ fnv1a(task_id.as_bytes())
            ^ u64::from(attempt).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let latency_draw = unit(splitmix64(&mut state));
        let permanent_draw = unit(splitmix64(&mut state));
        let retryable_draw = unit(splitmix64(&mut state));
        let latency = match self.config.latency {
            Latency::Fixed(latency) => latency,
            Latency::Uniform { min, max } => min + (max - min).mul_f64(latency_draw),
        };
        let fate = if permanent_draw < self.config.permanent_failure_rate {
            Fate::FailPermanent
        } else if retryable_draw < self.config.failure_rate {
            Fate::FailRetryable
        } else {
            Fate::Succeed
        };
        Plan { latency, fate }
    }
}

impl Agent for ChaosAgent {
    fn capabilities(&self) -> Vec<Capability> {
        vec![capability(self.config.capability.clone(), 1.0)]
    }

    async fn handle(&self, task: Task, ctx: TaskContext) -> Result<Value, TaskFailure> {
        let number = self.started.fetch_add(1, Ordering::Relaxed) + 1;
        if self.config.crash_after == Some(number) {
            tracing::error!(task_id = %task.id, number, "chaos: crashing as configured (abort)");
            std::process::abort();
        }
        let plan = self.plan(&task.id, task.attempt);
        if !plan.latency.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(plan.latency) => {}
                _ = ctx.cancelled() => {
                    return Err(TaskFailure::cancelled(ctx.cancel_reason().unwrap_or_default()));
                }
            }
        }
        match plan.fate {
            Fate::Succeed => Ok(task.payload),
            Fate::FailRetryable => Err(TaskFailure::retryable(format!(
                "chaos: injected retryable failure (seed {})",
                self.config.seed
            ))
            .with_code(RETRYABLE_CODE)),
            Fate::FailPermanent => Err(TaskFailure::permanent(format!(
                "chaos: injected permanent failure (seed {})",
                self.config.seed
            ))
            .with_code(PERMANENT_CODE)),
        }
    }
}

/// Command-line configuration of the chaos agent (each flag also a `CONCORD_CHAOS_*` env var).
#[derive(Debug, Clone, clap::Args)]
pub struct ChaosArgs {
    /// The capability to register.
    #[arg(
        long = "capability",
        env = "CONCORD_CHAOS_CAPABILITY",
        default_value = "chaos"
    )]
    pub capability: String,

    /// Time each task takes, in milliseconds: `50`, or a uniform range `10..200`.
    #[arg(
        long = "latency-ms",
        env = "CONCORD_CHAOS_LATENCY_MS",
        default_value = "0"
    )]
    pub latency: Latency,

    /// Probability (0..=1) that a task fails with a retryable error.
    #[arg(long = "failure-rate", env = "CONCORD_CHAOS_FAILURE_RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub failure_rate: f64,

    /// Probability (0..=1) that a task fails with a permanent error.
    #[arg(long = "permanent-failure-rate", env = "CONCORD_CHAOS_PERMANENT_FAILURE_RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub permanent_failure_rate: f64,

    /// Abort the process when the Nth task starts, before answering it
    /// (simulates a crash mid-task).
    #[arg(long = "crash-after", env = "CONCORD_CHAOS_CRASH_AFTER", value_parser = clap::value_parser!(u64).range(1..))]
    pub crash_after: Option<u64>,

    /// Seed of the random draws; random when absent (registered as the
    /// label `chaos-seed`, so a run can be repeated).
    #[arg(long = "seed", env = "CONCORD_CHAOS_SEED")]
    pub seed: Option<u64>,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        _ => Err(format!("expected a probability within 0..=1, got {s:?}")),
    }
}

impl ChaosArgs {
    /// The configuration these flags describe (a random seed when none is given).
    pub fn to_config(&self) -> ChaosConfig {
        ChaosConfig {
            capability: self.capability.clone(),
            latency: self.latency,
            failure_rate: self.failure_rate,
            permanent_failure_rate: self.permanent_failure_rate,
            crash_after: self.crash_after,
            seed: self
                .seed
                .unwrap_or_else(|| uuid::Uuid::new_v4().as_u64_pair().0),
        }
    }
}

/// 64-bit FNV-1a: a stable hash of the task id (std's hasher is not stable across releases).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// SplitMix64: a tiny generator with well-mixed output, stable forever.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A draw in `[0, 1)` from 53 random bits.
fn unit(bits: u64) -> f64 {
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn agent(config: ChaosConfig) -> ChaosAgent {
        ChaosAgent::new(config).unwrap()
    }

    #[test]
    fn plans_depend_only_on_seed_task_and_attempt() {
        let config = ChaosConfig {
            latency: Latency::Uniform {
                min: Duration::from_millis(10),
                max: Duration::from_millis(200),
            },
            failure_rate: 0.5,
            seed: 42,
            ..ChaosConfig::default()
        };
        let a = agent(config.clone());
        let b = agent(config.clone());
        for i in 0..100 {
            let id = format!("task-{i}");
            assert_eq!(a.plan(&id, 1), b.plan(&id, 1));
            let latency = a.plan(&id, 1).latency;
            assert!((Duration::from_millis(10)..=Duration::from_millis(200)).contains(&latency));
        }
        let other_seed = agent(ChaosConfig { seed: 43, ..config });
        let differs = (0..100)
            .filter(|i| a.plan(&format!("task-{i}"), 1) != other_seed.plan(&format!("task-{i}"), 1))
            .count();
        assert!(differs > 50, "only {differs} plans changed with the seed");
        let retried = (0..100)
            .filter(|i| a.plan(&format!("task-{i}"), 1) != a.plan(&format!("task-{i}"), 2))
            .count();
        assert!(
            retried > 50,
            "only {retried} plans changed with the attempt"
        );
    }

    #[test]
    fn rates_are_respected() {
        let count = |config: ChaosConfig, fate: Fate| {
            let a = agent(config);
            (0..10_000)
                .filter(|i| a.plan(&format!("t{i}"), 1).fate == fate)
                .count()
        };
        let always = ChaosConfig {
            failure_rate: 1.0,
            ..ChaosConfig::default()
        };
        assert_eq!(count(always, Fate::FailRetryable), 10_000);
        let permanent = ChaosConfig {
            failure_rate: 1.0,
            permanent_failure_rate: 1.0,
            ..ChaosConfig::default()
        };
        assert_eq!(count(permanent, Fate::FailPermanent), 10_000);
        assert_eq!(count(ChaosConfig::default(), Fate::Succeed), 10_000);
        let half = count(
            ChaosConfig {
                failure_rate: 0.3,
                seed: 7,
                ..ChaosConfig::default()
            },
            Fate::FailRetryable,
        );
        assert!(
            (2_700..=3_300).contains(&half),
            "{half} of 10000 at rate 0.3"
        );
    }

    #[test]
    fn bad_configs_are_refused() {
        for (failure_rate, permanent_failure_rate) in [(1.5, 0.0), (0.0, -0.1), (f64::NAN, 0.0)] {
            let error = ChaosAgent::new(ChaosConfig {
                failure_rate,
                permanent_failure_rate,
                ..ChaosConfig::default()
            })
            .unwrap_err();
            assert!(matches!(error, ChaosConfigError::Rate { .. }), "{error}");
        }
        assert!(
            ChaosAgent::new(ChaosConfig {
                capability: String::new(),
                ..ChaosConfig::default()
            })
            .is_err()
        );
    }

    #[tokio::test]
    async fn handles_tasks_per_plan() {
        let ok = agent(ChaosConfig::default());
        let task = Task::new("t-1", "chaos", json!({"x": 1}));
        let ctx = TaskContext::detached(&task);
        assert_eq!(ok.handle(task.clone(), ctx).await, Ok(json!({"x": 1})));
        assert_eq!(ok.tasks_started(), 1);

        let failing = agent(ChaosConfig {
            failure_rate: 1.0,
            ..ChaosConfig::default()
        });
        let failure = failing
            .handle(task.clone(), TaskContext::detached(&task))
            .await
            .unwrap_err();
        assert!(failure.retryable);
        assert_eq!(failure.code, RETRYABLE_CODE);

        let slow = agent(ChaosConfig {
            latency: Latency::Fixed(Duration::from_secs(3600)),
            ..ChaosConfig::default()
        });
        let ctx = TaskContext::detached(&task);
        ctx.cancel("stop");
        let failure = slow.handle(task, ctx).await.unwrap_err();
        assert_eq!(failure.code, TaskFailure::CANCELLED);
    }
}
