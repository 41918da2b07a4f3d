//! The dispatcher's Postgres side: the `tasks` projection and the task events,
//! written together in one transaction per batch.
//!
//! A write carries the `last_sequence` the writer believes the row has
//! (zero: the task is new). The row is updated only if it still holds that
//! value, so of two writers racing for one task (two replicas given two
//! submissions with the same id) exactly one records anything; the other
//! learns it does not own the task.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use concord_store::{
    DirectConnections, EventColumns, EventStore, NewEvent, ReplayFilter, StoreError,
    insert_events_sql,
};
use concord_wire::codec::{self, ContentType};
use concord_wire::v1::{TaskResult, TaskStatus};
use sqlx::PgPool;
use sqlx::types::Json;

use crate::known_ids::Bloom;
use crate::projection::{
    AGGREGATE, SUBMITTED, TaskEvent, TaskView, from_wire_json, from_wire_value,
    submitted_task_text, wire_text,
};

/// One task's change: its new row and the events that lead to it.
#[derive(Debug, Clone)]
pub struct TaskWrite {
    /// `last_sequence` the stored row must have (0: no row yet).
    pub expected_sequence: i64,
    /// The row after the events.
    pub row: TaskRow,
    /// Events with sequences `expected_sequence + 1 ..= row.last_sequence`.
    pub events: Vec<NewEvent>,
}

impl TaskWrite {
    /// The write taking the stored row from `expected_sequence` to `view`
    /// through `events`.
    pub fn new(view: &TaskView, expected_sequence: i64, events: Vec<NewEvent>) -> Self {
        Self {
            expected_sequence,
            row: TaskRow::of(view, expected_sequence, &events),
            events,
        }
    }
}

/// A `tasks` row as written: the view's columns, with its JSON documents
/// encoded once (not a copy of the whole view, payload and output included,
/// for every write).
#[derive(Debug, Clone)]
pub struct TaskRow {
    pub task_id: String,
    pub capability: String,
    pub status: TaskStatus,
    pub priority: i32,
    pub correlation_id: String,
    pub attempts: i32,
    pub agent_id: String,
    /// The task's canonical JSON; only an insert stores it (updates keep
    /// the stored one).
    pub spec: Option<String>,
    /// The result's canonical JSON: what `<root>.tasks.result.<id>` carries
    /// once the row is final (cheap to clone for that publication).
    pub result: Bytes,
    pub last_sequence: i64,
    pub submitted_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

impl TaskRow {
    /// The row of `view` written over a stored row at `expected_sequence`
    /// (0: inserted, with the spec, taken from the `task.submitted` event
    /// among `events` when there is one rather than encoded again).
    pub fn of(view: &TaskView, expected_sequence: i64, events: &[NewEvent]) -> Self {
        let spec = (expected_sequence == 0).then(|| {
            events
                .first()
                .filter(|event| event.sequence == 1 && event.event_type == SUBMITTED)
                .and_then(|event| submitted_task_text(&event.data))
                .map_or_else(|| wire_text(&view.task), str::to_string)
        });
        let result = codec::encode(ContentType::Json, &view.result()).expect("results encode");
        Self {
            task_id: view.task_id.clone(),
            capability: view.task.capability.clone(),
            status: view.status,
            priority: view.task.priority as i32,
            correlation_id: view.task.correlation_id.clone(),
            attempts: view.attempts as i32,
            agent_id: view.agent_id.clone(),
            spec,
            result: Bytes::from(result),
            last_sequence: view.last_sequence,
            submitted_at: view.submitted_at,
            updated_at: view.updated_at,
            completed_at: view.completed_at,
        }
    }
}

/// The task rows (`$1`..`$14`) and, for the tasks this writer owns, their
/// events (`$15`..`$23`), in one statement: one round trip, one commit.
/// The rows of a batch (parameters `$1..$14`) and the events of the rows
/// this writer owns (`$15..$23`, the event store's own insert), in one
/// statement.
static UPSERT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let events = insert_events_sql(15, Some("e.aggregate_id in (select task_id from owned)"));
    format!("{UPSERT_ROWS},\nappended as (\n{events}\nreturning 1\n)\nselect task_id from owned")
});

