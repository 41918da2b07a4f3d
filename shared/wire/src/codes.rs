//! The `code` of a `TaskError` and the `reason` of a dead letter: short
//! lower-case names a client can match on (docs/PROTOCOL.md lists them).

/// No capable, eligible agent appeared within the wait.
pub const NO_ELIGIBLE_AGENT: &str = "no_eligible_agent";
/// Every attempt failed.
pub const MAX_ATTEMPTS: &str = "max_attempts";
/// An agent reported an error that another attempt would repeat.
pub const TASK_FAILED: &str = "task_failed";
/// The deadline passed before the task could complete.
pub const DEADLINE_EXCEEDED: &str = "deadline_exceeded";
/// `tasks.cancel` of a task no dispatcher holds yet: the cancellation is
/// queued and applied when its submission is taken (status `PENDING`).
pub const CANCEL_QUEUED: &str = "cancel_queued";
/// Dead-letter reason of a request refused for its content.
pub const INVALID_INPUT: &str = "invalid_input";
/// Dead-letter reason of a request refused for its signature.
pub const PERMISSION_DENIED: &str = "permission_denied";
