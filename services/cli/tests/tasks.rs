//! `concord submit`, `task get|cancel|watch`, `events replay`
//! and `dlq list|show|replay|purge` (through the dispatcher's
//! `deadletters.*` requests), against a real registry and
//! dispatcher (in-process, real NATS and Postgres) with SDK agents.

use std::process::{Output, Stdio};
use std::time::Duration;

use concord_chaos_agent::{ChaosAgent, ChaosConfig, Latency};
use concord_echo_agent::EchoAgent;
use concord_store::{DeadLetterFilter, DeadLetterStore, NewDeadLetter};
use concord_tests::stack::{Stack, test_config};
use concord_wire::v1::TaskStatus;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

const WAIT: Duration = Duration::from_secs(30);

/// How `concord` is run against the stack, and what the tests read back.
trait Cli {
    fn command(&self, args: &[&str]) -> tokio::process::Command;
    async fn concord(&self, args: &[&str]) -> Output;
    async fn ok(&self, args: &[&str]) -> String;
    async fn get(&self, id: &str) -> Value;
    async fn wait_for(&self, id: &str, status: TaskStatus);
}

impl Cli for Stack {
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_concord"));
        command
            .env("CONCORD_NATS_URL", self.world.nats.url())
            .env("CONCORD_DATABASE_URL", self.world.db.url())
            .env("CONCORD_SUBJECT_ROOT", &self.world.root)
            .args(args)
            .kill_on_drop(true);
        command
    }

    /// Runs `concord <args>` to completion.
    async fn concord(&self, args: &[&str]) -> Output {
        tokio::time::timeout(WAIT * 2, self.command(args).output())
            .await
            .unwrap_or_else(|_| panic!("concord {args:?} did not finish"))
            .expect("run concord")
    }

    /// Runs `concord <args>`, expecting success; returns stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let output = self.concord(args).await;
        assert!(
            output.status.success(),
            "concord {args:?}: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// `concord task get <id> --history` as JSON.
    async fn get(&self, id: &str) -> Value {
        serde_json::from_str(&self.ok(&["task", "get", id, "--history"]).await).unwrap()
    }

    /// Waits until the stored task has `status`.
    async fn wait_for(&self, id: &str, status: TaskStatus) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let view = self.store.get(id).await.unwrap();
            if view.as_ref().is_some_and(|v| v.status == status) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "task {id} never became {status:?}: {view:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

fn history_types(result: &Value) -> Vec<String> {
    result["history"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .map(|e| e["type"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_prints_the_id_and_task_get_and_watch_follow_the_task() {
    let mut stack = Stack::start(test_config()).await;
    stack.agent("echo-1", EchoAgent, 4).await;

    // Watch a task before it exists: its events, then its result, then exit.
    let mut watch = stack
        .command(&["task", "watch", "t-watched"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut watch_stderr = BufReader::new(watch.stderr.take().unwrap()).lines();
    let first = tokio::time::timeout(WAIT, watch_stderr.next_line())
        .await
        .expect("watch subscribed in time")
        .unwrap()
        .unwrap_or_default();
    assert!(first.starts_with("watching"), "{first}");
    let printed = stack
        .ok(&[
            "submit",
            "--capability",
            "echo",
            "--id",
            "t-watched",
            "--payload",
            r#"{"text":"hi"}"#,
        ])
        .await;
    assert_eq!(printed.trim(), "t-watched");
    let watched = tokio::time::timeout(WAIT, watch.wait_with_output())
        .await
        .expect("watch exits after the result")
        .unwrap();
    assert!(watched.status.success());
    let lines = String::from_utf8(watched.stdout).unwrap();
    let subjects: Vec<&str> = lines
        .lines()
        .map(|line| {
            let mut fields = line.splitn(3, "  ");
            let (_time, subject, body) = (
                fields.next().unwrap(),
                fields.next().unwrap(),
                fields.next().unwrap(),
            );
            let body: Value = serde_json::from_str(body).unwrap();
            if subject.contains(".events.") {
                assert_eq!(body["aggregateId"], "t-watched", "{line}");
            }
            subject
        })
        .collect();
    assert!(
        subjects.contains(&format!("{}.events.task.submitted", stack.world.root).as_str()),
        "{lines}"
    );
    assert!(
        subjects.contains(&format!("{}.tasks.result.t-watched", stack.world.root).as_str()),
        "{lines}"
    );

    // No --id: a fresh UUID v7 is printed, and `task get` shows the task.
    let printed = stack
        .ok(&["submit", "--capability", "echo", "--payload", "[1,2]"])
        .await;
    let id = printed.trim().to_string();
    assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 7);
    stack.wait_for(&id, TaskStatus::Completed).await;
    let result = stack.get(&id).await;
    assert_eq!(result["status"], "COMPLETED", "{result}");
    assert_eq!(result["output"], json!([1, 2]));
    assert!(!stack.ok(&["task", "get", &id]).await.contains("1.0"));
    assert_eq!(result["agentId"], "echo-1");
    assert_eq!(
        history_types(&result),
        ["task.submitted", "task.assigned", "task.completed"]
    );
    // Without --history, no history.
    let plain: Value = serde_json::from_str(&stack.ok(&["task", "get", &id]).await).unwrap();
    assert!(plain.get("history").is_none(), "{plain}");

    // Watching a finished task prints its result and exits at once.
    let again = stack.ok(&["task", "watch", &id]).await;
    assert_eq!(again.lines().count(), 1, "{again}");
    assert!(again.contains("\"COMPLETED\""), "{again}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_wait_prints_the_result_or_the_error() {
    let mut stack = Stack::start(test_config()).await;
    stack.agent("echo-w", EchoAgent, 4).await;
    let out = stack
        .ok(&[
            "submit",
            "--wait",
            "--capability",
            "echo",
            "--payload",
            r#"{"n":1}"#,
        ])
        .await;
    let result: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(result["status"], "COMPLETED", "{result}");
    assert_eq!(result["output"], json!({"n": 1}));
    assert!(
        uuid::Uuid::parse_str(result["taskId"].as_str().unwrap()).is_ok(),
        "{result}"
    );

    // A whole Task as JSON, with a priority name.
    let out = stack
        .ok(&[
            "submit",
            "--wait",
            "--json-body",
            r#"{"id":"t-body","capability":"echo","priority":"HIGH","payload":"x","labels":{"a":"b"}}"#,
        ])
        .await;
    let result: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(result["taskId"], "t-body");
    assert_eq!(result["output"], "x");

    // Nobody has the capability: dead-lettered, an error reply, exit 1.
    let failed = stack
        .concord(&["submit", "--wait", "--capability", "translate"])
        .await;
    assert!(!failed.status.success());
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("error: NO_ELIGIBLE_AGENT: "), "{stderr}");
    assert!(failed.stdout.is_empty());

    // Refused before anything is sent.
    let bad = stack
        .concord(&["submit", "--capability", "echo", "--strategy", "fastest"])
        .await;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("ROUND_ROBIN"));
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_get_of_an_unknown_id_fails_with_not_found() {
    let stack = Stack::start(test_config()).await;
    let output = stack.concord(&["task", "get", "t-nope"]).await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("NOT_FOUND") && stderr.contains("t-nope"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(output.stdout.is_empty());
    let cancel = stack.concord(&["task", "cancel", "t-nope"]).await;
    assert!(!cancel.status.success());
    assert!(String::from_utf8_lossy(&cancel.stderr).contains("NOT_FOUND"));
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_cancel_stops_a_long_running_task() {
    let mut stack = Stack::start(test_config()).await;
    let slow = ChaosAgent::new(ChaosConfig {
        capability: "long".into(),
        latency: Latency::Fixed(Duration::from_secs(60)),
        ..ChaosConfig::default()
    })
    .unwrap();
    stack.agent("long-1", slow, 1).await;
    stack
        .ok(&["submit", "--capability", "long", "--id", "t-long"])
        .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while stack
        .store
        .get("t-long")
        .await
        .unwrap()
        .is_none_or(|v| v.attempts == 0)
    {
        assert!(tokio::time::Instant::now() < deadline, "t-long never ran");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let out = stack
        .ok(&["task", "cancel", "t-long", "--reason", "operator"])
        .await;
    let result: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(result["status"], "CANCELLED", "{result}");
    assert_eq!(result["error"]["message"], "operator");
    let history = history_types(&stack.get("t-long").await);
    assert_eq!(history.last().map(String::as_str), Some("task.cancelled"));

    // Cancelling a finished task changes nothing and says so.
    let again = stack.concord(&["task", "cancel", "t-long"]).await;
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already finished"));
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_cancel_of_a_submission_still_in_the_stream_is_queued_and_says_so() {
    let config = concord_dispatcher::DispatcherConfig {
        max_held: 1,
        no_agent_wait: Duration::from_secs(120),
        ..test_config()
    };
    let stack = Stack::start(config).await;
    // Two held tasks fill the replica (nobody offers "absent"); the third
    // waits in the intake stream.
    for id in ["t-fill-1", "t-fill-2"] {
        stack
            .ok(&["submit", "--capability", "absent", "--id", id])
            .await;
        let deadline = tokio::time::Instant::now() + WAIT;
        while stack.store.get(id).await.unwrap().is_none() {
            assert!(tokio::time::Instant::now() < deadline, "{id} never held");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    stack
        .ok(&["submit", "--capability", "absent", "--id", "t-queued"])
        .await;
    let output = stack
        .concord(&["task", "cancel", "t-queued", "--reason", "operator"])
        .await;
    assert!(output.status.success());
    let result: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(result["status"], "PENDING", "{result}");
    assert_eq!(result["error"]["code"], "cancel_queued", "{result}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("still waits in the intake stream"),
        "{stderr}"
    );
    // Once the replica has room, the task ends cancelled without running.
    for id in ["t-fill-1", "t-fill-2"] {
        stack.ok(&["task", "cancel", id]).await;
    }
    stack.wait_for("t-queued", TaskStatus::Cancelled).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_replay_prints_stored_events() {
    let mut stack = Stack::start(test_config()).await;
    stack.agent("echo-p", EchoAgent, 4).await;
    for i in 0..3 {
        let id = format!("t-proj-{i}");
        stack
            .ok(&["submit", "--wait", "--capability", "echo", "--id", &id])
            .await;
    }
    let events = stack
        .ok(&["events", "replay", "--aggregate", "task", "--limit", "2"])
        .await;
    assert_eq!(events.lines().count(), 2, "{events}");
    for line in events.lines() {
        let event: Value = serde_json::from_str(line).unwrap();
        assert_eq!(event["aggregate_type"], "task", "{line}");
    }
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_replay_reopens_a_dead_lettered_task() {
    let mut stack = Stack::start(test_config()).await;
    // No echo agent yet: both tasks are dead-lettered after the no-agent wait.
    stack
        .ok(&[
            "submit",
            "--capability",
            "echo",
            "--id",
            "t-dead",
            "--payload",
            "\"again\"",
        ])
        .await;
    // One whose id comes only from its Nats-Msg-Id (no id in the body).
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "m-dead");
    stack
        .client
        .jetstream()
        .publish_with_headers(
            stack.client.subjects.tasks_submit(),
            headers,
            br#"{"capability":"echo","payload":2}"#.to_vec().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    stack.wait_for("t-dead", TaskStatus::DeadLettered).await;
    stack.wait_for("m-dead", TaskStatus::DeadLettered).await;
    let letters = DeadLetterStore::new(stack.world.db.pool().clone())
        .list(&DeadLetterFilter::default())
        .await
        .unwrap();
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert!(letters.iter().all(|l| l.reason == "no_eligible_agent"));

    stack.agent("echo-late", EchoAgent, 4).await;
    for letter in &letters {
        let out = stack.ok(&["dlq", "replay", &letter.id.to_string()]).await;
        assert!(
            out.contains("replayed") && out.contains("sequence"),
            "{out}"
        );
    }
    for (id, output) in [("t-dead", json!("again")), ("m-dead", json!(2))] {
        stack.wait_for(id, TaskStatus::Completed).await;
        let result = stack.get(id).await;
        assert_eq!(result["output"], output, "{result}");
        let types = history_types(&result);
        assert_eq!(
            types,
            [
                "task.submitted",
                "task.dead_lettered",
                "task.resubmitted",
                "task.assigned",
                "task.completed"
            ],
            "{id}"
        );
        let resubmitted = &result["history"][2]["data"]["deadLetterId"];
        assert!(
            letters
                .iter()
                .any(|l| resubmitted.as_str() == Some(l.id.to_string().as_str())),
            "{result}"
        );
    }
    let replayed = DeadLetterStore::new(stack.world.db.pool().clone())
        .list(&DeadLetterFilter::default())
        .await
        .unwrap();
    assert!(replayed.iter().all(|l| l.replay_count == 1), "{replayed:?}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_lists_shows_replays_and_purges_through_the_dispatcher() {
    let stack = Stack::start(test_config()).await;
    let store = DeadLetterStore::new(stack.world.db.pool().clone());
    // A subject nobody serves, so the replay is only what the test receives.
    let subject = format!("{}.custom.intake", stack.world.root);
    let ids: Vec<uuid::Uuid> = (0..3).map(|_| uuid::Uuid::now_v7()).collect();
    for (n, id) in ids.iter().enumerate() {
        store
            .put(&NewDeadLetter {
                id: *id,
                subject: subject.clone(),
                headers: [
                    ("Content-Type".to_string(), "application/json".to_string()),
                    ("Nats-Msg-Id".to_string(), format!("m-{n}")),
                ]
                .into(),
                payload: format!(r#"{{"bad":{n}}}"#).into_bytes(),
                reason: if n == 2 { "other" } else { "invalid_input" }.into(),
                error: "bad: unknown field".into(),
                attempts: 1,
                source: "concord-registry".into(),
                history: json!([{"attempt": 1}]),
            })
            .await
            .unwrap();
    }

    let list = stack.ok(&["dlq", "list"]).await;
    assert_eq!(list.lines().count(), 3, "{list}");
    assert!(
        ids.iter().all(|id| list.contains(&id.to_string())),
        "{list}"
    );
    // Pages of one: the CLI follows `next` until it has `--limit`.
    let two = stack.ok(&["dlq", "list", "--limit", "2", "--json"]).await;
    let two: Vec<Value> = two
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(two.len(), 2);
    let only = stack
        .ok(&["dlq", "list", "--reason", "other", "--json"])
        .await;
    let only: Value = serde_json::from_str(only.trim()).unwrap();
    assert_eq!(only["id"], ids[2].to_string());

    let shown: Value =
        serde_json::from_str(&stack.ok(&["dlq", "show", &ids[0].to_string()]).await).unwrap();
    assert_eq!(shown["payload"], r#"{"bad":0}"#);
    assert_eq!(shown["headers"]["Content-Type"], "application/json");
    assert_eq!(shown["history"], json!([{"attempt": 1}]));
    assert_eq!(shown["reason"], "invalid_input");

    let mut replayed = stack
        .client
        .client
        .subscribe(subject.clone())
        .await
        .unwrap();
    stack.client.client.flush().await.unwrap();
    let out = stack.ok(&["dlq", "replay", &ids[0].to_string()]).await;
    assert!(out.contains("replayed") && out.contains(&subject), "{out}");
    let message = tokio::time::timeout(WAIT, replayed.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&message.payload[..], br#"{"bad":0}"#);
    let headers = message.headers.unwrap();
    assert_eq!(
        headers.get("Content-Type").unwrap().as_str(),
        "application/json"
    );
    // The duplicate window must not swallow the replay; the receiver learns
    // which dead letter it replays.
    assert!(headers.get("Nats-Msg-Id").is_none());
    assert_eq!(
        headers.get("Concord-Replay-Of").unwrap().as_str(),
        ids[0].to_string()
    );
    assert_eq!(store.get(ids[0]).await.unwrap().unwrap().replay_count, 1);
    let pending = stack.ok(&["dlq", "list", "--pending"]).await;
    assert_eq!(pending.lines().count(), 2, "{pending}");

    // Unknown ids and bad requests are errors naming what is wrong.
    let unknown = stack
        .concord(&["dlq", "show", &uuid::Uuid::nil().to_string()])
        .await;
    assert!(!unknown.status.success());
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        stderr.contains("NOT_FOUND") && stderr.contains("no dead letter"),
        "{stderr}"
    );
    let nothing = stack.concord(&["dlq", "purge"]).await;
    assert!(!nothing.status.success());

    let purge = stack.ok(&["dlq", "purge", &ids[0].to_string()]).await;
    assert!(purge.contains("purged 1"), "{purge}");
    let purge = stack
        .ok(&["dlq", "purge", "--all", "--reason", "other"])
        .await;
    assert!(purge.contains("purged 1"), "{purge}");
    assert_eq!(store.count().await.unwrap(), 1);
    stack.stop().await;
}
