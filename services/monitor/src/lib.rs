//! The monitor service: coordination metrics, liveness alerts and dashboards.
//!
//! This release registers the service on NATS (it answers `$SRV.PING`,
//! `$SRV.INFO` and `$SRV.STATS`), serves `/metrics` and shuts down cleanly;
//! its coordination endpoints arrive with their own issues.

use concord_runtime::{Service, ServiceContext, ServiceInfo};

/// Name, description, default metrics port and tables of the monitor.
pub const INFO: ServiceInfo = ServiceInfo {
    name: "concord-monitor",
    description: "Coordination metrics, liveness alerts and dashboards",
    default_metrics_port: 9106,
    migrations: None,
};

/// Builds the service on connected infrastructure; tests call this in-process.
pub async fn build(context: ServiceContext) -> anyhow::Result<Service> {
    Service::start(context).await
}
