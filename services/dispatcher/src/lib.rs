//! The dispatcher service: task intake, routing, delivery, retries, dead letters and results.
//!
//! This release registers the service on NATS (it answers `$SRV.PING`,
//! `$SRV.INFO` and `$SRV.STATS`), serves `/metrics` and shuts down cleanly;
//! its coordination endpoints arrive with their own issues.

use concord_runtime::{Service, ServiceContext, ServiceInfo};

pub mod backoff;
pub mod breaker;
pub mod routing;
pub mod streams;
pub mod submission;
pub mod task_spec;

/// Name, description and default metrics port of the dispatcher.
pub const INFO: ServiceInfo = ServiceInfo {
    name: "concord-dispatcher",
    description: "Task intake, routing, delivery, retries, dead letters and results",
    default_metrics_port: 9102,
};

/// Builds the service on connected infrastructure; tests call this in-process.
pub async fn build(context: ServiceContext) -> anyhow::Result<Service> {
    Service::start(context).await
}
