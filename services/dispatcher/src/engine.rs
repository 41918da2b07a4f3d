//! The dispatching engine: one task that owns every submission this replica
//! holds, from the JetStream delivery to the acknowledgement.
//!
//! Per task, on the happy path: one JetStream message in, one core request
//! to the agent (`<root>.agent.<id>.tasks`, the reply comes to this
//! replica's inbox), then one batched write of the task's events
//! (submitted, assigned, completed) and its projection row, then the result
//! on `<root>.tasks.result.<id>` and the JetStream ack. The message stays
//! unacknowledged until the outcome is committed, so a crash at any point
//! means a redelivery, which the stored row turns into a resume (or, for a
//! finished task, a re-publication of its result).
//!
//! Everything runs on the engine's own loop (no locks on the hot path);
//! Postgres work happens in the writer task and in spawned lookups, whose
//! answers come back as inputs.

mod assign;
mod effects;
mod intake;
mod outcome;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::Subscriber;
use async_nats::jetstream;
use concord_bus::Bus;
use concord_directory::SharedDirectory;
use concord_runtime::{Clock, EventPublisher};
use concord_store::{NewDeadLetter, NewEvent};
use concord_wire::v1::TaskResult;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::IdMap;
use crate::agents::Loads;
use crate::breaker::Breakers;
use crate::config::DispatcherConfig;
use crate::known_ids::{Bloom, KnownIds};
use crate::lifecycle::{Input, Task, Wake};
use crate::metrics::Metrics;
use crate::performance::Performance;
use crate::projection::{AGGREGATE, TaskEvent, TaskView};
use crate::routing::{PriorityQueue, Router};
use crate::store::{TaskStore, TaskWrite};
use crate::task_spec::TaskSpec;
use crate::writer::{WriteRequest, Written};

pub use intake::Intake;

/// How often agents that left the directory are forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Requests the endpoints hand to the engine.
pub enum Command {
    /// Cancel a held task; answers `None` when this replica does not hold it.
    Cancel {
        task_id: String,
        reason: String,
        reply: oneshot::Sender<Option<TaskResult>>,
    },
}

/// Where the engine's inputs come from.
pub struct Inputs {
    pub pulled: mpsc::Receiver<Vec<jetstream::Message>>,
    pub written: mpsc::UnboundedReceiver<Vec<Written>>,
    pub commands: mpsc::Receiver<Command>,
    pub replies: Subscriber,
    pub progress: Subscriber,
    /// `task.submitted` events (other replicas' new ids).
    pub known_feed: Subscriber,
    /// `<root>.dispatcher.cancel_queued`: ids with a queued cancellation.
    pub cancel_queued: Subscriber,
    /// Changes on each NATS disconnect and reconnect.
    pub connection: tokio::sync::watch::Receiver<u64>,
}

/// What the engine needs from the rest of the service.
pub struct Parts {
    pub config: DispatcherConfig,
    pub bus: Bus,
    /// The no-echo connection the writer publishes events on; results go
    /// out on it too, so they follow their task's events.
    pub feed: Bus,
    pub events: EventPublisher,
    pub store: TaskStore,
    pub directory: SharedDirectory,
    pub loads: Loads,
    pub writer: mpsc::UnboundedSender<WriteRequest>,
    /// Prefix of this replica's agent-reply subjects (`<inbox>.<task>.<attempt>.<n>`).
    pub inbox: String,
    pub stream_identity: String,
    pub held: Arc<AtomicUsize>,
    pub metrics: Metrics,
    /// Spawns the engine's own work (lookups, dead letters), tracked so
    /// shutdown waits for it.
    pub background: concord_runtime::Background,
    pub dead_letters: concord_runtime::DeadLetterKeeper,
}

