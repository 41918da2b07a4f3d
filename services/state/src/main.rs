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
    // Bad settings are refused before connecting to anything.
    let config = match StateConfig::from_args(&cli.state) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("concord-state: {error:#}");
            return ExitCode::from(2);
        }
    };
    concord_runtime::run_service(concord_state::INFO, cli.service, |context| async move {
        let (service, _state) = concord_state::build_with(context, config).await?;
        service.run_until_stopped().await
    })
}
