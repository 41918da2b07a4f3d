//! Every transition of a held task's state machine, at chosen moments:
//! inputs in, the exact effects out.

use std::time::{Duration, Instant};

use concord_wire::v1::{RoutingStrategy, TaskError};
use serde_json::json;

use super::machine::{Effect, GiveUp, Input, Moment, Phase, Task, Verdict, Wake};
use crate::backoff::BackoffPolicy;
use crate::breaker::{BreakerPolicy, Breakers};
use crate::projection::{TaskEvent, reason};
use crate::task_spec::TaskSpec;

const LEASE: Duration = Duration::from_millis(1_000);

fn spec(max_attempts: u32) -> TaskSpec {
    TaskSpec {
        id: "t-1".into(),
        id_generated: false,
        capability: "echo".into(),
        payload: None,
        priority: 5,
        strategy: RoutingStrategy::Unspecified,
        targets: Vec::new(),
        fanout: 0,
        timeout_ms: LEASE.as_millis() as u64,
        max_attempts,
        deadline: None,
        correlation_id: String::new(),
        labels: Default::default(),
        sequence: 1,
    }
}

fn no_jitter() -> BackoffPolicy {
    BackoffPolicy {
        jitter: 0.0,
        ..BackoffPolicy::default()
    }
}

fn agents(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|id| id.to_string()).collect()
}

fn failure(message: &str, retryable: bool) -> TaskError {
    TaskError {
        message: message.into(),
        retryable,
        code: if retryable { "busy" } else { "bad_input" }.into(),
    }
}

/// Drives one task at moments counted from `t0`.
struct Run {
    task: Task,
    t0: Instant,
    deadline_passed: bool,
    backoff: BackoffPolicy,
}

impl Run {
    /// A new task (no stored attempts) with `max_attempts`.
    fn new(max_attempts: u32) -> Self {
        Self::stored(max_attempts, 0, 0, false)
    }

    fn stored(max_attempts: u32, attempts: u32, attempts_run: u32, fan_out: bool) -> Self {
        Self {
            task: Task::new(
                &spec(max_attempts),
                Phase::Looking,
                attempts,
                attempts_run,
                fan_out,
            ),
            t0: Instant::now(),
            deadline_passed: false,
            backoff: no_jitter(),
        }
    }

    fn at(&self, ms: u64) -> Moment {
        Moment {
            now: self.t0 + Duration::from_millis(ms),
            jitter: 0.5,
        }
    }

    fn step(&mut self, ms: u64, input: Input) -> Vec<Effect> {
        let at = self.at(ms);
        self.task
            .step(input, &at, self.deadline_passed, &self.backoff)
    }

    /// Queued at `ms` and routed to `to` at the same moment.
    fn start(&mut self, ms: u64, to: &[&str]) -> Vec<Effect> {
        if !matches!(self.task.phase(), Phase::Queued { .. }) {
            assert_eq!(self.step(ms, Input::Queue), [Effect::Queue]);
        }
        self.step(ms, Input::Routed { agents: agents(to) })
    }

    fn reply(
        &mut self,
        ms: u64,
        attempt: u32,
        index: usize,
        outcome: Result<serde_json::Value, TaskError>,
    ) -> Vec<Effect> {
        self.step(
            ms,
            Input::Reply {
                attempt,
                index,
                outcome,
            },
        )
    }
}

fn sent(attempt: u32, to: &[&str], first: bool, lease_at: Instant) -> Vec<Effect> {
    vec![
        Effect::record(TaskEvent::Assigned {
            attempt,
            agents: agents(to),
        }),
        Effect::Send {
            attempt,
            agents: agents(to),
            first,
        },
        Effect::Wake {
            at: lease_at,
            wake: Wake::Lease { attempt },
        },
    ]
}

/// The dead letter among `effects`, if any.
fn dead_letter(effects: &[Effect]) -> Option<&GiveUp> {
    effects.iter().find_map(|e| match e {
        Effect::DeadLetter(give_up) => Some(give_up.as_ref()),
        _ => None,
    })
}

fn ms(run: &Run, ms: u64) -> Instant {
    run.t0 + Duration::from_millis(ms)
}

