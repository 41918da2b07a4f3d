//! The registry benchmark: N agents registered and heartbeating every second
//! against one `concord-registry` process, while discovery latency is
//! measured one request at a time next to a trivial NATS responder (the
//! floor), and the registry's CPU and memory are read from `/proc`.
//!
//! Phases, each agent heartbeating once per second from the moment it is
//! registered:
//!
//! 1. register: all agents, `--register-in-flight` requests at a time;
//! 2. warm-up (`--warmup` s);
//! 3. heartbeats only (`--heartbeat-only-seconds`): the cost of the load
//!    itself (registry, nats-server and Postgres CPU);
//! 4. measurement (`--seconds`): the same load, plus serial requests paced
//!    at `--discover-rate`, alternating a capability query, a filtered query
//!    (`minLevel` + label selector) and the baseline responder.
//!
//! The run is isolated from anything else on the same servers: its own
//! subject root, its own database (dropped at the end) and its own KV bucket
//! (deleted at the end).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_nats::client::RequestErrorKind;
use async_nats::{Client, HeaderMap, Message, Subject};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde::Serialize;
use sqlx::PgConnection;
use tokio::sync::{oneshot, watch};

use crate::infra::{self, Rng, ScratchDatabase, ServiceProcess};
use crate::procfs::{self, GroupSample, MachineSample, Memory, PostgresSample};
use crate::stats::Summary;

/// Capability names agents draw from (1 to 3 each).
const CAPABILITIES: [&str; 20] = [
    "summarize",
    "translate",
    "classify",
    "extract",
    "embed",
    "search",
    "rank",
    "transcribe",
    "ocr",
    "caption",
    "code-review",
    "sql",
    "plan",
    "chat",
    "moderate",
    "sentiment",
    "forecast",
    "route",
    "vote",
    "bid",
];

/// Values of the `region` label.
const REGIONS: [&str; 4] = ["eu-west", "eu-central", "us-east", "ap-south"];

/// The agents of a lane of `n` that beat at tick `slot` of `ticks` per
/// second: every agent once per second, evenly spread.
fn tick_slice(n: usize, ticks: usize, slot: usize) -> std::ops::Range<usize> {
    slot * n / ticks..(slot + 1) * n / ticks
}

/// What the baseline responder answers (about 200 bytes of JSON).
const BASELINE_REPLY: &str = r#"{"agents":[{"id":"baseline-00001","name":"Baseline agent","capabilities":[{"name":"summarize","level":0.9}],"maxConcurrency":4,"liveness":"ALIVE","health":"HEALTHY","labels":{"region":"eu-west"}}]}"#;

/// Options of `concord-bench registry`.
#[derive(Debug, Clone, clap::Args)]
pub struct RegistryArgs {
    /// Agents to register; each heartbeats once per second.
    #[arg(long, default_value_t = 10_000)]
    pub agents: usize,
    /// Length of the measurement window (heartbeats + discovery), seconds.
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// Length of the heartbeats-only window before it, seconds.
    #[arg(long, default_value_t = 10)]
    pub heartbeat_only_seconds: u64,
    /// Warm-up after registration, seconds.
    #[arg(long, default_value_t = 5)]
    pub warmup: u64,
    /// Serial probe requests per second during the measurement window, in
    /// turn: capability query, filtered query, baseline (0: back to back).
    #[arg(long, default_value_t = 1000)]
    pub discover_rate: u32,
    /// Heartbeat ticks per second: every tick, each connection sends the
    /// next 1/ticks of its agents' heartbeats, so each agent beats once a
    /// second and arrivals are spread evenly (1000: about 10 every ms).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub heartbeat_ticks: u32,
    /// NATS connections carrying registrations and heartbeats.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Registration requests in flight.
    #[arg(long, default_value_t = 128)]
    pub register_in_flight: usize,
    /// Diagnostics: log the plan of every statement in the run's database
    /// that takes longer than this many milliseconds to the Postgres server
    /// log (`auto_explain`, loaded for this database only).
    #[arg(long, value_name = "MS")]
    pub explain_slower_than: Option<u32>,
    /// Do not run `cargo build --release -p concord-registry` first.
    #[arg(long)]
    pub no_build: bool,
    #[command(flatten)]
    pub servers: infra::Servers,
}

impl Default for RegistryArgs {
    fn default() -> Self {
        infra::defaults()
    }
}

// ---------------------------------------------------------------- results

#[derive(Debug, Clone, Serialize)]
pub struct RegistryReport {
    pub setup: Setup,
    pub registration: Registration,
    pub heartbeat_only: Window,
    pub measured: Window,
    pub discovery: Discovery,
    pub registry_memory_end: Memory,
}

#[derive(Debug, Clone, Serialize)]
pub struct Setup {
    pub date: String,
    pub machine: procfs::Machine,
    pub nats_server_version: String,
    pub postgres_version: String,
    pub agents: usize,
    pub capabilities: usize,
    pub regions: usize,
    pub connections: usize,
    pub heartbeat_ticks: u32,
    pub register_in_flight: usize,
    pub warmup_seconds: u64,
    pub discover_rate: u32,
    pub subject_root: String,
    pub database: String,
    pub registry_log: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Registration {
    pub agents: usize,
    pub seconds: f64,
    pub per_second: f64,
    pub errors: u64,
    pub latency: Summary,
}

/// One steady-state window.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    pub seconds: f64,
    pub heartbeats_sent: u64,
    pub heartbeats_acked: u64,
    pub heartbeat_errors: u64,
    pub heartbeats_acked_per_second: f64,
    pub heartbeat_latency: Summary,
    /// Heartbeat ack latency second by second (by send time).
    pub heartbeat_timeline: Vec<Second>,
    pub cpu: Cpu,
    pub registry_memory: Memory,
    pub postgres: PgActivity,
    /// `agent.*` events seen in the window, by type.
    pub agent_events: BTreeMap<String, u64>,
}

/// Average cores used over a window.
#[derive(Debug, Clone, Serialize)]
pub struct Cpu {
    pub registry: f64,
    pub nats_server: Option<f64>,
    pub postgres: Option<f64>,
    /// Postgres CPU by process role.
    pub postgres_roles: BTreeMap<String, f64>,
    pub bench: f64,
    pub machine: f64,
    pub machine_cpus: usize,
}

