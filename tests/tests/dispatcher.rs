//! The dispatcher against real NATS and Postgres, with the registry and SDK
//! agents running in-process: submission through JetStream, `tasks.run`,
//! invalid input, duplicates, retries, lease expiry, dead letters,
//! cancellation, and the projection rebuilt from the events.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use concord_chaos_agent::{ChaosAgent, ChaosConfig, Latency};
use concord_dispatcher::DispatcherConfig;
use concord_dispatcher::RoutingWeights;
use concord_echo_agent::EchoAgent;
use concord_store::DeadLetterFilter;
use concord_tests::stack::{Stack, WAIT, test_config};
use concord_wire::codec::{self, ContentType};
use concord_wire::task_view::{from_wire_value, wire_json};
use concord_wire::v1::{CancelTask, ErrorCode, GetTask, TaskResult, TaskStatus};
use futures::StreamExt;
use serde_json::{Value, json};

/// What the tests do with the stack, as a client would.
trait Client {
    async fn submit(&self, body: &Value, msg_id: Option<&str>);
    async fn results(&self, task_id: &str) -> async_nats::Subscriber;
    async fn get(&self, task_id: &str) -> TaskResult;
    async fn final_state(&self, task_id: &str) -> TaskResult;
}

impl Client for Stack {
    /// Publishes a submission into the intake stream (like `nats pub`).
    async fn submit(&self, body: &Value, msg_id: Option<&str>) {
        let mut headers = HeaderMap::new();
        if let Some(id) = msg_id {
            headers.insert("Nats-Msg-Id", id);
        }
        jetstream::new(self.client.client.clone())
            .publish_with_headers(
                self.client.subjects.tasks_submit(),
                headers,
                serde_json::to_vec(body).unwrap().into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    async fn results(&self, task_id: &str) -> async_nats::Subscriber {
        let subscriber = self
            .client
            .client
            .subscribe(self.client.subjects.task_result(task_id))
            .await
            .unwrap();
        self.client.client.flush().await.unwrap();
        subscriber
    }

    async fn get(&self, task_id: &str) -> TaskResult {
        self.client
            .request(
                self.client.subjects.join("tasks.get"),
                &GetTask {
                    task_id: task_id.into(),
                    include_history: true,
                },
                WAIT,
            )
            .await
            .unwrap()
    }

    /// Waits until the stored task is final.
    async fn final_state(&self, task_id: &str) -> TaskResult {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(Some(view)) = self.store.get(task_id).await
                && matches!(
                    view.status,
                    TaskStatus::Completed | TaskStatus::DeadLettered | TaskStatus::Cancelled
                )
            {
                return view.result();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "task {task_id} never finished"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

async fn next_result(subscriber: &mut async_nats::Subscriber) -> (TaskResult, Option<String>) {
    let message = tokio::time::timeout(WAIT, subscriber.next())
        .await
        .expect("a result in time")
        .expect("subscription open");
    let replayed =
        concord_bus::headers::get(message.headers.as_ref(), "Concord-Replayed").map(str::to_string);
    (
        codec::decode(ContentType::Json, &message.payload).unwrap(),
        replayed,
    )
}

fn output(result: &TaskResult) -> Value {
    from_wire_value(result.output.as_ref().expect("an output"))
}

#[tokio::test]
async fn a_published_task_is_run_by_an_agent_and_its_result_published() {
    let mut stack = Stack::start(test_config()).await;
    stack.agent("echo-1", EchoAgent, 4).await;
    let mut results = stack.results("t-pub-1").await;
    stack
        .submit(
            &json!({"id": "t-pub-1", "capability": "echo", "payload": {"text": "hi", "n": 1}}),
            None,
        )
        .await;
    let (result, replayed) = next_result(&mut results).await;
    assert_eq!(result.status, TaskStatus::Completed as i32);
    assert_eq!(output(&result), json!({"text": "hi", "n": 1}));
    assert_eq!(result.agent_id, "echo-1");
    assert_eq!(result.attempts, 1);
    assert!(replayed.is_none());

    // Status and history by request/reply.
    let got = stack.get("t-pub-1").await;
    assert_eq!(got.status, TaskStatus::Completed as i32);
    let types: Vec<&str> = got.history.iter().map(|e| e.r#type.as_str()).collect();
    assert_eq!(types, ["task.submitted", "task.assigned", "task.completed"]);
    stack.stop().await;
}

/// The server can lose the intake's pull request while the client believes
/// it open (seen under load: the whole intake then waited for the
/// request's 30 s expiry). Here the proxy in front of the dispatcher drops
/// exactly one pull request, sent when the first request was half used: the
/// server delivers the rest of the first request and then has submissions
/// and no request. The dispatcher notices (nothing delivered for 2 s,
/// submissions pending, no request waiting) and pulls again, so every task
/// completes long before the client library's own 35 s timer would fire.
#[tokio::test]
async fn a_lost_pull_request_does_not_stall_the_intake() {
    let mut stack = Stack::start_behind_proxy(test_config()).await;
    stack.agent("echo-1", EchoAgent, 64).await;
    // One task first: the puller's first request is then open at the server.
    let mut warm = stack.results("t-lost-warm").await;
    stack
        .submit(
            &json!({"id": "t-lost-warm", "capability": "echo", "payload": {}}),
            None,
        )
        .await;
    next_result(&mut warm).await;

    let proxy = stack.proxy.as_ref().expect("started behind the proxy");
    proxy.drop_publications("$JS.API.CONSUMER.MSG.NEXT.", 1);
    let mut results = stack
        .client
        .client
        .subscribe(stack.client.subjects.join("tasks.result.*"))
        .await
        .unwrap();
    stack.client.client.flush().await.unwrap();
    const TASKS: usize = 400;
    for i in 0..TASKS {
        stack
            .submit(
                &json!({"id": format!("t-lost-{i}"), "capability": "echo", "payload": {"i": i}}),
                None,
            )
            .await;
    }
    let mut seen = std::collections::HashSet::new();
    // Well inside the client library's own recovery (request expiry 30 s
    // plus 5 s), well beyond the dispatcher's (2 s without a delivery).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.len() < TASKS {
        let message = tokio::time::timeout_at(deadline, results.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} of {TASKS} results after 20 s: the intake stalled ({} pull requests dropped)",
                    seen.len(),
                    proxy.dropped()
                )
            })
            .expect("subscription open");
        seen.insert(message.subject.to_string());
    }
    assert_eq!(
        proxy.dropped(),
        1,
        "the proxy dropped a pull request (else this test proves nothing)"
    );
    assert!(
        stack.dispatcher_counter("dispatcher_intake_pull_restarts") >= 1,
        "the dispatcher counted its new pull"
    );
    stack.stop().await;
}

#[tokio::test]
async fn tasks_run_replies_with_the_result_or_why_not() {
    let mut stack = Stack::start(test_config()).await;
    stack.agent("echo-run", EchoAgent, 4).await;
    let reply = stack
        .run(&json!({"capability": "echo", "payload": [1, 2, 3]}))
        .await
        .unwrap();
    assert_eq!(reply.status, TaskStatus::Completed as i32);
    assert_eq!(output(&reply), json!([1, 2, 3]));
    assert!(!reply.task_id.is_empty(), "an id is assigned");

    // The same id again (inside the stream's duplicate window): the stored
    // outcome, at once, and the task does not run a second time.
    let body = json!({"id": "t-run-again", "capability": "echo", "payload": "x"});
    let first = stack.run(&body).await.unwrap();
    let again = stack.run(&body).await.unwrap();
    assert_eq!(wire_json(&again), wire_json(&first));
    let assigned = stack
        .store
        .history("t-run-again")
        .await
        .unwrap()
        .iter()
        .filter(|e| e.event_type == "task.assigned")
        .count();
    assert_eq!(assigned, 1);

    // Invalid: an error naming the field, and a dead letter.
    let error = stack
        .run(&json!({"capability": "echo", "strategy": "FASTEST"}))
        .await
        .unwrap_err();
    assert_eq!(error.code, ErrorCode::InvalidArgument);
    assert!(error.message.contains("strategy"), "{}", error.message);

    // No capable agent: dead-lettered, and the reply says so.
    let error = stack
        .run(&json!({"capability": "translate"}))
        .await
        .unwrap_err();
    assert_eq!(error.code, ErrorCode::NoEligibleAgent);
    assert!(
        error.message.contains("no eligible agent"),
        "{}",
        error.message
    );
    stack.stop().await;
}

#[tokio::test]
async fn invalid_submissions_are_dead_lettered_with_their_bytes() {
    let stack = Stack::start(test_config()).await;
    for body in [
        &b"{not json"[..],
        br#"{"capability": 5}"#,
        br#"{"capability":"echo","priority":"URGENT"}"#,
    ] {
        jetstream::new(stack.client.client.clone())
            .publish(stack.client.subjects.tasks_submit(), body.to_vec().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let letters = stack.world.db.pool();
    let store = concord_store::DeadLetterStore::new(letters.clone());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let list = store.list(&DeadLetterFilter::default()).await.unwrap();
        if list.len() == 3 {
            assert!(list.iter().all(|l| l.reason == "invalid_input"));
            let payloads: Vec<&[u8]> = list.iter().map(|l| l.payload.as_slice()).collect();
            assert!(payloads.contains(&&b"{not json"[..]));
            assert!(
                list.iter().any(|l| l.error.contains("priority")),
                "{list:?}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "dead letters: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stack.stop().await;
}

#[tokio::test]
async fn the_same_submission_twice_is_one_task_inside_and_beyond_the_dedupe_window() {
    let mut stack = Stack::start(test_config()).await;
    stack.agent("echo-dup", EchoAgent, 4).await;
    let mut results = stack.results("t-dup").await;
    // Same Nats-Msg-Id: JetStream drops the second inside its window.
    let body = json!({"id": "t-dup", "capability": "echo", "payload": 1});
    stack.submit(&body, Some("t-dup")).await;
    stack.submit(&body, Some("t-dup")).await;
    let (first, replayed) = next_result(&mut results).await;
    assert_eq!(first.status, TaskStatus::Completed as i32);
    assert!(replayed.is_none());
    // Same task id under another message id (as after the window): the
    // dispatcher knows the task and only re-publishes its result.
    stack.submit(&body, Some("another-message-id")).await;
    let (again, replayed) = next_result(&mut results).await;
    assert_eq!(replayed.as_deref(), Some("true"));
    assert_eq!(wire_json(&again), wire_json(&first));
    let history = stack.store.history("t-dup").await.unwrap();
    let completed = history
        .iter()
        .filter(|e| e.event_type == "task.completed")
        .count();
    assert_eq!(completed, 1, "one completion");
    stack.stop().await;
}

/// Two chaos agents for `capability`: one that always fails (retryably), one that always answers.
fn failing_and_fine(capability: &str) -> (ChaosAgent, ChaosAgent) {
    let agent = |failure_rate| {
        ChaosAgent::new(ChaosConfig {
            capability: capability.into(),
            failure_rate,
            ..ChaosConfig::default()
        })
        .unwrap()
    };
    (agent(1.0), agent(0.0))
}

#[tokio::test]
async fn failed_attempts_are_retried_on_another_agent() {
    let mut stack = Stack::start(test_config()).await;
    let (failing, fine) = failing_and_fine("work");
    stack.agent("a-failing", failing, 4).await;
    stack.agent("b-fine", fine, 4).await;
    // DIRECT is not used: whichever agent goes first, a failure moves the
    // task to the other one.
    for i in 0..6 {
        let id = format!("t-retry-{i}");
        stack
            .submit(
                &json!({"id": id, "capability": "work", "payload": i, "strategy": "ROUND_ROBIN"}),
                None,
            )
            .await;
    }
    for i in 0..6 {
        let result = stack.final_state(&format!("t-retry-{i}")).await;
        assert_eq!(result.status, TaskStatus::Completed as i32, "{result:?}");
        assert_eq!(result.agent_id, "b-fine");
        assert_eq!(output(&result), json!(i));
    }
    let failed_then_retried =
        stack.get("t-retry-0").await.history.len() + stack.get("t-retry-1").await.history.len();
    assert!(
        failed_then_retried > 6,
        "at least one task went through a retry"
    );
    stack.stop().await;
}

#[tokio::test]
async fn weighted_routing_learns_which_agent_answers() {
    // Only the performance part of the score counts, so that nothing but
    // what the dispatcher saw tells the two agents apart.
    let mut stack = Stack::start(DispatcherConfig {
        weights: RoutingWeights::new(1.0, 0.0, 0.0, 0.0).unwrap(),
        ..test_config()
    })
    .await;
    let (failing, fine) = failing_and_fine("learn");
    // Equal scores are broken by id: without history, a-failing goes first.
    stack.agent("a-failing", failing, 4).await;
    stack.agent("b-fine", fine, 4).await;
    for i in 0..8 {
        let result = stack
            .run(&json!({"id": format!("t-learn-{i}"), "capability": "learn", "payload": i, "strategy": "WEIGHTED"}))
            .await
            .unwrap();
        assert_eq!(result.agent_id, "b-fine");
    }
    let mut attempts_on_failing = 0;
    for i in 0..8 {
        let history = stack.store.history(&format!("t-learn-{i}")).await.unwrap();
        attempts_on_failing += history
            .iter()
            .filter(|e| e.event_type == "task.assigned")
            .filter(|e| e.data["agentId"] == "a-failing")
            .count();
    }
    // Without performance figures every tie would go to a-failing until
    // its breaker opened (5 failures).
    assert_eq!(
        attempts_on_failing, 1,
        "one failure is enough to prefer the agent that answers"
    );
    stack.stop().await;
}

#[tokio::test]
async fn exhausted_attempts_end_in_the_dead_letter_store_with_their_history() {
    let mut stack = Stack::start(test_config()).await;
    let failing = ChaosAgent::new(ChaosConfig {
        capability: "flaky".into(),
        failure_rate: 1.0,
        ..ChaosConfig::default()
    })
    .unwrap();
    stack.agent("flaky-1", failing, 4).await;
    stack
        .submit(
            &json!({"id": "t-exhaust", "capability": "flaky", "maxAttempts": 3}),
            None,
        )
        .await;
    let result = stack.final_state("t-exhaust").await;
    assert_eq!(result.status, TaskStatus::DeadLettered as i32);
    assert_eq!(result.attempts, 3);
    let store = concord_store::DeadLetterStore::new(stack.world.db.pool().clone());
    let letters = store.list(&DeadLetterFilter::default()).await.unwrap();
    let letter = letters
        .iter()
        .find(|l| l.reason == "max_attempts")
        .expect("a dead letter");
    assert_eq!(letter.attempts, 3);
    assert_eq!(
        letter.history.as_array().unwrap().len(),
        3,
        "{}",
        letter.history
    );
    let submitted: Value = serde_json::from_slice(&letter.payload).unwrap();
    assert_eq!(submitted["id"], "t-exhaust");

    // A permanent error dead-letters at once.
    let permanent = ChaosAgent::new(ChaosConfig {
        capability: "doomed".into(),
        permanent_failure_rate: 1.0,
        ..ChaosConfig::default()
    })
    .unwrap();
    stack.agent("doomed-1", permanent, 4).await;
    stack
        .submit(
            &json!({"id": "t-doomed", "capability": "doomed", "maxAttempts": 5}),
            None,
        )
        .await;
    let result = stack.final_state("t-doomed").await;
    assert_eq!(result.status, TaskStatus::DeadLettered as i32);
    assert_eq!(result.attempts, 1);
    stack.stop().await;
}

#[tokio::test]
async fn an_agent_that_never_answers_loses_the_task_when_its_lease_expires() {
    let mut stack = Stack::start(test_config()).await;
    let slow = ChaosAgent::new(ChaosConfig {
        capability: "slow".into(),
        latency: Latency::Fixed(Duration::from_secs(30)),
        ..ChaosConfig::default()
    })
    .unwrap();
    stack.agent("a-slow", slow, 4).await;
    stack
        .submit(
            &json!({"id": "t-lease", "capability": "slow", "timeoutMs": 300, "maxAttempts": 5, "strategy": "ROUND_ROBIN"}),
            None,
        )
        .await;
    // Once the first lease expired, a fast agent appears and takes the retry.
    let fast = ChaosAgent::new(ChaosConfig {
        capability: "slow".into(),
        ..ChaosConfig::default()
    })
    .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stack.agent("b-fast", fast, 4).await;
    let result = stack.final_state("t-lease").await;
    assert_eq!(result.status, TaskStatus::Completed as i32, "{result:?}");
    assert_eq!(result.agent_id, "b-fast");
    let history = stack.get("t-lease").await.history;
    let failed = history
        .iter()
        .find(|e| e.r#type == "task.failed")
        .expect("the expired attempt is recorded");
    let data = serde_json::to_value(&failed.data).unwrap();
    assert_eq!(data["error"]["code"], "lease_expired", "{data}");
    stack.stop().await;
}

#[tokio::test]
async fn running_and_pending_tasks_can_be_cancelled() {
    let mut stack = Stack::start(test_config()).await;
    let slow = ChaosAgent::new(ChaosConfig {
        capability: "long".into(),
        latency: Latency::Fixed(Duration::from_secs(30)),
        ..ChaosConfig::default()
    })
    .unwrap();
    stack.agent("long-1", slow, 1).await;
    stack
        .submit(&json!({"id": "t-running", "capability": "long"}), None)
        .await;
    stack
        .submit(&json!({"id": "t-pending", "capability": "long"}), None)
        .await;
    // Wait until the first runs (the second waits: capacity 1).
    let deadline = tokio::time::Instant::now() + WAIT;
    while stack
        .store
        .get("t-running")
        .await
        .unwrap()
        .is_none_or(|v| v.attempts == 0)
    {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    for id in ["t-pending", "t-running"] {
        let result: TaskResult = stack
            .client
            .request(
                stack.client.subjects.join("tasks.cancel"),
                &CancelTask {
                    task_id: id.into(),
                    reason: "operator".into(),
                },
                WAIT,
            )
            .await
            .unwrap();
        assert_eq!(result.status, TaskStatus::Cancelled as i32, "{id}");
        assert_eq!(result.error.unwrap().message, "operator");
    }
    assert_eq!(
        stack.final_state("t-running").await.status,
        TaskStatus::Cancelled as i32
    );
    // Unknown ids get NOT_FOUND.
    let error = stack
        .client
        .request::<_, TaskResult>(
            stack.client.subjects.join("tasks.cancel"),
            &CancelTask {
                task_id: "t-nope".into(),
                reason: String::new(),
            },
            WAIT,
        )
        .await
        .unwrap_err();
    assert_eq!(error.code, ErrorCode::NotFound);
    stack.stop().await;
}

/// A submission still waiting in the intake stream (the replica holds all
/// it may) cannot be stopped by its holder, as there is none yet: the
/// cancellation is queued, and the task is recorded as cancelled, never
/// run, when the dispatcher takes it from the stream.
#[tokio::test]
async fn a_submission_still_in_the_intake_stream_can_be_cancelled() {
    let config = DispatcherConfig {
        max_held: 1,
        no_agent_wait: Duration::from_secs(120),
        ..test_config()
    };
    let stack = Stack::start(config).await;
    let cancel = |id: &str| {
        let request = CancelTask {
            task_id: id.into(),
            reason: "operator".into(),
        };
        let client = stack.client.clone();
        async move {
            client
                .request::<_, TaskResult>(client.subjects.join("tasks.cancel"), &request, WAIT)
                .await
        }
    };
    // Nobody offers "absent": held tasks wait for an agent, filling the
    // replica. The puller may take one batch (here one message) beyond
    // `max_held` while the engine counts, so two fillers; the third
    // submission waits in the stream.
    for id in ["t-held-1", "t-held-2"] {
        stack
            .submit(&json!({"id": id, "capability": "absent"}), None)
            .await;
        let deadline = tokio::time::Instant::now() + WAIT;
        while stack.store.get(id).await.unwrap().is_none() {
            assert!(tokio::time::Instant::now() < deadline, "{id} never stored");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    let mut results = stack.results("t-waiting").await;
    stack
        .submit(&json!({"id": "t-waiting", "capability": "absent"}), None)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        stack.store.get("t-waiting").await.unwrap().is_none(),
        "the second submission is not taken while the replica is full"
    );

    let queued = cancel("t-waiting").await.unwrap();
    assert_eq!(queued.status, TaskStatus::Pending as i32, "{queued:?}");
    let error = queued.error.expect("why it is pending");
    assert_eq!(error.code, "cancel_queued");
    assert!(error.message.contains("operator"), "{}", error.message);

    // Freeing the replica lets it take the second submission: cancelled
    // at once, with the queued reason, never assigned.
    for id in ["t-held-1", "t-held-2"] {
        let held = cancel(id).await.unwrap();
        assert_eq!(held.status, TaskStatus::Cancelled as i32, "{id}");
    }
    let (result, replayed) = next_result(&mut results).await;
    assert!(replayed.is_none());
    assert_eq!(result.status, TaskStatus::Cancelled as i32, "{result:?}");
    assert_eq!(result.error.unwrap().message, "operator");
    let history = stack.get("t-waiting").await.history;
    let types: Vec<&str> = history.iter().map(|e| e.r#type.as_str()).collect();
    assert_eq!(types, ["task.submitted", "task.cancelled"]);

    // With nothing left in the stream, an unknown id is NOT_FOUND.
    let deadline = tokio::time::Instant::now() + WAIT;
    let error = loop {
        match cancel("t-never").await {
            Err(error) => break error,
            Ok(reply) => {
                // The last acknowledgement may still be on its way.
                assert!(tokio::time::Instant::now() < deadline, "{reply:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(error.code, ErrorCode::NotFound, "{error:?}");
    stack.stop().await;
}

#[tokio::test]
async fn the_projection_rebuilt_from_the_events_equals_the_live_one() {
    let mut stack = Stack::start(test_config()).await;
    stack.agent("echo-p", EchoAgent, 8).await;
    let flaky = ChaosAgent::new(ChaosConfig {
        capability: "mixed".into(),
        failure_rate: 0.5,
        seed: 7,
        ..ChaosConfig::default()
    })
    .unwrap();
    stack.agent("mixed-1", flaky, 8).await;
    let mut ids = Vec::new();
    for i in 0..40 {
        let capability = match i % 3 {
            0 => "echo",
            1 => "mixed",
            _ => "nobody-has-this",
        };
        let id = format!("t-proj-{i}");
        stack
            .submit(
                &json!({"id": id, "capability": capability, "payload": {"i": i}, "maxAttempts": 2}),
                None,
            )
            .await;
        ids.push(id);
    }
    // No payload: the echo agent answers null.
    stack
        .submit(&json!({"id": "t-proj-null", "capability": "echo"}), None)
        .await;
    ids.push("t-proj-null".to_string());
    for id in &ids {
        stack.final_state(id).await;
    }
    let live = stack.store.all().await.unwrap();
    assert_eq!(live.len(), 41);
    let rebuilt = stack.store.fold_events().await.unwrap();
    assert_eq!(rebuilt, live);
    // Rebuilding the table gives the same rows again.
    assert_eq!(stack.store.rebuild().await.unwrap(), 41);
    assert_eq!(stack.store.all().await.unwrap(), live);
    stack.stop().await;
}

/// Registers `id` with capability `raw` from a bare NATS client and returns
/// its assignment subscription: an agent written from the protocol page.
async fn raw_agent(stack: &Stack, id: &str) -> async_nats::Subscriber {
    use concord_wire::v1::{Capability, RegisterAgent, RegisterAgentReply};
    let subjects = &stack.client.subjects;
    let assignments = stack
        .client
        .client
        .subscribe(subjects.agent_tasks(id))
        .await
        .unwrap();
    let _: RegisterAgentReply = stack
        .client
        .request(
            subjects.endpoint("registry", "register"),
            &RegisterAgent {
                id: id.into(),
                name: "raw".into(),
                capabilities: vec![Capability {
                    name: "raw".into(),
                    level: 1.0,
                }],
                max_concurrency: 1,
                ..Default::default()
            },
            WAIT,
        )
        .await
        .unwrap();
    stack.wait_for_agent(id).await;
    assignments
}

#[tokio::test]
async fn a_plain_nats_agent_gets_the_assignment_with_the_submitters_trace() {
    use concord_wire::v1::{AgentResult, TaskAssignment, agent_result};
    let stack = Stack::start(test_config()).await;
    let subjects = stack.client.subjects.clone();
    // An agent speaking the documented protocol with a bare NATS client.
    let mut assignments = raw_agent(&stack, "raw-1").await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut headers = HeaderMap::new();
    headers.insert("traceparent", traceparent);
    let mut results = stack.results("t-raw").await;
    jetstream::new(stack.client.client.clone())
        .publish_with_headers(
            subjects.tasks_submit(),
            headers,
            br#"{"id":"t-raw","capability":"raw","payload":{"q":1}}"#
                .to_vec()
                .into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let message = tokio::time::timeout(WAIT, assignments.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        concord_bus::headers::get(message.headers.as_ref(), "traceparent"),
        Some(traceparent)
    );
    let assignment: TaskAssignment = codec::decode(ContentType::Json, &message.payload).unwrap();
    assert_eq!(assignment.task_id, "t-raw");
    assert_eq!(assignment.attempt, 1);
    assert_eq!(
        from_wire_value(assignment.payload.as_ref().unwrap()),
        json!({"q": 1})
    );
    let reply = AgentResult {
        task_id: "t-raw".into(),
        attempt: 1,
        agent_id: "raw-1".into(),
        outcome: Some(agent_result::Outcome::Output(
            concord_wire::task_view::to_wire_value(json!("done")),
        )),
    };
    stack
        .client
        .client
        .publish(
            message.reply.unwrap(),
            codec::encode(ContentType::Json, &reply).unwrap().into(),
        )
        .await
        .unwrap();
    let (result, _) = next_result(&mut results).await;
    assert_eq!(result.status, TaskStatus::Completed as i32);
    assert_eq!(output(&result), json!("done"));
    stack.stop().await;
}

#[tokio::test]
async fn a_submission_without_a_trace_gets_one_trace_for_all_its_attempts() {
    use concord_wire::v1::{AgentResult, TaskError, agent_result};
    let stack = Stack::start(test_config()).await;
    let mut assignments = raw_agent(&stack, "raw-2").await;
    let mut results = stack.results("t-untraced").await;
    // Like `nats pub`: no traceparent on the submission.
    stack
        .submit(
            &json!({"id": "t-untraced", "capability": "raw", "maxAttempts": 2}),
            None,
        )
        .await;
    let mut traces = Vec::new();
    for attempt in 1..=2u32 {
        let message = tokio::time::timeout(WAIT, assignments.next())
            .await
            .unwrap()
            .unwrap();
        let traceparent = concord_bus::headers::get(message.headers.as_ref(), "traceparent")
            .expect("every assignment carries a traceparent")
            .to_string();
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(parts.len(), 4, "{traceparent}");
        assert_eq!(
            (parts[0], parts[1].len(), parts[2].len(), parts[3]),
            ("00", 32, 16, "01")
        );
        traces.push((parts[1].to_string(), parts[2].to_string()));
        // The first attempt fails (retryable), the second completes.
        let outcome = if attempt == 1 {
            agent_result::Outcome::Error(TaskError {
                message: "try again".into(),
                retryable: true,
                ..Default::default()
            })
        } else {
            agent_result::Outcome::Output(concord_wire::task_view::to_wire_value(json!("done")))
        };
        let reply = AgentResult {
            task_id: "t-untraced".into(),
            attempt,
            agent_id: "raw-2".into(),
            outcome: Some(outcome),
        };
        stack
            .client
            .client
            .publish(
                message.reply.unwrap(),
                codec::encode(ContentType::Json, &reply).unwrap().into(),
            )
            .await
            .unwrap();
    }
    assert_eq!(traces[0].0, traces[1].0, "one trace for the task");
    assert_ne!(traces[0].1, traces[1].1, "a parent span per attempt");
    let (result, _) = next_result(&mut results).await;
    assert_eq!(result.status, TaskStatus::Completed as i32);
    stack.stop().await;
}

#[tokio::test]
async fn with_many_agents_routing_windows_spread_work_over_all_of_them() {
    use concord_wire::v1::{Capability, RegisterAgent, RegisterAgentReply};
    let stack = Stack::start(test_config()).await;
    let subjects = stack.client.subjects.clone();
    // 100 agents served by one wildcard subscription that answers at once.
    let mut assignments = stack
        .client
        .client
        .subscribe(subjects.join("agent.*.tasks"))
        .await
        .unwrap();
    let responder = stack.client.client.clone();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let seen_by_responder = seen.clone();
    tokio::spawn(async move {
        while let Some(message) = assignments.next().await {
            let agent = message.subject.split('.').rev().nth(1).unwrap().to_string();
            seen_by_responder.lock().unwrap().insert(agent);
            if let Some(reply) = message.reply {
                let _ = responder
                    .publish(reply, br#"{"output":{"ok":true}}"#.to_vec().into())
                    .await;
            }
        }
    });
    for n in 0..100 {
        let _: RegisterAgentReply = stack
            .client
            .request(
                subjects.endpoint("registry", "register"),
                &RegisterAgent {
                    id: format!("many-{n:03}"),
                    name: "many".into(),
                    capabilities: vec![Capability {
                        name: "many".into(),
                        level: 0.5,
                    }],
                    max_concurrency: 4,
                    ..Default::default()
                },
                WAIT,
            )
            .await
            .unwrap();
    }
    stack.wait_for_agent("many-099").await;
    for i in 0..300 {
        stack
            .submit(
                &json!({"id": format!("t-many-{i}"), "capability": "many", "strategy": "ROUND_ROBIN"}),
                None,
            )
            .await;
    }
    for i in 0..300 {
        let result = stack.final_state(&format!("t-many-{i}")).await;
        assert_eq!(result.status, TaskStatus::Completed as i32);
    }
    let seen = seen.lock().unwrap().len();
    assert_eq!(
        seen, 100,
        "round robin reaches every agent through the windows"
    );
    stack.stop().await;
}
