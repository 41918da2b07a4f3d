//! `concord dlq list|show|replay|purge`: the dead-letter store, for operators.

use std::process::ExitCode;

use anyhow::Context;
use concord_config::{DatabaseArgs, NatsArgs};
use concord_dispatcher::engine::REPLAY_OF_HEADER;
use concord_dispatcher::submission::{Origin, derived_id};
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
                if name.eq_ignore_ascii_case(concord_bus::headers::MSG_ID)
                    || name.eq_ignore_ascii_case(REPLAY_OF_HEADER)
                {
                    continue;
                }
                headers.insert(name.as_str(), value.as_str());
            }
            headers.insert(REPLAY_OF_HEADER, id.to_string().as_str());
            let tasks_submit = bus.subjects.tasks_submit();
            if letter.subject == tasks_submit {
                let payload = with_task_id(&letter);
                let ack = bus
                    .jetstream()
                    .publish_with_headers(letter.subject.clone(), headers, payload.into())
                    .await
                    .with_context(|| format!("cannot publish to {}", letter.subject))?
                    .await
                    .map_err(|error| {
                        anyhow::anyhow!(
                            "the intake stream did not confirm the replay ({error}): is concord-dispatcher running?"
                        )
                    })?;
                store.mark_replayed(id).await?;
                println!(
                    "replayed {id} to {} (stream {} sequence {})",
                    letter.subject, ack.stream, ack.sequence
                );
            } else {
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
            }
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

/// The payload to replay for a task submission. A JSON body without an
/// `id` got its task id from the `Nats-Msg-Id` header, which the replay
/// leaves out: put that id into the body so the replay reopens the same
/// task. Anything else is replayed as it is.
fn with_task_id(letter: &DeadLetter) -> Vec<u8> {
    let header = |name: &str| {
        letter
            .headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    };
    let json =
        concord_wire::codec::ContentType::from_header(header(concord_bus::headers::CONTENT_TYPE))
            .is_ok_and(|ct| ct == concord_wire::codec::ContentType::Json);
    let Ok(serde_json::Value::Object(mut body)) = serde_json::from_slice(&letter.payload) else {
        return letter.payload.clone();
    };
    if !json
        || body
            .get("id")
            .and_then(|id| id.as_str())
            .is_some_and(|id| !id.is_empty())
    {
        return letter.payload.clone();
    }
    let Some(msg_id) = header(concord_bus::headers::MSG_ID).filter(|m| !m.trim().is_empty()) else {
        eprintln!(
            "note: the submission names no task id (neither in its body nor as Nats-Msg-Id): the dispatcher will run the replay as a new task"
        );
        return letter.payload.clone();
    };
    let id = derived_id(&Origin {
        content_type: None,
        msg_id: Some(msg_id),
        stream_identity: "",
        stream_sequence: 0,
        now_unix_ms: 0,
    });
    body.insert("id".into(), id.into());
    serde_json::to_vec(&body).unwrap_or_else(|_| letter.payload.clone())
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
