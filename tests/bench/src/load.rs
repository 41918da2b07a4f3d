//! Load generation and end-to-end latency for task pipelines, independent of
//! what is measured.
//!
//! A [`LoadRunner`] publishes tasks through a [`Publish`] implementation (any
//! `Fn(TaskId) -> impl Future<Output = anyhow::Result<()>>`, e.g. one built
//! by [`jetstream_publisher`]) and counts the results that come back on a
//! subject pattern, taking each task's id from the last token of the result
//! subject (by default its trailing decimal digits, see [`trailing_number`];
//! [`LoadRunner::id_of`] changes that).
//! It runs one [`PhaseSpec`] at a time:
//!
//! - [`Offered::Rate`]: open loop, tasks on a fixed schedule (a tokio
//!   interval with [`MissedTickBehavior::Burst`]; every tick sends whatever
//!   the schedule says is due, so the rate holds even when ticks are late);
//! - [`Offered::Saturation`]: closed loop, as fast as possible with a bounded
//!   number of tasks outstanding (published, result not yet received).
//!
//! A phase is a warm-up, then the measurement window, then a drain that waits
//! for the results still outstanding. Only what the window saw counts:
//! latency (publish start → result received) of the tasks published in it,
//! throughput as the results received in it, missing results of the tasks
//! published in it, whole-machine CPU (and of any named process groups) over
//! it. Duplicates are counted over the whole phase.
//!
//! Task ids are unique across the phases of a runner, so results that
//! arrive after their phase ended are not mistaken for the next phase's.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::{Client, Message};
use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use serde::Serialize;
use tokio::sync::{Semaphore, oneshot};
use tokio::time::{Instant, MissedTickBehavior};

use crate::procfs::{GroupSample, MachineSample};
use crate::stats::Summary;

/// A task's number, unique within a [`LoadRunner`].
pub type TaskId = u64;

/// Finds the task a result message is about.
type IdOf = Arc<dyn Fn(&Message) -> Option<TaskId> + Send + Sync>;

/// Publishes one task. Implemented for every
/// `Fn(TaskId) -> impl Future<Output = anyhow::Result<()>>` closure.
///
/// The returned future should resolve once the system under test has taken
/// the task (e.g. the JetStream publish acknowledgement), not when it has
/// been processed: the runner bounds how many of these futures are pending
/// ([`PhaseSpec::max_pending_publishes`]), and an error counts as a publish
/// error whose task is not expected back.
pub trait Publish: Send + Sync + 'static {
    /// Publishes task `id`; latency is measured from just before this call.
    fn publish(&self, id: TaskId) -> BoxFuture<'static, anyhow::Result<()>>;
}

impl<F, Fut> Publish for F
where
    F: Fn(TaskId) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    fn publish(&self, id: TaskId) -> BoxFuture<'static, anyhow::Result<()>> {
        Box::pin(self(id))
    }
}

/// The body of a benchmark task: `{"id":<id>,"sentAtMicros":<unix µs>}`.
pub fn task_body(id: TaskId) -> Bytes {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    Bytes::from(format!(r#"{{"id":{id},"sentAtMicros":{micros}}}"#))
}

/// A [`Publish`] that JetStream-publishes [`task_body`] on `subject` and
/// resolves with the server's acknowledgement. Build `jetstream` with a
/// `max_ack_inflight` at least as large as the phases'
/// [`PhaseSpec::max_pending_publishes`] (the default context allows 5,000).
pub fn jetstream_publisher(
    jetstream: async_nats::jetstream::Context,
    subject: impl Into<String>,
) -> impl Publish {
    let subject = async_nats::Subject::from(subject.into());
    move |id: TaskId| {
        let jetstream = jetstream.clone();
        let subject = subject.clone();
        async move {
            let ack = jetstream
                .publish(subject, task_body(id))
                .await
                .context("JetStream publish")?;
            ack.await.context("JetStream publish acknowledgement")?;
            anyhow::Ok(())
        }
    }
}

/// The trailing decimal digits of the last token of `subject`
/// (`x.tasks.result.42` and `x.result.task-42` both give 42).
pub fn trailing_number(subject: &str) -> Option<TaskId> {
    let token = subject.rsplit('.').next()?;
    let digits = token.len() - token.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    if digits == 0 {
        return None;
    }
    token[token.len() - digits..].parse().ok()
}

/// How a phase offers load.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Offered {
    /// Open loop: `per_second` tasks a second on a fixed schedule, whatever
    /// the system under test does.
    Rate {
        /// Tasks per second.
        per_second: u32,
    },
    /// Closed loop: as fast as possible, with at most `in_flight` tasks
    /// published whose result has not arrived yet.
    Saturation {
        /// Tasks outstanding at most.
        in_flight: usize,
    },
}

impl std::fmt::Display for Offered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Offered::Rate { per_second } => write!(f, "{per_second}/s"),
            Offered::Saturation { in_flight } => write!(f, "max ({in_flight} in flight)"),
        }
    }
}

