//! [`run`]: connects, registers, serves tasks until shutdown, then drains.

mod cancel;
mod registry;
mod tasks;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use concord_bus::{Bus, Shutdown};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::AgentMetrics;
use crate::{Agent, AgentConfig, AgentError, AgentKey, protocol};

/// How long aborted task runners may take to unwind after the grace period.
const ABORT_WAIT: Duration = Duration::from_secs(1);

/// How long the final drain of the connection may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `agent` until `shutdown` is triggered, then shuts it down gracefully.
///
/// In order:
///
/// 1. Connects to NATS (a failed first connection is an error; later
///    outages are reconnected) and subscribes to `<root>.agent.<id>.tasks`
///    and `<root>.agent.<id>.cancel`.
/// 2. Registers on `<root>.registry.register`. A refusal (bad field, id held
///    by another public key) ends `run` with [`AgentError::Register`];
///    timeouts and absent registries are retried with backoff.
/// 3. Heartbeats every [`AgentConfig::heartbeat_interval`] with the real
///    number of running tasks. A `NOT_FOUND` reply (the registry forgot the
///    agent) triggers a re-registration; `AGENT_REMOVED` (an operator
///    removed it) shuts the agent down as in step 5, without deregistering,
///    and `run` returns [`AgentError::Removed`]; failed heartbeats (NATS or
///    the registry restarting) are logged and the loop carries on. With a
///    key ([`AgentConfig::agent_key`]) every registry request is signed.
/// 4. Runs each assignment in its own task, at most
///    [`AgentConfig::max_concurrency`] at once: while all slots are taken, no
///    further message is taken from the subscription. Each gets one reply,
///    an `AgentResult`, in the encoding of the assignment. A second delivery
///    of an attempt (same task id and attempt) that is still running is
///    ignored: the handler runs once and only the first delivery is
///    answered. A delivery after the attempt finished runs it again.
/// 5. On shutdown: unsubscribes from tasks (assignments already buffered are
///    handed back at once), heartbeats capacity 0, lets running tasks finish
///    for up to [`AgentConfig::shutdown_grace`], then cancels the rest and
///    answers them with a retryable `TaskError` coded `agent_shutdown` so the
///    dispatcher re-routes them; deregisters; drains the connection.
///
/// Returns `Ok(())` after a graceful shutdown, also when shutdown came
/// before the registry first answered.
///
/// ```no_run
/// use concord_sdk::bus::{BusConfig, Shutdown};
/// use concord_sdk::{Agent, AgentConfig, Capability, Task, TaskContext, TaskFailure, capability};
/// use serde_json::Value;
///
/// struct Echo;
///
/// impl Agent for Echo {
///     fn capabilities(&self) -> Vec<Capability> {
///         vec![capability("echo", 1.0)]
///     }
///     async fn handle(&self, task: Task, _ctx: TaskContext) -> Result<Value, TaskFailure> {
///         Ok(task.payload)
///     }
/// }
///
/// # async fn example() -> Result<(), concord_sdk::AgentError> {
/// let config = AgentConfig::new("echo", BusConfig::new("nats://127.0.0.1:4222", "echo"));
/// concord_sdk::run(Echo, config, Shutdown::on_signals()).await?;
/// # Ok(())
/// # }
/// ```
pub async fn run<A: Agent>(
    agent: A,
    config: AgentConfig,
    shutdown: Shutdown,
) -> Result<(), AgentError> {
    config.validate()?;
    let agent_id = config.agent_id()?;
    let key = config.agent_key()?;
    if key.is_none() {
        tracing::warn!(
            agent_id = %agent_id,
            "the agent has no key: its requests go unsigned and anyone could act as it (set a key file)"
        );
    }
    let bus = concord_bus::connect(&config.nats).await?;
    let shared = Arc::new(Shared {
        agent,
        metrics: AgentMetrics::new(config.metrics.as_ref()),
        bus,
        agent_id,
        key,
        config,
        shutdown: shutdown.clone(),
        removed: Mutex::new(None),
        running: Mutex::new(HashMap::new()),
        capabilities: RwLock::new(HashSet::new()),
        draining: AtomicBool::new(false),
        heartbeat_now: Notify::new(),
    });
    let outcome = serve(&shared, &shutdown).await;
    // Flushes the last replies and the deregistration before returning.
    shared.bus.close(CLOSE_TIMEOUT).await;
    outcome
}

