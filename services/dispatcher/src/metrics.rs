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
        let counter = |name: &str, help: &str| registry.add(name, help, Counter::default());
        let gauge = |name: &str, help: &str| registry.add(name, help, Gauge::default());
        let metrics = Self {
            submitted: counter("dispatcher_tasks_submitted", "New tasks accepted"),
            resumed: counter(
                "dispatcher_tasks_resumed",
                "Unfinished tasks taken over after a redelivery",
            ),
            rejected: counter(
                "dispatcher_tasks_rejected",
                "Invalid submissions dead-lettered",
            ),
            duplicates: counter(
                "dispatcher_tasks_duplicate",
                "Submissions recognised as a task already known",
            ),
            assigned: counter("dispatcher_attempts_started", "Attempts sent to agents"),
            completed: counter("dispatcher_tasks_completed", "Tasks completed"),
            retried: counter(
                "dispatcher_attempts_retried",
                "Failed attempts scheduled again",
            ),
            dead_lettered: counter(
                "dispatcher_tasks_dead_lettered",
                "Tasks ended in the dead-letter store",
            ),
            cancelled: counter("dispatcher_tasks_cancelled", "Tasks cancelled on request"),
            lease_expired: counter("dispatcher_leases_expired", "Attempts whose lease ran out"),
            stale_replies: counter(
                "dispatcher_stale_replies",
                "Agent replies for attempts already over",
            ),
            pull_restarts: counter(
                "dispatcher_intake_pull_restarts",
                "Intake pulls started again: submissions pending, no pull request open at the server, nothing delivered for 2 s",
            ),
            heartbeats_refused: counter(
                "dispatcher_heartbeats_refused",
                "Heartbeats not used for routing: the agent has a key and the signature did not verify",
            ),
            lookups: counter(
                "dispatcher_lookups",
                "Submissions whose stored state was looked up (redeliveries, ids that may have been used)",
            ),
            lookups_skipped: counter(
                "dispatcher_lookups_skipped",
                "First deliveries of ids certainly new (known-ids filter): no lookup",
            ),
            known_ids_bytes: gauge(
                "dispatcher_known_ids_bytes",
                "Memory of the known-ids filter (0 while it is not loaded)",
            ),
            held: gauge(
                "dispatcher_tasks_held",
                "Submissions this replica holds (unacknowledged)",
            ),
            queued: gauge("dispatcher_tasks_queued", "Held tasks waiting for an agent"),
            latency: registry.add(
                "dispatcher_task_duration_seconds",
                "From delivery to the dispatcher until completion",
                Histogram::new(exponential_buckets(0.000_1, 2.0, 20)),
            ),
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
        metrics
    }

    pub fn observe_latency(&self, latency: Duration) {
        self.latency.observe(latency.as_secs_f64());
    }

    pub fn observe_stage(&self, stage: Stage, took: Duration) {
        self.stages[stage as usize].observe(took.as_secs_f64());
    }
}