/// One phase of load.
#[derive(Debug, Clone)]
pub struct PhaseSpec {
    /// Name in the report.
    pub name: String,
    /// How load is offered.
    pub offered: Offered,
    /// Load before the measurement window, not counted.
    pub warmup: Duration,
    /// The measurement window.
    pub measure: Duration,
    /// After the window, how long to wait at most for outstanding results
    /// (and for pending publishes to resolve); what has not arrived by then
    /// is missing.
    pub drain: Duration,
    /// Pacing tick of [`Offered::Rate`]: every tick publishes the tasks
    /// due by then (at least one task's interval: at 100/s, every 10 ms).
    pub tick: Duration,
    /// Publish futures pending at most; the generator waits (and falls
    /// behind schedule, see [`PhaseReport::generator_max_lag_ms`]) when the
    /// system under test does not acknowledge fast enough.
    pub max_pending_publishes: usize,
    /// Tasks a phase can publish at most (memory: 24 bytes each, allocated
    /// 16,384 at a time as they are used).
    pub max_tasks: u64,
}

impl PhaseSpec {
    /// An open-loop phase at `per_second` tasks a second.
    pub fn rate(
        name: impl Into<String>,
        per_second: u32,
        warmup: Duration,
        measure: Duration,
    ) -> Self {
        Self::new(name, Offered::Rate { per_second }, warmup, measure)
    }

    /// A closed-loop phase with `in_flight` tasks outstanding.
    pub fn saturation(
        name: impl Into<String>,
        in_flight: usize,
        warmup: Duration,
        measure: Duration,
    ) -> Self {
        Self::new(name, Offered::Saturation { in_flight }, warmup, measure)
    }

    fn new(name: impl Into<String>, offered: Offered, warmup: Duration, measure: Duration) -> Self {
        Self {
            name: name.into(),
            offered,
            warmup,
            measure,
            drain: Duration::from_secs(10),
            tick: Duration::from_millis(1),
            max_pending_publishes: 8192,
            max_tasks: 1 << 26,
        }
    }
}

/// Processes whose CPU a phase reports, by name (e.g. `nats-server` and its
/// pid, or every process of a Postgres server).
#[derive(Debug, Clone)]
pub struct CpuGroup {
    /// Name in the report.
    pub name: String,
    /// Processes summed.
    pub pids: Vec<u32>,
}

