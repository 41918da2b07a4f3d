//! The state service: versioned shared state, barriers and locks.
//!
//! This release registers the service on NATS (it answers `$SRV.PING`,
//! `$SRV.INFO` and `$SRV.STATS`), serves `/metrics` and shuts down cleanly;
//! its coordination endpoints arrive with their own issues.

use concord_runtime::{Service, ServiceContext, ServiceInfo};

/// Name, description, default metrics port and tables of the state.
pub const INFO: ServiceInfo = ServiceInfo {
    name: "concord-state",
    description: "Versioned shared state, barriers and locks",
    default_metrics_port: 9105,
    migrations: None,
};

/// Builds the service on connected infrastructure; tests call this in-process.
pub async fn build(context: ServiceContext) -> anyhow::Result<Service> {
    Service::start(context).await
}
