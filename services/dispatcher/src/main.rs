//! `concord-dispatcher`: parses configuration and runs the dispatcher service.

use std::process::ExitCode;

use clap::Parser;
use concord_config::ServiceArgs;
use concord_dispatcher::{DispatcherArgs, DispatcherConfig, projection_tool};

/// The engine allocates small objects at a high rate on several threads;
/// mimalloc costs a fraction of glibc's malloc there (measured in
/// docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Task intake, routing, delivery, retries, dead letters and results.
#[derive(Parser)]
#[command(name = "concord-dispatcher", version, about)]
struct Cli {
    #[command(flatten)]
    service: ServiceArgs,
    #[command(flatten)]
    dispatcher: DispatcherArgs,
    /// Compare the `tasks` table with the task events and exit: 0 when they
    /// match, 1 listing the task ids that differ (run on a quiet system).
    #[arg(long, conflicts_with = "rebuild_projection")]
    verify_projection: bool,
    /// Rebuild the `tasks` table from the task events (one transaction) and
    /// exit. Only with every dispatcher stopped.
    #[arg(long)]
    rebuild_projection: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let tool = match (cli.verify_projection, cli.rebuild_projection) {
        (true, _) => Some(projection_tool::Action::Verify),
        (_, true) => Some(projection_tool::Action::Rebuild),
        _ => None,
    };
    if let Some(action) = tool {
        return run_tool(&cli.service.database.database_url, action);
    }
    let config = match DispatcherConfig::from_args(&cli.dispatcher) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("concord-dispatcher: error: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    concord_runtime::run_service(
        concord_dispatcher::INFO,
        cli.service,
        |context| async move {
            let (service, _dispatcher) = concord_dispatcher::build_with(context, config).await?;
            service.run_until_stopped().await
        },
    )
}

/// `--verify-projection` / `--rebuild-projection`: Postgres only, then exit.
fn run_tool(database_url: &str, action: projection_tool::Action) -> ExitCode {
    let outcome = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(projection_tool::run(database_url, action)));
    outcome.unwrap_or_else(|error| {
        eprintln!("concord-dispatcher: error: {error:#}");
        ExitCode::FAILURE
    })
}