/// A submission this replica holds.
struct Held {
    spec: TaskSpec,
    message: jetstream::Message,
    view: TaskView,
    /// `last_sequence` of the stored row (0: none yet).
    persisted: i64,
    /// Events made since the last write was sent.
    pending: Vec<NewEvent>,
    /// A write of this task is in flight (at most one at a time).
    writing: bool,
    dead_letter: Option<NewDeadLetter>,
    /// Its lifecycle: phase, attempts, agents to avoid, history.
    life: Task,
    /// When it was last extended (or delivered), for JetStream's ack wait.
    extended_at: Instant,
    waiters: Vec<oneshot::Sender<Option<TaskResult>>>,
    received: Instant,
    /// When the current stage began (for the stage histograms).
    stage_since: Option<Instant>,
    /// The final result's JSON, encoded for the last write.
    result_json: Option<bytes::Bytes>,
}

/// A finished load of the known ids: its generation and the filter.
type KnownLoad = (u64, anyhow::Result<Bloom>);

/// The engine's state.
pub struct Engine {
    config: DispatcherConfig,
    bus: Bus,
    /// Events' and results' connection (see [`Parts::feed`]).
    feed: Bus,
    events: EventPublisher,
    store: TaskStore,
    directory: SharedDirectory,
    loads: Loads,
    writer: mpsc::UnboundedSender<WriteRequest>,
    inbox: String,
    stream_identity: String,
    held_count: Arc<AtomicUsize>,
    metrics: Metrics,
    background: concord_runtime::Background,
    dead_letters: concord_runtime::DeadLetterKeeper,
    router: Router,
    breakers: Breakers,
    performance: Performance,
    /// When agents that left the directory were last forgotten.
    pruned_at: Instant,
    /// Boxed: a `Held` is about 1.5 KB, moved on every insert and resize.
    tasks: IdMap<Box<Held>>,
    /// Untargeted tasks ready for an agent, per capability.
    queues: HashMap<String, PriorityQueue<String>>,
    /// Tasks that name their agents (DIRECT or `targets`), tried one by one.
    targeted: BTreeMap<(Reverse<u32>, u64), String>,
    /// Capabilities whose queue may make progress.
    dirty: HashSet<String>,
    /// The targeted tasks may make progress.
    targeted_dirty: bool,
    /// Per capability, the last agent id of the previous routing window.
    windows: HashMap<String, String>,
    /// Since when each capability has had no eligible agent (busy does not count).
    no_agent_since: HashMap<String, Instant>,
    /// Tasks' timers (lease checks, retry delays), soonest first.
    timers: BinaryHeap<Reverse<(Instant, String, Wake)>>,
    /// Tasks with events not yet written, oldest first.
    deferred: VecDeque<(Instant, String)>,
    looked: (
        mpsc::UnboundedSender<intake::Looked>,
        mpsc::UnboundedReceiver<intake::Looked>,
    ),
    /// Submissions waiting for the next lookup, in arrival order.
    awaiting_lookup: Vec<Intake>,
    /// A lookup is under way.
    lookup_running: bool,
    /// Ids the store may hold (first deliveries of other ids skip the lookup).
    known: KnownIds,
    known_loaded: (
        mpsc::UnboundedSender<KnownLoad>,
        mpsc::UnboundedReceiver<KnownLoad>,
    ),
    /// No new load of the known ids before then (after a failure).
    known_retry_at: Instant,
    started: Instant,
    clock: Arc<dyn Clock>,
    /// The effects of the step being carried out (one buffer, reused).
    effects: Vec<crate::lifecycle::Effect>,
    rng: u64,
}