const UPSERT_ROWS: &str = "\
with input as (
    select * from unnest($1::text[], $2::text[], $3::text[], $4::int4[], $5::text[], $6::int4[],
                         $7::text[], $8::text[]::json[], $9::text[]::json[], $10::int8[], $11::timestamptz[],
                         $12::timestamptz[], $13::timestamptz[], $14::int8[])
        as i(task_id, capability, status, priority, correlation_id, attempts, agent_id, spec,
             result, last_sequence, submitted_at, updated_at, completed_at, expected)
),
updated as (
    update tasks t set status = i.status, attempts = i.attempts, agent_id = i.agent_id,
        result = i.result, last_sequence = i.last_sequence, updated_at = i.updated_at,
        completed_at = i.completed_at
    from input i
    where t.task_id = i.task_id and i.expected > 0 and t.last_sequence = i.expected
    returning t.task_id
),
inserted as (
    insert into tasks (task_id, capability, status, priority, correlation_id, attempts, agent_id,
                       spec, result, last_sequence, submitted_at, updated_at, completed_at)
    select task_id, capability, status, priority, correlation_id, attempts, agent_id, spec,
           result, last_sequence, submitted_at, updated_at, completed_at
    from input where expected = 0
    on conflict (task_id) do nothing
    returning task_id
),
owned as (
    select task_id from updated union all select task_id from inserted
)";

const ALL: &str = "\
select task_id, status, attempts, agent_id, spec, result, last_sequence, submitted_at, updated_at, completed_at
from tasks order by task_id";

const LOOKUP: &str = "\
select task_id, status, attempts, agent_id, spec, result, last_sequence, submitted_at, updated_at, completed_at
from tasks where task_id = any($1)";

const EXISTING_EVENTS: &str = "select event_id from events where event_id = any($1)";

const QUEUE_CANCELLATION: &str = "\
insert into task_cancellations (task_id, reason) values ($1, $2)
on conflict (task_id) do update set reason = excluded.reason, requested_at = now()";

const QUEUED_CANCELLATIONS: &str =
    "select task_id, reason from task_cancellations where task_id = any($1)";

#[derive(sqlx::FromRow)]
struct Row {
    task_id: String,
    status: String,
    attempts: i32,
    agent_id: String,
    spec: Json<serde_json::Value>,
    result: Json<serde_json::Value>,
    last_sequence: i64,
    submitted_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    completed_at: Option<DateTime<Utc>>,
}

impl Row {
    fn into_view(self) -> anyhow::Result<TaskView> {
        let bad = |what: &str, message: String| {
            anyhow::anyhow!("tasks row {}: unreadable {what}: {message}", self.task_id)
        };
        let task = from_wire_json(&self.spec.0).map_err(|e| bad("spec", e))?;
        let result: TaskResult = from_wire_json(&self.result.0).map_err(|e| bad("result", e))?;
        let status = TaskStatus::from_str_name(&self.status)
            .ok_or_else(|| bad("status", self.status.clone()))?;
        Ok(TaskView {
            task_id: self.task_id.clone(),
            task,
            status,
            attempts: u32::try_from(self.attempts).unwrap_or(0),
            agent_id: self.agent_id.clone(),
            output: result.output.as_ref().map(from_wire_value),
            outputs: result.outputs,
            error: result.error,
            last_sequence: self.last_sequence,
            submitted_at: self.submitted_at,
            updated_at: self.updated_at,
            completed_at: self.completed_at,
        })
    }
}

/// The `tasks` table and the task events. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TaskStore {
    pool: PgPool,
    events: EventStore,
    /// Connections for the hot path (lookups and batch commits): one round
    /// trip per statement, none of the pool's pings.
    direct: DirectConnections,
}

impl TaskStore {
    pub fn new(pool: PgPool) -> Self {
        Self {
            events: EventStore::new(pool.clone()),
            direct: DirectConnections::of(&pool, 4),
            pool,
        }
    }

    /// The dead-letter store on the same pool.
    pub fn dead_letters(&self) -> concord_store::DeadLetterStore {
        concord_store::DeadLetterStore::new(self.pool.clone())
    }

    /// A filter of every task id stored now (see [`crate::known_ids`]),
    /// sized for twice as many, read as a stream (no list of ids in memory).
    pub async fn known_ids(&self) -> anyhow::Result<Bloom> {
        use futures::TryStreamExt;
        let mut conn = self.pool.acquire().await?;
        let estimate: f32 = sqlx::query_scalar(
            "select greatest(reltuples, 0) from pg_class where oid = 'tasks'::regclass",
        )
        .fetch_one(&mut *conn)
        .await?;
        let mut filter = Bloom::with_capacity(estimate as usize * 2);
        // Ids with a queued cancellation count as known: their submissions
        // must be looked up when they arrive.
        let mut ids = sqlx::query_scalar::<_, String>(
            "select task_id from tasks union all select task_id from task_cancellations",
        )
        .fetch(&mut *conn);
        while let Some(id) = ids.try_next().await? {
            filter.insert(&id);
        }
        Ok(filter)
    }

