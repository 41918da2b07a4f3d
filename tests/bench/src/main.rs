//! `concord-bench`: the benchmarks behind `make bench`, recorded in
//! docs/BENCHMARKS.md.
//!
//! Each benchmark runs against the local NATS and Postgres (`make up`),
//! isolated from anything else there by a subject root and a database of
//! its own, and prints its results as Markdown (or JSON with `--json`).
//! Progress goes to stderr.
//!
//! ```text
//! concord-bench all                      # every benchmark, default settings
//! concord-bench registry --agents 10000 --seconds 30
//! concord-bench baseline --seconds 10 --rates 1000,5000,10000 --saturation-seconds 15
//! ```

mod baseline;
mod dispatcher;
mod infra;
mod load;
mod procfs;
mod registry;
mod signatures;
mod state;
mod stats;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Concord benchmarks (results in docs/BENCHMARKS.md). Needs NATS and
/// Postgres running (`make up`; `make bench` does it) and builds the release
/// service binaries it measures unless told not to.
#[derive(Parser)]
#[command(name = "concord-bench", version, about)]
struct Cli {
    /// Print the results as JSON instead of Markdown.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Every benchmark with its default settings: signatures, registry,
    /// the dispatcher (which runs the raw baseline first), then the state
    /// service (its own baseline first).
    All,
    /// 10,000 agents heartbeating every second against one registry:
    /// discovery latency next to a NATS baseline, registry CPU and memory.
    Registry(registry::RegistryArgs),
    /// The raw baseline of the dispatcher benchmark, in this process:
    /// JetStream publish → pull consume → one request to a worker → 3 event
    /// rows batched into Postgres → result → ack, at fixed rates and at
    /// saturation.
    Baseline(baseline::BaselineArgs),
    /// End-to-end tasks through the real registry and dispatcher binaries
    /// (10 agents at fixed rates and saturation, 100 agent connections,
    /// 10,000 registered agents, a 100,000-task backlog), next to the raw
    /// baseline measured first in the same run.
    Dispatcher(dispatcher::DispatcherArgs),
    /// The cost of signed heartbeats: ed25519 sign and verify of one
    /// heartbeat next to parsing its JSON, projected to N agents.
    Signatures(signatures::SignatureArgs),
    /// Durable compare-and-set updates through the real state binary next
    /// to a raw batched-UPDATE baseline; one-at-a-time latency; a contended
    /// key with 8 writers.
    State(state::StateArgs),
}

/// One benchmark's report, ready for printing.
struct Report {
    name: &'static str,
    json: serde_json::Value,
    markdown: String,
}

async fn run(command: Command) -> anyhow::Result<Vec<Report>> {
    let mut reports = Vec::new();
    let signatures = match &command {
        Command::All => Some(signatures::SignatureArgs::default()),
        Command::Signatures(args) => Some(args.clone()),
        _ => None,
    };
    if let Some(args) = signatures {
        let report = signatures::run(&args);
        reports.push(Report {
            name: "signatures",
            json: serde_json::to_value(&report)?,
            markdown: report.markdown(),
        });
    }
    let state = match &command {
        Command::All => Some(state::StateArgs::default()),
        Command::State(args) => Some(args.clone()),
        _ => None,
    };
    let (registry, baseline, dispatcher) = match command {
        Command::All => (
            Some(registry::RegistryArgs::default()),
            None,
            Some(dispatcher::DispatcherArgs::default()),
        ),
        Command::Registry(args) => (Some(args), None, None),
        Command::Baseline(args) => (None, Some(args), None),
        Command::Dispatcher(args) => (None, None, Some(args)),
        Command::Signatures(_) | Command::State(_) => (None, None, None),
    };
    if let Some(args) = registry {
        let report = registry::run(&args).await?;
        reports.push(Report {
            name: "registry",
            json: serde_json::to_value(&report)?,
            markdown: report.markdown(),
        });
    }
    if let Some(args) = baseline {
        let report = baseline::run(&args).await?;
        reports.push(Report {
            name: "baseline",
            json: serde_json::to_value(&report)?,
            markdown: report.markdown(),
        });
    }
    if let Some(args) = dispatcher {
        let report = dispatcher::run(&args).await?;
        reports.push(Report {
            name: "dispatcher",
            json: serde_json::to_value(&report)?,
            markdown: report.markdown(),
        });
    }
    if let Some(args) = state {
        let report = state::run(&args).await?;
        reports.push(Report {
            name: "state",
            json: serde_json::to_value(&report)?,
            markdown: report.markdown(),
        });
    }
    Ok(reports)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("concord-bench: error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(reports) => {
            if cli.json {
                let json: serde_json::Map<String, serde_json::Value> = reports
                    .into_iter()
                    .map(|r| (r.name.to_owned(), r.json))
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json).expect("serialisable")
                );
            } else {
                let markdown: Vec<String> = reports.into_iter().map(|r| r.markdown).collect();
                print!("{}", markdown.join("\n"));
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("concord-bench: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
