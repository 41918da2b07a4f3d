//! `concord-echo-agent`: parses flags (each also a `CONCORD_*` env var) and runs the echo agent.

use std::process::ExitCode;

use clap::Parser;
use concord_echo_agent::EchoAgent;
use concord_sdk::AgentArgs;

/// Concord example agent: capability `echo`, returns each task's payload unchanged.
#[derive(Parser)]
#[command(name = "concord-echo-agent", version, about)]
struct Cli {
    #[command(flatten)]
    agent: AgentArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    concord_sdk::run_main(
        "concord-echo-agent",
        env!("CARGO_PKG_VERSION"),
        cli.agent,
        EchoAgent,
    )
}
