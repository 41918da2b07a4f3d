//! `concord agents list|get|remove`: the registry's directory, over NATS.

use std::process::ExitCode;
use std::time::Duration;

use concord_bus::Bus;
use concord_wire::v1::{
    AgentRecord, DiscoverAgents, DiscoverAgentsReply, GetAgent, Liveness, RemoveAgent,
    RemoveAgentReply,
};

const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(clap::Subcommand)]
pub enum AgentsCommand {
    /// List agents (all pages), optionally filtered.
    List {
        /// Only agents with this capability.
        #[arg(long)]
        capability: Option<String>,
        /// Only agents whose level for --capability is at least this (0..1).
        #[arg(long)]
        min_level: Option<f64>,
        /// Only agents in these liveness states (alive, suspect, unavailable); repeatable.
        #[arg(long, value_parser = parse_liveness)]
        liveness: Vec<Liveness>,
        /// Only agents with this label (key=value); repeatable, all must match.
        #[arg(long, value_parser = parse_label)]
        label: Vec<(String, String)>,
        /// JSON lines (the AgentRecord of each agent) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one agent as JSON.
    Get { id: String },
    /// Remove an agent and tell it to stop: its next heartbeat is answered
    /// AGENT_REMOVED, so it does not register again on its own.
    #[command(alias = "deregister")]
    Remove {
        id: String,
        /// Why (kept on the record and in the `agent.removed` event).
        #[arg(long, default_value = "")]
        reason: String,
    },
}

fn parse_liveness(value: &str) -> Result<Liveness, String> {
    Liveness::from_str_name(&value.to_ascii_uppercase())
        .filter(|l| *l != Liveness::Unspecified)
        .ok_or_else(|| format!("unknown liveness {value:?}: use alive, suspect or unavailable"))
}

fn parse_label(value: &str) -> Result<(String, String), String> {
    value
        .split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("label {value:?} must be key=value"))
}

pub async fn run(bus: &Bus, command: AgentsCommand) -> anyhow::Result<ExitCode> {
    match command {
        AgentsCommand::List {
            capability,
            min_level,
            liveness,
            label,
            json,
        } => {
            let mut query = DiscoverAgents {
                capability: capability.unwrap_or_default(),
                min_level: min_level.unwrap_or_default(),
                liveness: liveness.into_iter().map(|l| l as i32).collect(),
                labels: label.into_iter().collect(),
                limit: 1000,
                page_token: String::new(),
            };
            let mut count = 0;
            loop {
                let page: DiscoverAgentsReply = bus
                    .request(
                        bus.subjects.endpoint("registry", "discover"),
                        &query,
                        TIMEOUT,
                    )
                    .await?;
                for agent in &page.agents {
                    count += 1;
                    if json {
                        println!("{}", serde_json::to_string(agent)?);
                    } else {
                        println!("{}", row(agent));
                    }
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                query.page_token = page.next_page_token;
            }
            if count == 0 && !json {
                eprintln!("no agents");
            }
            Ok(ExitCode::SUCCESS)
        }
        AgentsCommand::Get { id } => {
            let agent: AgentRecord = bus
                .request(
                    bus.subjects.endpoint("registry", "get"),
                    &GetAgent { id },
                    TIMEOUT,
                )
                .await?;
            println!("{}", serde_json::to_string_pretty(&agent)?);
            Ok(ExitCode::SUCCESS)
        }
        AgentsCommand::Remove { id, reason } => {
            let reply: RemoveAgentReply = bus
                .request(
                    bus.subjects.endpoint("registry", "remove"),
                    &RemoveAgent {
                        id: id.clone(),
                        reason,
                    },
                    TIMEOUT,
                )
                .await?;
            let reason = reply.agent.map(|a| a.removed_reason).unwrap_or_default();
            println!("removed {id} ({reason}); a running agent stops at its next heartbeat");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn row(agent: &AgentRecord) -> String {
    let liveness = Liveness::try_from(agent.liveness)
        .map(|l| l.as_str_name())
        .unwrap_or("?");
    let capabilities: Vec<String> = agent
        .capabilities
        .iter()
        .map(|c| format!("{}:{}", c.name, c.level))
        .collect();
    format!(
        "{:<40} {:<11} {:>3}/{:<3} rep {:.2}  {}",
        agent.id,
        liveness,
        agent.in_flight,
        agent.max_concurrency,
        agent.reputation,
        capabilities.join(",")
    )
}