/// Approximate, from `pg_stat_database` (backends report with some delay).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PgActivity {
    pub commits_per_second: f64,
    pub rows_updated_per_second: f64,
    pub rows_inserted_per_second: f64,
    /// Share of `registry_agents` updates that were HOT (no index update).
    pub hot_update_share: f64,
    /// Autovacuum runs on `registry_agents` in the window.
    pub autovacuum_runs: i64,
    /// Size of `registry_agents` with its indexes at the end of the window.
    pub table_bytes: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Discovery {
    pub seconds: f64,
    pub by_capability: Probe,
    pub filtered: Probe,
    pub all_discovery: Summary,
    pub baseline: Probe,
    pub errors: u64,
    /// Discovery latency second by second.
    pub discovery_timeline: Vec<Second>,
    /// Baseline latency second by second.
    pub baseline_timeline: Vec<Second>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Probe {
    pub latency: Summary,
    pub mean_reply_bytes: f64,
    pub mean_agents_per_reply: f64,
    pub empty_replies: u64,
}

/// Latencies of the requests sent in one second of a window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Second {
    pub second: u32,
    pub count: usize,
    pub p99_ms: f64,
    pub max_ms: f64,
}

struct Timeline;

impl Timeline {
    /// Groups `(sent ms since window start, ns)` samples by second.
    fn of(samples: impl Iterator<Item = (u32, u64)>) -> Vec<Second> {
        let mut seconds: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        for (at, ns) in samples {
            seconds.entry(at / 1000).or_default().push(ns);
        }
        seconds
            .into_iter()
            .map(|(second, mut v)| {
                v.sort_unstable();
                Second {
                    second,
                    count: v.len(),
                    p99_ms: crate::stats::percentile(&v, 0.99) as f64 / 1e6,
                    max_ms: *v.last().expect("not empty") as f64 / 1e6,
                }
            })
            .collect()
    }
}

