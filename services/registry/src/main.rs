//! `concord-registry`: parses configuration and runs the registry service.

use std::process::ExitCode;

use clap::Parser;
use concord_config::ServiceArgs;
use concord_registry::{RegistryArgs, RegistryConfig};

/// Agent directory: registration, heartbeats, liveness, discovery.
#[derive(Parser)]
#[command(name = "concord-registry", version, about)]
struct Cli {
    #[command(flatten)]
    service: ServiceArgs,
    #[command(flatten)]
    registry: RegistryArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    concord_runtime::run_service(concord_registry::INFO, cli.service, |context| async move {
        let config = RegistryConfig::from_args(&cli.registry)?;
        let (service, _registry) = concord_registry::build_with(context, config).await?;
        service.run_until_stopped().await
    })
}
