//! `concord-state`: parses configuration and runs the state service.

use std::process::ExitCode;

use clap::Parser;
use concord_config::ServiceArgs;

/// Versioned shared state, barriers and locks.
#[derive(Parser)]
#[command(name = "concord-state", version, about)]
struct Cli {
    #[command(flatten)]
    service: ServiceArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    concord_runtime::run_service(concord_state::INFO, cli.service, |context| async move {
        concord_state::build(context)
            .await?
            .run_until_stopped()
            .await
    })
}
