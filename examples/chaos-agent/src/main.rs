//! `concord-chaos-agent`: parses flags (each also a `CONCORD_*` env var) and runs the chaos agent.

use std::process::ExitCode;

use clap::Parser;
use concord_chaos_agent::{ChaosAgent, ChaosArgs};
use concord_sdk::AgentArgs;

/// Concord test agent: configurable latency, failure rates and crashes.
#[derive(Parser)]
#[command(name = "concord-chaos-agent", version, about)]
struct Cli {
    #[command(flatten)]
    agent: AgentArgs,
    #[command(flatten)]
    chaos: ChaosArgs,
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    let config = cli.chaos.to_config();
    // Registered with the agent, so a run with a random seed can be repeated.
    cli.agent
        .labels
        .push(("chaos-seed".to_string(), config.seed.to_string()));
    let agent = match ChaosAgent::new(config) {
        Ok(agent) => agent,
        Err(error) => {
            eprintln!("concord-chaos-agent: error: {error}");
            return ExitCode::FAILURE;
        }
    };
    concord_sdk::run_main(
        "concord-chaos-agent",
        env!("CARGO_PKG_VERSION"),
        cli.agent,
        agent,
    )
}
