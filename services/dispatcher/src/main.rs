//! `concord-dispatcher`: parses configuration and runs the dispatcher service.

use std::process::ExitCode;

use clap::Parser;
use concord_config::ServiceArgs;

/// Task intake, routing, delivery, retries, dead letters and results.
#[derive(Parser)]
#[command(name = "concord-dispatcher", version, about)]
struct Cli {
    #[command(flatten)]
    service: ServiceArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    concord_runtime::run_service(
        concord_dispatcher::INFO,
        cli.service,
        |context| async move {
            concord_dispatcher::build(context)
                .await?
                .run_until_stopped()
                .await
        },
    )
}
