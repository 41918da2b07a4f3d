//! `concord-state`: parses configuration and runs the state service.

use std::process::ExitCode;

use clap::Parser;
use concord_config::ServiceArgs;
use concord_state::{StateArgs, StateConfig};

/// Versioned shared state, barriers and locks.
#[derive(Parser)]
#[command(name = "concord-state", version, about)]
struct Cli {
    #[command(flatten)]
    service: ServiceArgs,
    #[command(flatten)]
    state: StateArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    concord_runtime::run_service(concord_state::INFO, cli.service, |context| async move {
        let config = StateConfig::from_args(&cli.state)?;
        let (service, _state) = concord_state::build_with(context, config).await?;
        service.run_until_stopped().await
    })
}