/// State shared by the intake loop, the task runners, the heartbeat and the cancel listener.
pub(crate) struct Shared<A> {
    agent: A,
    bus: Bus,
    agent_id: String,
    /// Signs the registry requests (`None`: they go unsigned).
    key: Option<AgentKey>,
    config: AgentConfig,
    /// The run's shutdown, triggered when an operator removes the agent.
    shutdown: Shutdown,
    /// Set when the registry answered `AGENT_REMOVED`: its message.
    removed: Mutex<Option<String>>,
    /// Attempts running now, by (task id, attempt); its size is the in-flight count.
    running: Mutex<HashMap<tasks::TaskKey, tasks::Running>>,
    /// Capability names of the last registration.
    capabilities: RwLock<HashSet<String>>,
    /// Set once shutdown began: heartbeats then report capacity 0.
    draining: AtomicBool,
    /// Wakes the heartbeat loop for an immediate heartbeat.
    heartbeat_now: Notify,
    metrics: AgentMetrics,
}

impl<A> Shared<A> {
    fn in_flight(&self) -> usize {
        self.running
            .lock()
            .expect("running-set lock poisoned")
            .len()
    }

    fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

async fn serve<A: Agent>(shared: &Arc<Shared<A>>, shutdown: &Shutdown) -> Result<(), AgentError> {
    let subjects = &shared.bus.subjects;
    let tasks_subject = protocol::agent_tasks(subjects, &shared.agent_id);
    let cancel_subject = protocol::agent_cancel(subjects, &shared.agent_id);
    // Listen before registering: the registry may route work as soon as it knows us.
    let mut assignments = subscribe(&shared.bus, &tasks_subject).await?;
    let cancels = subscribe(&shared.bus, &cancel_subject).await?;

    if !registry::register_at_start(shared, shutdown).await? {
        tracing::info!(agent_id = %shared.agent_id, "shutdown before registration completed");
        return Ok(());
    }
    tracing::info!(
        agent_id = %shared.agent_id,
        subject = %tasks_subject,
        max_concurrency = shared.config.max_concurrency,
        "agent registered; taking tasks"
    );

    let heartbeat_stop = CancellationToken::new();
    let heartbeat = tokio::spawn(registry::heartbeat_loop(
        shared.clone(),
        heartbeat_stop.clone(),
    ));
    let cancel_stop = CancellationToken::new();
    let canceller = tokio::spawn(cancel::listen(shared.clone(), cancels, cancel_stop.clone()));
    let tracker = TaskTracker::new();

    tasks::take(shared, &mut assignments, &tracker, shutdown).await;

    let grace = shared.config.shutdown_grace;
    tracing::info!(
        agent_id = %shared.agent_id,
        running = shared.in_flight(),
        ?grace,
        "shutting down: taking no new tasks, letting running ones finish"
    );
    shared.draining.store(true, Ordering::Release);
    if let Err(error) = assignments.unsubscribe().await {
        tracing::warn!(%error, subject = %tasks_subject, "unsubscribe failed");
    }
    // Tell the registry at once that no more work fits here.
    shared.heartbeat_now.notify_one();
    tasks::hand_back_buffered(shared, &mut assignments).await;
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tasks::hand_back_running(shared).await;
        // Aborted runners end at their next await; one stuck in blocking
        // code cannot be stopped, and must not hold up the exit.
        if tokio::time::timeout(ABORT_WAIT, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("a task handler did not stop after being aborted; leaving it behind");
        }
    }

    cancel_stop.cancel();
    let _ = canceller.await;
    heartbeat_stop.cancel();
    let _ = heartbeat.await;
    let removed = shared.removed.lock().expect("removed lock poisoned").take();
    if let Some(reason) = removed {
        // The registry has already taken the agent out.
        tracing::info!(agent_id = %shared.agent_id, "agent stopped after its removal");
        return Err(AgentError::Removed {
            agent_id: shared.agent_id.clone(),
            reason,
        });
    }
    registry::deregister(shared).await;
    tracing::info!(agent_id = %shared.agent_id, "agent stopped");
    Ok(())
}

async fn subscribe(bus: &Bus, subject: &str) -> Result<async_nats::Subscriber, AgentError> {
    bus.client
        .subscribe(subject.to_string())
        .await
        .map_err(|error| AgentError::Subscribe {
            subject: subject.to_string(),
            reason: error.to_string(),
        })
}

/// Exponential backoff for retries of the first registration.
fn next_backoff(current: Duration) -> Duration {
    (current * 2).min(Duration::from_secs(5))
}
