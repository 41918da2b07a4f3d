//! Shared fixtures: a real nats-server with a fake registry on a fresh subject
//! root, a scriptable test agent, and a dispatcher-like way to send tasks.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use concord_bus::service::read_reply;
use concord_bus::{Bus, BusConfig, ServiceError, Shutdown, headers};
use concord_sdk::testing::FakeRegistry;
use concord_sdk::{
    Agent, AgentConfig, AgentError, AgentHealth, Capability, Task, TaskContext, TaskFailure,
    capability,
};
use concord_testkit::NatsServer;
use concord_wire::codec::{self, ContentType};
use concord_wire::v1::{AgentResult, TaskAssignment, TaskError, agent_result};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;

/// Upper bound for anything the tests wait for; never reached when things work.
pub const WAIT: Duration = Duration::from_secs(15);

/// A NATS server, a fake registry and the subjects of a fresh root.
pub struct Harness {
    pub nats: NatsServer,
    pub bus: Bus,
    pub registry: FakeRegistry,
}

impl Harness {
    pub async fn start() -> Self {
        let (nats, bus) = Self::nats().await;
        let registry = FakeRegistry::start(&bus.client, &bus.subjects)
            .await
            .expect("fake registry starts");
        Self {
            nats,
            bus,
            registry,
        }
    }

    /// A server and a client on a fresh root, without a registry.
    pub async fn nats() -> (NatsServer, Bus) {
        init_telemetry();
        let nats = NatsServer::start().await.expect("nats-server starts");
        let root = format!("t{}", uuid::Uuid::new_v4().simple());
        let bus =
            concord_bus::connect(&BusConfig::new(nats.url(), "sdk-test").with_subject_root(root))
                .await
                .expect("test client connects");
        (nats, bus)
    }

    /// An agent config for this server and root, with short intervals.
    pub fn config(&self, agent_id: &str) -> AgentConfig {
        config_for(&self.nats, &self.bus, agent_id)
    }

    pub async fn assign(
        &self,
        agent_id: &str,
        task: &TaskAssignment,
    ) -> Result<AgentResult, ServiceError> {
        assign(&self.bus, agent_id, task).await
    }
}

pub fn config_for(nats: &NatsServer, bus: &Bus, agent_id: &str) -> AgentConfig {
    let nats = BusConfig::new(nats.url(), "sdk-test-agent").with_subject_root(bus.subjects.root());
    AgentConfig::new("sdk-test-agent", nats)
        .with_id(agent_id)
        .with_version("9.9.9")
        .with_heartbeat_interval(Duration::from_millis(50))
        .with_request_timeout(Duration::from_millis(500))
}

/// Installs tracing once per test binary (W3C propagation needs it).
/// `CONCORD_TEST_LOG=debug` shows the agent's logs.
pub fn init_telemetry() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let guard = concord_telemetry::init(&concord_telemetry::TelemetryConfig {
            service_name: "concord-sdk-tests".into(),
            json_logs: false,
            log_filter: std::env::var("CONCORD_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            otlp_endpoint: None,
        })
        .expect("telemetry installs once");
        // Lives as long as the test binary.
        std::mem::forget(guard);
    });
}

/// A running agent.
pub struct Running {
    pub shutdown: Shutdown,
    pub join: JoinHandle<Result<(), AgentError>>,
}

impl Running {
    pub fn spawn<A: Agent>(agent: A, config: AgentConfig) -> Self {
        let shutdown = Shutdown::new();
        let join = tokio::spawn(concord_sdk::run(agent, config, shutdown.clone()));
        Self { shutdown, join }
    }

    /// Triggers shutdown and waits for `run` to return.
    pub async fn stop(self) -> Result<(), AgentError> {
        self.shutdown.trigger();
        self.finished().await
    }

    /// Waits for `run` to return.
    pub async fn finished(self) -> Result<(), AgentError> {
        tokio::time::timeout(WAIT, self.join)
            .await
            .expect("run returns in time")
            .expect("run does not panic")
    }
}

/// What the test agent reports as it works.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Started(String),
    Cancelled { task_id: String, reason: String },
}

/// Scriptable agent: the payload's `op` says what to do.
///
/// - `echo`: returns the payload;
/// - `fail`: fails with `retryable` and `code` from the payload;
/// - `block`: waits until [`Probe::release`] or cancellation;
/// - `progress`: reports progress 0.5 "half way", then blocks;
/// - `trace`: returns `{"traceId": <trace id seen by the handler>}`;
/// - `panic`: panics.
pub struct TestAgent {
    probe: Arc<Probe>,
    capabilities: Vec<Capability>,
    health: AgentHealth,
    performance: BTreeMap<String, f64>,
}

pub struct Probe {
    events: mpsc::UnboundedSender<Event>,
    gate: Semaphore,
    running: AtomicUsize,
    max_running: AtomicUsize,
}

pub struct ProbeHandle {
    probe: Arc<Probe>,
    events: mpsc::UnboundedReceiver<Event>,
}

pub fn test_agent() -> (TestAgent, ProbeHandle) {
    let (events_tx, events) = mpsc::unbounded_channel();
    let probe = Arc::new(Probe {
        events: events_tx,
        gate: Semaphore::new(0),
        running: AtomicUsize::new(0),
        max_running: AtomicUsize::new(0),
    });
    let agent = TestAgent {
        probe: probe.clone(),
        capabilities: vec![capability("test", 0.8), capability("other", 0.0)],
        health: AgentHealth::Healthy,
        performance: BTreeMap::new(),
    };
    (agent, ProbeHandle { probe, events })
}

impl TestAgent {
    pub fn with_health(mut self, health: AgentHealth) -> Self {
        self.health = health;
        self
    }

