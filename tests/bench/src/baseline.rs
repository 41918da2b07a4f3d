//! The raw baseline of the dispatcher benchmark: the least a task pipeline
//! on NATS and Postgres has to do, with nothing of Concord but its `events`
//! table, to set the ceiling the dispatcher is measured against.
//!
//! Per task: JetStream publish → pull consume → one core request to a worker
//! → 3 event rows batched into Postgres → one core result message → ack.
//! Everything runs in this process, each part on its own NATS connection:
//!
//! - a work-queue stream on `<root>.tasks.submit` (file storage) with a
//!   durable pull consumer (explicit ack);
//! - the worker: answers every request on `<root>.worker` at once with a
//!   small JSON body (a no-op agent);
//! - the pipeline: pulls messages in batches, sends one request per message
//!   to the worker (up to `--worker-in-flight` at a time), then hands the
//!   three events (`task.submitted`, `task.assigned`, `task.completed`) to a
//!   group-commit writer: while batches commit (`--commit-lanes` at once,
//!   default 2), the next one accumulates (up to `--max-rows`), and a batch
//!   is one multi-row `UNNEST` insert through
//!   [`concord_store::EventStore::append_in`], on a connection per lane
//!   ([`concord_store::DirectConnections`]). Only after the commit
//!   does the writer publish each task's result on
//!   `<root>.tasks.result.<id>` and ack its JetStream message;
//! - the load ([`crate::load`]): tasks published at fixed rates, then at
//!   saturation, results collected on `<root>.tasks.result.>`.
//!
//! The run is isolated from anything else on the same servers: its own
//! subject root, stream (deleted at the end) and database (dropped at the
//! end).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use anyhow::{Context, bail};
use async_nats::jetstream::{self, consumer, stream};
use async_nats::{Client, Subject};
use bytes::Bytes;
use concord_store::{DirectConnections, EventStore, NewEvent};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::infra::{self, Rng, ScratchDatabase};
use crate::load::{self, CpuGroup, LoadRunner, PhaseReport, PhaseSpec};
use crate::procfs;

/// What the worker answers (a no-op agent's result).
const WORKER_REPLY: &str = r#"{"status":"completed","output":{"ok":true}}"#;

/// Event rows written per task.
const ROWS_PER_TASK: usize = 3;

/// Options of `concord-bench baseline`.
#[derive(Debug, Clone, clap::Args)]
pub struct BaselineArgs {
    #[command(flatten)]
    pub phases: infra::PhaseArgs,
    /// After each window, how long to wait at most for the results still
    /// outstanding, seconds.
    #[arg(long, default_value_t = 10)]
    pub drain: u64,
    /// Messages per pull request of the pipeline's consumer.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Worker requests the pipeline has in flight at most.
    #[arg(long, default_value_t = 1024)]
    pub worker_in_flight: usize,
    /// Event rows per commit at most.
    #[arg(long, default_value_t = 1000)]
    pub max_rows: usize,
    /// Commits in flight at once, each on its own connection; a new batch
    /// accumulates while they run. With 1, the commit time (about 25 ms for
    /// 1,000 rows here) caps the pipeline near 13k tasks/s with CPU to
    /// spare; 2 overlaps one commit's round trips and fsync with the other.
    #[arg(long, default_value_t = 2)]
    pub commit_lanes: usize,
    /// `max_ack_pending` of the pipeline's consumer.
    #[arg(long, default_value_t = 20_000)]
    pub max_ack_pending: i64,
    #[command(flatten)]
    pub servers: infra::Servers,
}

impl Default for BaselineArgs {
    fn default() -> Self {
        infra::defaults()
    }
}

// ---------------------------------------------------------------- results

/// The result of `concord-bench baseline`.
#[derive(Debug, Clone, Serialize)]
pub struct BaselineReport {
    /// What ran where.
    pub setup: Setup,
    /// One entry per phase, in order.
    pub phases: Vec<BaselinePhase>,
    /// Tasks published over the whole run.
    pub tasks_published: u64,
    /// Rows in the run's `events` table at the end.
    pub event_rows: i64,
    /// Tasks committed over the whole run (× 3 should be `event_rows`).
    pub tasks_committed: u64,
}

