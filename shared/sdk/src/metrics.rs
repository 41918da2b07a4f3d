//! Prometheus metrics of an agent (`concord_agent_*` in a registry prefixed `concord`).

use concord_telemetry::MetricsRegistry;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// How an assignment ended, as counted by `agent_tasks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The handler returned an output.
    Ok,
    /// The handler returned a retryable failure.
    Retryable,
    /// The handler returned a permanent failure.
    Permanent,
    /// The handler panicked.
    Panicked,
    /// Still running when the shutdown grace ran out; handed back.
    HandedBack,
    /// Refused before running: undecodable, or a capability the agent lacks.
    Rejected,
    /// Same task and attempt as one already running; ignored.
    Duplicate,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Retryable => "failed_retryable",
            Self::Permanent => "failed_permanent",
            Self::Panicked => "panicked",
            Self::HandedBack => "handed_back",
            Self::Rejected => "rejected",
            Self::Duplicate => "duplicate",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// The agent's metrics; a no-op when the config has no registry.
#[derive(Clone, Default)]
pub(crate) struct AgentMetrics {
    inner: Option<Inner>,
}

#[derive(Clone)]
struct Inner {
    tasks: Family<OutcomeLabels, Counter>,
    duration: Histogram,
    in_flight: Gauge,
    heartbeat_failures: Counter,
    registrations: Counter,
}

impl AgentMetrics {
    pub(crate) fn new(registry: Option<&MetricsRegistry>) -> Self {
        let Some(registry) = registry else {
            return Self::default();
        };
        let inner = Inner {
            tasks: registry.add(
                "agent_tasks",
                "Task assignments received, by outcome",
                Family::default(),
            ),
            duration: registry.add(
                "agent_task_duration_seconds",
                "Time the handler took, per task attempt",
                Histogram::new(exponential_buckets(0.000_1, 2.0, 20)),
            ),
            in_flight: registry.add(
                "agent_tasks_in_flight",
                "Tasks running now",
                Gauge::default(),
            ),
            heartbeat_failures: registry.add(
                "agent_heartbeat_failures",
                "Heartbeats that got no acknowledgement",
                Counter::default(),
            ),
            registrations: registry.add(
                "agent_registrations",
                "Successful registrations, including re-registrations",
                Counter::default(),
            ),
        };
        Self { inner: Some(inner) }
    }

    pub(crate) fn task(&self, outcome: Outcome) {
        if let Some(inner) = &self.inner {
            inner
                .tasks
                .get_or_create(&OutcomeLabels {
                    outcome: outcome.label(),
                })
                .inc();
        }
    }

    pub(crate) fn duration(&self, seconds: f64) {
        if let Some(inner) = &self.inner {
            inner.duration.observe(seconds);
        }
    }

    pub(crate) fn started(&self) {
        if let Some(inner) = &self.inner {
            inner.in_flight.inc();
        }
    }

    pub(crate) fn finished(&self) {
        if let Some(inner) = &self.inner {
            inner.in_flight.dec();
        }
    }

    pub(crate) fn heartbeat_failed(&self) {
        if let Some(inner) = &self.inner {
            inner.heartbeat_failures.inc();
        }
    }

    pub(crate) fn registered(&self) {
        if let Some(inner) = &self.inner {
            inner.registrations.inc();
        }
    }
}
