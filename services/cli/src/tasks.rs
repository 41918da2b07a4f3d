//! `concord submit` and `concord task get|cancel|watch`: the dispatcher's
//! task intake and endpoints, over NATS.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use concord_bus::service::read_reply;
use concord_bus::validate::is_token;
use concord_bus::{Bus, ServiceError, headers};
use concord_wire::codec::{self, ContentType};
use concord_wire::priority::{self, MAX as MAX_PRIORITY};
use concord_wire::v1::{
    CancelTask, ErrorCode, GetTask, RoutingStrategy, Task, TaskResult, TaskStatus,
};
use futures::StreamExt;
use serde_json::{Map, Value};

/// How long `task get` and `task cancel` wait for the dispatcher.
const TIMEOUT: Duration = Duration::from_secs(10);
/// How long `submit --wait` waits: the dispatcher answers `tasks.run` within
/// ten minutes (with TIMEOUT if the task is still going), so a little more.
const RUN_TIMEOUT: Duration = Duration::from_secs(620);
/// After `task watch <id>` saw the result: how long it still prints the
/// task's last events (they travel separately and may come just after).
const TRAILING_EVENTS: Duration = Duration::from_millis(300);
/// After `task watch <id>` saw a final event: how long it waits for the
/// result before it stops anyway (a task cancelled in the store by
/// `tasks.cancel` gets no result message).
const RESULT_AFTER_FINAL_EVENT: Duration = Duration::from_secs(2);

/// Submit a task to the dispatcher.
///
/// Without --wait the task goes to `<root>.tasks.submit` through JetStream
/// (with `Nats-Msg-Id` = the task id, so a retried submit is not run twice)
/// and its id is printed once the intake stream has stored it; follow it
/// with `concord task get <id>` or `concord task watch <id>`.
///
/// With --wait it is sent as a request on `<root>.tasks.run` and the final
/// TaskResult is printed as JSON; an error reply (invalid task,
/// dead-lettered, cancelled, timeout) is printed as `error: CODE: message`
/// and the exit code is 1.
///
/// Flags set single fields; --json-body gives a whole Task (canonical JSON,
/// as in docs/PROTOCOL.md) and flags given with it override its fields.
#[derive(clap::Args)]
#[command(after_help = "Examples:\n  \
    concord submit --capability echo --payload '{\"text\":\"hi\"}'\n  \
    concord submit --capability summarize --priority HIGH --label team=docs --wait\n  \
    concord submit --json-body '{\"capability\":\"echo\",\"strategy\":\"BROADCAST\"}' --wait")]
pub struct SubmitArgs {
    /// Capability an agent must have to run the task (required, here or in --json-body).
    #[arg(long)]
    capability: Option<String>,
    /// Task input: any JSON value, passed to the agent unchanged.
    #[arg(long, value_parser = parse_json)]
    payload: Option<Value>,
    /// Task id (letters, digits, `-`, `_`; no dots or spaces). Default: a
    /// new UUID v7, printed so you can follow the task.
    #[arg(long)]
    id: Option<String>,
    /// Priority: 0 (lowest) to 10, or LOW (2), NORMAL (5), HIGH (8), CRITICAL (10).
    #[arg(long, value_parser = parse_priority)]
    priority: Option<u32>,
    /// Routing strategy: ROUND_ROBIN, CAPABILITY, LEAST_LOADED, PRIORITY,
    /// WEIGHTED, DIRECT, BROADCAST or MULTICAST (default: the dispatcher's).
    #[arg(long, value_parser = parse_strategy)]
    strategy: Option<RoutingStrategy>,
    /// Agent id the task may go to (DIRECT: exactly one); repeatable.
    #[arg(long = "target")]
    targets: Vec<String>,
    /// Time one attempt may take before it is retried elsewhere, in milliseconds.
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Most attempts before the task is dead-lettered.
    #[arg(long)]
    max_attempts: Option<u32>,
    /// Label key=value, copied to the assignment and the events; repeatable.
    #[arg(long, value_parser = parse_label)]
    label: Vec<(String, String)>,
    /// The whole Task as JSON; the other flags override its fields.
    #[arg(long, value_parser = parse_json)]
    json_body: Option<Value>,
    /// Wait for the task to finish (request on `<root>.tasks.run`) and print
    /// its TaskResult instead of its id.
    #[arg(long)]
    wait: bool,
}

