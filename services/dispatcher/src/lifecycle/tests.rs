//! Every transition of the lifecycle rules, at chosen moments.

use std::time::{Duration, Instant};

use concord_wire::v1::{TaskError, TaskStatus};
use serde_json::json;

use super::attempt::*;
use super::rules::*;
use crate::backoff::BackoffPolicy;
use crate::projection::{TaskEvent, TaskView, reason};

const LEASE: Duration = Duration::from_millis(1_000);

fn agents(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|id| id.to_string()).collect()
}

fn error(message: &str, retryable: bool) -> TaskError {
    TaskError {
        message: message.into(),
        retryable,
        code: if retryable { "" } else { "bad_input" }.into(),
    }
}

fn no_jitter() -> BackoffPolicy {
    BackoffPolicy {
        jitter: 0.0,
        ..BackoffPolicy::default()
    }
}

#[test]
fn an_answer_is_taken_once_and_only_for_the_running_attempt() {
    let t0 = Instant::now();
    let mut attempt = Attempt::start(2, &agents(&["a", "b"]), LEASE, t0);
    assert_eq!(attempt.awaiting(2, 0), Some("a"));
    assert_eq!(
        attempt.awaiting(1, 0),
        None,
        "a reply to an earlier attempt is stale"
    );
    assert_eq!(attempt.awaiting(2, 5), None, "no such agent");

    let answered = attempt.answer(0, &Ok(json!({"n": 1})), t0 + Duration::from_millis(30));
    assert_eq!(answered.agent_id, "a");
    assert!(!answered.all_done, "b is still working");
    assert_eq!(answered.took, Duration::from_millis(30));
    assert_eq!(
        answered.history,
        json!({"attempt": 2, "agentId": "a", "outcome": "ok"})
    );
    assert_eq!(attempt.awaiting(2, 0), None, "a second reply of a is stale");
    assert_eq!(attempt.working().collect::<Vec<_>>(), ["b"]);

    let answered = attempt.answer(1, &Err(error("boom", true)), t0 + LEASE);
    assert!(answered.all_done);
    assert_eq!(answered.history["outcome"]["message"], "boom");
}

#[test]
fn one_success_completes_with_its_output_or_every_output_on_fan_out() {
    let t0 = Instant::now();
    let start = || {
        let mut attempt = Attempt::start(1, &agents(&["a", "b"]), LEASE, t0);
        attempt.answer(0, &Err(error("a failed", true)), t0);
        attempt.answer(1, &Ok(json!({"n": 2})), t0);
        attempt
    };
    let Finished::Completed(TaskEvent::Completed {
        attempt,
        agent_id,
        output,
        outputs,
    }) = start().finish(false)
    else {
        panic!("a success completes the task");
    };
    assert_eq!((attempt, agent_id.as_str()), (1, "b"));
    assert_eq!(output, Some(json!({"n": 2})), "whole numbers stay whole");
    assert!(outputs.is_empty());

    let Finished::Completed(TaskEvent::Completed {
        output, outputs, ..
    }) = start().finish(true)
    else {
        panic!("a success completes the task");
    };
    assert_eq!(output, None);
    assert_eq!(outputs.len(), 2, "fan-out keeps every agent's outcome");
}

#[test]
fn a_failed_attempt_names_its_agents_and_whether_a_retry_can_help() {
    let t0 = Instant::now();
    let mut attempt = Attempt::start(1, &agents(&["a", "b"]), LEASE, t0);
    attempt.answer(0, &Err(error("flaky", true)), t0);
    attempt.answer(1, &Err(error("never", false)), t0);
    assert_eq!(
        attempt.finish(true),
        Finished::Failed {
            agents: agents(&["a", "b"]),
            last: error("never", false),
            retryable: false,
        }
    );
}

