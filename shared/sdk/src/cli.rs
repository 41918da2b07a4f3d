//! Agent binaries: [`AgentArgs`] (flags, each also a `CONCORD_*` env var) and
//! [`run_main`], which wires telemetry, metrics and signals around [`run`](crate::run).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use concord_bus::{BusConfig, Shutdown};
use concord_config::{NatsArgs, TelemetryArgs};
use concord_telemetry::{MetricsRegistry, MetricsServer, TelemetryConfig};

use concord_identity::AgentKey;

use crate::{Agent, AgentConfig, AgentError};

/// Command-line configuration of an agent binary; flatten it into the
/// binary's own `clap::Parser`.
///
/// ```
/// use clap::Parser;
/// use concord_sdk::AgentArgs;
///
/// #[derive(Parser)]
/// struct Cli {
///     #[command(flatten)]
///     agent: AgentArgs,
/// }
///
/// let cli = Cli::parse_from(["my-agent", "--agent-id", "a-1", "--max-concurrency", "4", "--label", "region=eu"]);
/// let config = cli.agent.to_config("my-agent", "1.0.0").unwrap();
/// assert_eq!(config.id.as_deref(), Some("a-1"));
/// assert_eq!(config.max_concurrency, 4);
/// assert_eq!(config.labels["region"], "eu");
/// ```
#[derive(Debug, Clone, clap::Args)]
#[command(mut_arg("metrics_addr", |arg| arg.help(
    "Address of the Prometheus `/metrics` endpoint (port 0 picks a free port); \
     not served when unset",
).long_help(None)))]
pub struct AgentArgs {
    #[command(flatten)]
    pub nats: NatsArgs,

    // Logging and tracing. `/metrics` is served only when --metrics-addr is
    // given: agents have no default metrics port.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,

    /// Agent id: ASCII letters, digits, '-' and '_', at most 64. Default: a
    /// random `agent-<uuid>` per process.
    #[arg(long = "agent-id", env = "CONCORD_AGENT_ID")]
    pub id: Option<String>,

    /// Display name for operators. Default: the binary's name.
    #[arg(long = "agent-name", env = "CONCORD_AGENT_NAME")]
    pub name: Option<String>,

    /// Most tasks run at once.
    #[arg(
        long = "max-concurrency",
        env = "CONCORD_AGENT_MAX_CONCURRENCY",
        default_value_t = 16,
        value_parser = clap::value_parser!(u32).range(1..=10_000)
    )]
    pub max_concurrency: u32,

    /// Milliseconds between heartbeats.
    #[arg(
        long = "heartbeat-interval-ms",
        env = "CONCORD_AGENT_HEARTBEAT_INTERVAL_MS",
        default_value_t = 1000,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub heartbeat_interval_ms: u64,

    /// Seconds running tasks may take to finish on shutdown before they are
    /// handed back to the dispatcher.
    #[arg(
        long = "shutdown-grace",
        env = "CONCORD_SHUTDOWN_GRACE",
        default_value_t = 10
    )]
    pub shutdown_grace_secs: u64,

    /// A label `key=value` for discovery selectors; repeat the flag (or
    /// separate with commas in the env var) for several.
    #[arg(
        long = "label",
        env = "CONCORD_AGENT_LABELS",
        value_delimiter = ',',
        value_parser = parse_label
    )]
    pub labels: Vec<(String, String)>,

    /// File holding the agent's ed25519 key (the base64 seed; made, mode
    /// 0600, when absent). The agent signs its registration, heartbeats and
    /// deregistration with it. Without it an agent with a generated id uses
    /// a key made for the process, and one with `--id` goes unsigned.
    #[arg(long = "key-file", env = "CONCORD_AGENT_KEY_FILE")]
    pub key_file: Option<std::path::PathBuf>,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("expected key=value, got {s:?}")),
    }
}

impl AgentArgs {
    /// The [`AgentConfig`] these arguments describe; `binary` is the NATS
    /// client name and the default display name, `version` the agent's version.
    pub fn to_config(&self, binary: &str, version: &str) -> Result<AgentConfig, AgentError> {
        let nats = &self.nats;
        let bus = BusConfig::from_args(nats, binary);
        let mut config = AgentConfig::new(self.name.clone().unwrap_or(binary.to_string()), bus)
            .with_version(version)
            .with_max_concurrency(self.max_concurrency)
            .with_heartbeat_interval(Duration::from_millis(self.heartbeat_interval_ms))
            .with_shutdown_grace(Duration::from_secs(self.shutdown_grace_secs));
        config.id = self.id.clone();
        if let Some(path) = &self.key_file {
            let key =
                AgentKey::load_or_create(path).map_err(|error| AgentError::InvalidConfig {
                    field: "key",
                    reason: format!("{error}; check --key-file / CONCORD_AGENT_KEY_FILE"),
                })?;
            config.key = Some(key);
        }
        config.labels = self.labels.iter().cloned().collect::<BTreeMap<_, _>>();
        Ok(config)
    }
}

