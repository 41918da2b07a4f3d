//! The decisions about a held task that need no more than a few facts:
//! admission, waiting for an agent, what follows a failure, the error a
//! dead-lettered task reports.

use std::time::{Duration, Instant};

use concord_wire::v1::{TaskError, TaskStatus};

use crate::backoff::{BackoffPolicy, retry_delay, should_retry};
use crate::projection::{Finality, TaskView, reason};

/// What follows a failed attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum AfterFailure {
    /// Try again after `delay`, as attempt `next_attempt`.
    Retry { next_attempt: u32, delay: Duration },
    /// End in the dead-letter store with this reason and message.
    GiveUp { code: &'static str, message: String },
}

/// What a valid submission becomes, given what the store holds for its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// A task never seen: recorded as submitted and queued.
    New,
    /// Cancelled while it waited in the intake stream (`tasks.cancel` queued
    /// it): recorded as submitted, then cancelled, never run.
    CancelledWhileWaiting { reason: String },
    /// An unfinished task another holder left (a crash, a redelivery):
    /// taken over with the attempts it has made.
    Resume { attempts_run: u32 },
    /// A dead-lettered task replayed by an operator (`Concord-Replay-Of`):
    /// reopened with a fresh count of attempts.
    Reopen,
    /// Finished before: a duplicate submission, or this one redelivered
    /// after a crash between commit and acknowledgement. Its result is
    /// published again and the submission acknowledged.
    AlreadyFinal,
}

/// The admission of a submission: `stored` is the task's stored view (none
/// when the store has no row), `replay` whether it carries
/// `Concord-Replay-Of`, `queued_cancellation` the reason of a cancellation
/// queued for an id without a row.
pub fn admission(
    stored: Option<&TaskView>,
    replay: bool,
    queued_cancellation: Option<String>,
) -> Admission {
    match stored {
        None => match queued_cancellation {
            Some(reason) => Admission::CancelledWhileWaiting { reason },
            None => Admission::New,
        },
        Some(view) if view.status.is_final() => {
            if replay && view.status == TaskStatus::DeadLettered {
                Admission::Reopen
            } else {
                Admission::AlreadyFinal
            }
        }
        Some(view) => Admission::Resume {
            attempts_run: view.attempts,
        },
    }
}

/// What a queued task that found no agent to take it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoAgent {
    /// Stay queued (an agent may free up or appear).
    Wait,
    /// End in the dead-letter store, reason `no_eligible_agent`.
    GiveUp,
}

/// A queued task found no agent at `now`. `only_busy`: capable agents exist
/// but are all at capacity, which is worth waiting for however long it
/// takes. Otherwise (none capable, healthy, or with a closed breaker) it
/// waits `wait` counted both from `none_since` (since when its capability,
/// or its targets, had no eligible agent) and from `queued_at`, so neither a
/// task that just arrived nor one whose agents just left is given up at once.
pub fn without_agent(
    only_busy: bool,
    none_since: Instant,
    queued_at: Instant,
    wait: Duration,
    now: Instant,
) -> NoAgent {
    let waited = |since: Instant| now.saturating_duration_since(since) >= wait;
    if only_busy || !waited(none_since) || !waited(queued_at) {
        NoAgent::Wait
    } else {
        NoAgent::GiveUp
    }
}

/// After attempt `attempt` failed with `last`: another attempt when the
/// error allows one, attempts remain and the deadline has not passed; the
/// dead-letter store otherwise, with the reason that applies first
/// (permanent error, deadline, attempts used up). `attempts_run` counts the
/// attempts made against `max_attempts`; `jitter` is a sample in `0..=1`
/// for the retry delay.
#[allow(clippy::too_many_arguments)]
pub fn after_failure(
    attempt: u32,
    attempts_run: u32,
    max_attempts: u32,
    last: &TaskError,
    retryable: bool,
    deadline_passed: bool,
    backoff: &BackoffPolicy,
    jitter: f64,
) -> AfterFailure {
    if should_retry(attempts_run, max_attempts, retryable) && !deadline_passed {
        return AfterFailure::Retry {
            next_attempt: attempt + 1,
            delay: retry_delay(attempts_run, backoff, jitter),
        };
    }
    let (code, message) = if !retryable {
        (
            reason::TASK_FAILED,
            format!("the agent reported a permanent error: {}", last.message),
        )
    } else if deadline_passed {
        (
            reason::DEADLINE_EXCEEDED,
            format!(
                "the deadline passed after {attempts_run} attempts; last error: {}",
                last.message
            ),
        )
    } else {
        (
            reason::MAX_ATTEMPTS,
            format!(
                "all {attempts_run} attempts failed; last error: {}",
                last.message
            ),
        )
    };
    AfterFailure::GiveUp { code, message }
}

/// The error a dead-lettered task reports: the dead-letter `message`, the
/// last agent error's code when it has one (else the reason `code`), and
/// whether that error was retryable.
pub fn dead_letter_error(code: &str, message: String, last: Option<TaskError>) -> TaskError {
    TaskError {
        message,
        retryable: last.as_ref().is_some_and(|e| e.retryable),
        code: last
            .map(|e| e.code)
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| code.to_string()),
    }
}

/// What a valid submission pulled from the intake stream is, before the
/// store is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The submission this replica holds, delivered again (its ack wait ran
    /// out while it was worked on): answer on the newest delivery.
    Redelivered,
    /// Another submission of a task this replica holds: one task, so this
    /// one is acknowledged and counted as a duplicate.
    Duplicate,
    /// Certainly unknown to the store: admitted as new without a lookup.
    New,
    /// Maybe known to the store (redelivered, or its id may have been seen):
    /// looked up first.
    LookUp,
}

/// A pulled submission at stream position `sequence`. `held`: the stream
/// position of the submission this replica holds under the same task id
/// (0 when unknown). `first_delivery`: JetStream's first delivery of it.
/// `id_from_position`: its id was derived from its own stream position (no
/// id, no `Nats-Msg-Id`), which no other submission can have. `maybe_known`
/// asks the known-ids filter whether the store may hold the id (only asked
/// when it matters).
pub fn arrival(
    held: Option<u64>,
    sequence: u64,
    first_delivery: bool,
    id_from_position: bool,
    maybe_known: impl FnOnce() -> bool,
) -> Arrival {
    match held {
        Some(held) if held == sequence => Arrival::Redelivered,
        Some(_) => Arrival::Duplicate,
        None if first_delivery && (id_from_position || !maybe_known()) => Arrival::New,
        None => Arrival::LookUp,
    }
}