#[test]
fn progress_from_a_working_agent_extends_the_lease_and_the_timer_follows_it() {
    let t0 = Instant::now();
    let mut attempt = Attempt::start(3, &agents(&["a"]), LEASE, t0);
    assert_eq!(attempt.lease_deadline(), t0 + LEASE);

    let at = t0 + Duration::from_millis(800);
    assert!(!attempt.progress(2, "a", at), "progress on another attempt");
    assert!(
        !attempt.progress(3, "z", at),
        "progress from an agent not on the attempt"
    );
    assert_eq!(attempt.lease_deadline(), t0 + LEASE);
    assert!(attempt.progress(3, "a", at));
    assert_eq!(attempt.lease_deadline(), at + LEASE);

    // The first timer fires at the old deadline: the lease moved.
    assert_eq!(
        attempt.lease_check(3, t0 + LEASE),
        LeaseCheck::Extended(at + LEASE)
    );
    // Another attempt's timer is stale.
    assert_eq!(attempt.lease_check(2, at + LEASE), LeaseCheck::Stale);
    // Past the new deadline: the silent agent's lease expired.
    assert_eq!(
        attempt.lease_check(3, at + LEASE),
        LeaseCheck::Expired(vec![(0, "a".to_string())])
    );
    // An agent that answered cannot extend it any more.
    attempt.answer(0, &Ok(json!(1)), at);
    assert!(!attempt.progress(3, "a", at + LEASE));
}

#[test]
fn lease_expiry_fails_only_the_silent_agents_with_a_retryable_error() {
    let t0 = Instant::now();
    let mut attempt = Attempt::start(1, &agents(&["a", "b", "c"]), LEASE, t0);
    attempt.answer(1, &Ok(json!("done")), t0);
    let LeaseCheck::Expired(silent) = attempt.lease_check(1, t0 + LEASE) else {
        panic!("the lease ran out");
    };
    assert_eq!(silent, vec![(0, "a".to_string()), (2, "c".to_string())]);
    let error = lease_expired_error(LEASE, "a");
    assert!(error.retryable);
    assert_eq!(error.code, "lease_expired");
    assert!(error.message.contains("1000 ms lease"), "{}", error.message);
    // Expired agents count as failed; the one success completes the task.
    for (index, agent) in silent {
        let failure = Err(lease_expired_error(LEASE, &agent));
        attempt.answer(index, &failure, t0 + LEASE);
    }
    assert!(matches!(attempt.finish(true), Finished::Completed(_)));
}

#[test]
fn a_retryable_failure_is_retried_with_backoff_while_attempts_remain() {
    let last = error("flaky", true);
    assert_eq!(
        after_failure(1, 1, 3, &last, true, false, &no_jitter(), 0.5),
        AfterFailure::Retry {
            next_attempt: 2,
            delay: Duration::from_millis(200),
        }
    );
    // The delay grows with the attempts made (base 200 ms, factor 2).
    assert_eq!(
        after_failure(2, 2, 3, &last, true, false, &no_jitter(), 0.5),
        AfterFailure::Retry {
            next_attempt: 3,
            delay: Duration::from_millis(400),
        }
    );
}

#[test]
fn the_last_attempt_a_permanent_error_or_a_passed_deadline_dead_letters() {
    let flaky = error("flaky", true);
    let AfterFailure::GiveUp { code, message } =
        after_failure(3, 3, 3, &flaky, true, false, &no_jitter(), 0.5)
    else {
        panic!("no attempts left");
    };
    assert_eq!(code, reason::MAX_ATTEMPTS);
    assert_eq!(message, "all 3 attempts failed; last error: flaky");

    let permanent = error("bad input", false);
    let AfterFailure::GiveUp { code, message } =
        after_failure(1, 1, 3, &permanent, false, false, &no_jitter(), 0.5)
    else {
        panic!("a permanent error is not retried");
    };
    assert_eq!(code, reason::TASK_FAILED);
    assert!(message.contains("permanent error: bad input"), "{message}");

    let AfterFailure::GiveUp { code, .. } =
        after_failure(1, 1, 3, &flaky, true, true, &no_jitter(), 0.5)
    else {
        panic!("no retry after the deadline");
    };
    assert_eq!(code, reason::DEADLINE_EXCEEDED);
    // A permanent error is named first, even past the deadline.
    let AfterFailure::GiveUp { code, .. } =
        after_failure(3, 3, 3, &permanent, false, true, &no_jitter(), 0.5)
    else {
        panic!("given up");
    };
    assert_eq!(code, reason::TASK_FAILED);
}

#[test]
fn a_dead_lettered_task_reports_the_agents_code_or_the_reason() {
    let with_code = dead_letter_error("task_failed", "why".into(), Some(error("x", false)));
    assert_eq!(with_code.code, "bad_input");
    assert!(!with_code.retryable);
    assert_eq!(with_code.message, "why");
    let without = dead_letter_error("max_attempts", "why".into(), Some(error("x", true)));
    assert_eq!(without.code, "max_attempts");
    assert!(without.retryable);
    let no_agent = dead_letter_error("no_eligible_agent", "none".into(), None);
    assert_eq!(no_agent.code, "no_eligible_agent");
    assert!(!no_agent.retryable);
}

