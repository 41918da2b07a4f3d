//! Connecting a service to NATS, Postgres and its metrics endpoint, and the
//! process entry point that reports startup errors in one line.

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use concord_bus::{Bus, BusConfig, Shutdown};
use concord_config::ServiceArgs;
use concord_store::{DeadLetterStore, EventStore};
use concord_telemetry::{MetricsRegistry, MetricsServer, TelemetryConfig};
use sqlx::PgPool;

use crate::{DeadLetterKeeper, EventPublisher, StoreRejectSink};

/// What a service is: its name on NATS, what it does, its default metrics port.
#[derive(Debug, Clone, Copy)]
pub struct ServiceInfo {
    /// Service API name and NATS client name, e.g. `concord-registry`.
    pub name: &'static str,
    /// One line for `$SRV.INFO` and logs.
    pub description: &'static str,
    /// Port of `/metrics` on 127.0.0.1 unless `--metrics-addr` says otherwise.
    pub default_metrics_port: u16,
    /// The service's own tables (its folder under `migrations/`), applied at
    /// connect after the shared ones; `None` for a service without tables.
    pub migrations: Option<fn() -> concord_store::Migrator>,
}

/// Everything a service needs, connected.
#[derive(Clone)]
pub struct ServiceContext {
    pub info: ServiceInfo,
    pub bus: Bus,
    pub pool: PgPool,
    pub events: EventPublisher,
    pub dead_letters: DeadLetterStore,
    pub metrics: MetricsRegistry,
    pub shutdown: Shutdown,
    /// How long in-flight work may take to finish after shutdown begins.
    pub shutdown_grace: Duration,
    /// Requests each endpoint handles at once (`--max-in-flight`).
    pub max_in_flight: usize,
    metrics_addr: Option<SocketAddr>,
}

/// Why a service could not start; every variant prints as one line saying what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Nats(#[from] concord_bus::ConnectError),
    #[error(transparent)]
    Database(#[from] concord_store::StoreError),
    #[error("{0}")]
    Metrics(std::io::Error),
    #[error(transparent)]
    Telemetry(#[from] concord_telemetry::TelemetryError),
}

impl ServiceContext {
    /// Connects to NATS and Postgres (applying the shared migrations and the
    /// service's own), starts the metrics
    /// endpoint and the event publisher. Does not install telemetry (see [`run_service`]).
    pub async fn connect(
        info: &ServiceInfo,
        args: &ServiceArgs,
        shutdown: Shutdown,
    ) -> Result<Self, StartupError> {
        let name = info.name;
        let nats = &args.nats;
        let bus_config = BusConfig::from_args(nats, name);
        let bus = concord_bus::connect(&bus_config).await?;
        let pool =
            concord_store::connect(&args.database.database_url, args.database.max_connections)
                .await?;
        migrate(info, &pool).await?;

        let metrics = MetricsRegistry::with_prefix("concord");
        let metrics_addr = args
            .telemetry
            .metrics_addr
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], info.default_metrics_port)));
        let server = MetricsServer::start(metrics_addr, metrics.clone(), shutdown.token())
            .await
            .map_err(StartupError::Metrics)?;
        let metrics_addr = Some(server.local_addr());
        tracing::info!(service = name, metrics = %server.local_addr(), "metrics endpoint listening");

        let events =
            EventPublisher::start(EventStore::new(pool.clone()), bus.clone(), name, &metrics);
        Ok(Self {
            info: *info,
            dead_letters: DeadLetterStore::new(pool.clone()),
            bus,
            pool,
            events,
            metrics,
            shutdown,
            shutdown_grace: Duration::from_secs(args.shutdown_grace_secs),
            max_in_flight: args.max_in_flight as usize,
            metrics_addr,
        })
    }

    /// Where `/metrics` is served.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// A sink that keeps rejected requests as dead letters and emits an event.
    pub fn reject_sink(&self) -> Arc<StoreRejectSink> {
        Arc::new(StoreRejectSink::new(self.dead_letter_keeper()))
    }

    /// Keeps dead letters of this service (with their events).
    pub fn dead_letter_keeper(&self) -> DeadLetterKeeper {
        DeadLetterKeeper::new(self.dead_letters.clone(), self.events.clone())
    }

    /// Writes queued events, then drains and closes the NATS connection (every
    /// subscription of this process ends) and the Postgres pool. Call last.
    pub async fn close(self) {
        self.events.close().await;
        self.bus.close(Duration::from_secs(5)).await;
        self.pool.close().await;
    }
}

/// Applies the shared migrations, then the service's own.
async fn migrate(info: &ServiceInfo, pool: &PgPool) -> Result<(), StartupError> {
    concord_store::migrate_shared(pool).await?;
    if let Some(migrations) = info.migrations {
        concord_store::migrate(pool, &migrations()).await?;
    }
    Ok(())
}

/// Runs a service process: telemetry, connections, `serve` until SIGTERM, then
/// a drain. Startup errors print as one line (`<name>: error: ...`) with exit code 1.
pub fn run_service<F, Fut>(info: ServiceInfo, args: ServiceArgs, serve: F) -> ExitCode
where
    F: FnOnce(ServiceContext) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let name = info.name;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("{name}: error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let telemetry = concord_telemetry::init(&TelemetryConfig::from_args(&args.telemetry, name))
            .map_err(StartupError::from)?;
        tracing::info!(
            service = name,
            version = env!("CARGO_PKG_VERSION"),
            "{}: starting",
            info.description
        );
        if args.migrate_only {
            // Postgres only: no NATS, no metrics port (a running replica
            // holds it).
            let pool = concord_store::connect(&args.database.database_url, 1).await?;
            migrate(&info, &pool).await?;
            pool.close().await;
            tracing::info!(service = name, "migrations applied (--migrate-only)");
            telemetry.shutdown(Duration::from_secs(5));
            return Ok(());
        }
        let shutdown = Shutdown::on_signals();
        let context = ServiceContext::connect(&info, &args, shutdown).await?;
        let outcome = serve(context).await;
        tracing::info!(service = name, "stopped");
        telemetry.shutdown(Duration::from_secs(5));
        outcome
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{name}: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
