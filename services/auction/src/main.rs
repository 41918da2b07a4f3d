//! `concord-auction`: parses configuration and runs the auction service.

use std::process::ExitCode;

use clap::Parser;
use concord_config::ServiceArgs;

/// Auctions, contract net and coalition formation.
#[derive(Parser)]
#[command(name = "concord-auction", version, about)]
struct Cli {
    #[command(flatten)]
    service: ServiceArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    concord_runtime::run_service(concord_auction::INFO, cli.service, |context| async move {
        concord_auction::build(context)
            .await?
            .run_until_stopped()
            .await
    })
}