/// The `n` seconds with the highest maximum, as text.
fn worst(timeline: &[Second], n: usize) -> String {
    let mut sorted: Vec<&Second> = timeline.iter().collect();
    sorted.sort_by(|a, b| b.max_ms.total_cmp(&a.max_ms));
    sorted
        .iter()
        .take(n)
        .map(|s| {
            format!(
                "s{}: max {:.1} ms, p99 {:.1} ms",
                s.second, s.max_ms, s.p99_ms
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

// ---------------------------------------------------------------- shared load state

#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
enum Phase {
    Register = 0,
    Warmup = 1,
    HeartbeatOnly = 2,
    Measure = 3,
    Drain = 4,
}
const PHASES: usize = 5;

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    ok: AtomicU64,
    errors: AtomicU64,
}

/// State shared by the heartbeat tasks and the orchestrator.
struct Load {
    phase: AtomicUsize,
    registered: Vec<AtomicBool>,
    counters: [Counters; PHASES],
    /// Heartbeat latencies by phase: (sent, ms since `epoch`; nanoseconds).
    latencies: Mutex<[Vec<(u32, u64)>; PHASES]>,
    epoch: Instant,
    events: Mutex<[BTreeMap<String, u64>; PHASES]>,
    error_kinds: Mutex<BTreeMap<String, u64>>,
}

impl Load {
    fn new(agents: usize) -> Self {
        Self {
            phase: AtomicUsize::new(Phase::Register as usize),
            registered: (0..agents).map(|_| AtomicBool::new(false)).collect(),
            counters: Default::default(),
            latencies: Mutex::new(Default::default()),
            epoch: Instant::now(),
            events: Mutex::new(Default::default()),
            error_kinds: Mutex::new(BTreeMap::new()),
        }
    }

    fn phase(&self) -> usize {
        self.phase.load(Relaxed)
    }

    fn enter(&self, phase: Phase) {
        self.phase.store(phase as usize, Relaxed);
    }

    fn error(&self, what: String) {
        *self
            .error_kinds
            .lock()
            .expect("not poisoned")
            .entry(what)
            .or_default() += 1;
    }
}

/// Whether a reply is an error reply, and which (NATS service API headers).
fn error_code(message: &Message) -> Option<String> {
    let headers = message.headers.as_ref()?;
    let code = headers.get("Nats-Service-Error-Code")?;
    let name = headers
        .get("Concord-Error-Code")
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default();
    Some(format!("{} {name}", code.as_str()))
}

fn request_error(error: &async_nats::RequestError) -> String {
    match error.kind() {
        RequestErrorKind::TimedOut => "timeout".into(),
        RequestErrorKind::NoResponders => "no responders".into(),
        _ => format!("request failed: {error}"),
    }
}

fn json_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("Content-Type", "application/json");
    headers
}

// ---------------------------------------------------------------- agents

struct AgentSpec {
    register: Bytes,
    heartbeat: Bytes,
}

fn agents(count: usize, rng: &mut Rng) -> Vec<AgentSpec> {
    (0..count)
        .map(|i| {
            let id = format!("bench-{i:05}");
            let wanted = 1 + rng.below(3);
            let mut names: Vec<&str> = Vec::with_capacity(wanted);
            while names.len() < wanted {
                let name = CAPABILITIES[rng.below(CAPABILITIES.len())];
                if !names.contains(&name) {
                    names.push(name);
                }
            }
            let capabilities: Vec<serde_json::Value> = names
                .iter()
                .map(|name| {
                    let level = (5 + rng.below(96)) as f64 / 100.0;
                    serde_json::json!({"name": name, "level": level})
                })
                .collect();
            let register = serde_json::json!({
                "id": id,
                "name": format!("Bench agent {i}"),
                "capabilities": capabilities,
                "maxConcurrency": 4,
                "version": "1.0.0",
                "labels": {"region": REGIONS[rng.below(REGIONS.len())]},
            });
            let heartbeat = serde_json::json!({
                "agentId": id,
                "inFlight": rng.below(5),
                "capacity": 4,
                "health": "HEALTHY",
            });
            AgentSpec {
                register: serde_json::to_vec(&register).expect("json").into(),
                heartbeat: serde_json::to_vec(&heartbeat).expect("json").into(),
            }
        })
        .collect()
}

// ---------------------------------------------------------------- load generators

/// Heartbeats for the agents `index % connections == lane`, on one connection.
async fn heartbeat_lane(
    client: Client,
    subject: Subject,
    lane: Vec<(usize, Bytes)>,
    ticks: usize,
    load: Arc<Load>,
    mut stop: watch::Receiver<bool>,
) {
    let headers = json_headers();
    let mut interval = tokio::time::interval(Duration::from_secs(1) / ticks as u32);
    let n = lane.len();
    let mut tick = 0usize;
    let mut in_flight = FuturesUnordered::new();
    let mut samples: Vec<(usize, u32, u64)> = Vec::new();
    let mut stopping = false;
    let flush = |samples: &mut Vec<(usize, u32, u64)>| {
        let mut latencies = load.latencies.lock().expect("not poisoned");
        for (phase, at, ns) in samples.drain(..) {
            latencies[phase].push((at, ns));
        }
    };
    loop {
        tokio::select! {
            _ = interval.tick(), if !stopping => {
                let slot = tick % ticks;
                let phase = load.phase();
                for (index, body) in &lane[tick_slice(n, ticks, slot)] {
                    if !load.registered[*index].load(Relaxed) {
                        continue;
                    }
                    load.counters[phase].sent.fetch_add(1, Relaxed);
                    let client = client.clone();
                    let subject = subject.clone();
                    let headers = headers.clone();
                    let body = body.clone();
                    let epoch = load.epoch;
                    in_flight.push(async move {
                        let started = Instant::now();
                        let result = client.request_with_headers(subject, headers, body).await;
                        let at = started.duration_since(epoch).as_millis() as u32;
                        (phase, at, started.elapsed(), result)
                    });
                }
                tick += 1;
                if tick.is_multiple_of(ticks) {
                    flush(&mut samples);
                }
            }
            Some((phase, at, elapsed, result)) = in_flight.next(), if !in_flight.is_empty() => {
                let counters = &load.counters[phase];
                match result {
                    Ok(message) => match error_code(&message) {
                        None => {
                            counters.ok.fetch_add(1, Relaxed);
                            samples.push((phase, at, elapsed.as_nanos() as u64));
                        }
                        Some(code) => {
                            counters.errors.fetch_add(1, Relaxed);
                            load.error(format!("heartbeat: error reply {code}"));
                        }
                    },
                    Err(error) => {
                        counters.errors.fetch_add(1, Relaxed);
                        load.error(format!("heartbeat: {}", request_error(&error)));
                    }
                }
            }
            _ = stop.changed(), if !stopping => stopping = true,
            else => break,
        }
    }
    flush(&mut samples);
}

/// Registers every agent, `in_flight` at a time over `clients`.
async fn register_all(
    clients: &[Client],
    subject: &Subject,
    agents: &[AgentSpec],
    in_flight: usize,
    load: &Load,
) -> Registration {
    let started = Instant::now();
    let headers = json_headers();
    let mut latencies = Vec::with_capacity(agents.len());
    let mut errors = 0u64;
    let mut replies = futures::stream::iter(agents.iter().enumerate())
        .map(|(i, agent)| {
            let client = clients[i % clients.len()].clone();
            let (subject, headers, body) =
                (subject.clone(), headers.clone(), agent.register.clone());
            async move {
                let t = Instant::now();
                let result = client.request_with_headers(subject, headers, body).await;
                (i, t.elapsed(), result)
            }
        })
        .buffer_unordered(in_flight.max(1));
    while let Some((i, elapsed, result)) = replies.next().await {
        match result {
            Ok(message) => match error_code(&message) {
                None => {
                    load.registered[i].store(true, Relaxed);
                    latencies.push(elapsed.as_nanos() as u64);
                }
                Some(code) => {
                    errors += 1;
                    load.error(format!(
                        "register: error reply {code}: {}",
                        String::from_utf8_lossy(&message.payload)
                    ));
                }
            },
            Err(error) => {
                errors += 1;
                load.error(format!("register: {}", request_error(&error)));
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    Registration {
        agents: latencies.len(),
        seconds,
        per_second: latencies.len() as f64 / seconds,
        errors,
        latency: Summary::of(&mut latencies),
    }
}

/// Runs `body` on a thread of its own with a single-threaded runtime, so
/// that the serial probe and the baseline responder never wait behind the
/// heartbeat generator's tasks (the OS schedules them like separate
/// processes). The result comes back through the returned receiver.
fn on_own_thread<T, F, Fut>(name: &str, body: F) -> anyhow::Result<oneshot::Receiver<T>>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
{
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let _ = tx.send(runtime.block_on(body()));
        })?;
    Ok(rx)
}

/// Answers every request on `subject` with [`BASELINE_REPLY`], on its own
/// thread and connection, until `stop` fires.
async fn start_baseline_responder(
    url: String,
    subject: Subject,
    stop: oneshot::Receiver<()>,
) -> anyhow::Result<()> {
    let (ready_tx, ready) = oneshot::channel::<anyhow::Result<()>>();
    let _done = on_own_thread("baseline-responder", move || async move {
        let setup = async {
            let client = infra::connect(&url, "concord-bench-baseline").await?;
            let requests = client.subscribe(subject).await?;
            client.flush().await?;
            anyhow::Ok((client, requests))
        };
        let (client, mut requests) = match setup.await {
            Ok(ok) => ok,
            Err(error) => {
                let _ = ready_tx.send(Err(error));
                return;
            }
        };
        let _ = ready_tx.send(Ok(()));
        let body = Bytes::from_static(BASELINE_REPLY.as_bytes());
        let headers = json_headers();
        let mut stop = stop;
        loop {
            tokio::select! {
                request = requests.next() => match request {
                    Some(request) => {
                        if let Some(reply) = request.reply {
                            let _ = client
                                .publish_with_headers(reply, headers.clone(), body.clone())
                                .await;
                        }
                    }
                    None => break,
                },
                _ = &mut stop => break,
            }
        }
        let _ = client.drain().await;
    })?;
    ready.await.context("baseline responder thread died")?
}

/// Counts `<root>.events.agent.>` by type and phase.
async fn count_events(client: Client, root: &str, load: Arc<Load>) -> anyhow::Result<()> {
    let mut events = client.subscribe(format!("{root}.events.agent.>")).await?;
    client.flush().await?;
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            let kind = event.subject.rsplit('.').next().unwrap_or("?").to_owned();
            let phase = load.phase();
            *load.events.lock().expect("not poisoned")[phase]
                .entry(kind)
                .or_default() += 1;
        }
    });
    Ok(())
}

