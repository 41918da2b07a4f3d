//! `concord dlq list|show|replay|purge`: the dead letters, for operators,
//! through the dispatcher's `<root>.deadletters.*` requests.

use std::process::ExitCode;
use std::time::Duration;

use concord_bus::Bus;
use concord_wire::v1::{
    DeadLetter, DeadLetterList, GetDeadLetter, ListDeadLetters, PurgeDeadLetters,
    PurgedDeadLetters, ReplayDeadLetter, ReplayedDeadLetter,
};
use uuid::Uuid;

/// How long a dead-letter request may take (a replay waits for the intake
/// stream's confirmation).
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(clap::Subcommand)]
pub enum DlqCommand {
    /// List dead letters, newest first.
    List {
        /// Only this reason (invalid_input, no_eligible_agent, max_attempts ...).
        #[arg(long)]
        reason: Option<String>,
        /// Only from this service, e.g. concord-registry.
        #[arg(long)]
        source: Option<String>,
        /// Only those not replayed since they last failed.
        #[arg(long)]
        pending: bool,
        /// At most this many (pages of up to 1000 are fetched as needed).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter with its payload, headers and history.
    Show { id: Uuid },
    /// Publish a dead letter's original bytes and headers to its original subject again.
    ///
    /// `Nats-Msg-Id` is left out (JetStream would drop the replay as a
    /// duplicate inside its window) and `Concord-Replay-Of: <id>` is added:
    /// the dispatcher reopens a dead-lettered task only for a submission
    /// with that header (its history then shows `task.resubmitted`). A task
    /// submission (`<root>.tasks.submit`) goes through JetStream and is
    /// confirmed by the intake stream; other subjects get a plain publish.
    Replay { id: Uuid },
    /// Delete dead letters.
    Purge {
        /// These ids.
        ids: Vec<Uuid>,
        /// Everything (instead of ids).
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        /// Only those with this reason.
        #[arg(long)]
        reason: Option<String>,
    },
}

pub async fn run(bus: &Bus, command: DlqCommand) -> anyhow::Result<ExitCode> {
    let subject = |name: &str| bus.subjects.endpoint("deadletters", name);
    match command {
        DlqCommand::List {
            reason,
            source,
            pending,
            limit,
            json,
        } => {
            let mut query = ListDeadLetters {
                reason: reason.unwrap_or_default(),
                source: source.unwrap_or_default(),
                pending_only: pending,
                limit: 0,
                after: String::new(),
            };
            let mut printed = 0u32;
            while printed < limit {
                query.limit = (limit - printed).min(1000);
                let page: DeadLetterList = bus
                    .request(subject("list"), &query, TIMEOUT)
                    .await
                    .map_err(crate::tasks::failed)?;
                for letter in &page.dead_letters {
                    printed += 1;
                    if json {
                        println!("{}", serde_json::to_string(&to_json(letter)?)?);
                    } else {
                        println!("{}", row(letter));
                    }
                }
                if page.next.is_empty() {
                    break;
                }
                query.after = page.next;
            }
            if printed == 0 && !json {
                eprintln!("no dead letters");
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Show { id } => {
            let letter: DeadLetter = bus
                .request(
                    subject("get"),
                    &GetDeadLetter { id: id.to_string() },
                    TIMEOUT,
                )
                .await
                .map_err(crate::tasks::failed)?;
            println!("{}", serde_json::to_string_pretty(&to_json(&letter)?)?);
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Replay { id } => {
            let replayed: ReplayedDeadLetter = bus
                .request(
                    subject("replay"),
                    &ReplayDeadLetter { id: id.to_string() },
                    TIMEOUT,
                )
                .await
                .map_err(crate::tasks::failed)?;
            if replayed.stream.is_empty() {
                println!("replayed {id} to {}", replayed.subject);
            } else {
                println!(
                    "replayed {id} to {} (stream {} sequence {})",
                    replayed.subject, replayed.stream, replayed.sequence
                );
                if replayed.task_id.is_empty() {
                    eprintln!(
                        "note: the submission names no task id (neither in its body nor as Nats-Msg-Id): the dispatcher runs the replay as a new task"
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Purge { ids, all, reason } => {
            if !all && ids.is_empty() {
                anyhow::bail!("name the dead letters to purge, or pass --all");
            }
            let query = PurgeDeadLetters {
                ids: ids.iter().map(Uuid::to_string).collect(),
                all,
                reason: reason.unwrap_or_default(),
            };
            let purged: PurgedDeadLetters = bus
                .request(subject("purge"), &query, TIMEOUT)
                .await
                .map_err(crate::tasks::failed)?;
            println!("purged {} dead letter(s)", purged.purged);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// One line of `dlq list`.
fn row(letter: &DeadLetter) -> String {
    let last_seen = letter
        .last_seen
        .as_ref()
        .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, 0))
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default();
    format!(
        "{}  {}  {:<18} {:<20} {}",
        letter.id, last_seen, letter.reason, letter.source, letter.error
    )
}

/// A dead letter's JSON for people: its wire form, with the payload as text
/// when it is UTF-8 (the wire form has it in base64).
fn to_json(letter: &DeadLetter) -> anyhow::Result<serde_json::Value> {
    let mut json: serde_json::Value = serde_json::from_str(&crate::json::compact(letter)?)?;
    json["payload"] = match std::str::from_utf8(&letter.payload) {
        Ok(text) => text.into(),
        Err(_) => format!("<{} bytes of binary>", letter.payload.len()).into(),
    };
    Ok(json)
}
