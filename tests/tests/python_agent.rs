//! The Python example agent (examples/python-agent, nats-py) against the real
//! registry: it registers, heartbeats with its real load, answers task
//! assignments (an output, a permanent and a retryable error, error replies
//! to malformed input), reports progress, honours cancellation, registers
//! again after the registry forgot it, and on SIGTERM finishes its running
//! task, deregisters and exits 0. Also: a refused registration ends it with
//! exit code 1, and the agent's own Python unit tests pass.
//!
//! Python comes from `$CONCORD_VENV` (set by deploy/local/env.sh), else the
//! local stack's `.local/venv` (or `.local/pylib` where Python has no venv
//! module); `make up` installs nats-py there. Without it the test fails and
//! says so: it is never skipped.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use async_nats::{HeaderMap, Subscriber};
use concord_bus::service::read_reply;
use concord_bus::{Bus, ServiceError};
use concord_registry::RegistryConfig;
use concord_store::EventStore;
use concord_tests::{RunningRegistry, World};
use concord_wire::codec::{self, ContentType};
use concord_wire::v1::{
    AgentHealth, AgentRecord, AgentResult, CancelTask, DeregisterAgent, DeregisterAgentReply,
    ErrorCode, GetAgent, Heartbeat, Liveness, TaskAssignment, TaskError, TaskProgress,
    agent_result,
};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout, timeout_at};

/// Python start-up, connection and registration.
const STARTUP: Duration = Duration::from_secs(30);
/// Any one expected message or reply.
const TIMEOUT: Duration = Duration::from_secs(10);
/// From SIGTERM to exit: the running task, deregistration and drain.
const SHUTDOWN: Duration = Duration::from_secs(30);

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

// ---------------------------------------------------------------------------
// Python and the agent process

fn repo_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    root.canonicalize().unwrap_or(root)
}

fn agent_dir() -> PathBuf {
    repo_root().join("examples/python-agent")
}

/// A Python interpreter that can import nats-py.
struct Python {
    program: PathBuf,
    /// Set for the `--target` install that install.sh falls back to.
    pythonpath: Option<PathBuf>,
}

