//! The consensus service: proposals, voting sessions and leader election.
//!
//! This release registers the service on NATS (it answers `$SRV.PING`,
//! `$SRV.INFO` and `$SRV.STATS`), serves `/metrics` and shuts down cleanly;
//! its coordination endpoints arrive with their own issues. The vote
//! counting rules ([`tally`]), one voting round ([`session`]: invitations,
//! deadline, signatures, duplicates, equivocation, the decision),
//! iterative rounds ([`rounds`]), the election and term rules ([`election`]) and the clustering of
//! hierarchical coordination ([`clusters`]) are pure and tested on their
//! own.

pub mod clusters;
pub mod election;
pub mod rounds;
pub mod session;
pub mod tally;

use concord_runtime::{Service, ServiceContext, ServiceInfo};

/// Name, description, default metrics port and tables of the consensus.
pub const INFO: ServiceInfo = ServiceInfo {
    name: "concord-consensus",
    description: "Proposals, voting sessions and leader election",
    default_metrics_port: 9103,
    migrations: None,
};

/// Builds the service on connected infrastructure; tests call this in-process.
pub async fn build(context: ServiceContext) -> anyhow::Result<Service> {
    Service::start(context).await
}
