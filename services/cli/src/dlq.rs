//! `concord dlq list|show|replay|purge`: the dead-letter store, for operators.

use std::process::ExitCode;

use concord_config::{DatabaseArgs, NatsArgs};
use concord_store::{DeadLetter, DeadLetterFilter, DeadLetterStore, PurgeFilter};
use uuid::Uuid;

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
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter with its payload, headers and history.
    Show { id: Uuid },
    /// Publish a dead letter's original bytes and headers to its original subject again.
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

pub async fn run(
    nats: &NatsArgs,
    database: &DatabaseArgs,
    command: DlqCommand,
) -> anyhow::Result<ExitCode> {
    let pool = concord_store::connect(&database.database_url, 2).await?;
    let store = DeadLetterStore::new(pool);
    match command {
        DlqCommand::List {
            reason,
            source,
            pending,
            limit,
            json,
        } => {
            let letters = store
                .list(&DeadLetterFilter {
                    reason,
                    source,
                    pending_only: pending,
                    after: None,
                    limit,
                })
                .await?;
            for letter in &letters {
                if json {
                    println!("{}", to_json(letter));
                } else {
                    println!(
                        "{}  {}  {:<18} {:<20} {}",
                        letter.id,
                        letter.last_seen.format("%Y-%m-%dT%H:%M:%SZ"),
                        letter.reason,
                        letter.source,
                        letter.error
                    );
                }
            }
            if letters.is_empty() && !json {
                eprintln!("no dead letters");
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Show { id } => match store.get(id).await? {
            Some(letter) => {
                println!("{}", serde_json::to_string_pretty(&to_json(&letter))?);
                Ok(ExitCode::SUCCESS)
            }
            None => anyhow::bail!("no dead letter with id {id}"),
        },
        DlqCommand::Replay { id } => {
            let Some(letter) = store.get(id).await? else {
                anyhow::bail!("no dead letter with id {id}");
            };
            let bus = crate::connect(nats).await?;
            let mut headers = async_nats::HeaderMap::new();
            for (name, value) in &letter.headers {
                headers.insert(name.as_str(), value.as_str());
            }
            bus.client
                .publish_with_headers(
                    letter.subject.clone(),
                    headers,
                    letter.payload.clone().into(),
                )
                .await?;
            bus.client.flush().await?;
            store.mark_replayed(id).await?;
            println!("replayed {id} to {}", letter.subject);
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Purge { ids, all, reason } => {
            let filter = if all {
                PurgeFilter {
                    reason,
                    ..PurgeFilter::all()
                }
            } else if ids.is_empty() {
                anyhow::bail!("name the dead letters to purge, or pass --all");
            } else {
                PurgeFilter {
                    reason,
                    ..PurgeFilter::ids(ids)
                }
            };
            let purged = store.purge(&filter).await?;
            println!("purged {purged} dead letter(s)");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn to_json(letter: &DeadLetter) -> serde_json::Value {
    let payload = match std::str::from_utf8(&letter.payload) {
        Ok(text) => serde_json::Value::String(text.to_string()),
        Err(_) => serde_json::Value::String(format!("<{} bytes of binary>", letter.payload.len())),
    };
    serde_json::json!({
        "id": letter.id,
        "subject": letter.subject,
        "headers": letter.headers,
        "payload": payload,
        "reason": letter.reason,
        "error": letter.error,
        "attempts": letter.attempts,
        "source": letter.source,
        "history": letter.history,
        "firstSeen": letter.first_seen,
        "lastSeen": letter.last_seen,
        "replayedAt": letter.replayed_at,
        "replayCount": letter.replay_count,
    })
}
