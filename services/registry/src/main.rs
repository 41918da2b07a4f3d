//! `concord-registry`: parses configuration and runs the registry service.

use std::process::ExitCode;

use clap::Parser;
use concord_config::ServiceArgs;

/// Agent directory: registration, heartbeats, liveness, discovery.
#[derive(Parser)]
#[command(name = "concord-registry", version, about)]
struct Cli {
    #[command(flatten)]
    service: ServiceArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    concord_runtime::run_service(concord_registry::INFO, cli.service, |context| async move {
        concord_registry::build(context)
            .await?
            .run_until_stopped()
            .await
    })
}
