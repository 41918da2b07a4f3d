//! [`AgentError`]: why [`run`](crate::run) could not start or keep the agent running.

use concord_bus::{ConnectError, ServiceError};

/// Why [`run`](crate::run) returned an error. Each variant prints as one
/// line saying what to fix.
///
/// Transient trouble (the registry not answering yet, NATS restarting) is
/// not an error: `run` logs it and keeps trying.
///
/// ```
/// use concord_sdk::AgentError;
/// use concord_sdk::bus::ServiceError;
/// use concord_sdk::wire::v1::ErrorCode;
///
/// fn explain(error: &AgentError) -> &'static str {
///     match error {
///         AgentError::Register { source, .. } if source.code == ErrorCode::AlreadyExists => {
///             "another agent holds this id with a different key"
///         }
///         AgentError::Register { .. } => "the registry refused the registration",
///         _ => "could not start",
///     }
/// }
/// let refused = AgentError::Register {
///     agent_id: "a-1".into(),
///     source: ServiceError::new(ErrorCode::AlreadyExists, "publicKey: different key"),
/// };
/// assert_eq!(explain(&refused), "another agent holds this id with a different key");
/// ```
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A configuration value is unusable.
    #[error("invalid agent configuration: {field}: {reason}")]
    InvalidConfig {
        /// The [`AgentConfig`](crate::AgentConfig) field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The first connection to NATS failed.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// A subscription could not be created.
    #[error("cannot subscribe to {subject}: {reason}")]
    Subscribe {
        /// The subject.
        subject: String,
        /// The client's error.
        reason: String,
    },
    /// The registry refused the registration (bad field, id taken by a
    /// different public key, ...). Retrying the same registration cannot help.
    #[error("the registry refused to register agent {agent_id}: {source}")]
    Register {
        /// The agent id that was refused.
        agent_id: String,
        /// The registry's error reply; `field` names the offending field.
        source: ServiceError,
    },
    /// An operator removed the agent (`concord agents remove`): it stopped
    /// gracefully and must not register again on its own.
    /// [`run_main`](crate::run_main) exits 0 for it.
    #[error("removed by an operator: {reason}")]
    Removed {
        /// The agent id.
        agent_id: String,
        /// The registry's message (names the agent, with the operator's reason).
        reason: String,
    },
}