impl Engine {
    pub fn new(parts: Parts) -> anyhow::Result<Self> {
        let router = Router::new(parts.config.default_strategy, parts.config.weights)?;
        let breakers = Breakers::new(parts.config.breaker);
        // Every moment the engine acts on (leases, delays, deadlines, stage
        // timings) comes from the configured clock.
        let clock = parts.config.clock.clone();
        // Jitter only needs to differ between replicas and restarts.
        let seed = (clock.now().timestamp_nanos_opt().unwrap_or(0) as u64) ^ 0x9e37_79b9_7f4a_7c15;
        let now = clock.instant();
        Ok(Self {
            config: parts.config,
            bus: parts.bus,
            feed: parts.feed,
            events: parts.events,
            store: parts.store,
            directory: parts.directory,
            loads: parts.loads,
            writer: parts.writer,
            inbox: parts.inbox,
            stream_identity: parts.stream_identity,
            held_count: parts.held,
            metrics: parts.metrics,
            background: parts.background,
            dead_letters: parts.dead_letters,
            router,
            breakers,
            performance: Performance::default(),
            pruned_at: now,
            tasks: IdMap::default(),
            queues: HashMap::new(),
            targeted: BTreeMap::new(),
            dirty: HashSet::new(),
            targeted_dirty: false,
            no_agent_since: HashMap::new(),
            windows: HashMap::new(),
            timers: BinaryHeap::new(),
            deferred: VecDeque::new(),
            looked: mpsc::unbounded_channel(),
            awaiting_lookup: Vec::new(),
            lookup_running: false,
            known: KnownIds::new(),
            known_loaded: mpsc::unbounded_channel(),
            known_retry_at: now,
            started: now,
            clock,
            effects: Vec::with_capacity(16),
            rng: seed | 1,
        })
    }

    /// Runs until `stop`, then hands back what it holds (see [`Engine::hand_back`]).
    pub async fn run(mut self, mut inputs: Inputs, stop: CancellationToken, grace: Duration) {
        let mut tick = tokio::time::interval(self.config.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut extend = tokio::time::interval(self.config.ack_wait / 3);
        extend.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        inputs.connection.mark_unchanged();
        self.load_known(false);
        loop {
            let next_timer = self
                .timers
                .peek()
                .map(|Reverse((at, _, _))| *at)
                .unwrap_or_else(|| self.clock.instant() + Duration::from_secs(3600));
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                Some(written) = inputs.written.recv() => self.on_written(written).await,
                Some(message) = inputs.replies.next() => self.on_reply(message).await,
                Some(looked) = self.looked.1.recv() => self.on_looked(looked).await,
                Some(message) = inputs.progress.next() => self.on_progress(message).await,
                Some(command) = inputs.commands.recv() => self.on_command(command).await,
                Some(batch) = inputs.pulled.recv() => self.on_pulled(batch).await,
                Some(message) = inputs.known_feed.next() => self.on_known_event(&message),
                Some(message) = inputs.cancel_queued.next() => self.on_cancel_queued(&message),
                Some((generation, loaded)) = self.known_loaded.1.recv() => self.on_known_loaded(generation, loaded),
                Ok(()) = inputs.connection.changed() => {
                    // Events may have been missed while disconnected.
                    self.load_known(true);
                }
                _ = tokio::time::sleep_until(next_timer.into()) => self.on_timers().await,
                _ = tick.tick() => self.on_tick(),
                _ = extend.tick() => self.extend_acks().await,
            }
            self.pump().await;
            self.held_count.store(self.tasks.len(), Ordering::Relaxed);
            self.metrics.held.set(self.tasks.len() as i64);
        }
        drop(inputs.pulled);
        self.hand_back(&mut inputs.written, grace).await;
    }

    /// On shutdown: submissions not yet final go back to JetStream at once
    /// (another replica, or this one restarted, takes them over from their
    /// stored state); final ones wait up to `grace` for their commit.
    async fn hand_back(
        &mut self,
        written: &mut mpsc::UnboundedReceiver<Vec<Written>>,
        grace: Duration,
    ) {
        let ids: Vec<String> = self.tasks.keys().cloned().collect();
        let mut handed = 0usize;
        for id in ids {
            let is_final = self.tasks[&id].life.is_final();
            if is_final {
                continue;
            }
            if let Some(held) = self.tasks.remove(&id) {
                for agent in held.life.working_agents() {
                    self.loads.adjust_own(&agent, -1);
                    self.breakers.release_probe(&agent);
                }
                concord_bus::jetstream::nak(&held.message, None).await;
                handed += 1;
            }
        }
        if handed > 0 {
            tracing::info!(tasks = handed, "handed unfinished tasks back to JetStream");
        }
        let deadline = tokio::time::Instant::now() + grace;
        while self
            .tasks
            .values()
            .any(|h| h.writing || !h.pending.is_empty())
        {
            self.flush_deferred(true);
            match tokio::time::timeout_at(deadline, written.recv()).await {
                Ok(Some(report)) => self.on_written(report).await,
                _ => break,
            }
        }
        let _ = self.bus.client.flush().await;
    }