impl Python {
    /// `$CONCORD_VENV/bin/python`, else `<state dir>/venv/bin/python`, else
    /// `python3` with `<state dir>/pylib` (deploy/local/install.sh makes one
    /// of them); panics with what to do when none exists.
    fn locate() -> Python {
        let state_dir = std::env::var_os("CONCORD_STATE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join(".local"));
        let mut venvs = Vec::new();
        if let Some(venv) = std::env::var_os("CONCORD_VENV") {
            venvs.push(PathBuf::from(venv));
        }
        venvs.push(state_dir.join("venv"));
        for venv in &venvs {
            let program = venv.join("bin/python");
            if program.is_file() {
                return Python {
                    program,
                    pythonpath: None,
                };
            }
        }
        let pylib = state_dir.join("pylib");
        if pylib.join("nats").is_dir() {
            return Python {
                program: PathBuf::from("python3"),
                pythonpath: Some(pylib),
            };
        }
        panic!(
            "no Python with nats-py for the Python agent test: looked for {} and {}; run \
             `make up` (deploy/local/install.sh installs nats-py==2.16.0 into .local/venv) or \
             point CONCORD_VENV at a venv with `pip install -r examples/python-agent/requirements.txt`",
            venvs
                .iter()
                .map(|v| v.join("bin/python").display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            pylib.display(),
        );
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.program);
        if let Some(path) = &self.pythonpath {
            command.env("PYTHONPATH", path);
        }
        command
            .current_dir(agent_dir())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }
}

/// A running `agent.py`; prints its stderr if the test fails.
struct AgentProcess {
    child: Child,
    id: String,
    output: Arc<Mutex<String>>,
}

/// `python agent.py` against `world`, every other setting at its default
/// (the id too: py-<random hex>); stdout and stderr piped.
fn agent_command(python: &Python, world: &World) -> Command {
    let mut command = python.command();
    command
        .arg("agent.py")
        .env("CONCORD_NATS_URL", world.nats.url())
        .env("CONCORD_SUBJECT_ROOT", &world.root)
        .env("CONCORD_AGENT_MAX_CONCURRENCY", "2")
        .env("CONCORD_SHUTDOWN_GRACE", "20")
        .env("CONCORD_LOG", "info")
        .env_remove("CONCORD_AGENT_ID")
        .env_remove("CONCORD_AGENT_NAME")
        .env_remove("CONCORD_AGENT_LABELS")
        .env_remove("CONCORD_AGENT_HEARTBEAT_INTERVAL_MS")
        .env_remove("CONCORD_NATS_CREDS")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

impl AgentProcess {
    /// Starts the agent against `world` and waits for its `ready <id>` line.
    async fn start(
        python: &Python,
        world: &World,
        key_file: &std::path::Path,
    ) -> anyhow::Result<AgentProcess> {
        let mut child = agent_command(python, world)
            .env("CONCORD_AGENT_KEY_FILE", key_file)
            .spawn()
            .with_context(|| format!("cannot start {} agent.py", python.program.display()))?;
        let output = Arc::new(Mutex::new(String::new()));
        let stderr = collect(child.stderr.take().expect("piped stderr"), &output);
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();

        let line = match timeout(STARTUP, stdout.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => {
                let status = timeout(TIMEOUT, child.wait()).await;
                let _ = timeout(TIMEOUT, stderr).await;
                let log = output.lock().unwrap().clone();
                anyhow::bail!(
                    "agent.py exited before it was ready ({status:?}); its stderr:\n{log}"
                )
            }
            Ok(Err(error)) => anyhow::bail!("cannot read agent.py's stdout: {error}"),
            Err(_) => {
                let log = output.lock().unwrap().clone();
                anyhow::bail!("agent.py not ready within {STARTUP:?}; its stderr:\n{log}")
            }
        };
        let id = line
            .strip_prefix("ready ")
            .with_context(|| format!("expected `ready <id>` on stdout, got {line:?}"))?
            .to_string();
        // Anything else it prints goes to the log shown on failure.
        collect(stdout.into_inner(), &output);
        Ok(AgentProcess { child, id, output })
    }

    fn terminate(&self) {
        let pid = self.child.id().expect("agent still running");
        let status = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {pid}: {status}");
    }

    async fn exit_status(&mut self, within: Duration) -> ExitStatus {
        match timeout(within, self.child.wait()).await {
            Ok(status) => status.expect("wait for agent.py"),
            Err(_) => panic!("agent.py still running {within:?} after SIGTERM"),
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.output.lock().map(|l| l.clone()).unwrap_or_default();
            eprintln!("--- agent.py ({}) output ---\n{log}--- end ---", self.id);
        }
    }
}

/// Appends the lines of `stream` to `into` until it ends.
fn collect(
    stream: impl AsyncRead + Unpin + Send + 'static,
    into: &Arc<Mutex<String>>,
) -> JoinHandle<()> {
    let into = into.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut log = into.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    })
}

// ---------------------------------------------------------------------------
// The registry and the protocol

/// The registry in-process, with its real clock and background tasks.
async fn start_registry(world: &World) -> anyhow::Result<RunningRegistry> {
    RunningRegistry::start(world, RegistryConfig::default()).await
}

async fn get(bus: &Bus, id: &str) -> Result<AgentRecord, ServiceError> {
    bus.request(
        bus.subjects.endpoint("registry", "get"),
        &GetAgent { id: id.into() },
        TIMEOUT,
    )
    .await
}