    /// The stored views of these tasks (absent ids are not in the map).
    pub async fn lookup(&self, ids: &[String]) -> anyhow::Result<HashMap<String, TaskView>> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let mut conn = self.direct.take().await?;
        let rows: Vec<Row> = sqlx::query_as(LOOKUP)
            .bind(ids)
            .fetch_all(&mut *conn)
            .await?;
        conn.release();
        rows.into_iter()
            .map(|row| row.into_view().map(|view| (view.task_id.clone(), view)))
            .collect()
    }

    /// Records a cancellation for a task whose submission no replica has
    /// taken yet (see [`TaskStore::queued_cancellations`]); a second one
    /// replaces the reason.
    pub async fn queue_cancellation(&self, id: &str, reason: &str) -> anyhow::Result<()> {
        sqlx::query(QUEUE_CANCELLATION)
            .bind(id)
            .bind(reason)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The queued cancellations (task id → reason) among these ids.
    pub async fn queued_cancellations(
        &self,
        ids: &[String],
    ) -> anyhow::Result<HashMap<String, String>> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        // On the lookups' own connections, like the lookup it follows.
        let mut conn = self.direct.take().await?;
        let rows: Vec<(String, String)> = sqlx::query_as(QUEUED_CANCELLATIONS)
            .bind(ids)
            .fetch_all(&mut *conn)
            .await?;
        conn.release();
        Ok(rows.into_iter().collect())
    }

    /// One task's view, if stored.
    pub async fn get(&self, id: &str) -> anyhow::Result<Option<TaskView>> {
        Ok(self.lookup(&[id.to_string()]).await?.remove(id))
    }

    /// The task's stored events, oldest first.
    pub async fn history(&self, id: &str) -> Result<Vec<concord_store::StoredEvent>, StoreError> {
        self.events.events_for(AGGREGATE, id).await
    }

    /// Writes a batch in one statement (so one transaction); returns, per
    /// write (same order), whether this writer owns the task (its row and
    /// events are stored). Task ids must be unique within the batch.
    pub async fn commit(&self, writes: &[&TaskWrite]) -> anyhow::Result<Vec<bool>> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.direct.take().await?;
        let stored: HashSet<String> = upsert(&mut *conn, writes).await?.into_iter().collect();
        let mut owned: Vec<bool> = writes
            .iter()
            .map(|w| stored.contains(&w.row.task_id))
            .collect();
        // A write refused by the sequence check may be our own, committed by
        // an earlier try whose acknowledgement was lost: its last event is
        // then already stored.
        let unknown: Vec<uuid::Uuid> = writes
            .iter()
            .zip(&owned)
            .filter(|(_, owned)| !**owned)
            .filter_map(|(w, _)| w.events.last().map(|e| e.event_id))
            .collect();
        if !unknown.is_empty() {
            let present: HashSet<uuid::Uuid> = sqlx::query_scalar(EXISTING_EVENTS)
                .bind(&unknown)
                .fetch_all(&mut *conn)
                .await?
                .into_iter()
                .collect();
            for (write, owned) in writes.iter().zip(owned.iter_mut()) {
                if !*owned
                    && write
                        .events
                        .last()
                        .is_some_and(|e| present.contains(&e.event_id))
                {
                    *owned = true;
                }
            }
        }
        conn.release();
        Ok(owned)
    }

    /// Every task row, for comparisons with a rebuilt projection.
    pub async fn all(&self) -> anyhow::Result<Vec<TaskView>> {
        let rows: Vec<Row> = sqlx::query_as(ALL).fetch_all(&self.pool).await?;
        rows.into_iter().map(Row::into_view).collect()
    }

    /// Folds every stored task event into views (sorted by task id), without
    /// touching the table.
    pub async fn fold_events(&self) -> anyhow::Result<Vec<TaskView>> {
        let mut histories: HashMap<String, Vec<(i64, TaskEvent, DateTime<Utc>)>> = HashMap::new();
        let mut filter = ReplayFilter {
            aggregate_type: Some(AGGREGATE.to_string()),
            limit: 5000,
            ..ReplayFilter::default()
        };
        loop {
            let page = self.events.replay(&filter).await?;
            let Some(last) = page.last() else { break };
            filter.after_position = Some(last.position);
            for stored in page {
                let event = TaskEvent::parse(&stored.event_type, &stored.data)?;
                histories.entry(stored.aggregate_id).or_default().push((
                    stored.sequence,
                    event,
                    stored.occurred_at,
                ));
            }
        }
        let mut views: Vec<TaskView> = histories
            .into_values()
            .filter_map(|mut events| {
                events.sort_by_key(|(sequence, _, _)| *sequence);
                TaskView::fold(events.iter().map(|(s, e, at)| (*s, e, *at)))
            })
            .collect();
        views.sort_by(|a, b| a.task_id.cmp(&b.task_id));
        Ok(views)
    }

    /// Rebuilds the `tasks` table from the events (one transaction); returns
    /// the number of tasks.
    pub async fn rebuild(&self) -> anyhow::Result<usize> {
        let views = self.fold_events().await?;
        let mut tx = self.pool.begin().await?;
        sqlx::query("delete from tasks").execute(&mut *tx).await?;
        for chunk in views.chunks(1000) {
            let writes: Vec<TaskWrite> = chunk
                .iter()
                .map(|view| TaskWrite::new(view, 0, Vec::new()))
                .collect();
            let writes: Vec<&TaskWrite> = writes.iter().collect();
            upsert(&mut *tx, &writes).await?;
        }
        tx.commit().await?;
        Ok(views.len())
    }
}