/// The run's parameters and environment.
#[derive(Debug, Clone, Serialize)]
pub struct Setup {
    /// When it ran.
    pub date: String,
    /// The machine.
    pub machine: procfs::Machine,
    /// nats-server version.
    pub nats_server_version: String,
    /// Postgres version.
    pub postgres_version: String,
    /// Subject root of the run.
    pub subject_root: String,
    /// The run's database (dropped at the end).
    pub database: String,
    /// The run's stream (deleted at the end).
    pub stream: String,
    /// `--warmup`, seconds.
    pub warmup_seconds: u64,
    /// `--batch`.
    pub pull_batch: usize,
    /// `--worker-in-flight`.
    pub worker_in_flight: usize,
    /// `--max-rows`.
    pub max_rows_per_commit: usize,
    /// `--commit-lanes`.
    pub commit_lanes: usize,
    /// `--max-ack-pending`.
    pub max_ack_pending: i64,
}

/// One phase: the load's view and the pipeline's.
#[derive(Debug, Clone, Serialize)]
pub struct BaselinePhase {
    /// Offered load, throughput, latency, CPU.
    #[serde(flatten)]
    pub load: PhaseReport,
    /// What the pipeline did over the whole phase (warm-up and drain
    /// included).
    pub pipeline: PipelineCounts,
}

/// Pipeline counters (differences over a phase).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PipelineCounts {
    /// Tasks whose events committed (then result published and acked).
    pub tasks_committed: u64,
    /// Commits.
    pub commits: u64,
    /// Event rows committed.
    pub rows: u64,
    /// `rows / commits`.
    pub rows_per_commit: f64,
    /// Time spent in commits (the `append` calls, summed over lanes),
    /// seconds.
    pub commit_seconds: f64,
    /// Mean time of a commit, milliseconds.
    pub commit_ms_mean: f64,
    /// Failed worker requests (the message is left to redelivery).
    pub request_errors: u64,
    /// Failed commits (their messages are left to redelivery).
    pub commit_errors: u64,
    /// Messages that were not a task (terminated).
    pub bad_messages: u64,
    /// Errors from the pull consumer's message stream.
    pub consumer_errors: u64,
}

#[derive(Default)]
struct Counters {
    tasks_committed: AtomicU64,
    commits: AtomicU64,
    rows: AtomicU64,
    commit_nanos: AtomicU64,
    request_errors: AtomicU64,
    commit_errors: AtomicU64,
    bad_messages: AtomicU64,
    consumer_errors: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> PipelineCounts {
        PipelineCounts {
            tasks_committed: self.tasks_committed.load(Relaxed),
            commits: self.commits.load(Relaxed),
            rows: self.rows.load(Relaxed),
            rows_per_commit: 0.0,
            commit_seconds: self.commit_nanos.load(Relaxed) as f64 / 1e9,
            commit_ms_mean: 0.0,
            request_errors: self.request_errors.load(Relaxed),
            commit_errors: self.commit_errors.load(Relaxed),
            bad_messages: self.bad_messages.load(Relaxed),
            consumer_errors: self.consumer_errors.load(Relaxed),
        }
    }
}

impl PipelineCounts {
    fn since(&self, before: &PipelineCounts) -> Self {
        let commits = self.commits - before.commits;
        let rows = self.rows - before.rows;
        Self {
            tasks_committed: self.tasks_committed - before.tasks_committed,
            commits,
            rows,
            rows_per_commit: if commits == 0 {
                0.0
            } else {
                rows as f64 / commits as f64
            },
            commit_seconds: self.commit_seconds - before.commit_seconds,
            commit_ms_mean: if commits == 0 {
                0.0
            } else {
                (self.commit_seconds - before.commit_seconds) * 1e3 / commits as f64
            },
            request_errors: self.request_errors - before.request_errors,
            commit_errors: self.commit_errors - before.commit_errors,
            bad_messages: self.bad_messages - before.bad_messages,
            consumer_errors: self.consumer_errors - before.consumer_errors,
        }
    }
}