/// What a phase measured.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    /// [`PhaseSpec::name`].
    pub name: String,
    /// [`PhaseSpec::offered`].
    pub offered: Offered,
    /// Warm-up length, seconds.
    pub warmup_seconds: f64,
    /// Measurement window, seconds (as run).
    pub seconds: f64,
    /// Tasks published in the window.
    pub published: u64,
    /// `published` per second: the rate actually offered.
    pub published_per_second: f64,
    /// Results received in the window (first result of each task).
    pub completed: u64,
    /// `completed` per second: the throughput achieved.
    pub completed_per_second: f64,
    /// Publish start → result received, of the tasks published in the
    /// window whose result arrived.
    pub latency: Summary,
    /// Results received more than once (whole phase, drain included).
    pub duplicates: u64,
    /// Tasks published in the window without a result by the end of the
    /// drain (publish errors not counted).
    pub missing: u64,
    /// Failed publishes (whole phase); the first error is in
    /// `first_publish_error`.
    pub publish_errors: u64,
    /// The first publish error, if any.
    pub first_publish_error: Option<String>,
    /// Results whose subject named no task of this phase (a late result of
    /// an earlier phase, or an unparsable subject).
    pub foreign_results: u64,
    /// Tasks published in the whole phase.
    pub total_published: u64,
    /// How far, at worst, a task of an [`Offered::Rate`] phase was published
    /// after its scheduled time, in milliseconds (0 in saturation).
    pub generator_max_lag_ms: f64,
    /// Seconds the drain took (until every result was in, or the limit).
    pub drain_seconds: f64,
    /// Average cores busy over the window: `machine` (all processes, from
    /// `/proc/stat`) and each [`CpuGroup`].
    pub cpu_cores: BTreeMap<String, f64>,
}

/// Runs phases of load against one system under test; see the module docs.
pub struct LoadRunner<P> {
    client: Client,
    results: String,
    publish: Arc<P>,
    id_of: IdOf,
    cpu_groups: Box<dyn Fn() -> Vec<CpuGroup> + Send + Sync>,
    next_id: TaskId,
}

impl<P: Publish> LoadRunner<P> {
    /// A runner that publishes with `publish` and collects results on
    /// `results` (a subject pattern such as `root.tasks.result.>`) through
    /// `client`. Task ids start at 1.
    pub fn new(client: Client, results: impl Into<String>, publish: P) -> Self {
        Self {
            client,
            results: results.into(),
            publish: Arc::new(publish),
            id_of: Arc::new(|message: &Message| trailing_number(&message.subject)),
            cpu_groups: Box::new(Vec::new),
            next_id: 1,
        }
    }

    /// How to find a task's id in a result message (default: the
    /// [`trailing_number`] of its subject). `None` counts the message as a
    /// foreign result.
    pub fn id_of(
        mut self,
        id_of: impl Fn(&Message) -> Option<TaskId> + Send + Sync + 'static,
    ) -> Self {
        self.id_of = Arc::new(id_of);
        self
    }

    /// Process groups whose CPU each phase reports; called when a window
    /// starts, so it can look for processes that come and go.
    pub fn cpu_groups(
        mut self,
        groups: impl Fn() -> Vec<CpuGroup> + Send + Sync + 'static,
    ) -> Self {
        self.cpu_groups = Box::new(groups);
        self
    }

    /// The id the next phase starts at.
    pub fn next_id(&self) -> TaskId {
        self.next_id
    }

