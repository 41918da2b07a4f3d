//! The registry service: agent directory: registration, heartbeats, liveness, discovery.
//!
//! This release registers the service on NATS (it answers `$SRV.PING`,
//! `$SRV.INFO` and `$SRV.STATS`), serves `/metrics` and shuts down cleanly;
//! its coordination endpoints arrive with their own issues.

pub mod directory;
pub mod liveness;
pub mod validate;

use concord_runtime::{Service, ServiceContext, ServiceInfo};

/// Name, description and default metrics port of the registry.
pub const INFO: ServiceInfo = ServiceInfo {
    name: "concord-registry",
    description: "Agent directory: registration, heartbeats, liveness, discovery",
    default_metrics_port: 9101,
};

/// Builds the service on connected infrastructure; tests call this in-process.
pub async fn build(context: ServiceContext) -> anyhow::Result<Service> {
    Service::start(context).await
}