    pub fn with_performance(mut self, name: &str, value: f64) -> Self {
        self.performance.insert(name.to_string(), value);
        self
    }
}

impl ProbeHandle {
    /// The next event, or panics after [`WAIT`].
    pub async fn next(&mut self) -> Event {
        tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("an agent event in time")
            .expect("the agent is alive")
    }

    /// The next event if one comes within `within` (for "nothing happens" checks).
    pub async fn next_within(&mut self, within: Duration) -> Option<Event> {
        tokio::time::timeout(within, self.events.recv())
            .await
            .ok()
            .flatten()
    }

    /// Lets `n` blocked tasks finish.
    pub fn release(&self, n: usize) {
        self.probe.gate.add_permits(n);
    }

    /// Most handlers seen running at once.
    pub fn max_running(&self) -> usize {
        self.probe.max_running.load(Ordering::SeqCst)
    }
}

struct RunningGuard<'a>(&'a Probe);

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Agent for TestAgent {
    fn capabilities(&self) -> Vec<Capability> {
        self.capabilities.clone()
    }

    fn health(&self) -> AgentHealth {
        self.health
    }

    fn performance(&self) -> BTreeMap<String, f64> {
        self.performance.clone()
    }

    async fn handle(&self, task: Task, ctx: TaskContext) -> Result<Value, TaskFailure> {
        let probe = &self.probe;
        let now = probe.running.fetch_add(1, Ordering::SeqCst) + 1;
        probe.max_running.fetch_max(now, Ordering::SeqCst);
        let _guard = RunningGuard(probe);
        let _ = probe.events.send(Event::Started(task.id.clone()));
        match task.payload["op"].as_str().unwrap_or("echo") {
            "fail" => {
                let message = "scripted failure";
                let failure = if task.payload["retryable"].as_bool().unwrap_or(false) {
                    TaskFailure::retryable(message)
                } else {
                    TaskFailure::permanent(message)
                };
                Err(failure.with_code(task.payload["code"].as_str().unwrap_or("")))
            }
            "progress" => {
                ctx.progress(0.5, "half way")
                    .await
                    .expect("progress publishes");
                self.block(&task, &ctx).await
            }
            "block" => self.block(&task, &ctx).await,
            "trace" => Ok(json!({ "traceId": concord_telemetry::current_trace_id() })),
            "panic" => panic!("scripted panic"),
            _ => Ok(task.payload),
        }
    }
}

impl TestAgent {
    async fn block(&self, task: &Task, ctx: &TaskContext) -> Result<Value, TaskFailure> {
        tokio::select! {
            permit = self.probe.gate.acquire() => {
                permit.expect("gate open").forget();
                Ok(json!({ "done": task.id }))
            }
            _ = ctx.cancelled() => {
                let reason = ctx.cancel_reason().unwrap_or_default();
                let _ = self.probe.events.send(Event::Cancelled { task_id: task.id.clone(), reason: reason.clone() });
                Err(TaskFailure::cancelled(reason))
            }
        }
    }
}

/// A first-attempt assignment for capability `test`.
pub fn assignment(task_id: &str, payload: Value) -> TaskAssignment {
    TaskAssignment {
        task_id: task_id.to_string(),
        attempt: 1,
        capability: "test".to_string(),
        payload: Some(serde_json::from_value(payload).unwrap()),
        lease_ms: 30_000,
        ..Default::default()
    }
}

/// Sends an assignment as the dispatcher does (JSON request) and decodes the reply.
pub async fn assign(
    bus: &Bus,
    agent_id: &str,
    task: &TaskAssignment,
) -> Result<AgentResult, ServiceError> {
    bus.request(bus.subjects.agent_tasks(agent_id), task, WAIT)
        .await
}

/// Sends raw bytes with headers to an agent's task subject; returns the raw reply.
pub async fn assign_raw(
    bus: &Bus,
    agent_id: &str,
    headers: HeaderMap,
    body: Vec<u8>,
) -> async_nats::Message {
    tokio::time::timeout(
        WAIT,
        bus.client
            .request_with_headers(bus.subjects.agent_tasks(agent_id), headers, body.into()),
    )
    .await
    .expect("a reply in time")
    .expect("the request succeeds")
}

/// The reply's content type.
pub fn content_type(message: &async_nats::Message) -> ContentType {
    ContentType::from_header(headers::get(
        message.headers.as_ref(),
        headers::CONTENT_TYPE,
    ))
    .unwrap()
}

/// Decodes a raw reply as an `AgentResult` (or its error reply).
pub fn read_result(message: &async_nats::Message) -> Result<AgentResult, ServiceError> {
    read_reply(message)
}

/// The output of a successful result.
pub fn output(result: &AgentResult) -> Value {
    match &result.outcome {
        Some(agent_result::Outcome::Output(value)) => {
            integral(serde_json::to_value(value).unwrap())
        }
        other => panic!("expected an output, got {other:?}"),
    }
}

/// Wire numbers are doubles: writes whole ones as integers again for comparisons.
fn integral(value: Value) -> Value {
    match value {
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => json!(f as i64),
            _ => Value::Number(n),
        },
        Value::Array(items) => Value::Array(items.into_iter().map(integral).collect()),
        Value::Object(map) => {
            Value::Object(map.into_iter().map(|(k, v)| (k, integral(v))).collect())
        }
        other => other,
    }
}

/// The error of a failed result.
pub fn error(result: &AgentResult) -> TaskError {
    match &result.outcome {
        Some(agent_result::Outcome::Error(error)) => error.clone(),
        other => panic!("expected an error, got {other:?}"),
    }
}

/// Encodes a message for a raw request.
pub fn encode<M: concord_wire::WireMessage>(content_type: ContentType, message: &M) -> Vec<u8> {
    codec::encode(content_type, message).unwrap()
}