#[test]
fn a_queued_task_routed_to_an_agent_is_sent_with_its_lease_timer() {
    let mut run = Run::new(3);
    assert_eq!(run.step(0, Input::Queue), [Effect::Queue]);
    assert_eq!(run.task.queued_since(), Some(run.t0));
    let effects = run.step(
        5,
        Input::Routed {
            agents: agents(&["a"]),
        },
    );
    assert_eq!(effects, sent(1, &["a"], true, ms(&run, 1_005)));
    assert_eq!(run.task.awaiting(1, 0), Some("a"));
    assert_eq!(run.task.working_agents(), ["a"]);
    assert_eq!(run.task.queued_since(), None);
}

#[test]
fn a_resumed_task_numbers_its_attempts_after_the_stored_ones() {
    let mut run = Run::stored(3, 2, 2, false);
    let effects = run.start(0, &["a"]);
    assert_eq!(effects, sent(3, &["a"], false, ms(&run, 1_000)));
}

#[test]
fn routed_to_nobody_goes_back_in_line() {
    // A half-open breaker's single probe went to another task meanwhile.
    let mut run = Run::new(3);
    run.step(0, Input::Queue);
    assert_eq!(
        run.step(7, Input::Routed { agents: vec![] }),
        [Effect::Queue]
    );
    assert_eq!(run.task.queued_since(), Some(ms(&run, 7)));
}

#[test]
fn routing_is_ignored_unless_the_task_is_queued() {
    let mut run = Run::new(3);
    assert!(
        run.step(
            0,
            Input::Routed {
                agents: agents(&["a"])
            }
        )
        .is_empty(),
        "looking"
    );
    run.start(0, &["a"]);
    assert!(
        run.step(
            1,
            Input::Routed {
                agents: agents(&["b"])
            }
        )
        .is_empty(),
        "running"
    );
    assert_eq!(run.task.working_agents(), ["a"]);
}

#[test]
fn a_task_whose_deadline_passed_before_it_started_is_dead_lettered_unsent() {
    let mut run = Run::new(3);
    run.step(0, Input::Queue);
    run.deadline_passed = true;
    let effects = run.step(
        10,
        Input::Routed {
            agents: agents(&["a"]),
        },
    );
    assert_eq!(
        effects,
        [
            Effect::DeadLetter(Box::new(GiveUp {
                code: reason::DEADLINE_EXCEEDED,
                message: "the task's deadline passed before it could be started".into(),
                last: None,
                history: vec![],
            })),
            Effect::Write,
        ]
    );
    assert!(run.task.is_final());
}

#[test]
fn a_success_releases_the_agent_and_completes_the_task() {
    let mut run = Run::new(3);
    run.start(0, &["a"]);
    let effects = run.reply(250, 1, 0, Ok(json!({"echo": 1})));
    assert_eq!(
        effects,
        [
            Effect::Release {
                agent: "a".into(),
                verdict: Verdict::Succeeded {
                    took: Duration::from_millis(250)
                },
            },
            Effect::AttemptOver,
            Effect::record(TaskEvent::Completed {
                attempt: 1,
                agent_id: "a".into(),
                output: Some(json!({"echo": 1})),
                outputs: vec![],
            }),
            Effect::Write,
        ]
    );
    assert!(run.task.is_final());
    assert!(run.task.working_agents().is_empty());
}

#[test]
fn stale_and_second_replies_change_nothing() {
    let mut run = Run::new(3);
    run.start(0, &["a", "b"]);
    assert!(
        run.reply(10, 2, 0, Ok(json!(1))).is_empty(),
        "another attempt"
    );
    assert!(
        run.reply(10, 1, 5, Ok(json!(1))).is_empty(),
        "no such agent"
    );
    assert_eq!(run.reply(10, 1, 0, Err(failure("x", true))).len(), 2);
    assert!(
        run.reply(20, 1, 0, Ok(json!(1))).is_empty(),
        "second answer"
    );
    assert_eq!(run.task.working_agents(), ["b"]);
}

