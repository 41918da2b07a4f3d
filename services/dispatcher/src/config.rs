//! Dispatcher settings: flags (each also a `CONCORD_*` environment variable)
//! and the validated configuration built from them.

use std::sync::Arc;
use std::time::Duration;

use concord_runtime::{Clock, SystemClock};
use concord_wire::v1::RoutingStrategy;

use crate::backoff::BackoffPolicy;
use crate::breaker::BreakerPolicy;
use crate::routing::{Router, RoutingWeights};
use crate::task_spec::TaskLimits;

/// Command-line / environment settings of the dispatcher.
#[derive(Debug, Clone, clap::Args)]
pub struct DispatcherArgs {
    /// Routing strategy for tasks that name none: ROUND_ROBIN, CAPABILITY,
    /// LEAST_LOADED, PRIORITY, WEIGHTED or BROADCAST.
    #[arg(
        long = "default-strategy",
        env = "CONCORD_DEFAULT_STRATEGY",
        default_value = "WEIGHTED"
    )]
    pub default_strategy: String,
    /// Weights of the WEIGHTED score as performance,capability,availability,reputation.
    #[arg(
        long = "routing-weights",
        env = "CONCORD_ROUTING_WEIGHTS",
        default_value = "0.4,0.3,0.2,0.1"
    )]
    pub routing_weights: String,
    /// Lease of one attempt when the task sets no `timeoutMs`, in milliseconds.
    #[arg(
        long = "default-timeout-ms",
        env = "CONCORD_DEFAULT_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    pub default_timeout_ms: u64,
    /// Attempts when the task sets no `maxAttempts`.
    #[arg(
        long = "default-max-attempts",
        env = "CONCORD_DEFAULT_MAX_ATTEMPTS",
        default_value_t = 3
    )]
    pub default_max_attempts: u32,
    /// How long a task waits for a capable agent to appear before it is
    /// dead-lettered with reason `no_eligible_agent`, in milliseconds.
    #[arg(
        long = "no-agent-wait-ms",
        env = "CONCORD_NO_AGENT_WAIT_MS",
        default_value_t = 10_000
    )]
    pub no_agent_wait_ms: u64,
    /// First retry delay in milliseconds (doubles per attempt, with jitter).
    #[arg(
        long = "retry-base-ms",
        env = "CONCORD_RETRY_BASE_MS",
        default_value_t = 100
    )]
    pub retry_base_ms: u64,
    /// Longest retry delay in milliseconds.
    #[arg(
        long = "retry-max-ms",
        env = "CONCORD_RETRY_MAX_MS",
        default_value_t = 10_000
    )]
    pub retry_max_ms: u64,
    /// Consecutive failures that open an agent's circuit breaker.
    #[arg(
        long = "breaker-failures",
        env = "CONCORD_BREAKER_FAILURES",
        default_value_t = 5
    )]
    pub breaker_failures: u32,
    /// How long an open breaker stays open before a probe, in milliseconds.
    #[arg(
        long = "breaker-cooldown-ms",
        env = "CONCORD_BREAKER_COOLDOWN_MS",
        default_value_t = 5_000
    )]
    pub breaker_cooldown_ms: u64,
    /// How long JetStream waits for the dispatcher to acknowledge (or extend)
    /// a submission before redelivering it, in milliseconds. The consumer is
    /// shared by all replicas: the last replica to start sets it.
    #[arg(
        long = "ack-wait-ms",
        env = "CONCORD_ACK_WAIT_MS",
        default_value_t = 30_000
    )]
    pub ack_wait_ms: u64,
    /// Submissions held at once by this replica (routing backlog).
    #[arg(long = "max-held", env = "CONCORD_MAX_HELD", default_value_t = 20_000)]
    pub max_held: usize,
}

impl Default for DispatcherArgs {
    fn default() -> Self {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: DispatcherArgs,
        }
        Wrapper::parse_from(["concord-dispatcher"]).args
    }
}

/// Everything the dispatcher needs besides its connections.
#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    pub default_strategy: RoutingStrategy,
    pub weights: RoutingWeights,
    pub limits: TaskLimits,
    pub no_agent_wait: Duration,
    pub backoff: BackoffPolicy,
    pub breaker: BreakerPolicy,
    pub ack_wait: Duration,
    pub max_held: usize,
    /// Events of a task not yet final are written after this long (fast
    /// tasks write all their events in one batch with the outcome).
    pub event_delay: Duration,
    /// Cadence of the housekeeping tick (deferred events, waits, ack extensions).
    pub tick: Duration,
    /// The time the engine acts on: the system clock, or a manual one in tests.
    pub clock: Arc<dyn Clock>,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        Self::from_args(&DispatcherArgs::default()).expect("the defaults are valid")
    }
}

