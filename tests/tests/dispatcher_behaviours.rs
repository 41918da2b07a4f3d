//! What the dispatcher promises about routing and attempts (docs/PROTOCOL.md,
//! Routing), against real NATS and Postgres with SDK agents the tests steer:
//! circuit breakers, retries on another agent, cancellation reaching the
//! agent, progress extending a lease, fan-out, deadlines, priority order,
//! named targets and unhealthy agents.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use concord_bus::ServiceError;
use concord_dispatcher::BreakerPolicy;
use concord_dispatcher::DispatcherConfig;
use concord_sdk::{Agent, AgentHealth, Capability, Task, TaskContext, TaskFailure, capability};
use concord_tests::stack::{Stack, WAIT, test_config};
use concord_wire::codec::{self, ContentType};
use concord_wire::task_view::{Finality, from_wire_value};
use concord_wire::v1::{CancelTask, ErrorCode, Heartbeat, TaskResult, TaskStatus};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};

/// What a [`Scripted`] agent did, in order.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    /// Its handler started an attempt.
    Started { task: String, attempt: u32 },
    /// The handler noticed a `CancelTask`, with its reason.
    Cancelled { task: String, reason: String },
    /// Its handler returned.
    Stopped { task: String, attempt: u32 },
}

/// The test's side of a [`Scripted`] agent: how it behaves, what it saw.
struct Control {
    fail: AtomicBool,
    health: AtomicI32,
    /// One permit lets one held task (`{"hold": true}`) finish.
    release: Semaphore,
    seen: watch::Sender<Vec<Seen>>,
}

impl Control {
    fn note(&self, seen: Seen) {
        self.seen.send_modify(|all| all.push(seen));
    }

    fn fail(&self, fail: bool) {
        self.fail.store(fail, Ordering::Relaxed);
    }

    fn set_health(&self, health: AgentHealth) {
        self.health.store(health as i32, Ordering::Relaxed);
    }

    /// Tasks it started, in order (a task once per attempt).
    fn started(&self) -> Vec<String> {
        self.seen
            .borrow()
            .iter()
            .filter_map(|seen| match seen {
                Seen::Started { task, .. } => Some(task.clone()),
                _ => None,
            })
            .collect()
    }

    /// Waits until what the agent saw satisfies `done`.
    async fn wait_for(&self, what: &str, mut done: impl FnMut(&[Seen]) -> bool) {
        let mut seen = self.seen.subscribe();
        let waited = tokio::time::timeout(WAIT, async {
            seen.wait_for(|all| done(all)).await.map(|_| ())
        })
        .await;
        assert!(
            matches!(waited, Ok(Ok(()))),
            "{what}: the agent saw only {:?}",
            *self.seen.borrow()
        );
    }
}

/// An SDK agent steered by its [`Control`]: it fails (retryably) while told
/// to, reports the health it is told, and records what it runs. The
/// payload says how to run a task: `{"hold": true}` until the test releases
/// it, `{"holdMs": n}` for n ms, with `"progressMs": p` a progress report
/// every p ms meanwhile, `{"failAttempts": k}` fails attempts 1 to k. Any
/// of it ends early on a `CancelTask`. The output is the payload.
struct Scripted {
    capabilities: Vec<Capability>,
    control: Arc<Control>,
}

impl Scripted {
    async fn work(&self, task: &Task, ctx: &TaskContext) -> Result<Value, TaskFailure> {
        let cancelled = {
            let ctx = ctx.clone();
            let control = self.control.clone();
            let task = task.id.clone();
            async move {
                ctx.cancelled().await;
                let reason = ctx.cancel_reason().unwrap_or_default();
                control.note(Seen::Cancelled {
                    task,
                    reason: reason.clone(),
                });
                TaskFailure::cancelled(reason)
            }
        };
        let payload = &task.payload;
        let hold = Duration::from_millis(payload["holdMs"].as_u64().unwrap_or(0));
        let work = async {
            if payload["hold"] == true {
                self.control.release.acquire().await.expect("open").forget();
            } else if let Some(every) = payload["progressMs"].as_u64() {
                let started = Instant::now();
                while started.elapsed() < hold {
                    tokio::time::sleep(Duration::from_millis(every)).await;
                    let done = started.elapsed().as_secs_f64() / hold.as_secs_f64();
                    ctx.progress(done, "working").await.expect("progress sent");
                }
            } else {
                tokio::time::sleep(hold).await;
            }
        };
        tokio::select! {
            failure = cancelled => return Err(failure),
            () = work => {}
        }
        let fail_attempts = payload["failAttempts"].as_u64().unwrap_or(0);
        if self.control.fail.load(Ordering::Relaxed) || u64::from(task.attempt) <= fail_attempts {
            return Err(TaskFailure::retryable("failed as the test said").with_code("scripted"));
        }
        Ok(task.payload.clone())
    }
}