#[test]
fn a_retryable_failure_is_retried_after_the_backoff_and_avoids_the_agent() {
    let mut run = Run::new(3);
    run.start(0, &["a"]);
    let error = failure("busy", true);
    let effects = run.reply(100, 1, 0, Err(error.clone()));
    assert_eq!(
        effects,
        [
            Effect::Release {
                agent: "a".into(),
                verdict: Verdict::Failed { retryable: true },
            },
            Effect::record(TaskEvent::Failed {
                attempt: 1,
                agent_id: "a".into(),
                error,
            }),
            Effect::AttemptOver,
            Effect::record(TaskEvent::Retried {
                next_attempt: 2,
                delay_ms: 200,
            }),
            Effect::Wake {
                at: ms(&run, 300),
                wake: Wake::Backoff { attempt: 2 },
            },
        ]
    );
    assert!(matches!(run.task.phase(), Phase::Backoff));
    assert_eq!(
        run.task.avoid(),
        ["a"],
        "the retry goes elsewhere if it can"
    );
    // A stale retry timer (another attempt's) does nothing; the right one
    // puts it back in line.
    assert!(
        run.step(300, Input::Woke(Wake::Backoff { attempt: 3 }))
            .is_empty()
    );
    assert_eq!(
        run.step(300, Input::Woke(Wake::Backoff { attempt: 2 })),
        [Effect::Queue]
    );
    let effects = run.step(
        301,
        Input::Routed {
            agents: agents(&["b"]),
        },
    );
    assert_eq!(effects, sent(2, &["b"], false, ms(&run, 1_301)));
    // The old lease timer of attempt 1 finds nothing to do.
    assert!(
        run.step(1_000, Input::Woke(Wake::Lease { attempt: 1 }))
            .is_empty()
    );
}

#[test]
fn the_retry_delay_grows_with_each_failed_attempt() {
    let mut run = Run::new(5);
    let mut now = 0;
    for (attempt, delay) in [(1, 200), (2, 400), (3, 800)] {
        run.start(now, &["a"]);
        let effects = run.reply(now, attempt, 0, Err(failure("busy", true)));
        assert!(effects.contains(&Effect::record(TaskEvent::Retried {
            next_attempt: attempt + 1,
            delay_ms: delay,
        })));
        now += delay;
        run.step(
            now,
            Input::Woke(Wake::Backoff {
                attempt: attempt + 1,
            }),
        );
    }
}

#[test]
fn the_last_attempt_failing_dead_letters_with_every_attempt_in_the_history() {
    let mut run = Run::new(2);
    run.start(0, &["a"]);
    run.reply(10, 1, 0, Err(failure("first", true)));
    run.step(210, Input::Woke(Wake::Backoff { attempt: 2 }));
    run.step(
        210,
        Input::Routed {
            agents: agents(&["b"]),
        },
    );
    let last = failure("second", true);
    let effects = run.reply(220, 2, 0, Err(last.clone()));
    let Some(GiveUp {
        code,
        message,
        last: kept,
        history,
    }) = dead_letter(&effects)
    else {
        panic!("no dead letter in {effects:?}");
    };
    assert_eq!(*code, reason::MAX_ATTEMPTS);
    assert_eq!(message, "all 2 attempts failed; last error: second");
    assert_eq!(kept.as_ref(), Some(&last));
    assert_eq!(history.len(), 2);
    assert_eq!(history[0]["agentId"], "a");
    assert_eq!(history[1]["attempt"], 2);
    assert_eq!(effects.last(), Some(&Effect::Write));
    assert!(run.task.is_final());
}

#[test]
fn a_replayed_task_gets_a_fresh_count_of_attempts() {
    // Dead-lettered after 2 of 2 attempts, replayed: attempts_run is 0.
    let mut run = Run::stored(2, 2, 0, false);
    run.start(0, &["a"]);
    let effects = run.reply(10, 3, 0, Err(failure("busy", true)));
    assert!(
        effects.contains(&Effect::record(TaskEvent::Retried {
            next_attempt: 4,
            delay_ms: 200
        })),
        "{effects:?}"
    );
}