#[derive(Default)]
struct ProbeSamples {
    latencies: Vec<u64>,
    sent_ms: Vec<u32>,
    reply_bytes: u64,
    agents: u64,
    empty: u64,
}

impl ProbeSamples {
    fn finish(mut self) -> Probe {
        let n = self.latencies.len().max(1) as f64;
        Probe {
            mean_reply_bytes: self.reply_bytes as f64 / n,
            mean_agents_per_reply: self.agents as f64 / n,
            empty_replies: self.empty,
            latency: Summary::of(&mut self.latencies),
        }
    }
}

/// Serial requests until `deadline`: capability query, filtered query,
/// baseline, in turn, paced at `rate` per second (0: back to back).
async fn probe(
    client: &Client,
    discover: &Subject,
    baseline: &Subject,
    rate: u32,
    deadline: Instant,
    mut rng: Rng,
    load: &Load,
) -> Discovery {
    let by_capability: Vec<Bytes> = CAPABILITIES
        .iter()
        .map(|c| {
            serde_json::to_vec(&serde_json::json!({
                "capability": c, "liveness": ["ALIVE"], "limit": 10
            }))
            .expect("json")
            .into()
        })
        .collect();
    let filtered: Vec<Bytes> = CAPABILITIES
        .iter()
        .flat_map(|c| {
            REGIONS.iter().map(move |r| {
                serde_json::to_vec(&serde_json::json!({
                    "capability": c, "minLevel": 0.5, "liveness": ["ALIVE"],
                    "labels": {"region": r}, "limit": 10
                }))
                .expect("json")
                .into()
            })
        })
        .collect();
    let baseline_body = Bytes::from_static(b"{}");
    let headers = json_headers();
    let mut samples: [ProbeSamples; 3] = Default::default();
    let mut errors = 0u64;
    let mut pace = (rate > 0).then(|| {
        let mut interval = tokio::time::interval(Duration::from_secs(1) / rate);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval
    });
    let started = Instant::now();
    let mut i = 0usize;
    while Instant::now() < deadline {
        if let Some(pace) = &mut pace {
            pace.tick().await;
        }
        let kind = i % 3;
        i += 1;
        let (subject, body) = match kind {
            0 => (
                discover,
                by_capability[rng.below(by_capability.len())].clone(),
            ),
            1 => (discover, filtered[rng.below(filtered.len())].clone()),
            _ => (baseline, baseline_body.clone()),
        };
        let (subject, headers) = (subject.clone(), headers.clone());
        let t = Instant::now();
        let result = client.request_with_headers(subject, headers, body).await;
        let elapsed = t.elapsed().as_nanos() as u64;
        match result {
            Ok(message) => {
                if let Some(code) = error_code(&message) {
                    errors += 1;
                    load.error(format!("discover: error reply {code}"));
                    continue;
                }
                let s = &mut samples[kind];
                s.latencies.push(elapsed);
                s.sent_ms.push(t.duration_since(started).as_millis() as u32);
                s.reply_bytes += message.payload.len() as u64;
                if kind < 2 {
                    let agents = serde_json::from_slice::<serde_json::Value>(&message.payload)
                        .ok()
                        .and_then(|v| v.get("agents")?.as_array().map(Vec::len))
                        .unwrap_or(0);
                    s.agents += agents as u64;
                    if agents == 0 {
                        s.empty += 1;
                    }
                }
            }
            Err(error) => {
                errors += 1;
                load.error(format!("discover: {}", request_error(&error)));
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let discovery_timeline = Timeline::of(
        samples[..2]
            .iter()
            .flat_map(|s| s.sent_ms.iter().copied().zip(s.latencies.iter().copied())),
    );
    let baseline_timeline = Timeline::of(
        samples[2]
            .sent_ms
            .iter()
            .copied()
            .zip(samples[2].latencies.iter().copied()),
    );
    let mut all: Vec<u64> = samples[0]
        .latencies
        .iter()
        .chain(&samples[1].latencies)
        .copied()
        .collect();
    let [a, b, c] = samples;
    Discovery {
        seconds,
        by_capability: a.finish(),
        filtered: b.finish(),
        all_discovery: Summary::of(&mut all),
        baseline: c.finish(),
        errors,
        discovery_timeline,
        baseline_timeline,
    }
}

// ---------------------------------------------------------------- sampling

/// Processes whose CPU is reported.
struct Watched {
    registry: u32,
    nats: Option<u32>,
    postgres: Option<u32>,
    cpus: usize,
    database: String,
}

struct Sample {
    registry: GroupSample,
    nats: Option<GroupSample>,
    postgres: Option<PostgresSample>,
    bench: GroupSample,
    machine: Option<MachineSample>,
    pg: Option<(i64, i64, i64)>,
    table: Option<(i64, i64, i64, i64)>,
    at: Instant,
}

/// Connections for statistics: one to the server's default database, one
/// to the run's database.
struct StatsConnections {
    admin: PgConnection,
    bench: PgConnection,
}

/// Updates, HOT updates, autovacuum runs and total size of `registry_agents`.
async fn table_counters(bench_db: &mut PgConnection) -> Option<(i64, i64, i64, i64)> {
    sqlx::query_as::<_, (i64, i64, i64, i64)>(
        "select n_tup_upd, n_tup_hot_upd, autovacuum_count, pg_total_relation_size(relid)
         from pg_stat_user_tables where relname = 'registry_agents'",
    )
    .fetch_optional(bench_db)
    .await
    .ok()
    .flatten()
}

async fn pg_counters(admin: &mut PgConnection, database: &str) -> Option<(i64, i64, i64)> {
    sqlx::query_as::<_, (i64, i64, i64)>(
        "select xact_commit, tup_updated, tup_inserted from pg_stat_database where datname = $1",
    )
    .bind(database)
    .fetch_optional(admin)
    .await
    .ok()
    .flatten()
}

impl Watched {
    async fn sample(&self, connections: &mut StatsConnections) -> Sample {
        let pg = pg_counters(&mut connections.admin, &self.database).await;
        let table = table_counters(&mut connections.bench).await;
        Sample {
            registry: GroupSample::take(&[self.registry]),
            nats: self.nats.map(|pid| GroupSample::take(&[pid])),
            postgres: self
                .postgres
                .map(|pid| PostgresSample::take(pid, &self.database)),
            bench: GroupSample::take(&[std::process::id()]),
            machine: MachineSample::take(),
            pg,
            table,
            at: Instant::now(),
        }
    }

    fn window(&self, start: &Sample, end: &Sample, load: &Load, phase: Phase) -> Window {
        let seconds = end.at.duration_since(start.at).as_secs_f64();
        let counters = &load.counters[phase as usize];
        let acked = counters.ok.load(Relaxed);
        let timed =
            std::mem::take(&mut load.latencies.lock().expect("not poisoned")[phase as usize]);
        let offset = start.at.duration_since(load.epoch).as_millis() as u32;
        let heartbeat_timeline = Timeline::of(
            timed
                .iter()
                .map(|&(at, ns)| (at.saturating_sub(offset), ns)),
        );
        let mut latencies: Vec<u64> = timed.into_iter().map(|(_, ns)| ns).collect();
        let cores = |a: &Option<GroupSample>, b: &Option<GroupSample>| match (a, b) {
            (Some(a), Some(b)) => Some(a.cores_until(b)),
            _ => None,
        };
        let postgres = match (start.pg, end.pg) {
            (Some(a), Some(b)) if seconds > 0.0 => PgActivity {
                commits_per_second: (b.0 - a.0) as f64 / seconds,
                rows_updated_per_second: (b.1 - a.1) as f64 / seconds,
                rows_inserted_per_second: (b.2 - a.2) as f64 / seconds,
                ..PgActivity::default()
            },
            _ => PgActivity::default(),
        };
        let postgres = match (start.table, end.table) {
            (Some(a), Some(b)) => PgActivity {
                hot_update_share: (b.1 - a.1) as f64 / (b.0 - a.0).max(1) as f64,
                autovacuum_runs: b.2 - a.2,
                table_bytes: b.3,
                ..postgres
            },
            _ => postgres,
        };
        let (postgres_cpu, postgres_roles) = match (&start.postgres, &end.postgres) {
            (Some(a), Some(b)) => {
                let (total, roles) = a.cores_until(b);
                (Some(total), roles)
            }
            _ => (None, BTreeMap::new()),
        };
        Window {
            seconds,
            heartbeats_sent: counters.sent.load(Relaxed),
            heartbeats_acked: acked,
            heartbeat_errors: counters.errors.load(Relaxed),
            heartbeats_acked_per_second: acked as f64 / seconds,
            heartbeat_latency: Summary::of(&mut latencies),
            heartbeat_timeline,
            cpu: Cpu {
                registry: start.registry.cores_until(&end.registry),
                nats_server: cores(&start.nats, &end.nats),
                postgres: postgres_cpu,
                postgres_roles,
                bench: start.bench.cores_until(&end.bench),
                machine: match (start.machine, end.machine) {
                    (Some(a), Some(b)) => a.cores_until(&b, self.cpus),
                    _ => 0.0,
                },
                machine_cpus: self.cpus,
            },
            registry_memory: procfs::memory(self.registry).unwrap_or_default(),
            postgres,
            agent_events: load.events.lock().expect("not poisoned")[phase as usize].clone(),
        }
    }
}

// ---------------------------------------------------------------- orchestration

/// Runs the registry benchmark end to end, cleaning up whatever happens.
pub async fn run(args: &RegistryArgs) -> anyhow::Result<RegistryReport> {
    if args.agents == 0 || args.connections == 0 || args.seconds == 0 {
        bail!("--agents, --connections and --seconds must be positive");
    }
    if !args.no_build {
        infra::build_release("concord-registry")?;
    }
    let mut rng = Rng::from_entropy();
    let tag = rng.tag();
    let root = format!("bench{tag}");
    let database = format!("concord_bench_{tag}");
    let machine = procfs::Machine::describe();

    let control = infra::connect(&args.servers.nats_url, "concord-bench").await?;
    let nats_server_version = control.server_info().version;
    let mut admin = infra::admin_connection(&args.servers.database_url).await?;
    let (postgres_version, backend): (String, i32) =
        sqlx::query_as("select current_setting('server_version'), pg_backend_pid()")
            .fetch_one(&mut admin)
            .await?;
    let postmaster = procfs::parent(backend as u32);
    let nats_pid = infra::url_port(&args.servers.nats_url).and_then(procfs::listener);

    eprintln!(
        "bench: registry, {} agents, subject root {root}, database {database}",
        args.agents
    );
    let scratch = ScratchDatabase::create(&args.servers.database_url, &database).await?;
    if let Some(ms) = args.explain_slower_than {
        for setting in [
            "session_preload_libraries = 'auto_explain'".to_owned(),
            format!("auto_explain.log_min_duration = '{ms}ms'"),
        ] {
            let altered = sqlx::query(sqlx::AssertSqlSafe(format!(
                "alter database {database} set {setting}"
            )))
            .execute(&mut admin)
            .await;
            if let Err(error) = altered {
                let _ = scratch.drop_now().await;
                return Err(error).context("cannot enable auto_explain for the run's database");
            }
        }
    }
    let log = std::env::temp_dir().join(format!("concord-bench-{root}-registry.log"));
    let registry = ServiceProcess::spawn(
        "concord-registry",
        &[
            ("CONCORD_NATS_URL", args.servers.nats_url.clone()),
            ("CONCORD_DATABASE_URL", scratch.url.clone()),
            ("CONCORD_SUBJECT_ROOT", root.clone()),
            ("CONCORD_METRICS_ADDR", "127.0.0.1:0".into()),
            ("CONCORD_LOG", "warn".into()),
        ],
        // Measure the registry, not a trace exporter.
        &["OTEL_EXPORTER_OTLP_ENDPOINT"],
        log.clone(),
    );
    let mut registry = match registry {
        Ok(registry) => registry,
        Err(error) => {
            let _ = scratch.drop_now().await;
            return Err(error);
        }
    };

    let setup = Setup {
        date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        machine: machine.clone(),
        nats_server_version,
        postgres_version,
        agents: args.agents,
        capabilities: CAPABILITIES.len(),
        regions: REGIONS.len(),
        connections: args.connections,
        heartbeat_ticks: args.heartbeat_ticks,
        register_in_flight: args.register_in_flight,
        warmup_seconds: args.warmup,
        discover_rate: args.discover_rate,
        subject_root: root.clone(),
        database: database.clone(),
        registry_log: log.display().to_string(),
    };
    let watched = Watched {
        registry: registry.pid,
        nats: nats_pid,
        postgres: postmaster,
        cpus: machine.cpus,
        database: database.clone(),
    };

    let stats = match infra::admin_connection(&scratch.url).await {
        Ok(bench) => Ok(StatsConnections { admin, bench }),
        Err(error) => Err(error),
    };
    let mut stats = match stats {
        Ok(stats) => stats,
        Err(error) => {
            let _ = registry.stop(Duration::from_secs(15)).await;
            let _ = scratch.drop_now().await;
            return Err(error);
        }
    };
    let body = measure(
        args,
        setup,
        &watched,
        &mut registry,
        &control,
        &mut stats,
        &mut rng,
    );
    let result = tokio::select! {
        result = body => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    let memory_end = procfs::memory(registry.pid).unwrap_or_default();
    let failed_log = result.is_err().then(|| registry.log_tail(30));

    // Clean up: registry, KV bucket, database.
    eprintln!("bench: stopping the registry and dropping {database}");
    let stopped = registry.stop(Duration::from_secs(15)).await;
    let bucket = format!("{}_AGENTS", root.to_uppercase());
    let _ = async_nats::jetstream::new(control.clone())
        .delete_key_value(&bucket)
        .await;
    let _ = control.drain().await;
    let dropped = scratch.drop_now().await;

    let mut report = result.map_err(|error| match failed_log {
        Some(tail) if !tail.is_empty() => {
            error.context(format!("registry log ({}):\n{tail}", log.display()))
        }
        _ => error,
    })?;
    stopped?;
    dropped?;
    report.registry_memory_end = memory_end;
    Ok(report)
}

async fn measure(
    args: &RegistryArgs,
    setup: Setup,
    watched: &Watched,
    registry: &mut ServiceProcess,
    control: &Client,
    pg: &mut StatsConnections,
    rng: &mut Rng,
) -> anyhow::Result<RegistryReport> {
    let root = setup.subject_root.clone();
    let subject = |op: &str| Subject::from(format!("{root}.registry.{op}"));
    let (register, heartbeat, discover) = (
        subject("register"),
        subject("heartbeat"),
        subject("discover"),
    );
    let baseline = Subject::from(format!("{root}.bench.baseline"));

    wait_for_registry(registry, control, &discover).await?;
    eprintln!("bench: registry ready (pid {})", registry.pid);

    let load = Arc::new(Load::new(args.agents));
    let specs = agents(args.agents, rng);
    let mut lanes = Vec::with_capacity(args.connections);
    for lane in 0..args.connections {
        lanes.push(
            infra::connect(
                &args.servers.nats_url,
                &format!("concord-bench-agents-{lane}"),
            )
            .await?,
        );
    }
    let (stop_responder, responder_stop) = oneshot::channel();
    start_baseline_responder(
        args.servers.nats_url.clone(),
        baseline.clone(),
        responder_stop,
    )
    .await?;
    let observer = infra::connect(&args.servers.nats_url, "concord-bench-events").await?;
    count_events(observer.clone(), &root, load.clone()).await?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    for (lane, client) in lanes.iter().enumerate() {
        let agents: Vec<(usize, Bytes)> = specs
            .iter()
            .enumerate()
            .filter(|(i, _)| i % args.connections == lane)
            .map(|(i, a)| (i, a.heartbeat.clone()))
            .collect();
        tasks.push(tokio::spawn(heartbeat_lane(
            client.clone(),
            heartbeat.clone(),
            agents,
            args.heartbeat_ticks as usize,
            load.clone(),
            stop_rx.clone(),
        )));
    }

    eprintln!("bench: registering {} agents", args.agents);
    let registration =
        register_all(&lanes, &register, &specs, args.register_in_flight, &load).await;
    eprintln!(
        "bench: registered {} in {:.1} s ({:.0}/s, {} errors)",
        registration.agents, registration.seconds, registration.per_second, registration.errors
    );
    if registration.agents == 0 {
        bail!(
            "no agent could be registered: {:?}",
            load.error_kinds.lock().expect("not poisoned")
        );
    }

    load.enter(Phase::Warmup);
    eprintln!("bench: warm-up {} s", args.warmup);
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;
    registry.check_alive()?;

    load.enter(Phase::HeartbeatOnly);
    eprintln!("bench: heartbeats only, {} s", args.heartbeat_only_seconds);
    let start = watched.sample(pg).await;
    tokio::time::sleep(Duration::from_secs(args.heartbeat_only_seconds)).await;
    let end = watched.sample(pg).await;
    registry.check_alive()?;

    load.enter(Phase::Measure);
    eprintln!(
        "bench: heartbeats + discovery, {} s (probe rate {}/s)",
        args.seconds, args.discover_rate
    );
    let measure_start = watched.sample(pg).await;
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let probe_rng = Rng::new(rng.next_u64());
    let (url, rate, probe_load) = (
        args.servers.nats_url.clone(),
        args.discover_rate,
        load.clone(),
    );
    let discovery = on_own_thread("probe", move || async move {
        let client = infra::connect(&url, "concord-bench-probe").await?;
        let discovery = probe(
            &client,
            &discover,
            &baseline,
            rate,
            deadline,
            probe_rng,
            &probe_load,
        )
        .await;
        let _ = client.drain().await;
        anyhow::Ok(discovery)
    })?
    .await
    .context("probe thread died")??;
    let measure_end = watched.sample(pg).await;
    registry.check_alive()?;

    load.enter(Phase::Drain);
    let _ = stop_tx.send(true);
    for task in tasks {
        task.await.context("heartbeat task panicked")?;
    }
    let heartbeat_only = watched.window(&start, &end, &load, Phase::HeartbeatOnly);
    let measured = watched.window(&measure_start, &measure_end, &load, Phase::Measure);
    let _ = stop_responder.send(());
    for client in lanes.into_iter().chain([observer]) {
        let _ = client.drain().await;
    }
    for (name, timeline) in [
        (
            "heartbeats, heartbeats-only window",
            &heartbeat_only.heartbeat_timeline,
        ),
        (
            "heartbeats, measurement window",
            &measured.heartbeat_timeline,
        ),
        ("discovery", &discovery.discovery_timeline),
        ("baseline", &discovery.baseline_timeline),
    ] {
        eprintln!("bench: worst seconds for {name}: {}", worst(timeline, 3));
    }
    let errors = load.error_kinds.lock().expect("not poisoned").clone();
    if !errors.is_empty() {
        eprintln!("bench: errors seen (all phases): {errors:?}");
    }
    Ok(RegistryReport {
        setup,
        registration,
        heartbeat_only,
        measured,
        discovery,
        registry_memory_end: Memory::default(),
    })
}

/// Waits until the registry we started (not another one on the same NATS)
/// lists our discover endpoint in `$SRV.INFO.concord-registry` and answers it.
async fn wait_for_registry(
    registry: &mut ServiceProcess,
    control: &Client,
    discover: &Subject,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    loop {
        registry.check_alive()?;
        if Instant::now() > deadline {
            bail!(
                "the registry did not become ready within 60 s (log {})",
                registry.log.display()
            );
        }
        let inbox = control.new_inbox();
        let mut replies = control.subscribe(inbox.clone()).await?;
        control
            .publish_with_reply("$SRV.INFO.concord-registry", inbox, Bytes::new())
            .await?;
        let mut listed = false;
        while let Ok(Some(reply)) =
            tokio::time::timeout(Duration::from_millis(200), replies.next()).await
        {
            listed |= serde_json::from_slice::<serde_json::Value>(&reply.payload)
                .ok()
                .and_then(|info| {
                    info.get("endpoints")?.as_array().map(|endpoints| {
                        endpoints
                            .iter()
                            .any(|e| e.get("subject").and_then(|s| s.as_str()) == Some(discover))
                    })
                })
                .unwrap_or(false);
        }
        if listed {
            let reply = control
                .request_with_headers(discover.clone(), json_headers(), Bytes::from_static(b"{}"))
                .await;
            if let Ok(message) = reply
                && error_code(&message).is_none()
            {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------- report

fn ms(value: f64) -> String {
    if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.3}")
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn cores(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".into(), |v| format!("{v:.2}"))
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

impl RegistryReport {
    /// The report as Markdown (what `make bench` prints).
    pub fn markdown(&self) -> String {
        use std::fmt::Write;
        let s = &self.setup;
        let d = &self.discovery;
        let (h, m) = (&self.heartbeat_only, &self.measured);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "### Registry: {} agents heartbeating every second\n",
            s.agents
        );
        let _ = writeln!(
            out,
            "{} · {} CPUs ({}), {:.0} GiB RAM, Linux {} · nats-server {} · PostgreSQL {}\n",
            s.date,
            s.machine.cpus,
            s.machine.model,
            s.machine.memory_bytes as f64 / (1u64 << 30) as f64,
            s.machine.kernel,
            s.nats_server_version,
            s.postgres_version
        );
        let _ = writeln!(
            out,
            "{} agents, 1-3 of {} capabilities each, {} regions; heartbeats over {} NATS connections \
             in {} ticks per second; warm-up {} s; probe rate {}/s (serial, capability query / \
             filtered query / baseline in turn).\n",
            s.agents,
            s.capabilities,
            s.regions,
            s.connections,
            s.heartbeat_ticks,
            s.warmup_seconds,
            s.discover_rate
        );

        let _ = writeln!(
            out,
            "Discovery latency, one request at a time, under the heartbeat load ({:.0} s):\n",
            d.seconds
        );
        let _ = writeln!(
            out,
            "| request | samples | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | reply bytes | agents/reply |"
        );
        let _ = writeln!(
            out,
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        let row =
            |out: &mut String, name: &str, p: &Summary, bytes: Option<f64>, agents: Option<f64>| {
                let _ = writeln!(
                    out,
                    "| {name} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    p.count,
                    ms(p.p50_ms),
                    ms(p.p90_ms),
                    ms(p.p99_ms),
                    ms(p.p999_ms),
                    ms(p.max_ms),
                    bytes.map_or_else(|| "".into(), |b| format!("{b:.0}")),
                    agents.map_or_else(|| "".into(), |a| format!("{a:.1}")),
                );
            };
        row(
            &mut out,
            "discover `capability` + `liveness: [ALIVE]`, limit 10",
            &d.by_capability.latency,
            Some(d.by_capability.mean_reply_bytes),
            Some(d.by_capability.mean_agents_per_reply),
        );
        row(
            &mut out,
            "discover + `minLevel: 0.5` + `labels.region`, limit 10",
            &d.filtered.latency,
            Some(d.filtered.mean_reply_bytes),
            Some(d.filtered.mean_agents_per_reply),
        );
        row(&mut out, "all discovery", &d.all_discovery, None, None);
        row(
            &mut out,
            "baseline: trivial NATS responder",
            &d.baseline.latency,
            Some(d.baseline.mean_reply_bytes),
            None,
        );
        let ratio = |a: f64, b: f64| {
            if b > 0.0 {
                format!("{:.1}×", a / b)
            } else {
                "n/a".into()
            }
        };
        let (a, b) = (&d.all_discovery, &d.baseline.latency);
        let _ = writeln!(
            out,
            "| ratio all discovery / baseline | | {} | {} | {} | {} | | | |",
            ratio(a.p50_ms, b.p50_ms),
            ratio(a.p90_ms, b.p90_ms),
            ratio(a.p99_ms, b.p99_ms),
            ratio(a.p999_ms, b.p999_ms),
        );
        if d.errors > 0 {
            let _ = writeln!(out, "\nDiscovery errors: {}", d.errors);
        }

        let _ = writeln!(
            out,
            "\nLoad and resources (CPU in cores, averaged over each window):\n"
        );
        let _ = writeln!(
            out,
            "| | heartbeats only ({:.0} s) | heartbeats + discovery ({:.0} s) |",
            h.seconds, m.seconds
        );
        let _ = writeln!(out, "| --- | ---: | ---: |");
        let mut line = |name: &str, f: &dyn Fn(&Window) -> String| {
            let _ = writeln!(out, "| {name} | {} | {} |", f(h), f(m));
        };
        line("heartbeats acked per second", &|w| {
            format!("{:.0}", w.heartbeats_acked_per_second)
        });
        line("heartbeat errors", &|w| w.heartbeat_errors.to_string());
        line("heartbeat ack latency p50 / p99 ms", &|w| {
            format!(
                "{} / {}",
                ms(w.heartbeat_latency.p50_ms),
                ms(w.heartbeat_latency.p99_ms)
            )
        });
        line("**registry CPU**", &|w| {
            format!("**{:.2}**", w.cpu.registry)
        });
        line("registry RSS at end of window", &|w| {
            mib(w.registry_memory.rss_bytes)
        });
        line("registry peak RSS (VmHWM, since start)", &|w| {
            mib(w.registry_memory.peak_rss_bytes)
        });
        line("nats-server CPU", &|w| cores(w.cpu.nats_server));
        line("Postgres CPU (all its processes)", &|w| {
            cores(w.cpu.postgres)
        });
        let roles: std::collections::BTreeSet<&String> = h
            .cpu
            .postgres_roles
            .keys()
            .chain(m.cpu.postgres_roles.keys())
            .collect();
        for role in roles {
            line(&format!("· Postgres: {role}"), &|w| {
                format!(
                    "{:.2}",
                    w.cpu.postgres_roles.get(role).copied().unwrap_or(0.0)
                )
            });
        }
        line("load generator (this bench) CPU", &|w| {
            format!("{:.2}", w.cpu.bench)
        });
        line("everything else (machine − the above)", &|w| {
            let known = w.cpu.registry
                + w.cpu.nats_server.unwrap_or(0.0)
                + w.cpu.postgres.unwrap_or(0.0)
                + w.cpu.bench;
            format!("{:.2}", (w.cpu.machine - known).max(0.0))
        });
        line("whole machine CPU", &|w| {
            format!("{:.2} of {}", w.cpu.machine, w.cpu.machine_cpus)
        });
        line("Postgres commits/s (≈)", &|w| {
            format!("{:.0}", w.postgres.commits_per_second)
        });
        line("Postgres rows updated/s (≈)", &|w| {
            format!("{:.0}", w.postgres.rows_updated_per_second)
        });
        line(
            "`registry_agents`: HOT updates, autovacuum runs, size at end",
            &|w| {
                format!(
                    "{:.0}%, {}, {}",
                    w.postgres.hot_update_share * 100.0,
                    w.postgres.autovacuum_runs,
                    mib(w.postgres.table_bytes.max(0) as u64)
                )
            },
        );
        line("`agent.*` events", &|w| {
            if w.agent_events.is_empty() {
                "none".into()
            } else {
                w.agent_events
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        });

        let r = &self.registration;
        let _ = writeln!(
            out,
            "\nRegistration: {} agents in {:.1} s = **{:.0}/s** ({} in flight over {} connections), \
             latency p50 {} ms, p99 {} ms, {} errors.",
            r.agents,
            r.seconds,
            r.per_second,
            s.register_in_flight,
            s.connections,
            ms(r.latency.p50_ms),
            ms(r.latency.p99_ms),
            r.errors
        );

        let cpu = h.cpu.registry.max(m.cpu.registry);
        let peak = self
            .registry_memory_end
            .peak_rss_bytes
            .max(m.registry_memory.peak_rss_bytes);
        let _ = writeln!(out, "\n| target | measured | |");
        let _ = writeln!(out, "| --- | --- | --- |");
        let _ = writeln!(
            out,
            "| discovery p99 < 1 ms | {} ms | {} |",
            ms(d.all_discovery.p99_ms),
            verdict(d.all_discovery.p99_ms < 1.0 && d.all_discovery.count > 0)
        );
        let _ = writeln!(
            out,
            "| registry CPU < 0.5 core | {:.2} (heartbeats only) / {:.2} (with discovery) | {} |",
            h.cpu.registry,
            m.cpu.registry,
            verdict(cpu < 0.5)
        );
        let _ = writeln!(
            out,
            "| registry RSS < 200 MiB | peak {} | {} |",
            mib(peak),
            verdict(peak < 200 * 1024 * 1024)
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_are_valid_json_with_one_to_three_capabilities() {
        let mut rng = Rng::new(1);
        let specs = agents(500, &mut rng);
        let mut seen = std::collections::HashSet::new();
        for spec in &specs {
            let reg: serde_json::Value = serde_json::from_slice(&spec.register).unwrap();
            let caps = reg["capabilities"].as_array().unwrap();
            assert!((1..=3).contains(&caps.len()));
            for cap in caps {
                let level = cap["level"].as_f64().unwrap();
                assert!((0.05..=1.0).contains(&level));
                seen.insert(cap["name"].as_str().unwrap().to_owned());
            }
            assert!(REGIONS.contains(&reg["labels"]["region"].as_str().unwrap()));
            let beat: serde_json::Value = serde_json::from_slice(&spec.heartbeat).unwrap();
            assert_eq!(beat["agentId"], reg["id"]);
        }
        assert_eq!(seen.len(), CAPABILITIES.len());
    }

    #[test]
    fn baseline_reply_is_about_200_bytes_of_json() {
        assert!((180..=240).contains(&BASELINE_REPLY.len()));
        serde_json::from_str::<serde_json::Value>(BASELINE_REPLY).unwrap();
    }

    #[test]
    fn lanes_beat_every_agent_once_per_second() {
        for ticks in [1usize, 100, 1000] {
            for n in [1usize, 7, 99, 100, 2_501] {
                let mut beats = vec![0u32; n];
                for slot in 0..ticks {
                    for b in &mut beats[tick_slice(n, ticks, slot)] {
                        *b += 1;
                    }
                }
                assert!(beats.iter().all(|&b| b == 1), "n = {n}, ticks = {ticks}");
            }
        }
    }

    #[test]
    fn default_arguments_match_the_issue() {
        let args = RegistryArgs::default();
        assert_eq!(args.agents, 10_000);
        assert_eq!(args.seconds, 30);
    }
}
