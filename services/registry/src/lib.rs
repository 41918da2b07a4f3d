//! The registry service: Concord's directory of agents (who exists, what they
//! can do, whether they are alive).
//!
//! Requests (service `concord-registry`, queue group `q`):
//! `<root>.registry.register`, `.deregister`, `.heartbeat`, `.discover`, `.get`,
//! `.remove` (operators). Agents with a public key sign their requests
//! ([`identity`]).
//! Agents are stored in Postgres (`registry_agents`), every change is an
//! `agent.*` event, and the directory is published to the JetStream KV bucket
//! `<ROOT>_AGENTS` for other services to watch. See docs/PROTOCOL.md.

pub mod app;
pub mod config;
pub(crate) mod handlers;
pub(crate) mod identity;
pub mod liveness;
pub(crate) mod reputation;
pub(crate) mod store;
pub(crate) mod validate;

use concord_runtime::{Service, ServiceContext, ServiceInfo};

pub use app::Registry;
pub use config::{RegistryArgs, RegistryConfig};

/// The registry's tables (`migrations/registry/`).
fn migrations() -> concord_store::Migrator {
    sqlx::migrate!("../../migrations/registry")
}

/// Name, description, default metrics port and tables of the registry.
pub const INFO: ServiceInfo = ServiceInfo {
    name: "concord-registry",
    description: "Agent directory: registration, heartbeats, liveness, discovery",
    default_metrics_port: 9101,
    migrations: Some(migrations),
};

/// Builds the service with default settings; tests call this in-process.
pub async fn build(context: ServiceContext) -> anyhow::Result<Service> {
    Ok(build_with(context, RegistryConfig::default()).await?.0)
}

/// Builds the service and returns a handle on the registry (for tests that
/// drive the sweep with a manual clock).
pub async fn build_with(
    context: ServiceContext,
    config: RegistryConfig,
) -> anyhow::Result<(Service, Registry)> {
    let registry = Registry::new(context.clone(), config).await?;
    let service = Service::start(context.clone()).await?;

    // Load this replica's directory from the bucket before answering anything.
    service
        .watch_directory(registry.bucket().clone(), registry.directory())
        .await;
    // Heal the bucket from Postgres (after a JetStream loss, or writes that
    // failed to reach it).
    registry.reconcile().await?;

    service
        .serve(
            "registry",
            "register",
            &registry,
            handlers::register::handle,
        )
        .await?;
    service
        .serve(
            "registry",
            "deregister",
            &registry,
            handlers::deregister::handle,
        )
        .await?;
    service
        .serve_untraced(
            "registry",
            "heartbeat",
            &registry,
            handlers::heartbeat::handle,
        )
        .await?;
    service
        .serve(
            "registry",
            "discover",
            &registry,
            handlers::discover::handle,
        )
        .await?;
    service
        .serve("registry", "get", &registry, handlers::get::handle)
        .await?;
    service
        .serve("registry", "remove", &registry, handlers::remove::handle)
        .await?;

    reputation::listen(&service, registry.clone()).await?;
    if registry.config().background {
        service.spawn_background(background(registry.clone(), service.background_token()));
    }
    Ok((service, registry))
}

/// Periodic work: flush heartbeats, sweep liveness, fold in reputation; one
/// last flush on shutdown.
async fn background(registry: Registry, stop: tokio_util::sync::CancellationToken) {
    let config = registry.config().clone();
    let mut flush = tokio::time::interval(config.flush_interval);
    let mut sweep = tokio::time::interval(config.sweep_interval);
    let mut reputation = tokio::time::interval(config.reputation_interval);
    for timer in [&mut flush, &mut sweep, &mut reputation] {
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    loop {
        let result = tokio::select! {
            _ = stop.cancelled() => break,
            _ = flush.tick() => registry.flush_heartbeats().await,
            _ = sweep.tick() => registry.sweep().await,
            _ = reputation.tick() => registry.flush_outcomes().await,
        };
        if let Err(error) = result {
            tracing::warn!(error = %format!("{error:#}"), "registry background work failed; retrying next tick");
        }
    }
    for result in [
        registry.flush_heartbeats().await,
        registry.flush_outcomes().await,
    ] {
        if let Err(error) = result {
            tracing::warn!(error = %format!("{error:#}"), "final flush failed");
        }
    }
}
