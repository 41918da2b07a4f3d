//! `concord barrier`: sync points through the state service's subjects
//! (`<root>.state.barrier.*`, docs/PROTOCOL.md "State: barriers").

use std::process::ExitCode;
use std::time::Duration;

use concord_bus::{Bus, ServiceError};
use concord_wire::json::to_wire_value;
use concord_wire::v1::{
    ArriveAtBarrier, Barrier, BarrierCondition, BarrierStatus, CreateBarrier, GetBarrier,
};

use crate::state::request as call;

const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Subcommand)]
pub enum BarrierCommand {
    /// Create a barrier (the same id and settings again show the existing one).
    Create(CreateArgs),
    /// Arrive at a barrier; with --wait, print it when it releases or times
    /// out (exit status 1 on a timeout).
    Arrive {
        id: String,
        #[arg(long)]
        participant: String,
        /// This participant's contribution to the shared data (a JSON object).
        #[arg(long)]
        data: Option<String>,
        #[arg(long)]
        wait: bool,
        /// Print the barrier on one line.
        #[arg(long)]
        json: bool,
    },
    /// Show a barrier: who arrived, who is missing, its status.
    Get {
        id: String,
        /// Print the barrier on one line.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Letters, digits, `-`, `_`; generated when absent.
    #[arg(long)]
    id: Option<String>,
    /// The participants by id, comma separated (or use --count).
    #[arg(long, value_delimiter = ',')]
    participants: Vec<String>,
    /// Any participants, up to this many (instead of --participants).
    #[arg(long)]
    count: Option<u32>,
    /// all, majority, or min-count (with --min-count).
    #[arg(long, default_value = "all", value_parser = parse_condition)]
    condition: BarrierCondition,
    #[arg(long)]
    min_count: Option<u32>,
    /// Time to the timeout, in milliseconds.
    #[arg(long, default_value_t = 60_000)]
    timeout_ms: u64,
    /// Shared data every participant gets at the release (a JSON object).
    #[arg(long)]
    data: Option<String>,
    #[arg(long, default_value = "")]
    actor: String,
    /// Print the barrier on one line.
    #[arg(long)]
    json: bool,
}

fn parse_condition(text: &str) -> Result<BarrierCondition, String> {
    match text.to_ascii_lowercase().replace('_', "-").as_str() {
        "all" => Ok(BarrierCondition::All),
        "majority" => Ok(BarrierCondition::Majority),
        "min-count" => Ok(BarrierCondition::MinCount),
        _ => Err(format!("{text:?} is not all, majority or min-count")),
    }
}

fn parse_data(text: Option<String>) -> anyhow::Result<Option<concord_wire::pbjson_types::Value>> {
    text.map(|text| {
        serde_json::from_str(&text)
            .map(to_wire_value)
            .map_err(|e| anyhow::anyhow!("--data is not valid JSON: {e}"))
    })
    .transpose()
}

fn failed(error: ServiceError) -> anyhow::Error {
    crate::state::refused("barrier", error)
}

fn print(barrier: &Barrier, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", crate::json::compact(barrier)?);
    } else {
        println!("{}", crate::json::pretty(barrier)?);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn run(bus: &Bus, command: BarrierCommand) -> anyhow::Result<ExitCode> {
    match command {
        BarrierCommand::Create(args) => {
            let message = CreateBarrier {
                id: args.id.unwrap_or_default(),
                participants: args.participants,
                count: args.count.unwrap_or(0),
                condition: args.condition as i32,
                min_count: args.min_count.unwrap_or(0),
                timeout_ms: args.timeout_ms,
                data: parse_data(args.data)?,
                actor: args.actor,
            };
            let barrier: Barrier = call(bus, "barrier.create", &message, TIMEOUT)
                .await
                .map_err(failed)?;
            print(&barrier, args.json)
        }
        BarrierCommand::Arrive {
            id,
            participant,
            data,
            wait,
            json,
        } => {
            let message = ArriveAtBarrier {
                id: id.clone(),
                participant,
                data: parse_data(data)?,
                wait,
            };
            // A waiting arrival is answered at the release or the timeout,
            // which the barrier's deadline bounds.
            let timeout = if wait {
                let barrier: Barrier = call(bus, "barrier.get", &GetBarrier { id }, TIMEOUT)
                    .await
                    .map_err(failed)?;
                let deadline = barrier.deadline.map_or(0, |d| d.seconds);
                let left = (deadline - chrono::Utc::now().timestamp()).max(0) as u64;
                TIMEOUT + Duration::from_secs(left)
            } else {
                TIMEOUT
            };
            let barrier: Barrier = call(bus, "barrier.arrive", &message, timeout)
                .await
                .map_err(failed)?;
            print(&barrier, json)?;
            if wait && barrier.status == BarrierStatus::BarrierTimeout as i32 {
                eprintln!(
                    "concord: barrier timed out; missing: {}",
                    barrier.missing.join(", ")
                );
                return Ok(ExitCode::FAILURE);
            }
            Ok(ExitCode::SUCCESS)
        }
        BarrierCommand::Get { id, json } => {
            let barrier: Barrier = call(bus, "barrier.get", &GetBarrier { id }, TIMEOUT)
                .await
                .map_err(failed)?;
            print(&barrier, json)
        }
    }
}