// ---------------------------------------------------------------- the pipeline

/// A task the worker has answered, waiting for its events to commit.
struct Completed {
    id: u64,
    message: jetstream::Message,
    submitted: serde_json::Value,
    reply: serde_json::Value,
}

/// Answers every request on `subject` with [`WORKER_REPLY`] until the
/// subscription ends or `stop` fires.
async fn worker(
    client: Client,
    mut requests: async_nats::Subscriber,
    mut stop: watch::Receiver<bool>,
) {
    let body = Bytes::from_static(WORKER_REPLY.as_bytes());
    loop {
        tokio::select! {
            request = requests.next() => match request {
                Some(request) => {
                    if let Some(reply) = request.reply {
                        let _ = client.publish(reply, body.clone()).await;
                    }
                }
                None => break,
            },
            _ = stop.changed() => break,
        }
    }
}

/// Pulls tasks, asks the worker, hands answered tasks to the writer.
async fn pipeline(
    mut messages: consumer::pull::Stream,
    client: Client,
    worker: Subject,
    in_flight: usize,
    writer: mpsc::UnboundedSender<Completed>,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) {
    let mut requests = FuturesUnordered::<BoxFuture<'static, Option<Completed>>>::new();
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            Some(done) = requests.next(), if !requests.is_empty() => {
                if let Some(done) = done {
                    let _ = writer.send(done);
                }
            }
            message = messages.next(), if requests.len() < in_flight => match message {
                Some(Ok(message)) => {
                    requests.push(Box::pin(ask(message, client.clone(), worker.clone(), counters.clone())));
                }
                Some(Err(error)) => {
                    if counters.consumer_errors.fetch_add(1, Relaxed) < 5 {
                        eprintln!("bench: pipeline: consumer error: {error}");
                    }
                }
                None => break,
            },
        }
    }
}

