//! Names of the NATS headers in Concord's public contract (what they carry
//! is in docs/PROTOCOL.md). Reading and writing them on a NATS message is
//! `concord_bus::headers`.

/// De-duplication id of a JetStream publish; Concord also uses it as the task
/// id when a submission has none ([`crate::ids::task_id_from_msg_id`]).
pub const MSG_ID: &str = "Nats-Msg-Id";
/// `application/json` (default) or `application/protobuf`.
pub const CONTENT_TYPE: &str = "Content-Type";
/// W3C trace context.
pub const TRACEPARENT: &str = "traceparent";
/// W3C vendor trace state.
pub const TRACESTATE: &str = "tracestate";
/// Set on error replies: Concord's stable error code name, e.g. `INVALID_ARGUMENT`.
pub const ERROR_CODE: &str = "Concord-Error-Code";
/// On a replayed dead letter: the id of the dead letter it replays. A
/// dead-lettered task is reopened only by a submission carrying it.
pub const REPLAY_OF: &str = "Concord-Replay-Of";
/// `true` on a task result published again (the submission of a task that
/// was already final arrived once more).
pub const REPLAYED: &str = "Concord-Replayed";
