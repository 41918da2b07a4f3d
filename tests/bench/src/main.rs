//! `concord-bench`: the benchmarks behind `make bench`, recorded in
//! docs/BENCHMARKS.md.
//!
//! Each benchmark runs the real service binaries as separate processes
//! against the local NATS and Postgres (`make up`), isolated from anything
//! else there by a subject root and a database of its own, and prints its
//! results as Markdown (or JSON with `--json`). Progress goes to stderr.
//!
//! ```text
//! concord-bench all                      # every benchmark, default settings
//! concord-bench registry --agents 10000 --seconds 30
//! ```

mod infra;
mod procfs;
mod registry;
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
    /// Every benchmark with its default settings (today: registry).
    All,
    /// 10,000 agents heartbeating every second against one registry:
    /// discovery latency next to a NATS baseline, registry CPU and memory.
    Registry(registry::RegistryArgs),
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
    let args = match cli.command {
        Command::All => registry::RegistryArgs::default(),
        Command::Registry(args) => args,
    };
    match runtime.block_on(registry::run(&args)) {
        Ok(report) => {
            if cli.json {
                let json = serde_json::json!({ "registry": report });
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json).expect("serialisable")
                );
            } else {
                print!("{}", report.markdown());
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("concord-bench: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