/// One message: parse the task, one request to the worker.
async fn ask(
    message: jetstream::Message,
    client: Client,
    worker: Subject,
    counters: Arc<Counters>,
) -> Option<Completed> {
    let submitted: Option<serde_json::Value> = serde_json::from_slice(&message.payload).ok();
    let Some((submitted, id)) =
        submitted.and_then(|task| task.get("id")?.as_u64().map(|id| (task, id)))
    else {
        counters.bad_messages.fetch_add(1, Relaxed);
        let _ = message.ack_with(jetstream::AckKind::Term).await;
        return None;
    };
    let request = Bytes::from(format!(r#"{{"taskId":{id},"input":{{}}}}"#));
    match client.request(worker, request).await {
        Ok(reply) => Some(Completed {
            id,
            message,
            submitted,
            reply: serde_json::from_slice(&reply.payload).unwrap_or(serde_json::Value::Null),
        }),
        Err(error) => {
            if counters.request_errors.fetch_add(1, Relaxed) < 5 {
                eprintln!("bench: pipeline: worker request failed: {error}");
            }
            None
        }
    }
}

/// Everything a commit needs.
#[derive(Clone)]
struct Committer {
    store: EventStore,
    /// One connection per commit lane, used directly (the pool would add a
    /// ping round trip before and after every commit).
    connections: DirectConnections,
    client: Client,
    root: String,
    /// High bits of every event id of the run: event ids are derived from
    /// (run, task, event), so a redelivered task appends nothing twice.
    run: u64,
    counters: Arc<Counters>,
}

/// Group commit: while `lanes` batches commit, the next accumulates, up to
/// `max_rows` rows.
async fn writer(
    mut tasks: mpsc::UnboundedReceiver<Completed>,
    committer: Committer,
    max_rows: usize,
    lanes: usize,
) {
    let max_tasks = (max_rows / ROWS_PER_TASK).max(1);
    let lanes = lanes.max(1);
    let mut batch = Vec::with_capacity(max_tasks);
    let mut commits = FuturesUnordered::new();
    let mut open = true;
    loop {
        if !batch.is_empty() && commits.len() < lanes {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(max_tasks));
            commits.push(tokio::spawn(committer.clone().commit(full)));
        }
        if !open && batch.is_empty() && commits.is_empty() {
            break;
        }
        tokio::select! {
            biased;
            Some(_) = commits.next(), if !commits.is_empty() => {}
            task = tasks.recv(), if open && batch.len() < max_tasks => match task {
                Some(task) => {
                    batch.push(task);
                    while batch.len() < max_tasks {
                        match tasks.try_recv() {
                            Ok(task) => batch.push(task),
                            Err(_) => break,
                        }
                    }
                }
                None => open = false,
            },
            else => break,
        }
    }
}

impl Committer {
    /// Appends the batch's events in one statement; after the commit,
    /// publishes each task's result and acks its message.
    async fn commit(self, batch: Vec<Completed>) {
        let now = chrono::Utc::now();
        let mut events = Vec::with_capacity(batch.len() * ROWS_PER_TASK);
        for task in &batch {
            let aggregate_id = format!("task-{}", task.id);
            let data = [
                task.submitted.clone(),
                serde_json::json!({ "agent": "bench-worker" }),
                task.reply.clone(),
            ];
            for (sequence, (event_type, data)) in
                ["task.submitted", "task.assigned", "task.completed"]
                    .into_iter()
                    .zip(data)
                    .enumerate()
            {
                events.push(NewEvent {
                    event_id: uuid::Uuid::from_u64_pair(self.run, task.id << 2 | sequence as u64),
                    aggregate_type: "task".into(),
                    aggregate_id: aggregate_id.clone(),
                    sequence: sequence as i64 + 1,
                    event_type: event_type.into(),
                    data: data.into(),
                    trace_id: None,
                    source: "concord-bench".into(),
                    occurred_at: now,
                });
            }
        }
        let started = std::time::Instant::now();
        let appended = async {
            let mut conn = self.connections.take().await?;
            let outcome = self.store.append_in(&mut conn, &events).await?;
            conn.release();
            Ok::<_, concord_store::StoreError>(outcome)
        }
        .await;
        self.counters
            .commit_nanos
            .fetch_add(started.elapsed().as_nanos() as u64, Relaxed);
        if let Err(error) = appended {
            if self.counters.commit_errors.fetch_add(1, Relaxed) < 5 {
                eprintln!(
                    "bench: pipeline: commit of {} rows failed: {error}",
                    events.len()
                );
            }
            return;
        }
        self.counters.commits.fetch_add(1, Relaxed);
        self.counters.rows.fetch_add(events.len() as u64, Relaxed);
        self.counters
            .tasks_committed
            .fetch_add(batch.len() as u64, Relaxed);
        for task in batch {
            let result = Bytes::from(format!(r#"{{"id":{},"status":"completed"}}"#, task.id));
            let _ = self
                .client
                .publish(format!("{}.tasks.result.{}", self.root, task.id), result)
                .await;
            let _ = task.message.ack().await;
        }
    }
}

// ---------------------------------------------------------------- orchestration

/// Runs the baseline end to end, cleaning up whatever happens.
pub async fn run(args: &BaselineArgs) -> anyhow::Result<BaselineReport> {
    if args.phases.seconds == 0
        || args.batch == 0
        || args.worker_in_flight == 0
        || args.max_rows == 0
    {
        bail!("--seconds, --batch, --worker-in-flight and --max-rows must be positive");
    }
    if args.phases.rates.iter().all(|&r| r == 0) && args.phases.saturation_seconds == 0 {
        bail!("nothing to run: no positive --rates and --saturation-seconds 0");
    }
    let mut rng = Rng::from_entropy();
    let tag = rng.tag();
    let root = format!("bench{tag}");
    let database = format!("concord_bench_{tag}");
    let stream_name = format!("{}_TASKS", root.to_uppercase());
    let machine = procfs::Machine::describe();

    let control = infra::connect(&args.servers.nats_url, "concord-bench-baseline").await?;
    let nats_server_version = control.server_info().version;
    let mut admin = infra::admin_connection(&args.servers.database_url).await?;
    let postgres_version: String = sqlx::query_scalar("select current_setting('server_version')")
        .fetch_one(&mut admin)
        .await?;
    let _ = sqlx::Connection::close(admin).await;
    let postmaster = infra::postmaster(&args.servers.database_url).await;
    let nats_pid = infra::url_port(&args.servers.nats_url).and_then(procfs::listener);

    eprintln!("bench: baseline, subject root {root}, stream {stream_name}, database {database}");
    let scratch = ScratchDatabase::create(&args.servers.database_url, &database).await?;
    let setup = Setup {
        date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        machine,
        nats_server_version,
        postgres_version,
        subject_root: root.clone(),
        database: database.clone(),
        stream: stream_name.clone(),
        warmup_seconds: args.phases.warmup,
        pull_batch: args.batch,
        worker_in_flight: args.worker_in_flight,
        max_rows_per_commit: args.max_rows,
        commit_lanes: args.commit_lanes,
        max_ack_pending: args.max_ack_pending,
    };
    let cpu_groups = move || {
        let mut groups = vec![CpuGroup {
            name: "concord-bench (pipeline, worker, load)".into(),
            pids: vec![std::process::id()],
        }];
        if let Some(pid) = nats_pid {
            groups.push(CpuGroup {
                name: "nats-server".into(),
                pids: vec![pid],
            });
        }
        if let Some(postmaster) = postmaster {
            groups.push(CpuGroup {
                name: "postgres".into(),
                pids: procfs::postgres_family(postmaster),
            });
        }
        groups
    };
    let body = measure(args, setup, &control, &scratch, rng.next_u64(), cpu_groups);
    let result = tokio::select! {
        result = body => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };

    eprintln!("bench: deleting stream {stream_name} and dropping {database}");
    let _ = jetstream::new(control.clone())
        .delete_stream(&stream_name)
        .await;
    let _ = control.drain().await;
    let dropped = scratch.drop_now().await;
    let report = result?;
    dropped?;
    Ok(report)
}

async fn measure(
    args: &BaselineArgs,
    setup: Setup,
    control: &Client,
    scratch: &ScratchDatabase,
    run_id: u64,
    cpu_groups: impl Fn() -> Vec<CpuGroup> + Send + Sync + 'static,
) -> anyhow::Result<BaselineReport> {
    let root = setup.subject_root.clone();
    let lanes = args.commit_lanes.max(1);
    let pool = concord_store::connect(&scratch.url, lanes as u32 + 1).await?;
    concord_store::migrate_shared(&pool)
        .await
        .context("cannot apply the migrations to the run's database")?;
    let store = EventStore::new(pool.clone());

    // The stream and its consumer.
    let js = jetstream::new(control.clone());
    let submit = format!("{root}.tasks.submit");
    let stream = js
        .create_stream(stream::Config {
            name: setup.stream.clone(),
            subjects: vec![submit.clone()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .context("cannot create the task stream")?;
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("pipeline".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: args.max_ack_pending,
            ..Default::default()
        })
        .await
        .context("cannot create the pipeline's consumer")?;

    // The worker.
    let (stop_tx, stop_rx) = watch::channel(false);
    let worker_subject = Subject::from(format!("{root}.worker"));
    let worker_client = infra::connect(&args.servers.nats_url, "concord-bench-worker").await?;
    let requests = worker_client.subscribe(worker_subject.clone()).await?;
    worker_client.flush().await?;
    let worker_task = tokio::spawn(worker(worker_client.clone(), requests, stop_rx.clone()));

    // The pipeline and its writer.
    let counters = Arc::new(Counters::default());
    let pipeline_client = infra::connect(&args.servers.nats_url, "concord-bench-pipeline").await?;
    let messages = consumer
        .stream()
        .max_messages_per_batch(args.batch)
        .messages()
        .await
        .context("cannot start pulling tasks")?;
    let (writer_tx, writer_rx) = mpsc::unbounded_channel();
    let committer = Committer {
        connections: DirectConnections::of(&pool, lanes),
        store,
        client: pipeline_client.clone(),
        root: root.clone(),
        run: run_id,
        counters: counters.clone(),
    };
    let writer_task = tokio::spawn(writer(writer_rx, committer, args.max_rows, lanes));
    let pipeline_task = tokio::spawn(pipeline(
        messages,
        pipeline_client.clone(),
        worker_subject,
        args.worker_in_flight,
        writer_tx,
        counters.clone(),
        stop_rx,
    ));

    // The load.
    let load_client = infra::connect(&args.servers.nats_url, "concord-bench-load").await?;
    let results_client = infra::connect(&args.servers.nats_url, "concord-bench-results").await?;
    let load_js = jetstream::ContextBuilder::new()
        .max_ack_inflight(16_384)
        .build(load_client.clone());
    let mut runner = LoadRunner::new(
        results_client.clone(),
        format!("{root}.tasks.result.>"),
        load::jetstream_publisher(load_js, submit),
    )
    // Result subjects end in the task id.
    .id_of(|result| load::trailing_number(&result.subject))
    .cpu_groups(cpu_groups);

    let warmup = Duration::from_secs(args.phases.warmup);
    let mut specs: Vec<PhaseSpec> = args
        .phases
        .rates
        .iter()
        .filter(|&&rate| rate > 0)
        .map(|&rate| {
            PhaseSpec::rate(
                format!("rate {rate}/s"),
                rate,
                warmup,
                Duration::from_secs(args.phases.seconds),
            )
        })
        .collect();
    if args.phases.saturation_seconds > 0 {
        specs.push(PhaseSpec::saturation(
            "saturation",
            args.phases.saturation_in_flight,
            warmup,
            Duration::from_secs(args.phases.saturation_seconds),
        ));
    }
    let mut phases = Vec::with_capacity(specs.len());
    let mut outcome = Ok(());
    for mut spec in specs {
        spec.drain = Duration::from_secs(args.drain);
        eprintln!(
            "bench: phase {}: {} s warm-up, {} s measured",
            spec.name,
            spec.warmup.as_secs(),
            spec.measure.as_secs()
        );
        let before = counters.snapshot();
        match runner.run(&spec).await {
            Ok(report) => {
                let pipeline = counters.snapshot().since(&before);
                eprintln!(
                    "bench: {}: {:.0} tasks/s, p50 {} ms, p99 {} ms, {} missing, {} duplicates, {:.0} rows/commit, {:.1} ms/commit",
                    report.name,
                    report.completed_per_second,
                    load::ms(report.latency.p50_ms),
                    load::ms(report.latency.p99_ms),
                    report.missing,
                    report.duplicates,
                    pipeline.rows_per_commit,
                    pipeline.commit_ms_mean,
                );
                phases.push(BaselinePhase {
                    load: report,
                    pipeline,
                });
            }
            Err(error) => {
                outcome = Err(error);
                break;
            }
        }
    }

    // Stop: pipeline (its end closes the writer's channel), writer, worker.
    let _ = stop_tx.send(true);
    let _ = pipeline_task.await;
    let _ = tokio::time::timeout(Duration::from_secs(30), writer_task).await;
    let _ = worker_task.await;
    for client in [load_client, results_client, pipeline_client, worker_client] {
        let _ = client.drain().await;
    }
    outcome?;
    let tasks_published = runner.next_id() - 1;
    let event_rows: i64 = sqlx::query_scalar("select count(*) from events")
        .fetch_one(&pool)
        .await?;
    pool.close().await;
    Ok(BaselineReport {
        setup,
        phases,
        event_rows,
        tasks_published,
        tasks_committed: counters.tasks_committed.load(Relaxed),
    })
}

// ---------------------------------------------------------------- report

impl BaselineReport {
    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        let s = &self.setup;
        let mut out = String::from("## Dispatcher baseline: the raw pipeline\n\n");
        out.push_str(&format!(
            "{} on {} × {} ({:.1} GiB), Linux {}; nats-server {}, Postgres {}.\n\
             Per task: JetStream publish (file storage, work queue) → pull consume \
             (batch {}) → one core request to a no-op worker ({} in flight) → 3 event rows \
             group-committed into `events` (≤ {} rows per commit, {} commit(s) in flight) → \
             core result message → ack. Latency: publish start → result received. \
             {} s warm-up per phase excluded.\n\n",
            s.date,
            s.machine.cpus,
            s.machine.model,
            s.machine.memory_bytes as f64 / (1u64 << 30) as f64,
            s.machine.kernel,
            s.nats_server_version,
            s.postgres_version,
            s.pull_batch,
            s.worker_in_flight,
            s.max_rows_per_commit,
            s.commit_lanes,
            s.warmup_seconds,
        ));
        let loads: Vec<PhaseReport> = self.phases.iter().map(|p| p.load.clone()).collect();
        out.push_str(&load::markdown_table(&loads));

        let mut groups: Vec<&String> = Vec::new();
        for phase in &self.phases {
            for name in phase.load.cpu_cores.keys() {
                if name != "machine" && !groups.contains(&name) {
                    groups.push(name);
                }
            }
        }
        out.push_str("\n| phase | rows/commit | commits/s | ms/commit |");
        for name in &groups {
            out.push_str(&format!(" {name} (cores) |"));
        }
        out.push_str(" errors |\n| --- | ---: | ---: | ---: |");
        out.push_str(&" ---: |".repeat(groups.len()));
        out.push_str(" --- |\n");
        for phase in &self.phases {
            let p = &phase.pipeline;
            let duration =
                phase.load.warmup_seconds + phase.load.seconds + phase.load.drain_seconds;
            out.push_str(&format!(
                "| {} | {:.0} | {:.0} | {:.1} |",
                phase.load.name,
                p.rows_per_commit,
                p.commits as f64 / duration.max(1e-9),
                p.commit_ms_mean,
            ));
            for name in &groups {
                let cores = phase.load.cpu_cores.get(*name);
                out.push_str(&format!(
                    " {} |",
                    cores.map_or_else(|| "n/a".to_owned(), |c| format!("{c:.2}"))
                ));
            }
            out.push_str(&format!(" {} |\n", errors(phase)));
        }
        out.push_str(&format!(
            "\n{} tasks published, {} committed, {} event rows stored.\n",
            self.tasks_published, self.tasks_committed, self.event_rows
        ));
        out
    }
}

/// The non-zero error counts of a phase, or `none`.
fn errors(phase: &BaselinePhase) -> String {
    let p = &phase.pipeline;
    let l = &phase.load;
    let counts: BTreeMap<&str, u64> = [
        ("publish", l.publish_errors),
        ("foreign results", l.foreign_results),
        ("worker requests", p.request_errors),
        ("commits", p.commit_errors),
        ("bad messages", p.bad_messages),
        ("consumer", p.consumer_errors),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .collect();
    if counts.is_empty() {
        return "none".into();
    }
    counts
        .iter()
        .map(|(what, n)| format!("{what} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_arguments() {
        let args = BaselineArgs::default();
        assert_eq!(args.phases.rates, vec![1000, 5000, 10_000]);
        assert_eq!(args.phases.seconds, 10);
        assert_eq!(args.phases.saturation_seconds, 15);
        assert_eq!(args.batch, 500);
        assert_eq!(args.max_rows, 1000);
        assert_eq!(args.max_ack_pending, 20_000);
    }

    #[test]
    fn worker_reply_is_small_json() {
        let reply: serde_json::Value = serde_json::from_str(WORKER_REPLY).unwrap();
        assert_eq!(reply["status"], "completed");
    }

    #[test]
    fn counts_per_phase() {
        let before = PipelineCounts {
            commits: 2,
            rows: 600,
            ..Default::default()
        };
        let after = PipelineCounts {
            commits: 6,
            rows: 2600,
            tasks_committed: 900,
            ..Default::default()
        };
        let delta = after.since(&before);
        assert_eq!(delta.commits, 4);
        assert_eq!(delta.rows_per_commit, 500.0);
        assert_eq!(delta.tasks_committed, 900);
    }
}