#[derive(clap::Subcommand)]
pub enum TaskCommand {
    /// Show a task's current state (its TaskResult) as JSON.
    ///
    /// Exits 1 with NOT_FOUND when the dispatcher has no such task (a
    /// submission still waiting in the intake stream is not known yet).
    Get {
        /// The task id.
        id: String,
        /// Also list the task's events, oldest first (`history`).
        #[arg(long)]
        history: bool,
    },
    /// Cancel a pending or running task and print its TaskResult.
    ///
    /// A task that already finished is left alone: its result is printed
    /// with a note on stderr.
    Cancel {
        /// The task id.
        id: String,
        /// Why, recorded in the task's history and its error.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Print task events and results as they happen, one line each
    /// (receive time, subject, JSON), until Ctrl-C.
    ///
    /// Listens on `<root>.tasks.result.<id|*>` and `<root>.events.task.*`.
    /// With an id, only that task's messages are shown and the command exits
    /// once its result arrives (at once if the task already finished).
    Watch {
        /// Only this task; exit when it finishes.
        id: Option<String>,
    },
}

fn parse_json(value: &str) -> Result<Value, String> {
    serde_json::from_str(value).map_err(|e| format!("not valid JSON: {e}"))
}

fn parse_priority(value: &str) -> Result<u32, String> {
    let priority = match value.parse::<u32>() {
        Ok(number) => Some(number),
        Err(_) => priority::from_name(value),
    };
    priority.filter(|p| *p <= MAX_PRIORITY).ok_or_else(|| {
        format!("use a number from 0 to {MAX_PRIORITY} or LOW, NORMAL, HIGH, CRITICAL")
    })
}

fn parse_strategy(value: &str) -> Result<RoutingStrategy, String> {
    RoutingStrategy::from_str_name(&value.to_ascii_uppercase().replace('-', "_"))
        .filter(|s| *s != RoutingStrategy::Unspecified)
        .ok_or_else(|| {
            "use ROUND_ROBIN, CAPABILITY, LEAST_LOADED, PRIORITY, WEIGHTED, DIRECT, BROADCAST or MULTICAST"
                .to_string()
        })
}

fn parse_label(value: &str) -> Result<(String, String), String> {
    value
        .split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("label {value:?} must be key=value"))
}

/// The task the flags describe: --json-body (or nothing) with the flags on
/// top, decoded as a wire Task (so unknown fields and bad values are named),
/// with an id.
fn build_task(args: SubmitArgs) -> anyhow::Result<Task> {
    let mut body = match args.json_body {
        Some(Value::Object(map)) => map,
        Some(_) => anyhow::bail!("--json-body must be a JSON object (a Task)"),
        None => Map::new(),
    };
    if let Some(capability) = args.capability {
        body.insert("capability".into(), capability.into());
    }
    if let Some(payload) = args.payload {
        body.insert("payload".into(), payload);
    }
    if let Some(id) = args.id {
        body.insert("id".into(), id.into());
    }
    if let Some(priority) = args.priority {
        body.insert("priority".into(), priority.into());
    }
    if let Some(strategy) = args.strategy {
        body.insert("strategy".into(), strategy.as_str_name().into());
    }
    if !args.targets.is_empty() {
        body.insert("targets".into(), args.targets.into());
    }
    if let Some(timeout_ms) = args.timeout_ms {
        body.insert("timeoutMs".into(), timeout_ms.to_string().into());
    }
    if let Some(max_attempts) = args.max_attempts {
        body.insert("maxAttempts".into(), max_attempts.into());
    }
    if !args.label.is_empty() {
        let labels = body
            .entry("labels")
            .or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(labels) = labels else {
            anyhow::bail!("--json-body: labels must be an object");
        };
        for (key, value) in args.label {
            labels.insert(key, value.into());
        }
    }
    let mut body = Value::Object(body);
    priority::normalize_names(&mut body)
        .map_err(|e| anyhow::anyhow!("invalid task: `priority` {e}"))?;
    let bytes = serde_json::to_vec(&body)?;
    let mut task: Task = codec::decode(ContentType::Json, &bytes)
        .map_err(|e| anyhow::anyhow!("invalid task: {e}"))?;
    if task.capability.is_empty() {
        anyhow::bail!(
            "a task needs a capability: pass --capability or put \"capability\" in --json-body"
        );
    }
    if task.id.is_empty() {
        task.id = uuid::Uuid::now_v7().to_string();
    }
    check_id(&task.id)?;
    Ok(task)
}