fn stored(status: TaskStatus, attempts: u32) -> TaskView {
    let task = concord_wire::v1::Task {
        id: "t-1".into(),
        capability: "echo".into(),
        ..Default::default()
    };
    let mut view = TaskView::submitted(task, 1, chrono::Utc::now());
    view.status = status;
    view.attempts = attempts;
    view
}

#[test]
fn a_new_id_is_admitted_or_cancelled_if_a_cancellation_waited_for_it() {
    assert_eq!(admission(None, false, None), Admission::New);
    assert_eq!(
        admission(None, false, Some("no longer needed".into())),
        Admission::CancelledWhileWaiting {
            reason: "no longer needed".into()
        }
    );
}

#[test]
fn an_unfinished_stored_task_resumes_with_its_attempts() {
    for status in [
        TaskStatus::Pending,
        TaskStatus::Assigned,
        TaskStatus::Retrying,
    ] {
        assert_eq!(
            admission(Some(&stored(status, 2)), false, None),
            Admission::Resume { attempts_run: 2 }
        );
    }
}

#[test]
fn only_a_replay_reopens_and_only_a_dead_lettered_task() {
    let dead = stored(TaskStatus::DeadLettered, 3);
    assert_eq!(admission(Some(&dead), true, None), Admission::Reopen);
    assert_eq!(admission(Some(&dead), false, None), Admission::AlreadyFinal);
    for status in [
        TaskStatus::Completed,
        TaskStatus::Cancelled,
        TaskStatus::Failed,
    ] {
        assert_eq!(
            admission(Some(&stored(status, 1)), true, None),
            Admission::AlreadyFinal,
            "{status:?}"
        );
    }
}

#[test]
fn a_task_waits_for_busy_agents_however_long_it_takes() {
    let t0 = Instant::now();
    let wait = Duration::from_secs(5);
    let much_later = t0 + Duration::from_secs(3_600);
    assert_eq!(without_agent(true, t0, t0, wait, much_later), NoAgent::Wait);
}

#[test]
fn without_an_eligible_agent_a_task_waits_then_gives_up() {
    let t0 = Instant::now();
    let wait = Duration::from_secs(5);
    assert_eq!(
        without_agent(false, t0, t0, wait, t0 + Duration::from_secs(4)),
        NoAgent::Wait
    );
    assert_eq!(
        without_agent(false, t0, t0, wait, t0 + wait),
        NoAgent::GiveUp
    );
    // Queued long ago, but its capability lost its agents only now: waits.
    let lost = t0 + Duration::from_secs(60);
    assert_eq!(
        without_agent(false, lost, t0, wait, lost + Duration::from_secs(1)),
        NoAgent::Wait
    );
    assert_eq!(
        without_agent(false, lost, t0, wait, lost + wait),
        NoAgent::GiveUp
    );
    // Just queued behind a capability without agents for a while: waits too.
    let queued = t0 + Duration::from_secs(60);
    assert_eq!(
        without_agent(false, t0, queued, wait, queued + Duration::from_secs(1)),
        NoAgent::Wait
    );
}

#[test]
fn a_pulled_submission_held_here_is_a_redelivery_or_a_duplicate() {
    let never = || -> bool { panic!("the filter is not asked about held ids") };
    assert_eq!(
        arrival(Some(7), 7, false, false, never),
        Arrival::Redelivered
    );
    assert_eq!(arrival(Some(7), 9, true, false, never), Arrival::Duplicate);
    assert_eq!(
        arrival(Some(0), 9, true, false, never),
        Arrival::Duplicate,
        "a held submission of unknown position is another one"
    );
}

#[test]
fn only_a_first_delivery_of_an_id_the_store_cannot_hold_skips_the_lookup() {
    let never = || -> bool { panic!("an id from the stream position needs no filter") };
    assert_eq!(arrival(None, 3, true, true, never), Arrival::New);
    assert_eq!(arrival(None, 3, true, false, || false), Arrival::New);
    assert_eq!(arrival(None, 3, true, false, || true), Arrival::LookUp);
    // Delivered before: a replica may have stored it, whatever its id.
    assert_eq!(arrival(None, 3, false, true, || false), Arrival::LookUp);
    assert_eq!(arrival(None, 3, false, false, || false), Arrival::LookUp);
}