    /// Runs one phase: warm-up, window, drain.
    pub async fn run(&mut self, spec: &PhaseSpec) -> anyhow::Result<PhaseReport> {
        let first_id = self.next_id;
        let table = Arc::new(Table::new(spec.max_tasks));
        let window = match spec.offered {
            Offered::Saturation { in_flight } => Some(Arc::new(Semaphore::new(in_flight.max(1)))),
            Offered::Rate { .. } => None,
        };
        let start = Instant::now() + Duration::from_millis(20);

        // Results first, so that no early one is lost.
        let subscription = self
            .client
            .subscribe(self.results.clone())
            .await
            .with_context(|| format!("cannot subscribe to {}", self.results))?;
        self.client.flush().await?;
        let (stop_collector, collector_stop) = oneshot::channel();
        let collector = tokio::spawn(collect(
            subscription,
            Collecting {
                table: table.clone(),
                window: window.clone(),
                first_id,
                start,
                id_of: self.id_of.clone(),
            },
            collector_stop,
        ));

        let generator = tokio::spawn(generate(
            self.publish.clone(),
            table.clone(),
            window,
            spec.clone(),
            first_id,
            start,
        ));

        let window_start = start + spec.warmup;
        let window_end = window_start + spec.measure;
        tokio::time::sleep_until(window_start).await;
        let groups = (self.cpu_groups)();
        let cpu_start = CpuSnapshot::take(&groups);
        tokio::time::sleep_until(window_end).await;
        let cpu_end = CpuSnapshot::take(&groups);
        let generated = generator.await.context("the load generator panicked")?;
        self.next_id = first_id + generated.issued;

        // Drain: until every successfully published task has its result.
        let drain_start = Instant::now();
        let expected = generated.issued - generated.errors;
        while table.distinct.load(Ordering::Acquire) < expected
            && drain_start.elapsed() < spec.drain
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let drain_seconds = drain_start.elapsed().as_secs_f64();
        // A moment for duplicates right behind the last result.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = stop_collector.send(());
        let foreign_results = collector.await.context("the result collector panicked")?;

        let window_ns = (
            window_start.duration_since(start).as_nanos() as u64,
            window_end.duration_since(start).as_nanos() as u64,
        );
        let tally = table.tally(generated.issued, window_ns);
        let seconds = spec.measure.as_secs_f64();
        let mut cpu_cores = BTreeMap::new();
        cpu_start.cores_until(&cpu_end, &mut cpu_cores);
        let mut latencies = tally.latencies;
        Ok(PhaseReport {
            name: spec.name.clone(),
            offered: spec.offered,
            warmup_seconds: spec.warmup.as_secs_f64(),
            seconds,
            published: tally.published,
            published_per_second: tally.published as f64 / seconds,
            completed: tally.completed,
            completed_per_second: tally.completed as f64 / seconds,
            latency: Summary::of(&mut latencies),
            duplicates: tally.duplicates,
            missing: tally.missing,
            publish_errors: generated.errors,
            first_publish_error: generated.first_error,
            foreign_results,
            total_published: generated.issued,
            generator_max_lag_ms: generated.max_lag_ns as f64 / 1e6,
            drain_seconds,
            cpu_cores,
        })
    }
}

/// The per-phase table as a Markdown table: offered and achieved rates,
/// latency percentiles, duplicates, missing results, machine CPU.
pub fn markdown_table(phases: &[PhaseReport]) -> String {
    let mut out = String::from(
        "| phase | offered | published/s | achieved tasks/s | p50 ms | p99 ms | p99.9 ms | max ms | duplicates | missing | machine CPU (cores) |\n\
         | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for phase in phases {
        out.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {} | {} |\n",
            phase.name,
            phase.offered,
            phase.published_per_second,
            phase.completed_per_second,
            ms(phase.latency.p50_ms),
            ms(phase.latency.p99_ms),
            ms(phase.latency.p999_ms),
            ms(phase.latency.max_ms),
            phase.duplicates,
            phase.missing,
            phase
                .cpu_cores
                .get("machine")
                .map_or_else(|| "n/a".to_owned(), |c| format!("{c:.2}")),
        ));
    }
    out.push_str(&cpu_per_task(phases));
    out
}

/// CPU time per completed task, by process, as a line per phase: what each
/// part of the pipeline costs, steadier from run to run than throughput.
pub fn cpu_per_task(phases: &[PhaseReport]) -> String {
    let mut out = String::new();
    for phase in phases {
        if phase.completed_per_second <= 0.0 || phase.cpu_cores.is_empty() {
            continue;
        }
        let parts: Vec<String> = phase
            .cpu_cores
            .iter()
            .map(|(name, cores)| format!("{name} {:.0}", cores * 1e6 / phase.completed_per_second))
            .collect();
        out.push_str(&format!(
            "\nCPU µs per task, {}: {}\n",
            phase.name,
            parts.join(", ")
        ));
    }
    out
}

/// A latency in milliseconds, three decimals below 10 ms.
pub fn ms(value: f64) -> String {
    if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.3}")
    }
}