    fn now_ms(&self) -> u64 {
        self.clock
            .instant()
            .saturating_duration_since(self.started)
            .as_millis() as u64
    }

    /// A uniform sample in 0..1 (xorshift; jitter needs no more).
    fn sample(&mut self) -> f64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Appends `event` to the task's history (view and pending events).
    fn record(&mut self, task_id: &str, event: TaskEvent) {
        let Some(held) = self.tasks.get_mut(task_id) else {
            return;
        };
        let sequence = held.view.last_sequence + 1;
        let stored = self.events.event(
            AGGREGATE,
            task_id,
            sequence,
            event.event_type(),
            event.data(),
        );
        match event {
            TaskEvent::Submitted { task } if held.view.last_sequence == 0 => {
                held.view = TaskView::submitted(task, sequence, stored.occurred_at);
            }
            event => held.view.apply(sequence, &event, stored.occurred_at),
        }
        if held.pending.is_empty() && !held.writing {
            self.deferred
                .push_back((self.clock.instant(), task_id.to_string()));
        }
        held.pending.push(stored);
    }

    /// Sends the task's pending events (and row) to the writer, unless a
    /// write is already in flight (the next goes when it lands).
    fn send_write(&mut self, task_id: &str) {
        let Some(held) = self.tasks.get_mut(task_id) else {
            return;
        };
        if held.writing || held.pending.is_empty() {
            return;
        }
        held.writing = true;
        let events = std::mem::take(&mut held.pending);
        let dead_letter = if held.life.is_final() {
            held.dead_letter.take()
        } else {
            None
        };
        let write = TaskWrite::new(&held.view, held.persisted, events);
        if held.life.is_final() {
            // Published as is once this write lands.
            held.result_json = Some(write.row.result.clone());
        }
        let request = WriteRequest { write, dead_letter };
        if self.writer.send(request).is_err() {
            tracing::error!("task writer stopped; submissions stay unacknowledged");
        }
    }

    /// Writes the events of tasks that have waited `event_delay` (or all).
    fn flush_deferred(&mut self, all: bool) {
        let now = self.clock.instant();
        while let Some((since, _)) = self.deferred.front() {
            if !all && now.saturating_duration_since(*since) < self.config.event_delay {
                break;
            }
            let (_, task_id) = self.deferred.pop_front().expect("peeked");
            self.send_write(&task_id);
        }
    }

    fn on_tick(&mut self) {
        self.flush_deferred(false);
        if self.known.wants_load() && self.clock.instant() >= self.known_retry_at {
            self.load_known(false);
        }
        // Re-try every queue: agents may have appeared, heartbeats may show
        // free capacity, breakers may have cooled down.
        for (capability, queue) in &self.queues {
            if !queue.is_empty() {
                self.dirty.insert(capability.clone());
            }
        }
        self.targeted_dirty |= !self.targeted.is_empty();
        if self
            .clock
            .instant()
            .saturating_duration_since(self.pruned_at)
            >= PRUNE_EVERY
        {
            self.forget_departed_agents();
        }
        self.metrics.queued.set(
            self.queues.values().map(|q| q.len()).sum::<usize>() as i64
                + self.targeted.len() as i64,
        );
    }

    /// Drops the performance figures and breakers of agents no longer in the
    /// directory, so that their memory is bounded by the live fleet.
    fn forget_departed_agents(&mut self) {
        self.pruned_at = self.clock.instant();
        let directory = self.directory.read().expect("directory lock");
        self.performance
            .retain(|agent| directory.get(agent).is_some());
        self.breakers.retain(|agent| directory.get(agent).is_some());
    }