/// The task-row columns of a batch.
struct Columns<'a> {
    ids: Vec<&'a str>,
    capabilities: Vec<&'a str>,
    statuses: Vec<&'static str>,
    priorities: Vec<i32>,
    correlations: Vec<&'a str>,
    attempts: Vec<i32>,
    agents: Vec<&'a str>,
    /// Canonical JSON text (cast to json by the statement).
    specs: Vec<&'a str>,
    results: Vec<&'a str>,
    sequences: Vec<i64>,
    submitted: Vec<DateTime<Utc>>,
    updated: Vec<DateTime<Utc>>,
    completed: Vec<Option<DateTime<Utc>>>,
}

impl<'a> Columns<'a> {
    fn of(writes: &[&'a TaskWrite]) -> Self {
        let n = writes.len();
        let mut columns = Self {
            ids: Vec::with_capacity(n),
            capabilities: Vec::with_capacity(n),
            statuses: Vec::with_capacity(n),
            priorities: Vec::with_capacity(n),
            correlations: Vec::with_capacity(n),
            attempts: Vec::with_capacity(n),
            agents: Vec::with_capacity(n),
            specs: Vec::with_capacity(n),
            results: Vec::with_capacity(n),
            sequences: Vec::with_capacity(n),
            submitted: Vec::with_capacity(n),
            updated: Vec::with_capacity(n),
            completed: Vec::with_capacity(n),
        };
        for write in writes {
            let row = &write.row;
            columns.ids.push(&row.task_id);
            columns.capabilities.push(&row.capability);
            columns.statuses.push(row.status.as_str_name());
            columns.priorities.push(row.priority);
            columns.correlations.push(&row.correlation_id);
            columns.attempts.push(row.attempts);
            columns.agents.push(&row.agent_id);
            columns.specs.push(row.spec.as_deref().unwrap_or("null"));
            columns
                .results
                .push(std::str::from_utf8(&row.result).expect("the codec writes UTF-8 JSON"));
            columns.sequences.push(row.last_sequence);
            columns.submitted.push(row.submitted_at);
            columns.updated.push(row.updated_at);
            columns.completed.push(row.completed_at);
        }
        columns
    }
}

/// Rows and owned events of a batch in one statement; returns the owned task ids.
async fn upsert<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    writes: &[&TaskWrite],
) -> Result<Vec<String>, StoreError> {
    let columns = Columns::of(writes);
    let expected: Vec<i64> = writes.iter().map(|w| w.expected_sequence).collect();
    let events: Vec<&NewEvent> = writes.iter().flat_map(|w| w.events.iter()).collect();
    let events = EventColumns::of(&events);
    let owned: Vec<String> = sqlx::query_scalar(UPSERT.as_str())
        .bind(columns.ids)
        .bind(columns.capabilities)
        .bind(columns.statuses)
        .bind(columns.priorities)
        .bind(columns.correlations)
        .bind(columns.attempts)
        .bind(columns.agents)
        .bind(columns.specs)
        .bind(columns.results)
        .bind(columns.sequences)
        .bind(columns.submitted)
        .bind(columns.updated)
        .bind(columns.completed)
        .bind(expected)
        .bind(events.event_ids)
        .bind(events.aggregate_types)
        .bind(events.aggregate_ids)
        .bind(events.sequences)
        .bind(events.event_types)
        .bind(events.data)
        .bind(events.trace_ids)
        .bind(events.sources)
        .bind(events.occurred_ats)
        .fetch_all(executor)
        .await?;
    Ok(owned)
}