fn assignment(task_id: &str, capability: &str, payload: Value) -> TaskAssignment {
    TaskAssignment {
        task_id: task_id.into(),
        attempt: 1,
        capability: capability.into(),
        payload: Some(serde_json::from_value(payload).expect("a JSON value")),
        // A uint64: a JSON string on the wire.
        lease_ms: 30_000,
        labels: [("suite".to_string(), "python-agent".to_string())].into(),
        ..Default::default()
    }
}

async fn run(bus: &Bus, agent_id: &str, task: &TaskAssignment) -> AgentResult {
    let result: AgentResult = bus
        .request(bus.subjects.agent_tasks(agent_id), task, TIMEOUT)
        .await
        .unwrap_or_else(|error| panic!("task {}: {error}", task.task_id));
    assert_eq!(
        (
            result.task_id.as_str(),
            result.attempt,
            result.agent_id.as_str()
        ),
        (task.task_id.as_str(), task.attempt, agent_id),
        "the result names the attempt and the agent"
    );
    result
}

/// Runs `task` in the background (for tasks that take a while).
fn spawn_run(bus: &Bus, agent_id: &str, task: TaskAssignment) -> JoinHandle<AgentResult> {
    let (bus, agent_id) = (bus.clone(), agent_id.to_string());
    tokio::spawn(async move { run(&bus, &agent_id, &task).await })
}

fn output(result: &AgentResult) -> Value {
    match &result.outcome {
        Some(agent_result::Outcome::Output(value)) => serde_json::to_value(value).unwrap(),
        other => panic!("expected an output, got {other:?}"),
    }
}