/// Runs an agent as a process: installs logging and tracing, serves
/// `/metrics` if asked to, turns SIGTERM/Ctrl-C into a graceful shutdown
/// (a second signal exits at once), and calls [`run`](crate::run).
///
/// Errors print as one line, `<binary>: error: ...`, with exit code 1.
///
/// ```no_run
/// use clap::Parser;
/// use concord_sdk::{Agent, AgentArgs, Capability, Task, TaskContext, TaskFailure, capability};
/// use serde_json::Value;
///
/// /// Answers every `echo` task with its payload.
/// #[derive(Parser)]
/// struct Cli {
///     #[command(flatten)]
///     agent: AgentArgs,
/// }
///
/// struct Echo;
///
/// impl Agent for Echo {
///     fn capabilities(&self) -> Vec<Capability> {
///         vec![capability("echo", 1.0)]
///     }
///     async fn handle(&self, task: Task, _ctx: TaskContext) -> Result<Value, TaskFailure> {
///         Ok(task.payload)
///     }
/// }
///
/// fn main() -> std::process::ExitCode {
///     concord_sdk::run_main("my-echo-agent", env!("CARGO_PKG_VERSION"), Cli::parse().agent, Echo)
/// }
/// ```
pub fn run_main<A: Agent>(
    binary: &'static str,
    version: &'static str,
    args: AgentArgs,
    agent: A,
) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("{binary}: error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let telemetry =
            concord_telemetry::init(&TelemetryConfig::from_args(&args.telemetry, binary))
                .map_err(|error| error.to_string())?;
        let shutdown = Shutdown::on_signals();
        let mut config = args
            .to_config(binary, version)
            .map_err(|error| error.to_string())?;
        let metrics = match args.telemetry.metrics_addr {
            Some(addr) => {
                let registry = MetricsRegistry::with_prefix("concord");
                let server = MetricsServer::start(addr, registry.clone(), shutdown.token())
                    .await
                    .map_err(|error| error.to_string())?;
                tracing::info!(metrics = %server.local_addr(), "metrics endpoint listening");
                config = config.with_metrics(registry);
                Some(server)
            }
            None => None,
        };
        tracing::info!(binary, version, "starting agent");
        let outcome = crate::run(agent, config, shutdown.clone()).await;
        // The metrics server stops with the shutdown token; an early error
        // ends the process without waiting for a signal.
        shutdown.trigger();
        if let Some(server) = metrics {
            server.stopped().await;
        }
        telemetry.shutdown(Duration::from_secs(5));
        match outcome {
            // An operator said stop: a clean exit, so a supervisor that
            // restarts failed processes leaves it stopped.
            Err(error @ AgentError::Removed { .. }) => {
                tracing::warn!(%error, "stopped");
                Ok(())
            }
            other => other.map_err(|error| error.to_string()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{binary}: error: {error}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        agent: AgentArgs,
    }

    #[test]
    fn argument_definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults() {
        let config = Cli::parse_from(["x"])
            .agent
            .to_config("bin", "1.2.3")
            .unwrap();
        assert_eq!(config.name, "bin");
        assert_eq!(config.version, "1.2.3");
        assert_eq!(config.nats.client_name, "bin");
        assert_eq!(config.nats.subject_root, "concord");
        assert_eq!(config.id, None);
        assert_eq!(config.max_concurrency, 16);
        assert_eq!(config.heartbeat_interval, Duration::from_secs(1));
        assert_eq!(config.shutdown_grace, Duration::from_secs(10));
        assert!(config.labels.is_empty());
    }

    #[test]
    fn flags() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("agent.key");
        let config = Cli::parse_from([
            "x",
            "--agent-id",
            "a-1",
            "--agent-name",
            "Alice",
            "--subject-root",
            "t1",
            "--heartbeat-interval-ms",
            "250",
            "--shutdown-grace",
            "3",
            "--label",
            "region=eu",
            "--label",
            "tier=gpu,zone=b",
            "--key-file",
            key_file.to_str().unwrap(),
        ])
        .agent
        .to_config("bin", "1")
        .unwrap();
        assert_eq!(config.id.as_deref(), Some("a-1"));
        assert_eq!(config.name, "Alice");
        assert_eq!(config.nats.subject_root, "t1");
        assert_eq!(config.heartbeat_interval, Duration::from_millis(250));
        assert_eq!(config.shutdown_grace, Duration::from_secs(3));
        assert_eq!(config.labels.len(), 3);
        assert_eq!(config.labels["zone"], "b");
        // The key file is made on first use and read back afterwards.
        let made = config.key.expect("a key from --key-file");
        let read = concord_identity::AgentKey::load_or_create(&key_file).unwrap();
        assert_eq!(made.public_key_base64(), read.public_key_base64());
    }

    #[test]
    fn a_damaged_key_file_is_a_config_error_naming_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("agent.key");
        std::fs::write(&key_file, "garbage").unwrap();
        let error = Cli::parse_from(["x", "--key-file", key_file.to_str().unwrap()])
            .agent
            .to_config("bin", "1")
            .unwrap_err();
        assert!(error.to_string().contains("--key-file"), "{error}");
    }

    #[test]
    fn bad_values_name_the_flag() {
        for args in [
            ["x", "--max-concurrency", "0"],
            ["x", "--label", "novalue"],
            ["x", "--heartbeat-interval-ms", "0"],
        ] {
            let error = Cli::try_parse_from(args).err().unwrap().to_string();
            assert!(error.contains(args[1]), "{error}");
        }
    }
}
