//! Command-line and environment configuration shared by every Concord binary.
//!
//! Each flag is also an environment variable named `CONCORD_*`, so a container
//! is configured with env vars alone and a developer with flags; flags win.
//! Services flatten the groups they need into their own `clap::Parser`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, ValueEnum};

/// How to reach NATS and where Concord's subjects live.
#[derive(Debug, Clone, Args)]
pub struct NatsArgs {
    /// NATS server URL(s), comma separated.
    #[arg(
        long = "nats-url",
        env = "CONCORD_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,

    /// NATS credentials file (JWT + nkey seed), for secured servers.
    #[arg(long = "nats-creds", env = "CONCORD_NATS_CREDS")]
    pub creds: Option<PathBuf>,

    /// PEM file with CA certificates to trust for TLS to NATS.
    #[arg(long = "nats-tls-ca", env = "CONCORD_NATS_TLS_CA")]
    pub tls_ca: Option<PathBuf>,

    /// PEM client certificate for mutual TLS (needs --nats-tls-key).
    #[arg(
        long = "nats-tls-cert",
        env = "CONCORD_NATS_TLS_CERT",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of the client certificate.
    #[arg(
        long = "nats-tls-key",
        env = "CONCORD_NATS_TLS_KEY",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// Require TLS on the NATS connection.
    #[arg(long = "nats-require-tls", env = "CONCORD_NATS_REQUIRE_TLS")]
    pub require_tls: bool,

    /// Seconds to wait for the first connection before giving up.
    #[arg(
        long = "nats-connect-timeout",
        env = "CONCORD_NATS_CONNECT_TIMEOUT",
        default_value_t = 5
    )]
    pub connect_timeout_secs: u64,

    /// Root of every Concord subject (`<root>.tasks.submit`, `<root>.events.>` ...).
    /// Change it to run several isolated Concord installations on one NATS.
    #[arg(
        long = "subject-root",
        env = "CONCORD_SUBJECT_ROOT",
        default_value = "concord"
    )]
    pub subject_root: String,
}

/// How to reach Postgres.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// Postgres URL, e.g. postgres://user:password@127.0.0.1:5433/concord
    #[arg(
        long = "database-url",
        env = "CONCORD_DATABASE_URL",
        default_value = "postgres://concord:concord@127.0.0.1:5433/concord"
    )]
    pub database_url: String,

    /// Largest number of pooled Postgres connections.
    #[arg(
        long = "database-max-connections",
        env = "CONCORD_DATABASE_MAX_CONNECTIONS",
        default_value_t = 16
    )]
    pub max_connections: u32,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines, for a terminal.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Logging, tracing and metrics.
#[derive(Debug, Clone, Args)]
pub struct TelemetryArgs {
    /// Log format.
    #[arg(long = "log-format", env = "CONCORD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter in `tracing` env-filter syntax, e.g. `info,concord_bus=debug`.
    #[arg(long = "log", env = "CONCORD_LOG", default_value = "info")]
    pub log_filter: String,

    /// Address of the Prometheus `/metrics` endpoint; port 0 picks a free port.
    /// Default: 127.0.0.1 on the service's own port (registry 9101, dispatcher
    /// 9102, consensus 9103, auction 9104, state 9105, monitor 9106).
    #[arg(long = "metrics-addr", env = "CONCORD_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// OTLP/HTTP endpoint for traces (e.g. http://127.0.0.1:4318, or https:// for
    /// TLS); tracing export is off when unset. The standard OpenTelemetry
    /// variable is honoured.
    #[arg(long = "otlp-endpoint", env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

/// Everything a Concord service needs: NATS, Postgres and telemetry.
#[derive(Debug, Clone, Args)]
pub struct ServiceArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,

    /// Seconds to let in-flight work finish on shutdown before giving up on it.
    #[arg(
        long = "shutdown-grace",
        env = "CONCORD_SHUTDOWN_GRACE",
        default_value_t = 10
    )]
    pub shutdown_grace_secs: u64,

    /// Requests each endpoint handles at once (more wait in the NATS
    /// subscription). Requests waiting on a batched commit or a lock hold a
    /// slot while they wait.
    #[arg(
        long = "max-in-flight",
        env = "CONCORD_MAX_IN_FLIGHT",
        default_value_t = 256,
        value_parser = clap::value_parser!(u32).range(1..=65_536)
    )]
    pub max_in_flight: u32,

    /// Apply the shared migrations and this service's own (its folder under
    /// `migrations/`), then exit without serving.
    #[arg(long = "migrate-only")]
    pub migrate_only: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        service: ServiceArgs,
    }

    #[test]
    fn argument_definitions_are_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_are_loopback_and_documented() {
        let cli = Cli::try_parse_from(["x"]).unwrap();
        assert_eq!(cli.service.nats.nats_url, "nats://127.0.0.1:4222");
        assert_eq!(cli.service.nats.subject_root, "concord");
        assert_eq!(cli.service.telemetry.log_format, LogFormat::Text);
        assert!(cli.service.database.database_url.contains("127.0.0.1:5433"));
        assert!(cli.service.telemetry.metrics_addr.is_none());
        assert_eq!(cli.service.max_in_flight, 256);
        assert!(Cli::try_parse_from(["x", "--max-in-flight", "0"]).is_err());
    }

    #[test]
    fn flags_override_defaults() {
        let cli = Cli::try_parse_from([
            "x",
            "--nats-url",
            "nats://n:4333",
            "--subject-root",
            "t1",
            "--log-format",
            "json",
            "--metrics-addr",
            "127.0.0.1:0",
            "--max-in-flight",
            "1024",
        ])
        .unwrap();
        assert_eq!(cli.service.max_in_flight, 1024);
        assert_eq!(cli.service.nats.nats_url, "nats://n:4333");
        assert_eq!(cli.service.nats.subject_root, "t1");
        assert_eq!(cli.service.telemetry.log_format, LogFormat::Json);
        assert_eq!(cli.service.telemetry.metrics_addr.unwrap().port(), 0);
    }

    #[test]
    fn tls_cert_requires_key() {
        let err = Cli::try_parse_from(["x", "--nats-tls-cert", "c.pem"])
            .err()
            .unwrap();
        assert!(err.to_string().contains("--nats-tls-key"), "{err}");
    }

    #[test]
    fn bad_metrics_address_is_rejected_with_the_flag_name() {
        let err = Cli::try_parse_from(["x", "--metrics-addr", "nope"])
            .err()
            .unwrap();
        assert!(err.to_string().contains("--metrics-addr"), "{err}");
    }
}
