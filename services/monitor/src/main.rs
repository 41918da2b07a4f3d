//! `concord-monitor`: parses configuration and runs the monitor service.

use std::process::ExitCode;

use clap::Parser;
use concord_config::ServiceArgs;

/// Coordination metrics, liveness alerts and dashboards.
#[derive(Parser)]
#[command(name = "concord-monitor", version, about)]
struct Cli {
    #[command(flatten)]
    service: ServiceArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    concord_runtime::run_service(concord_monitor::INFO, cli.service, |context| async move {
        concord_monitor::build(context)
            .await?
            .run_until_stopped()
            .await
    })
}
