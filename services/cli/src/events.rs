//! `concord events tail|replay`: live events from NATS, stored ones from
//! Postgres (the event store; `concord-dispatcher --verify-projection`
//! checks the dispatcher's table against it).

use std::process::ExitCode;

use concord_config::{DatabaseArgs, NatsArgs};
use concord_store::{EventStore, ReplayFilter};
use futures::StreamExt;

#[derive(clap::Subcommand)]
pub enum EventsCommand {
    /// Print live events (`<root>.events.>`) as JSON lines until Ctrl-C.
    Tail {
        /// Only this aggregate type (task, agent, dead_letter ...).
        #[arg(long)]
        aggregate: Option<String>,
    },
    /// Print stored events in order as JSON lines.
    #[command(after_help = "Examples:\n  \
        concord events replay --aggregate task --limit 20\n  \
        concord events replay --from 2026-12-01T00:00:00Z --aggregate dead_letter")]
    Replay {
        /// Only this aggregate type.
        #[arg(long)]
        aggregate: Option<String>,
        /// Only events at or after this RFC 3339 time.
        #[arg(long)]
        from: Option<chrono::DateTime<chrono::Utc>>,
        /// Only events before this RFC 3339 time.
        #[arg(long)]
        to: Option<chrono::DateTime<chrono::Utc>>,
        /// Stop after this many events.
        #[arg(long, default_value_t = i64::MAX)]
        limit: i64,
    },
}

pub async fn run(
    nats: &NatsArgs,
    database: &DatabaseArgs,
    command: EventsCommand,
) -> anyhow::Result<ExitCode> {
    match command {
        EventsCommand::Tail { aggregate } => {
            let bus = crate::connect(nats).await?;
            let subject = match aggregate {
                Some(aggregate) => bus.subjects.join(&format!("events.{aggregate}.>")),
                None => bus.subjects.all_events(),
            };
            let mut events = bus.client.subscribe(subject).await?;
            while let Some(message) = events.next().await {
                println!("{}", String::from_utf8_lossy(&message.payload));
            }
            Ok(ExitCode::SUCCESS)
        }
        EventsCommand::Replay {
            aggregate,
            from,
            to,
            limit,
        } => {
            let pool = concord_store::connect(&database.database_url, 2).await?;
            let store = EventStore::new(pool);
            let mut filter = ReplayFilter {
                aggregate_type: aggregate,
                from,
                to,
                after_position: None,
                limit: limit.min(1000),
            };
            let mut printed = 0i64;
            loop {
                let page = store.replay(&filter).await?;
                for event in &page {
                    println!("{}", serde_json::to_string(event)?);
                    printed += 1;
                    if printed >= limit {
                        return Ok(ExitCode::SUCCESS);
                    }
                }
                match page.last() {
                    Some(last) => filter.after_position = Some(last.position),
                    None => return Ok(ExitCode::SUCCESS),
                }
            }
        }
    }
}
