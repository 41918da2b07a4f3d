//! `concord events tail|replay`: live events from NATS, stored ones from
//! Postgres, and the `tasks` projection rebuilt or verified from them.

use std::collections::BTreeMap;
use std::process::ExitCode;

use concord_config::{DatabaseArgs, NatsArgs};
use concord_dispatcher::projection::TaskView;
use concord_dispatcher::store::TaskStore;
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
    /// Print stored events in order as JSON lines, or rebuild a projection
    /// from them (--project).
    ///
    /// `--project tasks` folds every stored `task.*` event into the
    /// dispatcher's `tasks` table, replacing its rows in one transaction, and
    /// prints how many tasks it rebuilt. With --verify it only compares the
    /// folded events with the table and exits 1, listing the task ids that
    /// differ, when they do. Tasks that change while it runs can show up as
    /// differences: verify on a quiet system (or run it again). Rebuild only
    /// with every dispatcher stopped: a dispatcher writing a task while its
    /// row is being replaced fails its sequence check and gives the task up.
    #[command(after_help = "Examples:\n  \
        concord events replay --aggregate task --limit 20\n  \
        concord events replay --project tasks --verify\n  \
        concord events replay --project tasks")]
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
        /// Rebuild this projection from all stored events instead of printing
        /// them: `tasks` (the dispatcher's task table).
        #[arg(
            long,
            value_parser = ["tasks"],
            conflicts_with_all = ["aggregate", "from", "to", "limit"]
        )]
        project: Option<String>,
        /// With --project: compare instead of rewriting; exit 1 listing the
        /// tasks whose row differs from their events.
        #[arg(long, requires = "project")]
        verify: bool,
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
            project: Some(_),
            verify,
            ..
        } => {
            let pool = concord_store::connect(&database.database_url, 2).await?;
            let store = TaskStore::new(pool);
            if verify {
                verify_tasks(&store).await
            } else {
                let rebuilt = store.rebuild().await?;
                println!("rebuilt the tasks projection: {rebuilt} task(s)");
                Ok(ExitCode::SUCCESS)
            }
        }
        EventsCommand::Replay {
            aggregate,
            from,
            to,
            limit,
            project: None,
            ..
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

/// `--project tasks --verify`: the table against the events, task by task.
async fn verify_tasks(store: &TaskStore) -> anyhow::Result<ExitCode> {
    let folded = store.fold_events().await?;
    let stored = store.all().await?;
    let differences = compare(&folded, &stored);
    if differences.is_empty() {
        println!(
            "the tasks projection matches the events: {} task(s)",
            folded.len()
        );
        return Ok(ExitCode::SUCCESS);
    }
    for (id, how) in &differences {
        println!("{id}  {how}");
    }
    eprintln!(
        "the tasks projection differs from the events for {} task(s); `concord events replay --project tasks` rebuilds it",
        differences.len()
    );
    Ok(ExitCode::FAILURE)
}

/// Task ids whose folded view and stored row differ, with how.
fn compare(folded: &[TaskView], stored: &[TaskView]) -> BTreeMap<String, String> {
    let stored: BTreeMap<&str, TaskView> = stored
        .iter()
        .map(|v| (v.task_id.as_str(), comparable(v)))
        .collect();
    let folded_by_id: BTreeMap<&str, TaskView> = folded
        .iter()
        .map(|v| (v.task_id.as_str(), comparable(v)))
        .collect();
    let mut differences = BTreeMap::new();
    for (id, view) in &folded_by_id {
        match stored.get(id) {
            None => {
                differences.insert(id.to_string(), "missing from the table".to_string());
            }
            Some(row) if row != view => {
                differences.insert(
                    id.to_string(),
                    format!(
                        "row differs from its events: {}",
                        differing_fields(view, row).join(", ")
                    ),
                );
            }
            Some(_) => {}
        }
    }
    for id in stored.keys() {
        if !folded_by_id.contains_key(id) {
            differences.insert(id.to_string(), "row without events".to_string());
        }
    }
    differences
}

/// The view as the table can hold it: an output of JSON `null` is stored
/// as the result's `"output": null`, which reads back as no output (the
/// TaskResult a client gets is the same either way).
fn comparable(view: &TaskView) -> TaskView {
    let mut view = view.clone();
    if view.output == Some(serde_json::Value::Null) {
        view.output = None;
    }
    view
}

/// Names of the fields in which two views of one task differ.
fn differing_fields(a: &TaskView, b: &TaskView) -> Vec<&'static str> {
    let checks = [
        ("task", a.task != b.task),
        ("status", a.status != b.status),
        ("attempts", a.attempts != b.attempts),
        ("agent_id", a.agent_id != b.agent_id),
        ("output", a.output != b.output),
        ("outputs", a.outputs != b.outputs),
        ("error", a.error != b.error),
        ("last_sequence", a.last_sequence != b.last_sequence),
        ("submitted_at", a.submitted_at != b.submitted_at),
        ("updated_at", a.updated_at != b.updated_at),
        ("completed_at", a.completed_at != b.completed_at),
    ];
    checks
        .into_iter()
        .filter(|(_, differs)| *differs)
        .map(|(name, _)| name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_wire::v1::Task;

    fn view(id: &str) -> TaskView {
        let task = Task {
            id: id.into(),
            capability: "echo".into(),
            ..Task::default()
        };
        TaskView::submitted(task, 1, chrono::Utc::now())
    }

    #[test]
    fn differences_name_the_task_and_the_fields() {
        let same = view("same");
        let mut changed = view("changed");
        let mut changed_row = changed.clone();
        changed_row.attempts = 3;
        changed_row.agent_id = "a1".into();
        // A null output reads back from the table as none: not a difference.
        let mut null = view("null");
        null.output = Some(serde_json::Value::Null);
        let mut null_row = null.clone();
        null_row.output = None;
        changed.last_sequence = 1;
        let folded = [same.clone(), changed, null, view("lost")];
        let stored = [same, changed_row, null_row, view("orphan")];
        let differences = compare(&folded, &stored);
        assert_eq!(differences.len(), 3, "{differences:?}");
        assert_eq!(
            differences["changed"],
            "row differs from its events: attempts, agent_id"
        );
        assert_eq!(differences["lost"], "missing from the table");
        assert_eq!(differences["orphan"], "row without events");
    }
}
