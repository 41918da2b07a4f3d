//! The state service: versioned shared documents with history, barriers,
//! locks and workflow stage state.
//!
//! Requests (service `concord-state`, queue group `q`): `<root>.state.create`,
//! `.get`, `.put`, `.patch`, `.delete`, `.list`, `.history`, `.reconcile`,
//! `.snapshot.{take,get,list,restore}`, `.lock.{acquire,renew,release,check,
//! get,list}`, `.barrier.{create,arrive,get}`, `.workflow.{create,step,get,
//! list}`.
//!
//! Documents live in Postgres (`state_documents`); every change is a
//! `document.*` event in the event store (which is also the document's
//! history) and on `<root>.events.state.document.*`, and is published on
//! `<root>.state.changed.<namespace>.<key>`. The rules are pure modules
//! ([`document`], [`merge_patch`], [`key`], [`lock`], [`barrier`],
//! [`workflow`]); the writers commit writes in batches. See
//! docs/PROTOCOL.md.

pub mod app;
pub mod barrier;
pub(crate) mod barrier_table;
pub mod config;
pub mod document;
pub(crate) mod handlers;
pub(crate) mod identity;
pub mod key;
pub mod lock;
pub(crate) mod lock_table;
pub mod merge_patch;
pub(crate) mod metrics;
pub(crate) mod owners;
pub(crate) mod snapshot_table;
pub(crate) mod store;
pub(crate) mod sweep;
pub mod workflow;
pub(crate) mod workflow_table;
pub(crate) mod writer;

use concord_runtime::{Service, ServiceContext, ServiceInfo};

pub use app::State;
pub use config::{StateArgs, StateConfig};

/// Aggregate type of document events (`<root>.events.state.document.<kind>`).
pub const AGGREGATE: &str = "state.document";

/// The state service's tables (`migrations/state/`).
fn migrations() -> concord_store::Migrator {
    sqlx::migrate!("../../migrations/state")
}

/// Name, description, default metrics port and tables of the state service.
pub const INFO: ServiceInfo = ServiceInfo {
    name: "concord-state",
    description: "Versioned shared state, barriers and locks",
    default_metrics_port: 9105,
    migrations: Some(migrations),
};

/// `<root>.state.changed.<namespace>.<key with / as .>`: where a key's
/// changes are published.
pub fn changed_subject(bus: &concord_bus::Bus, key: &key::DocKey) -> String {
    bus.subjects
        .join(&format!("state.changed.{}", key.subject_tail()))
}

/// Builds the service with default settings; tests call this in-process.
pub async fn build(context: ServiceContext) -> anyhow::Result<Service> {
    Ok(build_with(context, StateConfig::default()).await?.0)
}

/// Builds the service and returns its handle.
pub async fn build_with(
    context: ServiceContext,
    config: StateConfig,
) -> anyhow::Result<(Service, State)> {
    let directory = concord_directory::SharedDirectory::default();
    let sweep_every = config.sweep_interval;
    let (state, writers) = State::new(context.clone(), config, directory.clone());
    let service = Service::start(context.clone()).await?;
    // Background tasks stop after the endpoints drained: every accepted
    // write is committed first.
    for (writer, queue) in writers {
        service.spawn_background(writer.run(queue, service.background_token()));
    }
    let (changed, agents) = tokio::sync::mpsc::unbounded_channel();
    let bucket = concord_directory::DirectoryBucket::open(&context.bus).await?;
    service
        .watch_directory_notifying(bucket, directory.clone(), Some(changed))
        .await;
    service.spawn_background(owners::run(
        state.locks().clone(),
        directory,
        agents,
        service.background_token(),
    ));
    service.spawn_background(sweep::run(
        state.locks().clone(),
        state.barriers().clone(),
        sweep_every,
        service.background_token(),
    ));
    use handlers::*;
    service
        .serve("state", "create", &state, create::handle)
        .await?;
    service.serve("state", "get", &state, get::handle).await?;
    service.serve("state", "put", &state, put::handle).await?;
    service
        .serve("state", "patch", &state, patch::handle)
        .await?;
    service
        .serve("state", "delete", &state, delete::handle)
        .await?;
    service.serve("state", "list", &state, list::handle).await?;
    service
        .serve("state", "history", &state, history::handle)
        .await?;
    service
        .serve("state", "reconcile", &state, reconcile::handle)
        .await?;
    use handlers::{barrier, lock};
    service
        .serve("state", "lock.acquire", &state, lock::acquire::handle)
        .await?;
    service
        .serve("state", "lock.renew", &state, lock::renew::handle)
        .await?;
    service
        .serve("state", "lock.release", &state, lock::release::handle)
        .await?;
    service
        .serve("state", "lock.check", &state, lock::check::handle)
        .await?;
    service
        .serve("state", "lock.get", &state, lock::get::handle)
        .await?;
    service
        .serve("state", "lock.list", &state, lock::list::handle)
        .await?;
    service
        .serve("state", "barrier.create", &state, barrier::create::handle)
        .await?;
    service
        .serve("state", "barrier.arrive", &state, barrier::arrive::handle)
        .await?;
    service
        .serve("state", "barrier.get", &state, barrier::get::handle)
        .await?;
    use handlers::snapshot;
    service
        .serve("state", "snapshot.take", &state, snapshot::take::handle)
        .await?;
    service
        .serve("state", "snapshot.get", &state, snapshot::get::handle)
        .await?;
    service
        .serve("state", "snapshot.list", &state, snapshot::list::handle)
        .await?;
    service
        .serve(
            "state",
            "snapshot.restore",
            &state,
            snapshot::restore::handle,
        )
        .await?;
    use handlers::workflow;
    service
        .serve("state", "workflow.create", &state, workflow::create::handle)
        .await?;
    service
        .serve("state", "workflow.step", &state, workflow::step::handle)
        .await?;
    service
        .serve("state", "workflow.get", &state, workflow::get::handle)
        .await?;
    service
        .serve("state", "workflow.list", &state, workflow::list::handle)
        .await?;
    Ok((service, state))
}