impl Agent for Scripted {
    fn capabilities(&self) -> Vec<Capability> {
        self.capabilities.clone()
    }

    fn health(&self) -> AgentHealth {
        AgentHealth::try_from(self.control.health.load(Ordering::Relaxed))
            .unwrap_or(AgentHealth::Healthy)
    }

    async fn handle(&self, task: Task, ctx: TaskContext) -> Result<Value, TaskFailure> {
        let (id, attempt) = (task.id.clone(), task.attempt);
        self.control.note(Seen::Started {
            task: id.clone(),
            attempt,
        });
        let outcome = self.work(&task, &ctx).await;
        self.control.note(Seen::Stopped { task: id, attempt });
        outcome
    }
}

/// Starts a [`Scripted`] agent with `capabilities` (name, level) and
/// `capacity` slots; returns once the dispatcher's directory has it.
async fn scripted(
    stack: &mut Stack,
    id: &str,
    capabilities: &[(&str, f64)],
    capacity: u32,
) -> Arc<Control> {
    let control = Arc::new(Control {
        fail: AtomicBool::new(false),
        health: AtomicI32::new(AgentHealth::Healthy as i32),
        release: Semaphore::new(0),
        seen: watch::Sender::new(Vec::new()),
    });
    let agent = Scripted {
        capabilities: capabilities
            .iter()
            .map(|(name, level)| capability(*name, *level))
            .collect(),
        control: control.clone(),
    };
    stack.agent(id, agent, capacity).await;
    control
}

/// `tasks.run`: the task's final result, or why not.
async fn run(stack: &Stack, body: Value) -> Result<TaskResult, ServiceError> {
    stack.run(&body).await
}