fn task_error(result: &AgentResult) -> &TaskError {
    match &result.outcome {
        Some(agent_result::Outcome::Error(error)) => error,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// The next heartbeat of `agent_id` that satisfies `wanted`.
async fn heartbeat(
    beats: &mut Subscriber,
    agent_id: &str,
    what: &str,
    wanted: impl Fn(&Heartbeat) -> bool,
) -> Heartbeat {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let message = timeout_at(deadline, beats.next())
            .await
            .unwrap_or_else(|_| panic!("no heartbeat of {agent_id} {what} within {TIMEOUT:?}"))
            .expect("heartbeat subscription open");
        let beat: Heartbeat = codec::decode(ContentType::Json, &message.payload)
            .unwrap_or_else(|error| panic!("undecodable heartbeat: {error}"));
        if beat.agent_id == agent_id {
            let signer = message
                .headers
                .as_ref()
                .and_then(|h| h.get(concord_identity::SIGNER))
                .map(|v| v.as_str().to_string());
            assert_eq!(
                signer.as_deref(),
                Some(agent_id),
                "every heartbeat is signed"
            );
        }
        if beat.agent_id == agent_id && wanted(&beat) {
            return beat;
        }
    }
}

async fn next_progress(progress: &mut Subscriber) -> TaskProgress {
    let message = timeout(TIMEOUT, progress.next())
        .await
        .expect("a progress report")
        .expect("progress subscription open");
    codec::decode(ContentType::Json, &message.payload).expect("a TaskProgress")
}

/// Registration events of `id` in the event store (liveness events left out).
async fn membership_events(world: &World, id: &str) -> Vec<String> {
    EventStore::new(world.db.pool().clone())
        .events_for("agent", id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event_type)
        .filter(|t| t == "agent.registered" || t == "agent.deregistered")
        .collect()
}

// ---------------------------------------------------------------------------

#[tokio::test]
async fn python_agent_end_to_end() -> anyhow::Result<()> {
    let python = Python::locate();
    let world = World::start().await?;
    let registry = start_registry(&world).await?;
    let bus = world.bus("python-agent-test").await?;
    // Every heartbeat, beside the registry's queue group.
    let mut beats = bus
        .client
        .subscribe(bus.subjects.endpoint("registry", "heartbeat"))
        .await?;
    bus.client.flush().await?;

    // The agent's key, in the file it reads (so the test can sign as it).
    let key = concord_identity::AgentKey::from_seed([8; 32]);
    let key_file = std::env::temp_dir().join(format!("concord-py-{}.key", uuid::Uuid::new_v4()));
    std::fs::write(&key_file, format!("{}\n", key.seed_base64()))?;
    let mut agent = AgentProcess::start(&python, &world, &key_file).await?;
    std::fs::remove_file(&key_file)?;
    let id = agent.id.clone();
    assert!(
        id.len() == 15 && id.starts_with("py-") && id[3..].chars().all(|c| c.is_ascii_hexdigit()),
        "default id is py-<12 hex digits>: {id}"
    );

    // Registered, with its capability and labels.
    let record = get(&bus, &id).await?;
    assert_eq!(record.liveness, Liveness::Alive as i32);
    assert_eq!(
        record
            .capabilities
            .iter()
            .map(|c| (c.name.as_str(), c.level))
            .collect::<Vec<_>>(),
        vec![("reverse", 1.0)]
    );
    assert_eq!(record.max_concurrency, 2);
    assert_eq!(
        record.labels.get("lang").map(String::as_str),
        Some("python")
    );
    let registered_at = record.registered_at.expect("registeredAt");
    // It registered with the key from its key file, which the registry
    // accepts only with a valid signature; the heartbeats below are signed
    // too (the registry would refuse them otherwise, and lastHeartbeatAt
    // would not move).
    assert_eq!(record.public_key, key.public_key_base64());

    // Heartbeats with the real load, written by the registry (in batches, to
    // its table: the published record changes only with liveness).
    let beat = heartbeat(&mut beats, &id, "", |_| true).await;
    assert_eq!(
        (beat.in_flight, beat.capacity, beat.health),
        (0, 2, AgentHealth::Healthy as i32)
    );
    let registered_at = (registered_at.seconds, registered_at.nanos);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let row = registry.registry.store().get(&id).await?.expect("stored");
        let last = row.last_heartbeat_at;
        if last.is_some_and(|t| (t.timestamp(), t.timestamp_subsec_nanos() as i32) > registered_at)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "lastHeartbeatAt never moved past registration: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A task: the text reversed; the caller's trace context comes back.
    let task = assignment("t-reverse", "reverse", json!({"text": "héllo, wörld 🌍"}));
    let mut headers = HeaderMap::new();
    headers.insert("Content-Type", "application/json");
    headers.insert("traceparent", TRACEPARENT);
    let reply = timeout(
        TIMEOUT,
        bus.client.request_with_headers(
            bus.subjects.agent_tasks(&id),
            headers,
            codec::encode(ContentType::Json, &task)?.into(),
        ),
    )
    .await??;
    let trace = reply.headers.as_ref().and_then(|h| h.get("traceparent"));
    assert_eq!(trace.map(|v| v.as_str()), Some(TRACEPARENT));
    let result: AgentResult = read_reply(&reply)?;
    assert_eq!(result.agent_id, id);
    assert_eq!(output(&result), json!({"text": "🌍 dlröw ,olléh"}));

    // The README's way of sending a task by hand.
    let sent = python
        .command()
        .args([
            "send_task.py",
            &id,
            r#"{"text": "abc"}"#,
            "--task-id",
            "t-cli",
        ])
        .env("CONCORD_NATS_URL", world.nats.url())
        .env("CONCORD_SUBJECT_ROOT", &world.root)
        .output();
    let sent = timeout(STARTUP, sent).await??;
    assert!(sent.status.success(), "send_task.py: {sent:?}");
    let printed: Value = serde_json::from_slice(&sent.stdout)?;
    assert_eq!(
        printed,
        json!({"taskId": "t-cli", "attempt": 1, "agentId": id, "output": {"text": "cba"}})
    );

    // A payload without a string `text`: a permanent failure.
    let result = run(
        &bus,
        &id,
        &assignment("t-bad", "reverse", json!({"txt": 1})),
    )
    .await;
    let error = task_error(&result);
    assert!(!error.retryable, "{error:?}");
    assert_eq!(error.code, "bad_payload");

    // A capability it does not have: retryable, another agent may have it.
    let result = run(&bus, &id, &assignment("t-other", "summarize", json!({}))).await;
    let error = task_error(&result);
    assert!(error.retryable, "{error:?}");
    assert_eq!(error.code, "unsupported_capability");

    // Malformed assignments get error replies naming the field; protobuf is refused.
    let subject = bus.subjects.agent_tasks(&id);
    let reply = timeout(
        TIMEOUT,
        bus.client
            .request(subject.clone(), r#"{"attempt":1}"#.into()),
    )
    .await??;
    let refused = read_reply::<AgentResult>(&reply).unwrap_err();
    assert_eq!(refused.code, ErrorCode::InvalidArgument);
    assert_eq!(refused.field.as_deref(), Some("taskId"));
    let mut headers = HeaderMap::new();
    headers.insert("Content-Type", "application/protobuf");
    let reply = timeout(
        TIMEOUT,
        bus.client
            .request_with_headers(subject, headers, bytes::Bytes::new()),
    )
    .await??;
    let refused = read_reply::<AgentResult>(&reply).unwrap_err();
    assert_eq!(refused.code, ErrorCode::UnsupportedContentType);

    // A task that takes a while reports progress before its result.
    let mut progress = bus
        .client
        .subscribe(bus.subjects.join("tasks.progress.t-slow"))
        .await?;
    bus.client.flush().await?;
    let task = assignment("t-slow", "reverse", json!({"text": "abc", "delayMs": 400}));
    let result = run(&bus, &id, &task).await;
    assert_eq!(output(&result), json!({"text": "cba"}));
    let mut fractions = Vec::new();
    for _ in 0..5 {
        let report = next_progress(&mut progress).await;
        assert_eq!(
            (
                report.task_id.as_str(),
                report.attempt,
                report.agent_id.as_str()
            ),
            ("t-slow", 1, id.as_str())
        );
        fractions.push(report.fraction);
    }
    assert_eq!(fractions, vec![0.0, 0.25, 0.5, 0.75, 1.0]);

    // Cancellation: the running attempt ends with a permanent `cancelled` error.
    let mut progress = bus
        .client
        .subscribe(bus.subjects.join("tasks.progress.t-cancel"))
        .await?;
    bus.client.flush().await?;
    let pending = spawn_run(
        &bus,
        &id,
        assignment(
            "t-cancel",
            "reverse",
            json!({"text": "x", "delayMs": 60000}),
        ),
    );
    assert_eq!(next_progress(&mut progress).await.fraction, 0.0, "started");
    heartbeat(&mut beats, &id, "with a task in flight", |b| {
        b.in_flight == 1
    })
    .await;
    let cancel = CancelTask {
        task_id: "t-cancel".into(),
        reason: "test".into(),
    };
    let reply = timeout(
        TIMEOUT,
        bus.client.request(
            bus.subjects.join(&format!("agent.{id}.cancel")),
            codec::encode(ContentType::Json, &cancel)?.into(),
        ),
    )
    .await??;
    assert_eq!(&reply.payload[..], b"{}");
    let result = timeout(TIMEOUT, pending).await??;
    let error = task_error(&result);
    assert!(!error.retryable, "{error:?}");
    assert_eq!(error.code, "cancelled");

    // Forgotten by the registry (deregistered behind its back, signed with
    // its key): its next heartbeat gets NOT_FOUND and it registers again.
    let mut registered = bus
        .client
        .subscribe(bus.subjects.event("agent", "registered"))
        .await?;
    bus.client.flush().await?;
    let signed_at = chrono::Utc::now().timestamp_millis() as u64;
    let gone: DeregisterAgentReply = bus
        .request_with(
            bus.subjects.endpoint("registry", "deregister"),
            &DeregisterAgent { id: id.clone() },
            TIMEOUT,
            |payload| {
                key.sign(
                    concord_identity::purpose::DEREGISTER,
                    &id,
                    signed_at,
                    payload,
                )
                .headers()
                .into()
            },
        )
        .await?;
    let revision = gone.agent.expect("record").revision;
    let event = timeout(TIMEOUT, registered.next())
        .await
        .expect("the agent registers again")
        .expect("event subscription open");
    let event: Value = serde_json::from_slice(&event.payload)?;
    assert_eq!(event["aggregateId"], json!(id), "{event}");
    let record = get(&bus, &id).await?;
    assert!(record.revision > revision, "{record:?}");
    assert_eq!(record.liveness, Liveness::Alive as i32);

    // SIGTERM mid-task: it stops taking work (capacity 0), finishes the
    // running task, deregisters and exits 0.
    let mut progress = bus
        .client
        .subscribe(bus.subjects.join("tasks.progress.t-last"))
        .await?;
    bus.client.flush().await?;
    let pending = spawn_run(
        &bus,
        &id,
        assignment(
            "t-last",
            "reverse",
            json!({"text": "last", "delayMs": 3000}),
        ),
    );
    assert_eq!(next_progress(&mut progress).await.fraction, 0.0, "started");
    agent.terminate();
    let beat = heartbeat(&mut beats, &id, "with capacity 0", |b| b.capacity == 0).await;
    assert_eq!(beat.in_flight, 1, "the running task is still counted");
    // New work is no longer taken: handed back, or nobody listens any more.
    match bus
        .request::<_, AgentResult>(
            bus.subjects.agent_tasks(&id),
            &assignment("t-late", "reverse", json!({"text": "late"})),
            TIMEOUT,
        )
        .await
    {
        Ok(result) => {
            let error = task_error(&result);
            assert!(error.retryable, "{error:?}");
            assert_eq!(error.code, "agent_shutdown");
        }
        Err(error) => assert_eq!(error.code, ErrorCode::Unavailable, "{error}"),
    }
    let result = timeout(TIMEOUT, pending).await??;
    assert_eq!(output(&result), json!({"text": "tsal"}));
    let status = agent.exit_status(SHUTDOWN).await;
    assert!(status.success(), "agent.py exited with {status}");
    assert_eq!(
        get(&bus, &id).await.unwrap_err().code,
        ErrorCode::NotFound,
        "deregistered on shutdown"
    );
    assert_eq!(
        membership_events(&world, &id).await,
        vec![
            "agent.registered",
            "agent.deregistered",
            "agent.registered",
            "agent.deregistered"
        ]
    );

    registry.stop().await;
    Ok(())
}

/// A registration the registry refuses ends the agent with exit code 1 and
/// a message naming the field, before it says it is ready.
#[tokio::test]
async fn python_agent_exits_when_registration_is_refused() -> anyhow::Result<()> {
    let python = Python::locate();
    let world = World::start().await?;
    let registry = start_registry(&world).await?;
    let mut command = agent_command(&python, &world);
    // Label keys are lower case: the registry refuses `Region`.
    command.env("CONCORD_AGENT_LABELS", "Region=eu");
    let output = timeout(STARTUP, command.output()).await??;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(output.stdout.is_empty(), "not ready: {stderr}");
    assert!(
        stderr.contains("registration refused: INVALID_ARGUMENT (field labels)")
            && stderr.contains("Region"),
        "{stderr}"
    );
    registry.stop().await;
    Ok(())
}

/// The agent's own unit tests (protocol encoding, configuration), no NATS needed.
#[tokio::test]
async fn python_agent_unit_tests() -> anyhow::Result<()> {
    let python = Python::locate();
    let output = python
        .command()
        .args(["-m", "unittest", "-v", "test_agent"])
        .output()
        .await
        .with_context(|| format!("cannot run {}", python.program.display()))?;
    assert!(
        output.status.success(),
        "python -m unittest test_agent: {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}