// ---------------------------------------------------------------- internals

const CHUNK_BITS: u32 = 14;
const CHUNK: usize = 1 << CHUNK_BITS;

/// One task of a phase. Times are nanoseconds since the phase start plus
/// one (0: not yet).
#[derive(Default)]
struct Slot {
    sent: AtomicU64,
    received: AtomicU64,
    results: AtomicU32,
}

/// The tasks of a phase by index (id − first id), allocated a chunk at a
/// time: the generator writes `sent`, the collector the rest.
struct Table {
    chunks: Box<[OnceLock<Box<[Slot]>>]>,
    /// Tasks with at least one result.
    distinct: AtomicU64,
}

struct Tally {
    published: u64,
    completed: u64,
    missing: u64,
    duplicates: u64,
    latencies: Vec<u64>,
}

impl Table {
    fn new(capacity: u64) -> Self {
        let chunks = (capacity as usize).div_ceil(CHUNK).max(1);
        Self {
            chunks: (0..chunks).map(|_| OnceLock::new()).collect(),
            distinct: AtomicU64::new(0),
        }
    }

    fn capacity(&self) -> u64 {
        (self.chunks.len() * CHUNK) as u64
    }

    /// The slot of `index`, allocating its chunk.
    fn slot(&self, index: u64) -> Option<&Slot> {
        let chunk = self.chunks.get((index >> CHUNK_BITS) as usize)?;
        let chunk = chunk.get_or_init(|| (0..CHUNK).map(|_| Slot::default()).collect());
        Some(&chunk[index as usize & (CHUNK - 1)])
    }

    /// The slot of `index` if its chunk exists.
    fn existing(&self, index: u64) -> Option<&Slot> {
        let chunk = self.chunks.get((index >> CHUNK_BITS) as usize)?.get()?;
        Some(&chunk[index as usize & (CHUNK - 1)])
    }

    /// Counts the first `issued` tasks against the window `[from, to)` (ns
    /// since the phase start).
    fn tally(&self, issued: u64, (from, to): (u64, u64)) -> Tally {
        let in_window = |t: u64| t > from && t <= to; // stored as ns + 1
        let mut tally = Tally {
            published: 0,
            completed: 0,
            missing: 0,
            duplicates: 0,
            latencies: Vec::new(),
        };
        for index in 0..issued {
            let Some(slot) = self.existing(index) else {
                continue;
            };
            let sent = slot.sent.load(Ordering::Acquire);
            let received = slot.received.load(Ordering::Acquire);
            let results = u64::from(slot.results.load(Ordering::Acquire));
            tally.duplicates += results.saturating_sub(1);
            if received != 0 && in_window(received) {
                tally.completed += 1;
            }
            if sent != 0 && in_window(sent) {
                tally.published += 1;
                if received == 0 {
                    // u64::MAX marks a failed publish: not expected back.
                    tally.missing += u64::from(sent != u64::MAX);
                } else {
                    tally.latencies.push(received.saturating_sub(sent));
                }
            }
        }
        tally
    }
}

fn nanos_since(start: Instant) -> u64 {
    Instant::now().saturating_duration_since(start).as_nanos() as u64 + 1
}

/// What the generator did.
struct Generated {
    issued: u64,
    errors: u64,
    first_error: Option<String>,
    max_lag_ns: u64,
}

