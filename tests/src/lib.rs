//! Shared helpers for the end-to-end tests: a test "world" with its own
//! nats-server, its own database and a unique subject root, and services
//! started in-process against them.

use std::sync::Once;
use std::time::Duration;

use concord_bus::{Bus, BusConfig, Shutdown};
use concord_config::{DatabaseArgs, LogFormat, NatsArgs, ServiceArgs, TelemetryArgs};
use concord_runtime::{ServiceContext, ServiceInfo};
use concord_testkit::{NatsServer, TestDatabase};
use futures::StreamExt;

pub mod stack;

/// A registry running in-process on a [`World`] until [`RunningRegistry::stop`].
pub struct RunningRegistry {
    pub registry: concord_registry::Registry,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningRegistry {
    /// Starts the registry with `config` against `world`.
    pub async fn start(
        world: &World,
        config: concord_registry::RegistryConfig,
    ) -> anyhow::Result<Self> {
        let context = world.context(&concord_registry::INFO).await?;
        let shutdown = context.shutdown.clone();
        let (service, registry) = concord_registry::build_with(context, config).await?;
        Ok(Self {
            registry,
            shutdown,
            task: tokio::spawn(service.run_until_stopped()),
        })
    }

    /// Shuts it down and waits for a clean exit.
    pub async fn stop(self) {
        self.shutdown.trigger();
        self.task.await.unwrap().unwrap();
    }
}

/// A state service running in-process on a [`World`] until [`RunningState::stop`].
pub struct RunningState {
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningState {
    /// Starts the state service with `config` against `world`.
    pub async fn start(world: &World, config: concord_state::StateConfig) -> anyhow::Result<Self> {
        let context = world.context(&concord_state::INFO).await?;
        let shutdown = context.shutdown.clone();
        let (service, _state) = concord_state::build_with(context, config).await?;
        Ok(Self {
            shutdown,
            task: tokio::spawn(service.run_until_stopped()),
        })
    }

    /// Shuts it down and waits for a clean exit.
    pub async fn stop(self) {
        self.shutdown.trigger();
        self.task.await.unwrap().unwrap();
    }
}

pub use stack::Stack;

/// A real nats-server and a fresh database, isolated from every other test.
pub struct World {
    pub nats: NatsServer,
    pub db: TestDatabase,
    pub root: String,
}

impl World {
    pub async fn start() -> anyhow::Result<Self> {
        init_telemetry();
        let nats = NatsServer::start().await?;
        let db = TestDatabase::create().await?;
        let root = format!("t{}", uuid::Uuid::new_v4().simple());
        Ok(Self { nats, db, root })
    }

    /// Service arguments pointing at this world (metrics on a free port).
    pub fn args(&self) -> ServiceArgs {
        service_args(&self.nats.url(), self.db.url(), &self.root)
    }

    /// A connected context for `info`, with its own shutdown token.
    pub async fn context(&self, info: &ServiceInfo) -> anyhow::Result<ServiceContext> {
        Ok(ServiceContext::connect(info, &self.args(), Shutdown::new()).await?)
    }

    /// A plain client connection using this world's subject root.
    pub async fn bus(&self, name: &str) -> anyhow::Result<Bus> {
        let config = BusConfig::new(self.nats.url(), name).with_subject_root(self.root.clone());
        Ok(concord_bus::connect(&config).await?)
    }
}

/// Arguments of a service started in-process by a test: these servers and
/// subject root, metrics on a free port, warnings only, 5 s grace.
pub fn service_args(nats_url: &str, database_url: &str, root: &str) -> ServiceArgs {
    ServiceArgs {
        nats: NatsArgs {
            nats_url: nats_url.to_string(),
            creds: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            require_tls: false,
            connect_timeout_secs: 2,
            subject_root: root.to_string(),
        },
        database: DatabaseArgs {
            database_url: database_url.to_string(),
            max_connections: 4,
        },
        telemetry: TelemetryArgs {
            log_format: LogFormat::Text,
            log_filter: "info".into(),
            metrics_addr: Some("127.0.0.1:0".parse().expect("valid address")),
            otlp_endpoint: None,
        },
        shutdown_grace_secs: 5,
        max_in_flight: 256,
        migrate_only: false,
    }
}

/// Installs the tracing subscriber once per test binary (spans then carry
/// OpenTelemetry contexts, as in the real services).
pub fn init_telemetry() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = concord_telemetry::init(&concord_telemetry::TelemetryConfig {
            service_name: "concord-tests".into(),
            json_logs: false,
            log_filter: std::env::var("CONCORD_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            otlp_endpoint: None,
        });
    });
}

