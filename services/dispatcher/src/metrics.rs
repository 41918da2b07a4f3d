//! The dispatcher's Prometheus metrics (all prefixed `concord_` by the registry).

use std::time::Duration;

use concord_telemetry::MetricsRegistry;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// Counters and gauges of the engine; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    pub submitted: Counter,
    pub resumed: Counter,
    pub rejected: Counter,
    pub duplicates: Counter,
    pub assigned: Counter,
    pub completed: Counter,
    pub retried: Counter,
    pub dead_lettered: Counter,
    pub cancelled: Counter,
    pub lease_expired: Counter,
    pub stale_replies: Counter,
    /// Intake pulls started again because the server had lost ours.
    pub pull_restarts: Counter,
    /// Heartbeats of agents with a key whose signature did not verify.
    pub heartbeats_refused: Counter,
    pub lookups: Counter,
    pub lookups_skipped: Counter,
    pub known_ids_bytes: Gauge,
    pub held: Gauge,
    pub queued: Gauge,
    latency: Histogram,
    /// Where a task's time goes, by stage (see [`Stage`]).
    stages: [Histogram; 3],
}

/// The stages of a task's time in the dispatcher.
#[derive(Debug, Clone, Copy)]
pub enum Stage {
    /// From the JetStream delivery to the first assignment (stored-state
    /// lookup, queueing for an agent).
    Intake = 0,
    /// One attempt: from the assignment to the last agent's answer.
    Agent = 1,
    /// From the final outcome to its commit (then result and ack).
    Commit = 2,
}

impl Stage {
    const NAMES: [&str; 3] = ["intake", "agent", "commit"];
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct StageLabels {
    stage: &'static str,
}

impl Metrics {
    pub fn register(registry: &MetricsRegistry) -> Self {
        // One family for the exposition; the engine keeps the three
        // histograms themselves (shared handles), so an observation costs no
        // label lookup.
        let stages = Family::<StageLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
        });
        let metrics = Self {
            submitted: Counter::default(),
            resumed: Counter::default(),
            rejected: Counter::default(),
            duplicates: Counter::default(),
            assigned: Counter::default(),
            completed: Counter::default(),
            retried: Counter::default(),
            dead_lettered: Counter::default(),
            cancelled: Counter::default(),
            lease_expired: Counter::default(),
            stale_replies: Counter::default(),
            pull_restarts: Counter::default(),
            heartbeats_refused: Counter::default(),
            lookups: Counter::default(),
            lookups_skipped: Counter::default(),
            known_ids_bytes: Gauge::default(),
            held: Gauge::default(),
            queued: Gauge::default(),
            latency: Histogram::new(exponential_buckets(0.000_1, 2.0, 20)),
            stages: std::array::from_fn(|index| {
                stages
                    .get_or_create(&StageLabels {
                        stage: Stage::NAMES[index],
                    })
                    .clone()
            }),
        };
        registry.register(
            "dispatcher_task_stage_seconds",
            "Time tasks spend in each stage: intake (delivery to first assignment), agent (one attempt), commit (final outcome to result)",
            stages,
        );
        let counters: [(&str, &str, &Counter); 15] = [
            (
                "dispatcher_lookups",
                "Submissions whose stored state was looked up (redeliveries, ids that may have been used)",
                &metrics.lookups,
            ),
            (
                "dispatcher_lookups_skipped",
                "First deliveries of ids certainly new (known-ids filter): no lookup",
                &metrics.lookups_skipped,
            ),
            (
                "dispatcher_tasks_submitted",
                "New tasks accepted",
                &metrics.submitted,
            ),
            (
                "dispatcher_tasks_resumed",
                "Unfinished tasks taken over after a redelivery",
                &metrics.resumed,
            ),
            (
                "dispatcher_tasks_rejected",
                "Invalid submissions dead-lettered",
                &metrics.rejected,
            ),
            (
                "dispatcher_tasks_duplicate",
                "Submissions recognised as a task already known",
                &metrics.duplicates,
            ),
            (
                "dispatcher_attempts_started",
                "Attempts sent to agents",
                &metrics.assigned,
            ),
            (
                "dispatcher_tasks_completed",
                "Tasks completed",
                &metrics.completed,
            ),
            (
                "dispatcher_attempts_retried",
                "Failed attempts scheduled again",
                &metrics.retried,
            ),
            (
                "dispatcher_tasks_dead_lettered",
                "Tasks ended in the dead-letter store",
                &metrics.dead_lettered,
            ),
            (
                "dispatcher_tasks_cancelled",
                "Tasks cancelled on request",
                &metrics.cancelled,
            ),
            (
                "dispatcher_leases_expired",
                "Attempts whose lease ran out",
                &metrics.lease_expired,
            ),
            (
                "dispatcher_stale_replies",
                "Agent replies for attempts already over",
                &metrics.stale_replies,
            ),
            (
                "dispatcher_intake_pull_restarts",
                "Intake pulls started again: submissions pending, no pull request open at the server, nothing delivered for 2 s",
                &metrics.pull_restarts,
            ),
            (
                "dispatcher_heartbeats_refused",
                "Heartbeats not used for routing: the agent has a key and the signature did not verify",
                &metrics.heartbeats_refused,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "dispatcher_known_ids_bytes",
            "Memory of the known-ids filter (0 while it is not loaded)",
            metrics.known_ids_bytes.clone(),
        );
        registry.register(
            "dispatcher_tasks_held",
            "Submissions this replica holds (unacknowledged)",
            metrics.held.clone(),
        );
        registry.register(
            "dispatcher_tasks_queued",
            "Held tasks waiting for an agent",
            metrics.queued.clone(),
        );
        registry.register(
            "dispatcher_task_duration_seconds",
            "From delivery to the dispatcher until completion",
            metrics.latency.clone(),
        );
        metrics
    }

    pub fn observe_latency(&self, latency: Duration) {
        self.latency.observe(latency.as_secs_f64());
    }

    pub fn observe_stage(&self, stage: Stage, took: Duration) {
        self.stages[stage as usize].observe(took.as_secs_f64());
    }
}