async fn generate<P: Publish>(
    publish: Arc<P>,
    table: Arc<Table>,
    window: Option<Arc<Semaphore>>,
    spec: PhaseSpec,
    first_id: TaskId,
    start: Instant,
) -> Generated {
    let end = start + spec.warmup + spec.measure;
    let mut state = Generated {
        issued: 0,
        errors: 0,
        first_error: None,
        max_lag_ns: 0,
    };
    let mut pending = FuturesUnordered::<BoxFuture<'static, (u64, anyhow::Result<()>)>>::new();
    let max_pending = spec.max_pending_publishes.max(1);
    let capacity = table.capacity();
    let mut full = false;

    // Publishes the next task (the caller checks the limits).
    let issue =
        |state: &mut Generated,
         pending: &mut FuturesUnordered<BoxFuture<'static, (u64, anyhow::Result<()>)>>| {
            let index = state.issued;
            let Some(slot) = table.slot(index) else {
                return false;
            };
            slot.sent.store(nanos_since(start), Ordering::Release);
            let publishing = publish.publish(first_id + index);
            pending.push(Box::pin(async move { (index, publishing.await) }));
            state.issued += 1;
            true
        };
    let settle = |state: &mut Generated, (index, result): (u64, anyhow::Result<()>)| {
        if let Err(error) = result {
            state.errors += 1;
            if state.first_error.is_none() {
                state.first_error = Some(format!("{error:#}"));
            }
            if let Some(slot) = table.existing(index) {
                slot.sent.store(u64::MAX, Ordering::Release);
            }
            if let Some(window) = &window {
                window.add_permits(1);
            }
        }
    };

    tokio::time::sleep_until(start).await;
    match spec.offered {
        Offered::Rate { per_second } => {
            let rate = f64::from(per_second);
            let total = (rate * (spec.warmup + spec.measure).as_secs_f64()) as u64;
            // One tick per task below 1/tick tasks a second: waking up for
            // nothing costs CPU that the system under test should have.
            let period = spec
                .tick
                .max(Duration::from_secs_f64(1.0 / rate.max(1e-3)))
                .max(Duration::from_micros(100));
            let mut ticks = tokio::time::interval_at(start, period);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
            while state.issued < total && !full {
                tokio::select! {
                    biased;
                    Some(done) = pending.next(), if !pending.is_empty() => settle(&mut state, done),
                    _ = ticks.tick() => {
                        let elapsed = start.elapsed();
                        let due = ((elapsed.as_secs_f64() * rate) as u64 + 1).min(total);
                        while state.issued < due && pending.len() < max_pending {
                            let scheduled = (state.issued as f64 / rate * 1e9) as u64;
                            let lag = (elapsed.as_nanos() as u64).saturating_sub(scheduled);
                            state.max_lag_ns = state.max_lag_ns.max(lag);
                            if !issue(&mut state, &mut pending) {
                                full = true;
                                break;
                            }
                        }
                        if Instant::now() >= end {
                            break;
                        }
                    }
                }
            }
        }
        Offered::Saturation { .. } => {
            let window = window.clone().expect("saturation has a window");
            let deadline = tokio::time::sleep_until(end);
            tokio::pin!(deadline);
            while !full {
                tokio::select! {
                    biased;
                    _ = &mut deadline => break,
                    Some(done) = pending.next(), if !pending.is_empty() => settle(&mut state, done),
                    permit = window.acquire(), if pending.len() < max_pending => {
                        let Ok(permit) = permit else { break };
                        permit.forget();
                        if !issue(&mut state, &mut pending) {
                            full = true;
                            break;
                        }
                        // Whatever else the window allows right now.
                        while pending.len() < max_pending {
                            let Ok(permit) = window.try_acquire() else { break };
                            permit.forget();
                            if !issue(&mut state, &mut pending) {
                                full = true;
                                break;
                            }
                        }
                    }
                }
            }
        }
    }
    if full {
        let message = format!("more than {capacity} tasks in one phase (PhaseSpec::max_tasks)");
        eprintln!("bench: load generator stopped: {message}");
        state.first_error.get_or_insert(message);
    }
    // The publishes still pending, within the drain limit.
    let deadline = Instant::now() + spec.drain;
    while !pending.is_empty() {
        match tokio::time::timeout_at(deadline, pending.next()).await {
            Ok(Some(done)) => settle(&mut state, done),
            Ok(None) => break,
            Err(_) => {
                let left = pending.len() as u64;
                state.errors += left;
                state.first_error.get_or_insert_with(|| {
                    format!("{left} publishes unacknowledged after the drain")
                });
                break;
            }
        }
    }
    state
}