impl DispatcherConfig {
    /// Validates the flags; errors name the flag to fix.
    pub fn from_args(args: &DispatcherArgs) -> anyhow::Result<Self> {
        let default_strategy = RoutingStrategy::from_str_name(
            &args.default_strategy.to_uppercase(),
        )
        .ok_or_else(|| {
            anyhow::anyhow!(
                "--default-strategy: unknown strategy {:?}",
                args.default_strategy
            )
        })?;
        let weights = parse_weights(&args.routing_weights)?;
        Router::new(default_strategy, weights)
            .map_err(|e| anyhow::anyhow!("--default-strategy: {e}"))?;
        let limits = TaskLimits {
            default_timeout_ms: args.default_timeout_ms,
            default_max_attempts: args.default_max_attempts,
            ..TaskLimits::default()
        };
        limits
            .validate()
            .map_err(|e| anyhow::anyhow!("--default-timeout-ms / --default-max-attempts: {e}"))?;
        let backoff = BackoffPolicy {
            base: Duration::from_millis(args.retry_base_ms),
            max: Duration::from_millis(args.retry_max_ms),
            ..BackoffPolicy::default()
        };
        backoff
            .validate()
            .map_err(|e| anyhow::anyhow!("--retry-base-ms / --retry-max-ms: {e}"))?;
        let breaker = BreakerPolicy {
            failure_threshold: args.breaker_failures,
            cooldown: Duration::from_millis(args.breaker_cooldown_ms),
            ..BreakerPolicy::default()
        };
        breaker
            .validate()
            .map_err(|e| anyhow::anyhow!("--breaker-failures / --breaker-cooldown-ms: {e}"))?;
        if args.ack_wait_ms < 1000 {
            anyhow::bail!("--ack-wait-ms: must be at least 1000");
        }
        if args.max_held == 0 {
            anyhow::bail!("--max-held: must be at least 1");
        }
        Ok(Self {
            default_strategy,
            weights,
            limits,
            no_agent_wait: Duration::from_millis(args.no_agent_wait_ms),
            backoff,
            breaker,
            ack_wait: Duration::from_millis(args.ack_wait_ms),
            max_held: args.max_held,
            event_delay: Duration::from_millis(50),
            tick: Duration::from_millis(25),
            clock: Arc::new(SystemClock),
        })
    }
}

fn parse_weights(text: &str) -> anyhow::Result<RoutingWeights> {
    let parts: Vec<f64> = text
        .split(',')
        .map(|p| p.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("--routing-weights: {e} in {text:?}"))?;
    let [performance, capability, availability, reputation] = parts[..] else {
        anyhow::bail!("--routing-weights: expected four numbers, got {text:?}");
    };
    RoutingWeights::new(performance, capability, availability, reputation)
        .map_err(|e| anyhow::anyhow!("--routing-weights: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> DispatcherArgs {
        DispatcherArgs::default()
    }

    #[test]
    fn defaults_are_valid() {
        let config = DispatcherConfig::default();
        assert_eq!(config.default_strategy, RoutingStrategy::Weighted);
        assert_eq!(config.limits.default_max_attempts, 3);
    }

    #[test]
    fn bad_flags_are_named() {
        let mut a = args();
        a.default_strategy = "FASTEST".into();
        assert!(
            format!("{}", DispatcherConfig::from_args(&a).unwrap_err())
                .contains("--default-strategy")
        );
        let mut a = args();
        a.default_strategy = "direct".into();
        assert!(
            format!("{}", DispatcherConfig::from_args(&a).unwrap_err())
                .contains("--default-strategy")
        );
        let mut a = args();
        a.routing_weights = "1,2".into();
        assert!(
            format!("{}", DispatcherConfig::from_args(&a).unwrap_err())
                .contains("--routing-weights")
        );
        let mut a = args();
        a.ack_wait_ms = 10;
        assert!(
            format!("{}", DispatcherConfig::from_args(&a).unwrap_err()).contains("--ack-wait-ms")
        );
    }

    #[test]
    fn strategy_names_are_case_insensitive() {
        let mut a = args();
        a.default_strategy = "least_loaded".into();
        assert_eq!(
            DispatcherConfig::from_args(&a).unwrap().default_strategy,
            RoutingStrategy::LeastLoaded
        );
    }
}
