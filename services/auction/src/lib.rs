//! The auction service: auctions, contract net and coalition formation.
//!
//! This release registers the service on NATS (it answers `$SRV.PING`,
//! `$SRV.INFO` and `$SRV.STATS`), serves `/metrics` and shuts down cleanly;
//! its coordination endpoints arrive with their own issues.

use concord_runtime::{Service, ServiceContext, ServiceInfo};

/// Name, description, default metrics port and tables of the auction.
pub const INFO: ServiceInfo = ServiceInfo {
    name: "concord-auction",
    description: "Auctions, contract net and coalition formation",
    default_metrics_port: 9104,
    migrations: None,
};

/// Builds the service on connected infrastructure; tests call this in-process.
pub async fn build(context: ServiceContext) -> anyhow::Result<Service> {
    Service::start(context).await
}
