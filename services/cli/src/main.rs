//! `concord`: the operator CLI. Talks to the services over NATS (agents,
//! tasks, dead letters, documents, locks, barriers) and reads the event
//! store in Postgres (`events replay`); it imports no service crate.

mod agents;
mod barrier;
mod dlq;
mod events;
mod json;
mod lock;
mod ping;
mod stages;
mod state;
mod tasks;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use concord_bus::{Bus, BusConfig};
use concord_config::{DatabaseArgs, NatsArgs};

/// Operate a Concord installation.
#[derive(Parser)]
#[command(name = "concord", version, about)]
struct Cli {
    #[command(flatten)]
    nats: NatsArgs,
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the Concord services answering `$SRV.PING` (optionally wait for some).
    Ping(ping::PingArgs),
    /// Show each running service's endpoints (`$SRV.INFO`).
    Services(ping::ServicesArgs),
    /// List, show and deregister agents (the registry's directory).
    #[command(subcommand)]
    Agents(agents::AgentsCommand),
    /// Submit a task to the dispatcher: print its id, or with --wait its result.
    Submit(tasks::SubmitArgs),
    /// Show, cancel and watch tasks (the dispatcher's endpoints).
    #[command(subcommand)]
    Task(tasks::TaskCommand),
    /// Watch live events or replay stored ones.
    #[command(subcommand)]
    Events(events::EventsCommand),
    /// Inspect, replay and purge dead letters.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// Read, write, list and watch shared documents (the state service).
    #[command(subcommand)]
    State(state::StateCommand),
    /// Take, hold, release and list resource locks with fencing tokens.
    #[command(subcommand)]
    Lock(lock::LockCommand),
    /// Create, arrive at and show barriers (sync points).
    #[command(subcommand)]
    Barrier(barrier::BarrierCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("concord: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Ping(args) => ping::ping(&connect(&cli.nats).await?, args).await,
        Command::Services(args) => ping::services(&connect(&cli.nats).await?, args).await,
        Command::Agents(command) => agents::run(&connect(&cli.nats).await?, command).await,
        Command::Submit(args) => tasks::submit(&connect(&cli.nats).await?, args).await,
        Command::Task(command) => tasks::run(&connect(&cli.nats).await?, command).await,
        Command::Events(command) => events::run(&cli.nats, &cli.database, command).await,
        Command::Dlq(command) => dlq::run(&connect(&cli.nats).await?, command).await,
        Command::State(command) => state::run(&connect(&cli.nats).await?, command).await,
        Command::Lock(command) => lock::run(&connect(&cli.nats).await?, command).await,
        Command::Barrier(command) => barrier::run(&connect(&cli.nats).await?, command).await,
    }
}

async fn connect(nats: &NatsArgs) -> anyhow::Result<Bus> {
    let config = BusConfig::from_args(nats, "concord-cli");
    Ok(concord_bus::connect(&config).await?)
}