/// Sends `subject` with an inbox and gathers all replies until `quiet` passes without one.
pub async fn gather(
    client: &async_nats::Client,
    subject: &str,
    quiet: Duration,
) -> Vec<async_nats::Message> {
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.expect("subscribe");
    client
        .publish_with_reply(subject.to_string(), inbox, bytes::Bytes::new())
        .await
        .expect("publish");
    let mut out = Vec::new();
    while let Ok(Some(message)) = tokio::time::timeout(quiet, replies.next()).await {
        // With nobody listening the server answers a "no responders" status
        // (empty body); that is not a reply.
        if message.status.is_none() {
            out.push(message);
        }
    }
    out
}

/// The value of the unlabelled counter or gauge `name` in a Prometheus text
/// exposition: the series named `name` or `name_total` (counters), either
/// with the `concord_` prefix the services' registries add or without it.
///
/// Panics when no series has that name (or more than one does): a
/// registered metric is always present (prometheus-client renders a counter
/// that was never incremented as `name_total 0`), so a missing one means a
/// renamed or unregistered metric, and an assertion that it did not change
/// would pass for the wrong reason.
pub fn metric_counter(text: &str, name: &str) -> u64 {
    let bare = name.strip_prefix("concord_").unwrap_or(name);
    let bare = bare.strip_suffix("_total").unwrap_or(bare);
    let wanted = [
        bare.to_string(),
        format!("{bare}_total"),
        format!("concord_{bare}"),
        format!("concord_{bare}_total"),
    ];
    let found: Vec<(&str, &str)> = text
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once(' '))
        .filter(|(series, _)| wanted.iter().any(|w| w == series))
        .collect();
    match found[..] {
        [(_, value)] => value
            .trim()
            .parse::<f64>()
            .unwrap_or_else(|e| panic!("metric {name}: unreadable value {value:?}: {e}"))
            as u64,
        [] => {
            let names: Vec<&str> = text
                .lines()
                .filter_map(|line| line.strip_prefix("# TYPE "))
                .filter_map(|line| line.split(' ').next())
                .collect();
            panic!(
                "no metric {name} in the exposition (renamed, or not registered?); it has: {names:?}"
            )
        }
        _ => panic!("more than one series matches metric {name}: {found:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::metric_counter;

    const TEXT: &str = "# HELP concord_things Things.\n\
                        # TYPE concord_things counter\n\
                        concord_things_total 3\n\
                        # TYPE concord_other_things counter\n\
                        concord_other_things_total 0\n\
                        # TYPE concord_held gauge\n\
                        concord_held 7\n\
                        # EOF\n";

    #[test]
    fn counters_and_gauges_are_read_with_or_without_prefix_and_suffix() {
        assert_eq!(metric_counter(TEXT, "things"), 3);
        assert_eq!(metric_counter(TEXT, "concord_things_total"), 3);
        assert_eq!(metric_counter(TEXT, "other_things"), 0);
        assert_eq!(metric_counter(TEXT, "held"), 7);
    }

    #[test]
    #[should_panic(expected = "no metric renamed_things")]
    fn a_missing_metric_is_an_error() {
        metric_counter(TEXT, "renamed_things");
    }

    #[test]
    #[should_panic(expected = "more than one series")]
    fn an_ambiguous_name_is_an_error() {
        metric_counter("concord_things 1\nconcord_things_total 2\n", "things");
    }

    /// What the dispatcher's registry really renders: its counters are
    /// present, at 0, before anything happened.
    #[test]
    fn a_registered_counter_never_incremented_reads_zero() {
        let registry = concord_telemetry::MetricsRegistry::with_prefix("concord");
        concord_dispatcher::metrics::Metrics::register(&registry);
        assert_eq!(
            metric_counter(&registry.encode(), "dispatcher_tasks_completed"),
            0
        );
        assert_eq!(
            metric_counter(&registry.encode(), "dispatcher_tasks_queued"),
            0
        );
    }
}