/// What the collector needs.
struct Collecting {
    table: Arc<Table>,
    window: Option<Arc<Semaphore>>,
    first_id: TaskId,
    start: Instant,
    id_of: IdOf,
}

/// Records every result until `stop`; returns the number of foreign ones.
async fn collect(
    mut results: async_nats::Subscriber,
    c: Collecting,
    mut stop: oneshot::Receiver<()>,
) -> u64 {
    let mut foreign = 0;
    loop {
        let message = tokio::select! {
            message = results.next() => match message {
                Some(message) => message,
                None => break,
            },
            _ = &mut stop => break,
        };
        let now = nanos_since(c.start);
        let slot = (c.id_of)(&message)
            .and_then(|id| id.checked_sub(c.first_id))
            .and_then(|index| c.table.existing(index))
            .filter(|slot| slot.sent.load(Ordering::Acquire) != 0);
        let Some(slot) = slot else {
            foreign += 1;
            continue;
        };
        if slot.results.fetch_add(1, Ordering::AcqRel) == 0 {
            slot.received.store(now, Ordering::Release);
            c.table.distinct.fetch_add(1, Ordering::AcqRel);
            if let Some(window) = &c.window {
                window.add_permits(1);
            }
        }
    }
    let _ = results.unsubscribe().await;
    foreign
}

/// CPU counters at one instant.
struct CpuSnapshot {
    machine: Option<MachineSample>,
    groups: Vec<(String, GroupSample)>,
}

impl CpuSnapshot {
    fn take(groups: &[CpuGroup]) -> Self {
        Self {
            machine: MachineSample::take(),
            groups: groups
                .iter()
                .map(|g| (g.name.clone(), GroupSample::take(&g.pids)))
                .collect(),
        }
    }

