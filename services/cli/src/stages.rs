//! `concord state workflow`: workflow stage records through the state
//! service's subjects (`<root>.state.workflow.*`, docs/PROTOCOL.md "State:
//! workflow stages").

use std::process::ExitCode;
use std::time::Duration;

use concord_bus::{Bus, ServiceError};
use concord_wire::json::to_wire_value;
use concord_wire::v1::{
    CreateWorkflowRecord, GetWorkflowRecord, ListWorkflowRecords, ListWorkflowRecordsReply,
    WorkflowRecord, WorkflowStatus, WorkflowStep, WorkflowStepKind,
};

const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Subcommand)]
pub enum WorkflowCommand {
    /// Create a record over stages in order.
    Create {
        /// Letters, digits, `-`, `_`; generated when absent.
        #[arg(long)]
        id: Option<String>,
        /// Stage names in order, comma separated.
        #[arg(long, value_delimiter = ',', required = true)]
        stages: Vec<String>,
        /// `STAGE=AGENT`; repeatable.
        #[arg(long, value_parser = parse_pair)]
        assign: Vec<(String, String)>,
        /// Free-form metadata, a JSON object.
        #[arg(long)]
        metadata: Option<String>,
        #[arg(long, default_value = "")]
        actor: String,
    },
    /// Make the first stage current.
    Start(Target),
    /// Complete the current stage with a quality score (0..1).
    Complete {
        #[command(flatten)]
        target: Target,
        stage: String,
        #[arg(long)]
        score: f64,
    },
    /// Move past the current stage without a score.
    Advance {
        #[command(flatten)]
        target: Target,
        stage: String,
    },
    /// Reopen a stage and every stage after it for another iteration.
    SendBack {
        #[command(flatten)]
        target: Target,
        stage: String,
    },
    /// Name the agent working on a stage.
    Assign {
        #[command(flatten)]
        target: Target,
        stage: String,
        agent: String,
    },
    /// Merge a JSON merge patch into the metadata.
    Annotate {
        #[command(flatten)]
        target: Target,
        patch: String,
    },
    /// Print a record as JSON.
    Get { id: String },
    /// List records, optionally of one status (created, running, finished).
    List {
        #[arg(long, value_parser = parse_status)]
        status: Option<WorkflowStatus>,
        /// One JSON record per line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// The record a step acts on, and how.
#[derive(Debug, clap::Args)]
pub struct Target {
    id: String,
    #[arg(long, default_value = "")]
    actor: String,
    /// Only if the record is at this version.
    #[arg(long)]
    expect: Option<u64>,
}

fn parse_pair(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{text:?} is not STAGE=AGENT"))
}

fn parse_status(text: &str) -> Result<WorkflowStatus, String> {
    match text.to_ascii_lowercase().as_str() {
        "created" => Ok(WorkflowStatus::WorkflowCreated),
        "running" => Ok(WorkflowStatus::WorkflowRunning),
        "finished" => Ok(WorkflowStatus::WorkflowFinished),
        _ => Err(format!("{text:?} is not created, running or finished")),
    }
}

fn parse_object(what: &str, text: &str) -> anyhow::Result<concord_wire::pbjson_types::Value> {
    serde_json::from_str(text)
        .map(to_wire_value)
        .map_err(|e| anyhow::anyhow!("{what} is not valid JSON: {e}"))
}

async fn call<Q: concord_wire::WireMessage, R: concord_wire::WireMessage>(
    bus: &Bus,
    name: &str,
    message: &Q,
) -> Result<R, ServiceError> {
    crate::state::request(bus, name, message, TIMEOUT).await
}

fn failed(error: ServiceError) -> anyhow::Error {
    crate::state::refused("record", error)
}

fn step(target: Target, kind: WorkflowStepKind) -> WorkflowStep {
    WorkflowStep {
        id: target.id,
        kind: kind as i32,
        actor: target.actor,
        expected_version: target.expect,
        ..Default::default()
    }
}

pub async fn run(bus: &Bus, command: WorkflowCommand) -> anyhow::Result<ExitCode> {
    use WorkflowStepKind as Kind;
    let message = match command {
        WorkflowCommand::Create {
            id,
            stages,
            assign,
            metadata,
            actor,
        } => {
            let message = CreateWorkflowRecord {
                id: id.unwrap_or_default(),
                stages,
                assignees: assign.into_iter().collect(),
                metadata: metadata
                    .map(|m| parse_object("--metadata", &m))
                    .transpose()?,
                actor,
            };
            let record: WorkflowRecord = call(bus, "workflow.create", &message)
                .await
                .map_err(failed)?;
            println!("{}", crate::json::pretty(&record)?);
            return Ok(ExitCode::SUCCESS);
        }
        WorkflowCommand::Start(target) => step(target, Kind::StepStart),
        WorkflowCommand::Complete {
            target,
            stage,
            score,
        } => WorkflowStep {
            stage,
            score: Some(score),
            ..step(target, Kind::StepComplete)
        },
        WorkflowCommand::Advance { target, stage } => WorkflowStep {
            stage,
            ..step(target, Kind::StepAdvance)
        },
        WorkflowCommand::SendBack { target, stage } => WorkflowStep {
            stage,
            ..step(target, Kind::StepSendBack)
        },
        WorkflowCommand::Assign {
            target,
            stage,
            agent,
        } => WorkflowStep {
            stage,
            agent,
            ..step(target, Kind::StepAssign)
        },
        WorkflowCommand::Annotate { target, patch } => WorkflowStep {
            patch: Some(parse_object("the patch", &patch)?),
            ..step(target, Kind::StepAnnotate)
        },
        WorkflowCommand::Get { id } => {
            let record: WorkflowRecord = call(bus, "workflow.get", &GetWorkflowRecord { id })
                .await
                .map_err(failed)?;
            println!("{}", crate::json::pretty(&record)?);
            return Ok(ExitCode::SUCCESS);
        }
        WorkflowCommand::List { status, json } => return list(bus, status, json).await,
    };
    let record: WorkflowRecord = call(bus, "workflow.step", &message).await.map_err(failed)?;
    println!("{}", crate::json::pretty(&record)?);
    Ok(ExitCode::SUCCESS)
}

async fn list(bus: &Bus, status: Option<WorkflowStatus>, json: bool) -> anyhow::Result<ExitCode> {
    let mut records = Vec::new();
    let mut after = String::new();
    loop {
        let message = ListWorkflowRecords {
            status: status.map_or(0, |s| s as i32),
            limit: 1000,
            after,
        };
        let reply: ListWorkflowRecordsReply =
            call(bus, "workflow.list", &message).await.map_err(failed)?;
        records.extend(reply.workflows);
        if reply.next.is_empty() {
            break;
        }
        after = reply.next;
    }
    if json {
        for record in &records {
            println!("{}", crate::json::compact(record)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<36} {:<18} {:<20} {:>9} {:>7}  MEAN SCORE",
        "ID", "STATUS", "CURRENT", "ITERATION", "VERSION"
    );
    for r in &records {
        let status = WorkflowStatus::try_from(r.status)
            .map(|s| s.as_str_name().trim_start_matches("WORKFLOW_").to_string())
            .unwrap_or_default();
        println!(
            "{:<36} {:<18} {:<20} {:>9} {:>7}  {}",
            r.id,
            status,
            r.current,
            r.iteration,
            r.version,
            r.mean_score.map(|m| format!("{m:.2}")).unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}
