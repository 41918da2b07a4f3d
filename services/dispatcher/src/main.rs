//! `concord-dispatcher`: parses configuration and runs the dispatcher service.

use std::process::ExitCode;

use clap::Parser;
use concord_config::ServiceArgs;
use concord_dispatcher::{DispatcherArgs, DispatcherConfig};

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