#[test]
fn a_permanent_error_dead_letters_at_once_without_blaming_the_agent() {
    let mut run = Run::new(5);
    run.start(0, &["a"]);
    let effects = run.reply(10, 1, 0, Err(failure("bad input", false)));
    assert_eq!(
        effects[0],
        Effect::Release {
            agent: "a".into(),
            verdict: Verdict::Failed { retryable: false },
        }
    );
    assert_eq!(
        dead_letter(&effects).map(|g| g.code),
        Some(reason::TASK_FAILED)
    );
    assert!(run.task.is_final());
}

#[test]
fn a_deadline_passed_during_the_attempt_dead_letters_instead_of_retrying() {
    let mut run = Run::new(5);
    run.start(0, &["a"]);
    run.deadline_passed = true;
    let effects = run.reply(10, 1, 0, Err(failure("busy", true)));
    assert_eq!(
        dead_letter(&effects).map(|g| g.code),
        Some(reason::DEADLINE_EXCEEDED)
    );
    assert!(!effects.iter().any(|e| matches!(e, Effect::Wake { .. })));
}

#[test]
fn the_lease_timer_before_the_deadline_checks_again_at_it() {
    let mut run = Run::new(3);
    run.start(0, &["a"]);
    // Woken early (timers are coarse): check again at the deadline.
    assert_eq!(
        run.step(999, Input::Woke(Wake::Lease { attempt: 1 })),
        [Effect::Wake {
            at: ms(&run, 1_000),
            wake: Wake::Lease { attempt: 1 }
        }]
    );
}

#[test]
fn lease_expiry_fails_only_the_silent_agent_and_the_attempt_ends() {
    let mut run = Run::new(3);
    run.start(0, &["a", "b"]);
    run.reply(100, 1, 1, Err(failure("b failed", true)));
    let effects = run.step(1_000, Input::Woke(Wake::Lease { attempt: 1 }));
    let expired = crate::lifecycle::lease_expired_error(LEASE, "a");
    assert_eq!(
        effects[..5],
        [
            Effect::LeaseExpired,
            Effect::Stop {
                agent: "a".into(),
                reason: "lease expired".into(),
            },
            Effect::Release {
                agent: "a".into(),
                verdict: Verdict::Failed { retryable: true },
            },
            Effect::record(TaskEvent::Failed {
                attempt: 1,
                agent_id: "a".into(),
                error: expired,
            }),
            Effect::AttemptOver,
        ]
    );
    assert!(matches!(
        &effects[5],
        Effect::Record(event) if matches!(**event, TaskEvent::Retried { next_attempt: 2, .. })
    ));
    let mut avoided = run.task.avoid().to_vec();
    avoided.sort();
    assert_eq!(avoided, ["a", "b"]);
}

#[test]
fn progress_from_a_working_agent_extends_the_lease() {
    let mut run = Run::new(3);
    run.start(0, &["a"]);
    let effects = run.step(
        600,
        Input::Progress {
            attempt: 1,
            agent_id: "a".into(),
            fraction: 1.7,
            message: "half way".into(),
        },
    );
    assert_eq!(
        effects,
        [Effect::record(TaskEvent::Progress {
            attempt: 1,
            agent_id: "a".into(),
            fraction: 1.0,
            message: "half way".into(),
        })]
    );
    // The first lease timer finds the lease moved: it checks again then.
    assert_eq!(
        run.step(1_000, Input::Woke(Wake::Lease { attempt: 1 })),
        [Effect::Wake {
            at: ms(&run, 1_600),
            wake: Wake::Lease { attempt: 1 }
        }]
    );
    assert!(run.step(1_600, Input::Woke(Wake::Lease { attempt: 1 }))[0] == Effect::LeaseExpired);
}

#[test]
fn progress_from_anyone_else_is_ignored() {
    let mut run = Run::new(3);
    let progress = |attempt, agent: &str| Input::Progress {
        attempt,
        agent_id: agent.into(),
        fraction: 0.5,
        message: String::new(),
    };
    assert!(run.step(0, progress(1, "a")).is_empty(), "not running");
    run.start(0, &["a"]);
    assert!(
        run.step(10, progress(1, "mallory")).is_empty(),
        "not its agent"
    );
    assert!(run.step(10, progress(2, "a")).is_empty(), "another attempt");
    assert_eq!(
        run.step(1_000, Input::Woke(Wake::Lease { attempt: 1 }))[0],
        Effect::LeaseExpired,
        "the lease was not extended"
    );
}