    /// Starts loading the known-ids filter from the store (`forget`: drop
    /// the current one first).
    fn load_known(&mut self, forget: bool) {
        let Some(generation) = self.known.begin_load(forget) else {
            return;
        };
        self.metrics.known_ids_bytes.set(self.known.bytes() as i64);
        let store = self.store.clone();
        let answer = self.known_loaded.0.clone();
        self.background.spawn(async move {
            let _ = answer.send((generation, store.known_ids().await));
        });
    }

    fn on_known_loaded(&mut self, generation: u64, loaded: anyhow::Result<Bloom>) {
        match loaded {
            Ok(filter) => {
                tracing::debug!(
                    ids = filter.count(),
                    bytes = filter.bytes(),
                    "known task ids loaded"
                );
                self.known.loaded(generation, filter);
            }
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "cannot load the known task ids; every submission is looked up until they load");
                self.known.load_failed(generation);
                self.known_retry_at = self.clock.instant() + Duration::from_secs(1);
            }
        }
        self.metrics.known_ids_bytes.set(self.known.bytes() as i64);
    }

    /// Another replica's `task.submitted` event: its id is in the store.
    fn on_known_event(&mut self, message: &async_nats::Message) {
        #[derive(serde::Deserialize)]
        struct Submitted<'a> {
            #[serde(rename = "aggregateId", borrow)]
            aggregate_id: std::borrow::Cow<'a, str>,
        }
        let Ok(event) = serde_json::from_slice::<Submitted>(&message.payload) else {
            return;
        };
        // Ids already in the filter (this replica's own, mostly) need no
        // second insertion; while it loads, every id is kept for it.
        if !self.known.is_loaded() || !self.known.may_be_known(&event.aggregate_id) {
            self.known.insert(&event.aggregate_id);
        }
    }

    /// A cancellation was queued for a task no replica holds: its id must be
    /// looked up when its submission arrives (where the cancellation is
    /// found), so the known-ids filter must not call it new.
    fn on_cancel_queued(&mut self, message: &async_nats::Message) {
        if let Ok(cancel) = concord_wire::codec::decode::<concord_wire::v1::CancelTask>(
            concord_wire::codec::ContentType::Json,
            &message.payload,
        ) {
            self.known.insert(&cancel.task_id);
        }
    }

    /// Acknowledges a submission on the connection its result was just
    /// published on (the events connection), so the server receives the
    /// result before the ack: a replica killed in between leaves the
    /// submission unacknowledged (redelivered, its result re-published),
    /// never acknowledged with its result lost. On the other connection the
    /// ack could overtake the result.
    pub(super) async fn ack_after_result(&self, message: &jetstream::Message) {
        if let Some(reply) = &message.reply {
            let ack = bytes::Bytes::from_static(b"+ACK");
            if let Err(error) = self.feed.client.publish(reply.clone(), ack).await {
                tracing::debug!(%error, "cannot acknowledge a submission; it will be redelivered");
            }
        }
    }

    /// Tells JetStream that long-held submissions are still being worked on.
    async fn extend_acks(&mut self) {
        let now = self.clock.instant();
        let threshold = self.config.ack_wait / 3;
        for held in self.tasks.values_mut() {
            if now.saturating_duration_since(held.extended_at) >= threshold {
                held.extended_at = now;
                concord_bus::jetstream::in_progress(&held.message).await;
            }
        }
    }

    async fn on_timers(&mut self) {
        let now = self.clock.instant();
        while let Some(Reverse((at, _, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Reverse((_, task_id, wake)) = self.timers.pop().expect("peeked");
            self.step(&task_id, Input::Woke(wake)).await;
        }
    }

    async fn on_command(&mut self, command: Command) {
        match command {
            Command::Cancel {
                task_id,
                reason,
                reply,
            } => self.cancel(&task_id, &reason, reply).await,
        }
    }
}