/// Publishes a submission into the intake stream.
async fn submit(stack: &Stack, body: Value) {
    jetstream::new(stack.client.client.clone())
        .publish(
            stack.client.subjects.tasks_submit(),
            serde_json::to_vec(&body).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

/// Waits until the stored task is final.
async fn final_state(stack: &Stack, task_id: &str) -> TaskResult {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(Some(view)) = stack.store.get(task_id).await
            && view.status.is_final()
        {
            return view.result();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "task {task_id} never finished"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the dispatcher holds every task of `ids` (its row is
/// written once it has queued the task).
async fn wait_until_held(stack: &Stack, ids: &[&str]) {
    let deadline = tokio::time::Instant::now() + WAIT;
    for id in ids {
        while stack.store.get(id).await.unwrap().is_none() {
            assert!(tokio::time::Instant::now() < deadline, "{id} never held");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The agents of each attempt of the task, from its events.
async fn assignments(stack: &Stack, task_id: &str) -> Vec<Vec<String>> {
    stack
        .store
        .history(task_id)
        .await
        .unwrap()
        .iter()
        .filter(|event| event.event_type == "task.assigned")
        .map(|event| {
            event.data["agentIds"]
                .as_array()
                .expect("agentIds")
                .iter()
                .map(|agent| agent.as_str().unwrap().to_string())
                .collect()
        })
        .collect()
}

/// The data of the task's events of `kind` (`task.failed`, ...).
async fn events_of(stack: &Stack, task_id: &str, kind: &str) -> Vec<Value> {
    stack
        .store
        .history(task_id)
        .await
        .unwrap()
        .into_iter()
        .filter(|event| event.event_type == kind)
        .map(|event| event.data)
        .collect()
}

/// The single agent of the task's attempt `n` (from 1).
async fn attempt_agent(stack: &Stack, task_id: &str, n: usize) -> String {
    let attempts = assignments(stack, task_id).await;
    match attempts.get(n - 1).map(Vec::as_slice) {
        Some([agent]) => agent.clone(),
        other => panic!("{task_id}: attempt {n} went to {other:?}"),
    }
}

fn output(result: &TaskResult) -> Value {
    from_wire_value(result.output.as_ref().expect("an output"))
}

/// An RFC 3339 deadline `ms` milliseconds from now, and that instant.
fn deadline_in(ms: u64) -> (String, Instant) {
    let at = chrono::Utc::now() + chrono::Duration::milliseconds(ms as i64);
    (
        at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        Instant::now() + Duration::from_millis(ms),
    )
}

/// Waits for two heartbeats of `agent` reporting `health`: the dispatcher
/// (subscribed to the same subject since it started) has had the first one
/// for a whole heartbeat interval by then.
async fn wait_for_health(beats: &mut async_nats::Subscriber, agent: &str, health: AgentHealth) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut count = 0;
    while count < 2 {
        let message = tokio::time::timeout_at(deadline, beats.next())
            .await
            .unwrap_or_else(|_| panic!("no {health:?} heartbeats from {agent}"))
            .expect("subscription open");
        let content_type = ContentType::from_header(concord_bus::headers::get(
            message.headers.as_ref(),
            concord_bus::headers::CONTENT_TYPE,
        ))
        .unwrap_or(ContentType::Json);
        let Ok(beat) = codec::decode::<Heartbeat>(content_type, &message.payload) else {
            continue;
        };
        if beat.agent_id == agent {
            count = if beat.health == health as i32 {
                count + 1
            } else {
                0
            };
        }
    }
}

/// Breakers (PROTOCOL.md, Circuit breakers): consecutive failures open an
/// agent's breaker, so work goes to others for the cooldown; then one
/// probe goes: a failed probe opens it again for twice as long, a
/// successful one closes it and the agent gets work again.
#[tokio::test]
async fn a_breaker_opens_after_consecutive_failures_and_a_successful_probe_closes_it() {
    let cooldown = Duration::from_millis(400);
    let mut stack = Stack::start(DispatcherConfig {
        breaker: BreakerPolicy {
            failure_threshold: 2,
            cooldown,
            max_cooldown: cooldown * 2,
        },
        ..test_config()
    })
    .await;
    // CAPABILITY takes the highest level: a-best, whenever its breaker lets it.
    let best = scripted(&mut stack, "a-best", &[("cb", 1.0)], 8).await;
    scripted(&mut stack, "b-spare", &[("cb", 0.5)], 8).await;
    best.fail(true);
    let mut n = 0;
    // One attempt per task: where each one went is where routing sent it.
    let mut next = async || {
        n += 1;
        let id = format!("t-cb-{n}");
        let sent = Instant::now();
        let outcome = run(
            &stack,
            json!({"id": id, "capability": "cb", "strategy": "CAPABILITY", "maxAttempts": 1}),
        )
        .await;
        (attempt_agent(&stack, &id, 1).await, outcome, sent)
    };

    // Two failures in a row open a-best's breaker (after the second one
    // was sent: the cooldown counts from then at the earliest).
    let mut opened_after = Instant::now();
    for _ in 0..2 {
        let (agent, outcome, sent) = next().await;
        assert_eq!(agent, "a-best");
        assert_eq!(outcome.unwrap_err().code, ErrorCode::DeadLettered);
        opened_after = sent;
    }
    // Open: the next tasks go to b-spare, until the cooldown has passed
    // and one task is let through to a-best as the probe.
    let mut elsewhere = 0;
    let first_probe = loop {
        let (agent, outcome, sent) = next().await;
        if agent == "a-best" {
            assert_eq!(outcome.unwrap_err().code, ErrorCode::DeadLettered);
            break sent;
        }
        assert_eq!(agent, "b-spare");
        assert_eq!(outcome.unwrap().status, TaskStatus::Completed as i32);
        elsewhere += 1;
    };
    assert!(elsewhere >= 1, "the open breaker sent work elsewhere");
    // The probe was routed before its answer came: at least a cooldown
    // after the breaker opened.
    let probed_within = Instant::now() - opened_after;
    assert!(
        probed_within >= cooldown,
        "a probe within {probed_within:?} of the breaker opening, before its {cooldown:?} cooldown"
    );
    // The failed probe opens it again, for twice the cooldown; this time the
    // probe succeeds.
    best.fail(false);
    let second_probe_done = loop {
        let (agent, outcome, _) = next().await;
        if agent == "a-best" {
            assert_eq!(outcome.unwrap().status, TaskStatus::Completed as i32);
            break Instant::now();
        }
        assert_eq!(agent, "b-spare");
    };
    assert!(
        second_probe_done - first_probe >= cooldown * 2,
        "the second probe came {:?} after the first, before the doubled cooldown",
        second_probe_done - first_probe
    );
    // Closed: a-best gets every task again.
    for _ in 0..3 {
        let (agent, outcome, _) = next().await;
        assert_eq!(agent, "a-best", "the successful probe closed the breaker");
        assert_eq!(outcome.unwrap().status, TaskStatus::Completed as i32);
    }
    stack.stop().await;
}

/// Leases and retries: a retry avoids the agents that failed the task
/// while another is eligible, even when the strategy would pick the same
/// agent again (here CAPABILITY, with the failing agent the most capable,
/// and a breaker that never opens). With no other agent, the retry goes to
/// the same one.
#[tokio::test]
async fn a_retry_goes_to_another_agent_though_the_strategy_prefers_the_failed_one() {
    let mut stack = Stack::start(DispatcherConfig {
        breaker: BreakerPolicy {
            failure_threshold: 1_000,
            ..BreakerPolicy::default()
        },
        ..test_config()
    })
    .await;
    let best = scripted(&mut stack, "a-best", &[("retry", 1.0)], 8).await;
    let second = scripted(&mut stack, "b-second", &[("retry", 0.5)], 8).await;
    let solo = scripted(&mut stack, "solo", &[("alone", 1.0)], 8).await;
    best.fail(true);
    for i in 0..3 {
        let id = format!("t-avoid-{i}");
        let result = run(
            &stack,
            json!({"id": id, "capability": "retry", "strategy": "CAPABILITY", "maxAttempts": 3, "payload": i}),
        )
        .await
        .unwrap();
        assert_eq!(result.status, TaskStatus::Completed as i32);
        assert_eq!(result.agent_id, "b-second");
        assert_eq!(output(&result), json!(i));
        assert_eq!(
            assignments(&stack, &id).await,
            [["a-best"], ["b-second"]],
            "{id}"
        );
    }
    assert_eq!(best.started().len(), 3, "a-best got each first attempt");
    assert_eq!(second.started().len(), 3);

    // Only one agent: the retry goes back to it.
    let result = run(
        &stack,
        json!({"id": "t-alone", "capability": "alone", "maxAttempts": 3, "payload": {"failAttempts": 1}}),
    )
    .await
    .unwrap();
    assert_eq!(result.status, TaskStatus::Completed as i32);
    assert_eq!(result.attempts, 2);
    assert_eq!(assignments(&stack, "t-alone").await, [["solo"], ["solo"]]);
    assert_eq!(solo.started(), ["t-alone", "t-alone"]);
    stack.stop().await;
}

/// Cancellation: cancelling a running task sends the agent a `CancelTask`
/// with the reason; the handler notices and stops, its late `cancelled`
/// answer is ignored, and the agent's slot is free for the next task.
#[tokio::test]
async fn cancelling_a_running_task_stops_its_handler_on_the_agent() {
    let mut stack = Stack::start(test_config()).await;
    let worker = scripted(&mut stack, "worker", &[("long", 1.0)], 1).await;
    let stale_before = stack.dispatcher_counter("dispatcher_stale_replies");
    submit(
        &stack,
        json!({"id": "t-stop", "capability": "long", "payload": {"hold": true}}),
    )
    .await;
    worker
        .wait_for("the handler starts", |seen| {
            seen.contains(&Seen::Started {
                task: "t-stop".into(),
                attempt: 1,
            })
        })
        .await;
    let result: TaskResult = stack
        .client
        .request(
            stack.client.subjects.join("tasks.cancel"),
            &CancelTask {
                task_id: "t-stop".into(),
                reason: "operator says stop".into(),
            },
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(result.status, TaskStatus::Cancelled as i32);
    worker
        .wait_for("the handler is cancelled and returns", |seen| {
            seen.ends_with(&[
                Seen::Cancelled {
                    task: "t-stop".into(),
                    reason: "operator says stop".into(),
                },
                Seen::Stopped {
                    task: "t-stop".into(),
                    attempt: 1,
                },
            ])
        })
        .await;
    // The handler's `cancelled` answer comes after the attempt is over.
    let deadline = tokio::time::Instant::now() + WAIT;
    while stack.dispatcher_counter("dispatcher_stale_replies") == stale_before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent's late answer never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let final_result = final_state(&stack, "t-stop").await;
    assert_eq!(final_result.status, TaskStatus::Cancelled as i32);
    assert!(
        events_of(&stack, "t-stop", "task.failed").await.is_empty(),
        "the late answer is not recorded as a failure"
    );
    // Capacity 1: the next task runs only if the cancel freed the slot
    // (the dispatcher's count and the agent's own).
    let next = run(
        &stack,
        json!({"id": "t-after", "capability": "long", "payload": "next"}),
    )
    .await
    .unwrap();
    assert_eq!(next.agent_id, "worker");
    assert_eq!(output(&next), json!("next"));
    stack.stop().await;
}

/// Leases: progress reports renew an attempt's lease, so a task that
/// reports progress runs well past it; one that does not loses its attempt
/// when the lease runs out, and its agent is told to stop
/// (`lease expired`).
#[tokio::test]
async fn progress_reports_keep_an_attempt_alive_past_its_lease() {
    let mut stack = Stack::start(test_config()).await;
    let agent = scripted(&mut stack, "steady", &[("slow", 1.0)], 4).await;
    // 1.5 s of work under a 500 ms lease: with a report every 100 ms, and
    // without any.
    submit(
        &stack,
        json!({"id": "t-reporting", "capability": "slow", "timeoutMs": 500, "maxAttempts": 1,
               "payload": {"holdMs": 1500, "progressMs": 100}}),
    )
    .await;
    submit(
        &stack,
        json!({"id": "t-silent", "capability": "slow", "timeoutMs": 500, "maxAttempts": 1,
               "payload": {"holdMs": 1500}}),
    )
    .await;

    let silent = final_state(&stack, "t-silent").await;
    assert_eq!(silent.status, TaskStatus::DeadLettered as i32, "{silent:?}");
    let failed = events_of(&stack, "t-silent", "task.failed").await;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["error"]["code"], "lease_expired", "{failed:?}");
    agent
        .wait_for(
            "the silent task's handler is told its lease expired",
            |seen| {
                seen.contains(&Seen::Cancelled {
                    task: "t-silent".into(),
                    reason: "lease expired".into(),
                })
            },
        )
        .await;

    let reporting = final_state(&stack, "t-reporting").await;
    assert_eq!(
        reporting.status,
        TaskStatus::Completed as i32,
        "{reporting:?}"
    );
    assert_eq!(reporting.attempts, 1);
    assert!(
        events_of(&stack, "t-reporting", "task.failed")
            .await
            .is_empty()
    );
    let progress = events_of(&stack, "t-reporting", "task.progress").await;
    assert!(progress.len() >= 5, "{} progress events", progress.len());
    assert!(
        !agent.seen.borrow().iter().any(|seen| matches!(
            seen,
            Seen::Cancelled { task, .. } if task == "t-reporting"
        )),
        "the reporting task was never cancelled"
    );
    stack.stop().await;
}

/// Fan-out: BROADCAST sends one attempt to every eligible agent with the
/// capability (completed if one succeeds, one output per agent); MULTICAST
/// to the `fanout` best, or with `targets` and fanout 0 to all of them.
#[tokio::test]
async fn broadcast_reaches_every_capable_agent_and_multicast_its_fanout() {
    let mut stack = Stack::start(test_config()).await;
    let a = scripted(&mut stack, "fan-a", &[("fan", 1.0)], 4).await;
    let b = scripted(&mut stack, "fan-b", &[("fan", 0.8)], 4).await;
    let c = scripted(&mut stack, "fan-c", &[("fan", 0.5)], 4).await;
    let other = scripted(&mut stack, "not-fan", &[("unrelated", 1.0)], 4).await;
    c.fail(true);
    let outputs = |result: &TaskResult| -> Vec<(String, bool)> {
        result
            .outputs
            .iter()
            .map(|o| (o.agent_id.clone(), o.error.is_none()))
            .collect()
    };

    let result = run(
        &stack,
        json!({"id": "t-broadcast", "capability": "fan", "strategy": "BROADCAST", "maxAttempts": 1, "payload": "all"}),
    )
    .await
    .unwrap();
    assert_eq!(result.status, TaskStatus::Completed as i32);
    assert_eq!(
        outputs(&result),
        [
            ("fan-a".to_string(), true),
            ("fan-b".to_string(), true),
            ("fan-c".to_string(), false)
        ]
    );
    assert_eq!(result.agent_id, "fan-a", "the first agent that succeeded");
    assert!(result.output.is_none(), "fan-out results have outputs only");
    assert_eq!(
        assignments(&stack, "t-broadcast").await,
        [["fan-a", "fan-b", "fan-c"]],
        "one attempt to all of them"
    );
    for control in [&a, &b, &c] {
        assert_eq!(control.started(), ["t-broadcast"]);
    }
    assert!(other.started().is_empty());

    let result = run(
        &stack,
        json!({"id": "t-multicast", "capability": "fan", "strategy": "MULTICAST", "fanout": 2, "payload": "two"}),
    )
    .await
    .unwrap();
    assert_eq!(
        outputs(&result),
        [("fan-a".to_string(), true), ("fan-b".to_string(), true)],
        "the two best"
    );
    assert!(!c.started().contains(&"t-multicast".to_string()));

    let result = run(
        &stack,
        json!({"id": "t-targets", "capability": "fan", "strategy": "MULTICAST", "targets": ["fan-c", "fan-b"], "maxAttempts": 1}),
    )
    .await
    .unwrap();
    assert_eq!(result.status, TaskStatus::Completed as i32);
    assert_eq!(
        outputs(&result),
        [("fan-b".to_string(), true), ("fan-c".to_string(), false)],
        "every target"
    );
    assert!(!a.started().contains(&"t-targets".to_string()));
    stack.stop().await;
}

/// Deadlines: after its deadline no attempt of a task starts (a task that
/// waited for a busy agent past it, a task whose retries reach it: both
/// dead-lettered `deadline_exceeded`), but an attempt already running is not
/// interrupted and its result counts.
#[tokio::test]
async fn a_deadline_stops_new_attempts_but_not_a_running_one() {
    // flaky-1 fails every attempt: its breaker must not open, or the
    // retries would wait for an agent instead of meeting the deadline.
    let mut stack = Stack::start(DispatcherConfig {
        breaker: BreakerPolicy {
            failure_threshold: 1_000,
            ..BreakerPolicy::default()
        },
        ..test_config()
    })
    .await;
    let busy = scripted(&mut stack, "busy-1", &[("dl-wait", 1.0)], 1).await;
    let flaky = scripted(&mut stack, "flaky-1", &[("dl-retry", 1.0)], 4).await;
    let runner = scripted(&mut stack, "runner-1", &[("dl-run", 1.0)], 4).await;
    flaky.fail(true);

    // The only agent is busy until after the deadline.
    submit(
        &stack,
        json!({"id": "t-blocker", "capability": "dl-wait", "payload": {"hold": true}}),
    )
    .await;
    busy.wait_for("the blocker runs", |seen| !seen.is_empty())
        .await;
    let (deadline, at) = deadline_in(400);
    submit(
        &stack,
        json!({"id": "t-late", "capability": "dl-wait", "deadline": deadline}),
    )
    .await;
    wait_until_held(&stack, &["t-late"]).await;
    // Retries until the deadline (its own, taken now: on a loaded machine
    // the setup above can use up most of the first one, leaving room for a
    // single attempt); and an attempt that outlasts its deadline.
    let (retry_deadline, _) = deadline_in(800);
    submit(
        &stack,
        json!({"id": "t-retries", "capability": "dl-retry", "deadline": retry_deadline,
               "maxAttempts": 100, "payload": {"holdMs": 50}}),
    )
    .await;
    let (short, _) = deadline_in(200);
    submit(
        &stack,
        json!({"id": "t-overrun", "capability": "dl-run", "deadline": short,
               "timeoutMs": 5000, "payload": {"holdMs": 800}}),
    )
    .await;
    // The scenario: the busy agent frees up only once the deadline passed.
    tokio::time::sleep_until(at.into()).await;
    busy.release.add_permits(1);

    let late = final_state(&stack, "t-late").await;
    assert_eq!(late.status, TaskStatus::DeadLettered as i32, "{late:?}");
    assert_eq!(late.attempts, 0);
    let letter = &events_of(&stack, "t-late", "task.dead_lettered").await[0];
    assert_eq!(letter["reason"], "deadline_exceeded", "{letter}");
    assert_eq!(
        busy.started(),
        ["t-blocker"],
        "t-late never reached the agent"
    );
    assert_eq!(
        final_state(&stack, "t-blocker").await.status,
        TaskStatus::Completed as i32
    );

    let retries = final_state(&stack, "t-retries").await;
    assert_eq!(retries.status, TaskStatus::DeadLettered as i32);
    let letter = &events_of(&stack, "t-retries", "task.dead_lettered").await[0];
    assert_eq!(letter["reason"], "deadline_exceeded", "{letter}");
    assert!(
        (2..100).contains(&retries.attempts),
        "{} attempts",
        retries.attempts
    );

    let overrun = final_state(&stack, "t-overrun").await;
    assert_eq!(overrun.status, TaskStatus::Completed as i32, "{overrun:?}");
    assert_eq!(overrun.attempts, 1);
    assert_eq!(runner.started(), ["t-overrun"]);
    stack.stop().await;
}

/// Priority: a backlog is served strictly by priority, then in arrival
/// order, and waiting work of one capability does not hold up another's.
#[tokio::test]
async fn a_backlog_is_served_by_priority_then_arrival() {
    let mut stack = Stack::start(test_config()).await;
    let single = scripted(&mut stack, "single", &[("prio", 1.0)], 1).await;
    scripted(&mut stack, "elsewhere", &[("other", 1.0)], 1).await;
    submit(
        &stack,
        json!({"id": "p-blocker", "capability": "prio", "payload": {"hold": true}}),
    )
    .await;
    single
        .wait_for("the blocker runs", |seen| !seen.is_empty())
        .await;
    let backlog = [
        ("p-low-1", json!("LOW")),
        ("p-normal", json!("NORMAL")),
        ("p-critical-1", json!("CRITICAL")),
        ("p-low-2", json!(2)),
        ("p-high", json!("HIGH")),
        ("p-critical-2", json!(10)),
        ("p-zero", json!(0)),
    ];
    for (id, priority) in &backlog {
        submit(
            &stack,
            json!({"id": id, "capability": "prio", "priority": priority}),
        )
        .await;
    }
    let ids: Vec<&str> = backlog.iter().map(|(id, _)| *id).collect();
    wait_until_held(&stack, &ids).await;
    // Another capability's queue is not behind this one.
    let other = run(&stack, json!({"capability": "other", "payload": 1}))
        .await
        .unwrap();
    assert_eq!(other.agent_id, "elsewhere");

    single.release.add_permits(1);
    for id in &ids {
        assert_eq!(
            final_state(&stack, id).await.status,
            TaskStatus::Completed as i32
        );
    }
    assert_eq!(
        single.started(),
        [
            "p-blocker",
            "p-critical-1",
            "p-critical-2",
            "p-high",
            "p-normal",
            "p-low-1",
            "p-low-2",
            "p-zero"
        ]
    );
    stack.stop().await;
}

/// Targets: DIRECT goes to the named agent only, though the default
/// strategy prefers another; `targets` restrict any strategy to the named
/// agents; an unknown target or one lacking the capability ends in
/// `no_eligible_agent` saying so, while a busy target is waited for as
/// long as it takes.
#[tokio::test]
async fn direct_and_targeted_tasks_go_only_to_the_named_agents() {
    let config = test_config();
    let no_agent_wait = config.no_agent_wait;
    let mut stack = Stack::start(config).await;
    let best = scripted(&mut stack, "d-best", &[("tgt", 1.0)], 4).await;
    let named = scripted(&mut stack, "d-named", &[("tgt", 0.6)], 1).await;
    scripted(&mut stack, "d-third", &[("tgt", 0.3)], 4).await;
    scripted(&mut stack, "d-lacks", &[("else", 1.0)], 4).await;

    let result = run(
        &stack,
        json!({"id": "t-direct", "capability": "tgt", "strategy": "DIRECT", "targets": ["d-named"]}),
    )
    .await
    .unwrap();
    assert_eq!(result.agent_id, "d-named");
    let result = run(
        &stack,
        json!({"id": "t-among", "capability": "tgt", "strategy": "CAPABILITY", "targets": ["d-third", "d-named"]}),
    )
    .await
    .unwrap();
    assert_eq!(result.agent_id, "d-named", "the most capable target");

    let (unknown, lacking) = tokio::join!(
        run(
            &stack,
            json!({"capability": "tgt", "strategy": "DIRECT", "targets": ["nobody"]})
        ),
        run(
            &stack,
            json!({"capability": "tgt", "strategy": "DIRECT", "targets": ["d-lacks"]})
        ),
    );
    let unknown = unknown.unwrap_err();
    assert_eq!(unknown.code, ErrorCode::NoEligibleAgent);
    assert!(
        unknown
            .message
            .contains(r#"target agent "nobody" is unknown"#),
        "{}",
        unknown.message
    );
    let lacking = lacking.unwrap_err();
    assert_eq!(lacking.code, ErrorCode::NoEligibleAgent);
    assert!(
        lacking
            .message
            .contains(r#"target agent "d-lacks" lacks capability "tgt""#),
        "{}",
        lacking.message
    );

    // A busy target: the task waits past `no_agent_wait`, then runs there.
    submit(
        &stack,
        json!({"id": "t-hold", "capability": "tgt", "strategy": "DIRECT", "targets": ["d-named"], "payload": {"hold": true}}),
    )
    .await;
    named
        .wait_for("the target is busy", |seen| {
            seen.iter()
                .any(|s| matches!(s, Seen::Started { task, .. } if task == "t-hold"))
        })
        .await;
    submit(
        &stack,
        json!({"id": "t-waits", "capability": "tgt", "strategy": "DIRECT", "targets": ["d-named"]}),
    )
    .await;
    wait_until_held(&stack, &["t-waits"]).await;
    // The scenario: the target stays busy longer than a missing one is waited for.
    tokio::time::sleep(no_agent_wait * 2).await;
    assert!(
        !stack
            .store
            .get("t-waits")
            .await
            .unwrap()
            .unwrap()
            .status
            .is_final(),
        "a task for a busy target waits"
    );
    named.release.add_permits(1);
    let waited = final_state(&stack, "t-waits").await;
    assert_eq!(waited.status, TaskStatus::Completed as i32, "{waited:?}");
    assert_eq!(waited.agent_id, "d-named");
    assert!(best.started().is_empty(), "d-best got no targeted task");
    stack.stop().await;
}

/// Health: an UNHEALTHY agent gets no work, however capable (a task only it
/// could do ends in `no_eligible_agent` saying so); a DEGRADED one gets
/// work only when no healthy agent can take it; HEALTHY again, it is
/// routed to as before.
#[tokio::test]
async fn unhealthy_agents_get_no_work_and_degraded_ones_only_as_a_last_resort() {
    let mut stack = Stack::start(test_config()).await;
    let mut beats = stack
        .client
        .client
        .subscribe(stack.client.subjects.endpoint("registry", "heartbeat"))
        .await
        .unwrap();
    stack.client.client.flush().await.unwrap();
    // CAPABILITY would pick h-sick (the higher level) when healthy.
    let sick = scripted(
        &mut stack,
        "h-sick",
        &[("care", 1.0), ("sick-only", 1.0)],
        4,
    )
    .await;
    let well = scripted(&mut stack, "h-well", &[("care", 0.5)], 4).await;
    let care = |n: u32| json!({"capability": "care", "strategy": "CAPABILITY", "payload": n});

    sick.set_health(AgentHealth::Unhealthy);
    wait_for_health(&mut beats, "h-sick", AgentHealth::Unhealthy).await;
    for n in 0..4 {
        assert_eq!(run(&stack, care(n)).await.unwrap().agent_id, "h-well");
    }
    let error = run(&stack, json!({"capability": "sick-only"}))
        .await
        .unwrap_err();
    assert_eq!(error.code, ErrorCode::NoEligibleAgent);
    assert!(
        error
            .message
            .contains("is alive and healthy (1 capable: 1 unhealthy)"),
        "{}",
        error.message
    );
    assert!(
        sick.started().is_empty(),
        "h-sick ran nothing while unhealthy"
    );

    sick.set_health(AgentHealth::Degraded);
    wait_for_health(&mut beats, "h-sick", AgentHealth::Degraded).await;
    assert_eq!(run(&stack, care(4)).await.unwrap().agent_id, "h-well");
    let last_resort = run(&stack, json!({"capability": "sick-only"}))
        .await
        .unwrap();
    assert_eq!(last_resort.agent_id, "h-sick");

    sick.set_health(AgentHealth::Healthy);
    wait_for_health(&mut beats, "h-sick", AgentHealth::Healthy).await;
    assert_eq!(run(&stack, care(5)).await.unwrap().agent_id, "h-sick");
    assert_eq!(well.started().len(), 5);
    stack.stop().await;
}