    fn cores_until(&self, end: &CpuSnapshot, out: &mut BTreeMap<String, f64>) {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        if let (Some(start), Some(stop)) = (&self.machine, &end.machine) {
            out.insert("machine".into(), start.cores_until(stop, cpus));
        }
        for ((name, start), (_, stop)) in self.groups.iter().zip(&end.groups) {
            out.insert(name.clone(), start.cores_until(stop));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_from_the_last_token() {
        assert_eq!(trailing_number("root.tasks.result.42"), Some(42));
        assert_eq!(trailing_number("root.result.task-0042"), Some(42));
        assert_eq!(trailing_number("7"), Some(7));
        assert_eq!(trailing_number("root.tasks.result.x"), None);
        assert_eq!(trailing_number("root.tasks.result."), None);
    }

    #[test]
    fn task_bodies_are_json_with_the_id() {
        let body: serde_json::Value = serde_json::from_slice(&task_body(12)).unwrap();
        assert_eq!(body["id"], 12);
        assert!(body["sentAtMicros"].as_u64().unwrap() > 0);
    }

    #[test]
    fn table_tallies_the_window_only() {
        let table = Table::new(3 * CHUNK as u64);
        assert_eq!(table.capacity(), 3 * CHUNK as u64);
        assert!(table.slot(3 * CHUNK as u64).is_none());
        // (sent, received, results) in ns + 1; the window is (100, 200].
        let tasks = [
            (50, 120, 1),  // warm-up task completing in the window
            (150, 170, 1), // measured, 20 ns
            (160, 0, 0),   // measured, missing
            (180, 260, 2), // measured, 80 ns, completed after, duplicated
            (190, 0, 0),   // failed publish, below
            (250, 300, 1), // after the window
        ];
        for (index, &(sent, received, results)) in tasks.iter().enumerate() {
            let slot = table.slot(index as u64 + CHUNK as u64 - 2).unwrap();
            slot.sent.store(sent, Ordering::Relaxed);
            slot.received.store(received, Ordering::Relaxed);
            slot.results.store(results, Ordering::Relaxed);
        }
        table
            .slot(CHUNK as u64 + 2)
            .unwrap()
            .sent
            .store(u64::MAX, Ordering::Relaxed);
        let tally = table.tally(CHUNK as u64 + 4, (100, 200));
        assert_eq!(tally.published, 3);
        assert_eq!(tally.completed, 2);
        assert_eq!(tally.missing, 1);
        assert_eq!(tally.duplicates, 1);
        let mut latencies = tally.latencies;
        latencies.sort_unstable();
        assert_eq!(latencies, vec![20, 80]);
    }

    /// A publisher that counts its calls and fails when told to.
    fn counting(fail: bool) -> (Arc<AtomicU64>, impl Publish) {
        let calls = Arc::new(AtomicU64::new(0));
        let counter = calls.clone();
        let publish = move |_id: TaskId| {
            counter.fetch_add(1, Ordering::Relaxed);
            async move {
                if fail {
                    anyhow::bail!("refused");
                }
                anyhow::Ok(())
            }
        };
        (calls, publish)
    }

    /// On tokio's paused clock (the generator reads time only through
    /// tokio), time moves only from one timer to the next, so the schedule
    /// is exact: 10,000/s ticked every millisecond is 10 tasks per tick,
    /// and the 200 ms window gets exactly 2,000, whatever the machine's load.
    #[tokio::test(start_paused = true)]
    async fn rate_phases_publish_every_task_on_schedule() {
        let (calls, publish) = counting(false);
        let spec = PhaseSpec::rate(
            "t",
            10_000,
            Duration::from_millis(100),
            Duration::from_millis(200),
        );
        let table = Arc::new(Table::new(spec.max_tasks));
        let start = Instant::now();
        let generated = generate(Arc::new(publish), table.clone(), None, spec, 1, start).await;
        assert_eq!(generated.issued, 3000);
        assert_eq!(calls.load(Ordering::Relaxed), 3000);
        assert_eq!(generated.errors, 0);
        // Tasks due between two ticks wait for the next one: at most a tick late.
        assert!(
            generated.max_lag_ns <= 1_000_000,
            "{} ns late",
            generated.max_lag_ns
        );
        let tally = table.tally(3000, (100_000_000, 300_000_000));
        assert_eq!(tally.published, 2000);
        // Warm-up, then the window: the last tasks go out at its end.
        assert_eq!(start.elapsed(), Duration::from_millis(300));
    }

    #[tokio::test]
    async fn saturation_keeps_the_window_and_failures_free_their_place() {
        // Nothing completes: the window of 10 fills and stays full.
        let (calls, publish) = counting(false);
        let spec = PhaseSpec::saturation("t", 10, Duration::ZERO, Duration::from_millis(50));
        let window = Arc::new(Semaphore::new(10));
        let table = Arc::new(Table::new(spec.max_tasks));
        let generated = generate(
            Arc::new(publish),
            table,
            Some(window),
            spec,
            1,
            Instant::now(),
        )
        .await;
        assert_eq!(generated.issued, 10);
        assert_eq!(calls.load(Ordering::Relaxed), 10);

        // Every publish fails and gives its place back, until the table is full.
        let (_, publish) = counting(true);
        let mut spec = PhaseSpec::saturation("t", 4, Duration::ZERO, Duration::from_secs(30));
        spec.max_tasks = CHUNK as u64;
        let table = Arc::new(Table::new(spec.max_tasks));
        let generated = generate(
            Arc::new(publish),
            table,
            Some(Arc::new(Semaphore::new(4))),
            spec,
            1,
            Instant::now(),
        )
        .await;
        assert_eq!(generated.issued, CHUNK as u64);
        assert_eq!(generated.errors, CHUNK as u64);
        assert_eq!(generated.first_error.as_deref(), Some("refused"));
    }

    #[test]
    fn offered_load_reads_well() {
        assert_eq!(Offered::Rate { per_second: 5000 }.to_string(), "5000/s");
        assert_eq!(
            Offered::Saturation { in_flight: 64 }.to_string(),
            "max (64 in flight)"
        );
    }
}