#[test]
fn cancelling_a_running_task_stops_and_releases_its_working_agents() {
    let mut run = Run::new(3);
    run.start(0, &["a", "b"]);
    run.reply(10, 1, 0, Ok(json!(1)));
    let effects = run.step(
        20,
        Input::Cancel {
            reason: "not needed".into(),
        },
    );
    assert_eq!(
        effects,
        [
            Effect::Release {
                agent: "b".into(),
                verdict: Verdict::Abandoned,
            },
            Effect::Stop {
                agent: "b".into(),
                reason: "not needed".into(),
            },
            Effect::record(TaskEvent::Cancelled {
                reason: "not needed".into()
            }),
            Effect::Write,
        ]
    );
    assert!(run.task.is_final());
    assert!(run.reply(30, 1, 1, Ok(json!(2))).is_empty(), "a late reply");
    assert!(
        run.step(1_000, Input::Woke(Wake::Lease { attempt: 1 }))
            .is_empty()
    );
}

#[test]
fn cancelling_a_queued_or_backing_off_task_ends_it_at_once() {
    let cancelled = [
        Effect::record(TaskEvent::Cancelled {
            reason: "stop".into(),
        }),
        Effect::Write,
    ];
    let cancel = || Input::Cancel {
        reason: "stop".into(),
    };
    let mut queued = Run::new(3);
    queued.step(0, Input::Queue);
    assert_eq!(queued.step(1, cancel()), cancelled);
    assert!(queued.task.is_final());
    assert!(
        queued
            .step(
                2,
                Input::Routed {
                    agents: agents(&["a"])
                }
            )
            .is_empty()
    );

    let mut backing_off = Run::new(3);
    backing_off.start(0, &["a"]);
    backing_off.reply(1, 1, 0, Err(failure("busy", true)));
    assert_eq!(backing_off.step(2, cancel()), cancelled);
    assert!(
        backing_off
            .step(500, Input::Woke(Wake::Backoff { attempt: 2 }))
            .is_empty(),
        "the retry never comes"
    );
}

#[test]
fn cancelling_a_task_that_is_finishing_or_being_looked_up_waits_for_its_outcome() {
    let cancel = || Input::Cancel {
        reason: "stop".into(),
    };
    let mut looking = Run::new(3);
    assert!(looking.step(0, cancel()).is_empty());
    assert!(
        matches!(looking.task.phase(), Phase::Looking),
        "the lookup decides first"
    );
    let mut done = Run::new(3);
    done.start(0, &["a"]);
    done.reply(1, 1, 0, Ok(json!(1)));
    assert!(done.step(2, cancel()).is_empty());
}

#[test]
fn nobody_to_take_a_queued_task_dead_letters_it() {
    let mut run = Run::new(3);
    let why = || Input::NoAgent {
        reason: "no agent has capability echo".into(),
    };
    assert!(run.step(0, why()).is_empty(), "not queued");
    run.step(0, Input::Queue);
    let effects = run.step(30_000, why());
    assert_eq!(
        effects,
        [
            Effect::DeadLetter(Box::new(GiveUp {
                code: reason::NO_ELIGIBLE_AGENT,
                message: "no agent has capability echo".into(),
                last: None,
                history: vec![],
            })),
            Effect::Write,
        ]
    );
}

#[test]
fn a_fan_out_keeps_every_output_and_succeeds_if_anyone_did() {
    let mut run = Run::stored(3, 0, 0, true);
    run.start(0, &["a", "b"]);
    run.reply(10, 1, 0, Err(failure("a failed", true)));
    let effects = run.reply(20, 1, 1, Ok(json!("b")));
    let completed = effects.iter().find_map(|e| match e {
        Effect::Record(event) => match event.as_ref() {
            TaskEvent::Completed {
                agent_id, outputs, ..
            } => Some((agent_id, outputs)),
            _ => None,
        },
        _ => None,
    });
    let Some((agent_id, outputs)) = completed else {
        panic!("not completed: {effects:?}");
    };
    assert_eq!(agent_id, "b");
    assert_eq!(outputs.len(), 2);
    assert!(outputs[0].error.is_some() && outputs[1].output.is_some());
}

