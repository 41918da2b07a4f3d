//! The state service's metrics (`concord_state_*` on `/metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use crate::document::Refusal;
use crate::writer::WriteError;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Operation {
    /// create, put, patch, delete.
    pub kind: &'static str,
    /// ok, conflict, exists, not_found, invalid, too_large, fenced, unavailable.
    pub outcome: &'static str,
}

/// Counters and timings of document writes.
#[derive(Clone)]
pub struct Metrics {
    pub operations: Family<Operation, Counter>,
    pub conflicts: Counter,
    pub commit_seconds: Histogram,
}

impl Metrics {
    pub fn register(registry: &concord_telemetry::MetricsRegistry) -> Self {
        Self {
            operations: registry.add(
                "state_document_writes",
                "Document writes answered, by kind and outcome",
                Family::default(),
            ),
            conflicts: registry.add(
                "state_conflicts",
                "Compare-and-set writes refused because the document was at another version",
                Counter::default(),
            ),
            commit_seconds: registry.add(
                "state_commit_seconds",
                "Time to commit one batch of document writes",
                Histogram::new(exponential_buckets(0.000_25, 2.0, 14)),
            ),
        }
    }

    /// Counts one answered write.
    pub fn count<T>(&self, kind: &'static str, result: &Result<T, WriteError>) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(WriteError::Store(_)) => "unavailable",
            Err(WriteError::Fenced { .. }) => "fenced",
            Err(WriteError::Refused { refusal, .. }) => match refusal {
                Refusal::Conflict { .. } => {
                    self.conflicts.inc();
                    "conflict"
                }
                Refusal::Exists { .. } => "exists",
                Refusal::NotFound { .. } => "not_found",
                Refusal::PatchNotAnObject => "invalid",
                Refusal::TooLarge { .. } => "too_large",
            },
        };
        self.operations
            .get_or_create(&Operation { kind, outcome })
            .inc();
    }
}
