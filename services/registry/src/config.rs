//! Registry settings: liveness policy and the cadence of its background work.

use std::sync::Arc;
use std::time::Duration;

use crate::liveness::LivenessPolicy;
use concord_runtime::{Clock, SystemClock};

/// Command-line / environment settings of the registry.
#[derive(Debug, Clone, clap::Args)]
pub struct RegistryArgs {
    /// Seconds between agent heartbeats (agents are told this in every ack).
    #[arg(
        long = "heartbeat-interval",
        env = "CONCORD_HEARTBEAT_INTERVAL",
        default_value_t = 1
    )]
    pub heartbeat_interval_secs: u32,
    /// Missed heartbeats after which an agent becomes SUSPECT.
    #[arg(
        long = "suspect-after",
        env = "CONCORD_SUSPECT_AFTER",
        default_value_t = 3
    )]
    pub suspect_after_missed: u32,
    /// Missed heartbeats after which an agent becomes UNAVAILABLE.
    #[arg(
        long = "unavailable-after",
        env = "CONCORD_UNAVAILABLE_AFTER",
        default_value_t = 6
    )]
    pub unavailable_after_missed: u32,
    /// Refuse agents that register without an ed25519 public key: every
    /// agent then signs its registration, heartbeats and deregistration.
    #[arg(long = "require-signatures", env = "CONCORD_REQUIRE_SIGNATURES")]
    pub require_signatures: bool,
    /// Seconds a signature's `Concord-Signed-At` may be away from the
    /// registry's clock, either way (clock skew between hosts).
    #[arg(
        long = "signature-max-skew",
        env = "CONCORD_SIGNATURE_MAX_SKEW",
        default_value_t = 300
    )]
    pub signature_max_skew_secs: u32,
}

/// Everything the registry needs besides its connections.
#[derive(Clone)]
pub struct RegistryConfig {
    pub liveness: LivenessPolicy,
    /// How often buffered heartbeats are written (one batched UPDATE).
    pub flush_interval: Duration,
    /// How often the liveness sweep runs.
    pub sweep_interval: Duration,
    /// How often accumulated task outcomes update reputations.
    pub reputation_interval: Duration,
    /// Run the periodic flush/sweep tasks (tests drive them by hand instead).
    pub background: bool,
    pub clock: Arc<dyn Clock>,
    /// Refuse registrations without a public key.
    pub require_signatures: bool,
    /// How far a signing time may be from the registry's clock.
    pub signature_max_skew: Duration,
}

impl RegistryConfig {
    pub fn from_args(args: &RegistryArgs) -> anyhow::Result<Self> {
        let liveness = LivenessPolicy {
            heartbeat_interval: Duration::from_secs(u64::from(args.heartbeat_interval_secs.max(1))),
            suspect_after_missed: args.suspect_after_missed,
            unavailable_after_missed: args.unavailable_after_missed,
        };
        liveness.validate().map_err(|e| {
            anyhow::anyhow!(
                "invalid liveness settings: {e}; check --suspect-after / --unavailable-after"
            )
        })?;
        Ok(Self {
            liveness,
            require_signatures: args.require_signatures,
            signature_max_skew: Duration::from_secs(u64::from(args.signature_max_skew_secs)),
            ..Self::default()
        })
    }
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            liveness: LivenessPolicy::default(),
            flush_interval: Duration::from_millis(200),
            sweep_interval: Duration::from_millis(500),
            reputation_interval: Duration::from_secs(2),
            background: true,
            clock: Arc::new(SystemClock),
            require_signatures: false,
            signature_max_skew: Duration::from_millis(concord_identity::DEFAULT_MAX_SKEW_MS),
        }
    }
}