#[test]
fn a_landed_write_writes_again_publishes_or_waits() {
    let written = |owned, more_pending| Input::Written {
        owned,
        more_pending,
    };
    let mut run = Run::new(3);
    run.start(0, &["a"]);
    assert!(
        run.step(1, written(true, false)).is_empty(),
        "nothing more to do"
    );
    assert_eq!(run.step(1, written(true, true)), [Effect::WriteLater]);
    run.reply(2, 1, 0, Ok(json!(1)));
    assert_eq!(
        run.step(3, written(true, true)),
        [Effect::Write],
        "final: at once"
    );
    assert_eq!(run.step(4, written(true, false)), [Effect::Publish]);
}

#[test]
fn a_task_another_replica_owns_is_dropped_and_its_agents_stopped() {
    let mut run = Run::new(3);
    run.start(0, &["a"]);
    let effects = run.step(
        1,
        Input::Written {
            owned: false,
            more_pending: true,
        },
    );
    assert_eq!(
        effects,
        [
            Effect::Release {
                agent: "a".into(),
                verdict: Verdict::Abandoned,
            },
            Effect::Stop {
                agent: "a".into(),
                reason: "task owned by another dispatcher".into(),
            },
            Effect::Disown,
        ]
    );
}

/// The engine applies each `Release` verdict to the agent's breaker and a
/// `Send` takes a half-open breaker's probe; this plays that out with the
/// real breakers: failures open it, the cooldown makes it half-open, one
/// probe goes, a cancelled probe is given back, a successful probe closes it.
#[test]
fn verdicts_open_the_breaker_and_the_half_open_probe_closes_it() {
    let policy = BreakerPolicy::default();
    let threshold = policy.failure_threshold;
    let cooldown = policy.cooldown.as_millis() as u64;
    let mut breakers = Breakers::new(policy);
    let apply = |breakers: &mut Breakers, effects: &[Effect], now_ms: u64| {
        for effect in effects {
            match effect {
                Effect::Send { agents, .. } => {
                    for agent in agents {
                        assert!(breakers.allow(agent, now_ms), "routing offered {agent}");
                    }
                }
                Effect::Release { agent, verdict } => match verdict {
                    Verdict::Succeeded { .. } => {
                        breakers.record_success(agent, now_ms);
                    }
                    Verdict::Failed { .. } => {
                        breakers.record_failure(agent, now_ms);
                    }
                    Verdict::Abandoned => breakers.release_probe(agent),
                },
                _ => {}
            }
        }
    };
    let mut now = 0;
    for _ in 0..threshold {
        let mut run = Run::new(1);
        let effects = run.start(now, &["a"]);
        apply(&mut breakers, &effects, now);
        let effects = run.reply(now, 1, 0, Err(failure("boom", true)));
        apply(&mut breakers, &effects, now);
    }
    assert!(
        breakers.is_open("a", now),
        "opened after {threshold} failures"
    );
    now += cooldown;
    assert!(!breakers.is_open("a", now), "half-open after the cooldown");

    // The probe goes, then its task is cancelled: the probe is given back.
    let mut probe = Run::new(1);
    apply(&mut breakers, &probe.start(now, &["a"]), now);
    assert!(breakers.is_open("a", now), "one probe at a time");
    let cancelled = probe.step(now, Input::Cancel { reason: "x".into() });
    apply(&mut breakers, &cancelled, now);
    assert!(
        !breakers.is_open("a", now),
        "the cancelled probe is given back"
    );

    // The next probe succeeds: closed.
    let mut probe = Run::new(1);
    apply(&mut breakers, &probe.start(now, &["a"]), now);
    apply(
        &mut breakers,
        &probe.reply(now + 5, 1, 0, Ok(json!(1))),
        now + 5,
    );
    assert_eq!(
        breakers.state("a", now + 5),
        crate::breaker::BreakerState::Closed {
            consecutive_failures: 0
        }
    );
}