fn check_id(id: &str) -> anyhow::Result<()> {
    if !is_token(id) || id.len() > 128 {
        anyhow::bail!(
            "{id:?} is not a valid task id: at most 128 characters, no dots, spaces, `*` or `>`"
        );
    }
    Ok(())
}

pub async fn submit(bus: &Bus, args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let wait = args.wait;
    let task = build_task(args)?;
    let body = codec::encode(ContentType::Json, &task)
        .map_err(|e| anyhow::anyhow!("cannot encode the task: {e}"))?;
    let mut request_headers = headers::outgoing(ContentType::JSON);
    request_headers.insert(headers::MSG_ID, task.id.as_str());
    if wait {
        let subject = bus.subjects.tasks_run();
        let request = async_nats::Request::new()
            .headers(request_headers)
            .payload(body.into())
            .timeout(Some(RUN_TIMEOUT));
        let reply = bus
            .client
            .send_request(subject.clone(), request)
            .await
            .map_err(|error| failed(request_error(&subject, &error)))?;
        let result: TaskResult = read_reply(&reply).map_err(failed)?;
        println!("{}", crate::json::pretty(&result)?);
        return Ok(ExitCode::SUCCESS);
    }
    let subject = bus.subjects.tasks_submit();
    let ack = bus
        .jetstream()
        .publish_with_headers(subject.clone(), request_headers, body.into())
        .await
        .with_context(|| format!("cannot submit the task on {subject}"))?
        .await
        .map_err(|error| {
            use async_nats::jetstream::context::PublishErrorKind;
            match error.kind() {
                PublishErrorKind::StreamNotFound | PublishErrorKind::TimedOut => anyhow::anyhow!(
                    "no intake stream stored the task ({error}): is concord-dispatcher running? Its stream captures {subject}"
                ),
                _ => anyhow::anyhow!("the intake stream did not confirm the task: {error}"),
            }
        })?;
    println!("{}", task.id);
    if ack.duplicate {
        eprintln!(
            "note: the intake stream already had a submission with id {} (within its duplicate window); this one was dropped",
            task.id
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// An error reply as `CODE: message` (`DEAD_LETTERED: task ... was
/// dead-lettered: ...`), the code without its `ERROR_CODE_` prefix.
pub(crate) fn failed(error: ServiceError) -> anyhow::Error {
    let code = error.code.as_str_name();
    let code = code.strip_prefix("ERROR_CODE_").unwrap_or(code);
    let hint = if error.code == ErrorCode::Unavailable
        && error.message.contains("no responders")
        && !error.message.contains("concord-dispatcher")
    {
        " (is concord-dispatcher running?)"
    } else {
        ""
    };
    anyhow::anyhow!("{code}: {}{hint}", error.message)
}

/// A failed request as the ServiceError `Bus::request` would give.
fn request_error(subject: &str, error: &async_nats::RequestError) -> ServiceError {
    use async_nats::client::RequestErrorKind;
    match error.kind() {
        RequestErrorKind::NoResponders => ServiceError::unavailable(format!(
            "nobody answers on {subject}: is concord-dispatcher running?"
        )),
        RequestErrorKind::TimedOut => ServiceError::new(
            ErrorCode::Timeout,
            format!("no reply on {subject} within {RUN_TIMEOUT:?}"),
        ),
        _ => ServiceError::unavailable(format!("request on {subject} failed: {error}")),
    }
}

pub async fn run(bus: &Bus, command: TaskCommand) -> anyhow::Result<ExitCode> {
    match command {
        TaskCommand::Get { id, history } => {
            check_id(&id)?;
            let result: TaskResult = bus
                .request(
                    bus.subjects.join("tasks.get"),
                    &GetTask {
                        task_id: id,
                        include_history: history,
                    },
                    TIMEOUT,
                )
                .await
                .map_err(failed)?;
            println!("{}", crate::json::pretty(&result)?);
            Ok(ExitCode::SUCCESS)
        }
        TaskCommand::Cancel { id, reason } => {
            check_id(&id)?;
            // A finished task stays as it is; say so rather than print a
            // result that looks like a fresh cancellation.
            let current: Result<TaskResult, _> = bus
                .request(
                    bus.subjects.join("tasks.get"),
                    &GetTask {
                        task_id: id.clone(),
                        include_history: false,
                    },
                    TIMEOUT,
                )
                .await;
            let (result, was_final) = match current {
                Ok(result) if is_final(status_of(&result)) => (result, true),
                _ => (
                    bus.request(
                        bus.subjects.join("tasks.cancel"),
                        &CancelTask {
                            task_id: id.clone(),
                            reason: reason.unwrap_or_default(),
                        },
                        TIMEOUT,
                    )
                    .await
                    .map_err(failed)?,
                    false,
                ),
            };
            println!("{}", crate::json::pretty(&result)?);
            let status = status_of(&result);
            let queued = status == TaskStatus::Pending
                && result
                    .error
                    .as_ref()
                    .is_some_and(|e| e.code == concord_wire::codes::CANCEL_QUEUED);
            if queued {
                eprintln!(
                    "note: task {id} still waits in the intake stream; it is cancelled when a dispatcher takes it (follow it with `concord task watch {id}`)"
                );
            } else if was_final || status != TaskStatus::Cancelled {
                eprintln!(
                    "note: task {id} had already finished ({}); nothing was cancelled",
                    status.as_str_name()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        TaskCommand::Watch { id } => watch(bus, id).await,
    }
}

fn status_of(result: &TaskResult) -> TaskStatus {
    TaskStatus::try_from(result.status).unwrap_or(TaskStatus::Unspecified)
}

fn is_final(status: TaskStatus) -> bool {
    matches!(
        status,
        TaskStatus::Completed
            | TaskStatus::Failed
            | TaskStatus::DeadLettered
            | TaskStatus::Cancelled
    )
}

/// Event types after which a task does not change (unless replayed).
const FINAL_EVENTS: [&str; 3] = ["task.completed", "task.dead_lettered", "task.cancelled"];

async fn watch(bus: &Bus, id: Option<String>) -> anyhow::Result<ExitCode> {
    if let Some(id) = &id {
        check_id(id)?;
    }
    let result_subject = bus.subjects.task_result(id.as_deref().unwrap_or("*"));
    let events_subject = bus.subjects.join("events.task.*");
    let mut results = bus.client.subscribe(result_subject.clone()).await?;
    let mut events = bus.client.subscribe(events_subject.clone()).await?;
    bus.client.flush().await?;

    // A task that finished before we subscribed will not send its result
    // again: ask for it once.
    if let Some(id) = &id {
        let stored: Result<TaskResult, _> = bus
            .request(
                bus.subjects.join("tasks.get"),
                &GetTask {
                    task_id: id.clone(),
                    include_history: false,
                },
                TIMEOUT,
            )
            .await;
        match stored {
            Ok(result) if is_final(status_of(&result)) => {
                print_line(
                    &bus.subjects.join("tasks.get"),
                    crate::json::compact(&result)?.as_bytes(),
                );
                eprintln!(
                    "task {id} already finished ({})",
                    status_of(&result).as_str_name()
                );
                return Ok(ExitCode::SUCCESS);
            }
            Ok(_) => {}
            Err(error) if error.code == ErrorCode::NotFound => {}
            Err(error) => eprintln!("note: cannot read task {id} yet: {}", failed(error)),
        }
    }
    eprintln!("watching {result_subject} and {events_subject} (Ctrl-C to stop)");

    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    // With an id: when to stop (set once the task finished).
    let mut stop_at: Option<tokio::time::Instant> = None;
    let mut got_result = false;
    loop {
        let stop = async {
            match stop_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut ctrl_c => return Ok(ExitCode::SUCCESS),
            _ = stop => return Ok(ExitCode::SUCCESS),
            message = results.next() => {
                let Some(message) = message else { return Ok(ExitCode::SUCCESS) };
                print_line(&message.subject, &message.payload);
                if id.is_some() {
                    got_result = true;
                    stop_at = Some(tokio::time::Instant::now() + TRAILING_EVENTS);
                }
            }
            message = events.next() => {
                let Some(message) = message else { return Ok(ExitCode::SUCCESS) };
                let event: Option<Value> = serde_json::from_slice(&message.payload).ok();
                let field = |name: &str| {
                    event.as_ref().and_then(|e| e.get(name)).and_then(Value::as_str).map(str::to_string)
                };
                if let Some(id) = &id {
                    if field("aggregateId").as_deref() != Some(id.as_str()) {
                        continue;
                    }
                    if !got_result
                        && stop_at.is_none()
                        && field("type").is_some_and(|t| FINAL_EVENTS.contains(&t.as_str()))
                    {
                        stop_at = Some(tokio::time::Instant::now() + RESULT_AFTER_FINAL_EVENT);
                    }
                }
                print_line(&message.subject, &message.payload);
            }
        }
    }
}

/// `<receive time>  <subject>  <JSON on one line>`: the payload as sent
/// (the services send canonical JSON), reformatted only if it spans lines.
fn print_line(subject: &str, payload: &[u8]) {
    let time = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ");
    let text = String::from_utf8_lossy(payload);
    let body = if text.contains('\n') {
        serde_json::from_slice::<Value>(payload)
            .map(|json| json.to_string())
            .unwrap_or_else(|_| text.replace('\n', " "))
    } else {
        text.into_owned()
    };
    println!("{time}  {subject}  {body}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        submit: SubmitArgs,
    }

    fn task(args: &[&str]) -> anyhow::Result<Task> {
        let cli = Cli::try_parse_from(std::iter::once("submit").chain(args.iter().copied()))?;
        build_task(cli.submit)
    }

    #[test]
    fn flags_build_a_task_with_a_fresh_v7_id() {
        let task = task(&[
            "--capability",
            "echo",
            "--payload",
            r#"{"text":"hi"}"#,
            "--priority",
            "high",
            "--strategy",
            "round-robin",
            "--target",
            "a1",
            "--target",
            "a2",
            "--timeout-ms",
            "1500",
            "--max-attempts",
            "2",
            "--label",
            "team=docs",
        ])
        .unwrap();
        assert_eq!(task.capability, "echo");
        assert_eq!(task.priority, 8);
        assert_eq!(task.strategy, RoutingStrategy::RoundRobin as i32);
        assert_eq!(task.targets, ["a1", "a2"]);
        assert_eq!(task.timeout_ms, 1500);
        assert_eq!(task.max_attempts, 2);
        assert_eq!(task.labels["team"], "docs");
        let id = uuid::Uuid::parse_str(&task.id).unwrap();
        assert_eq!(id.get_version_num(), 7);
        let json: Value =
            serde_json::from_slice(&codec::encode(ContentType::Json, &task).unwrap()).unwrap();
        assert_eq!(json["payload"], serde_json::json!({"text": "hi"}));
    }

    #[test]
    fn flags_override_the_json_body() {
        let task = task(&[
            "--json-body",
            r#"{"id":"j-1","capability":"x","priority":"LOW","labels":{"a":"1"},"fanout":2}"#,
            "--capability",
            "echo",
            "--label",
            "b=2",
        ])
        .unwrap();
        assert_eq!(task.id, "j-1");
        assert_eq!(task.capability, "echo");
        assert_eq!(task.priority, 2);
        assert_eq!(task.fanout, 2);
        assert_eq!(task.labels.len(), 2);
    }

    #[test]
    fn bad_tasks_are_refused_naming_the_problem() {
        let error = task(&["--payload", "1"]).unwrap_err().to_string();
        assert!(error.contains("capability"), "{error}");
        let error = task(&["--json-body", r#"{"capability":"x","colour":1}"#])
            .unwrap_err()
            .to_string();
        assert!(error.contains("colour"), "{error}");
        let error = task(&["--capability", "x", "--id", "a.b"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("not a valid task id"), "{error}");
        assert!(task(&["--capability", "x", "--priority", "11"]).is_err());
        assert!(task(&["--capability", "x", "--priority", "urgent"]).is_err());
        assert!(task(&["--capability", "x", "--strategy", "fastest"]).is_err());
        assert!(task(&["--capability", "x", "--payload", "{nope"]).is_err());
    }
}
