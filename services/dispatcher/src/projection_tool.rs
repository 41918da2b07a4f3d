//! The `tasks` table checked against, or rebuilt from, the task events, for
//! operators: `concord-dispatcher --verify-projection` compares (exit 1,
//! listing the task ids that differ, when they do) and
//! `concord-dispatcher --rebuild-projection` replaces every row in one
//! transaction. Tasks that change while it runs can show up as differences:
//! verify on a quiet system (or run it again). Rebuild only with every
//! dispatcher stopped: a dispatcher writing a task while its row is being
//! replaced fails its sequence check and gives the task up.

use std::collections::BTreeMap;
use std::process::ExitCode;

use crate::projection::TaskView;
use crate::store::TaskStore;

/// What the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Verify,
    Rebuild,
}

/// Runs `action` against the database at `database_url` (applying the
/// dispatcher's migrations first), printing what it found.
pub async fn run(database_url: &str, action: Action) -> anyhow::Result<ExitCode> {
    let pool = concord_store::connect(database_url, 2).await?;
    concord_store::migrate_shared(&pool).await?;
    concord_store::migrate(&pool, &crate::migrations()).await?;
    let store = TaskStore::new(pool);
    match action {
        Action::Verify => verify(&store).await,
        Action::Rebuild => {
            let rebuilt = store.rebuild().await?;
            println!("rebuilt the tasks projection: {rebuilt} task(s)");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `--verify-projection`: the table against the events, task by task.
pub async fn verify(store: &TaskStore) -> anyhow::Result<ExitCode> {
    let (tasks, differences) = differences(store).await?;
    if differences.is_empty() {
        println!("the tasks projection matches the events: {tasks} task(s)");
        return Ok(ExitCode::SUCCESS);
    }
    for (id, how) in &differences {
        println!("{id}  {how}");
    }
    eprintln!(
        "the tasks projection differs from the events for {} task(s); `concord-dispatcher --rebuild-projection` rebuilds it",
        differences.len()
    );
    Ok(ExitCode::FAILURE)
}

/// How many tasks the events hold, and the ids whose row differs from
/// their events, with how.
pub async fn differences(store: &TaskStore) -> anyhow::Result<(usize, BTreeMap<String, String>)> {
    let folded = store.fold_events().await?;
    let stored = store.all().await?;
    Ok((folded.len(), compare(&folded, &stored)))
}

/// Task ids whose folded view and stored row differ, with how.
pub fn compare(folded: &[TaskView], stored: &[TaskView]) -> BTreeMap<String, String> {
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
