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

/// The value of counter `name` (with or without `_total`) in a Prometheus
/// text exposition; 0 when absent.
pub fn metric_counter(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|line| {
            !line.starts_with('#')
                && line.contains(name)
                && line
                    .split(' ')
                    .next()
                    .is_some_and(|series| series.trim_end_matches("_total").ends_with(name))
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|n| n.parse::<f64>().ok())
        .map(|n| n as u64)
        .unwrap_or(0)
}
