//! `concord-consensus`: parses configuration and runs the consensus service.

use std::process::ExitCode;

use clap::Parser;
use concord_config::ServiceArgs;

/// Proposals, voting sessions and leader election.
#[derive(Parser)]
#[command(name = "concord-consensus", version, about)]
struct Cli {
    #[command(flatten)]
    service: ServiceArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    concord_runtime::run_service(concord_consensus::INFO, cli.service, |context| async move {
        concord_consensus::build(context)
            .await?
            .run_until_stopped()
            .await
    })
}
