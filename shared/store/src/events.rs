//! The event store: idempotent batched appends, per-aggregate sequences, replay.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgDatabaseError;
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::{EventData, StoreError};

/// Name of the unique constraint on (aggregate_type, aggregate_id, sequence)
/// in `migrations/0001_events.sql`; a violation of it is a sequence conflict.
const SEQUENCE_CONSTRAINT: &str = "events_aggregate_sequence_key";

/// How often [`EventStore::append`] retries a batch that lost a race against
/// a concurrent append of the very same events.
const DUPLICATE_RACE_RETRIES: usize = 3;

/// An event to append.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewEvent {
    /// Unique id; appending the same id again is a no-op (idempotent).
    pub event_id: Uuid,
    /// Kind of aggregate, e.g. `task`, `agent`, `proposal`.
    pub aggregate_type: String,
    /// Id of the aggregate instance.
    pub aggregate_id: String,
    /// Position within the aggregate, assigned by the writer; must be unused.
    pub sequence: i64,
    /// Event name, e.g. `task.routed`.
    pub event_type: String,
    /// Event body (canonical JSON), serialized once.
    pub data: EventData,
    /// W3C trace id of the operation that caused the event, if any.
    pub trace_id: Option<String>,
    /// Service that produced the event.
    pub source: String,
    /// When the change happened, by the writer's clock.
    pub occurred_at: DateTime<Utc>,
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct StoredEvent {
    /// Global order of all events; replay pages by it.
    pub position: i64,
    /// See [`NewEvent::event_id`].
    pub event_id: Uuid,
    /// See [`NewEvent::aggregate_type`].
    pub aggregate_type: String,
    /// See [`NewEvent::aggregate_id`].
    pub aggregate_id: String,
    /// See [`NewEvent::sequence`].
    pub sequence: i64,
    /// See [`NewEvent::event_type`].
    pub event_type: String,
    /// See [`NewEvent::data`].
    pub data: serde_json::Value,
    /// See [`NewEvent::trace_id`].
    pub trace_id: Option<String>,
    /// See [`NewEvent::source`].
    pub source: String,
    /// See [`NewEvent::occurred_at`] (stored with microsecond precision).
    pub occurred_at: DateTime<Utc>,
    /// When the store committed the event, by the database clock.
    pub recorded_at: DateTime<Utc>,
}

/// What an append did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Events newly stored.
    pub inserted: u64,
    /// Events skipped because their `event_id` was already stored.
    pub duplicates: u64,
}

/// Which events [`EventStore::replay`] returns: those matching every set
/// field, in position order, at most `limit` of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayFilter {
    /// Only events of this aggregate type.
    pub aggregate_type: Option<String>,
    /// Only events with `occurred_at >= from`.
    pub from: Option<DateTime<Utc>>,
    /// Only events with `occurred_at < to`.
    pub to: Option<DateTime<Utc>>,
    /// Only events after this position: pass the last position of the
    /// previous page to get the next one.
    pub after_position: Option<i64>,
    /// Page size; values below zero count as zero.
    pub limit: i64,
}

impl Default for ReplayFilter {
    /// Everything, from the start, 500 at a time.
    fn default() -> Self {
        Self {
            aggregate_type: None,
            from: None,
            to: None,
            after_position: None,
            limit: 500,
        }
    }
}

static INSERT_EVENTS: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| insert_events_sql(1, None));

/// The one statement that appends events: rows from the nine arrays of
/// [`EventColumns`] bound as parameters `$first` to `$first + 8` in field
/// order, an event already stored (same `event_id`) skipped. `only`, a
/// condition on the row `e`, keeps some of them: for a caller that appends
/// events in the same statement (a CTE) as its own rows, e.g. only the
/// events of the rows it could write.
pub fn insert_events_sql(first: usize, only: Option<&str>) -> String {
    let p = |n: usize| first + n;
    let filter = only
        .map(|only| format!("\nwhere {only}"))
        .unwrap_or_default();
    format!(
        "insert into events (event_id, aggregate_type, aggregate_id, sequence, event_type, data, trace_id, source, occurred_at)\n\
         select e.* from unnest(${}::uuid[], ${}::text[], ${}::text[], ${}::int8[], ${}::text[], ${}::jsonb[], ${}::text[], ${}::text[], ${}::timestamptz[])\n\
         as e(event_id, aggregate_type, aggregate_id, sequence, event_type, data, trace_id, source, occurred_at){filter}\n\
         on conflict (event_id) do nothing",
        p(0),
        p(1),
        p(2),
        p(3),
        p(4),
        p(5),
        p(6),
        p(7),
        p(8)
    )
}

const EVENTS_FOR: &str = "\
select position, event_id, aggregate_type, aggregate_id, sequence, event_type, data, trace_id, source, occurred_at, recorded_at
from events
where aggregate_type = $1 and aggregate_id = $2
order by sequence";

const REPLAY_ALL: &str = "\
select position, event_id, aggregate_type, aggregate_id, sequence, event_type, data, trace_id, source, occurred_at, recorded_at
from events
where position > $1
  and occurred_at >= coalesce($2::timestamptz, '-infinity')
  and occurred_at < coalesce($3::timestamptz, 'infinity')
order by position
limit $4";

const REPLAY_TYPE: &str = "\
select position, event_id, aggregate_type, aggregate_id, sequence, event_type, data, trace_id, source, occurred_at, recorded_at
from events
where aggregate_type = $5
  and position > $1
  and occurred_at >= coalesce($2::timestamptz, '-infinity')
  and occurred_at < coalesce($3::timestamptz, 'infinity')
order by position
limit $4";

const LAST_SEQUENCE: &str =
    "select max(sequence) from events where aggregate_type = $1 and aggregate_id = $2";

const EVENT_ID_AT: &str = "\
select event_id from events where aggregate_type = $1 and aggregate_id = $2 and sequence = $3";

/// Append-only store of events in Postgres. Cheap to clone (holds the pool).
#[derive(Debug, Clone)]
pub struct EventStore {
    pool: PgPool,
}

impl EventStore {
    /// Wraps a pool (see [`crate::connect`]); the schema must be migrated.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The pool this store uses.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Appends a batch in one statement, atomically.
    ///
    /// Events whose `event_id` is already stored are skipped (counted in
    /// [`AppendOutcome::duplicates`]), so redelivered work is harmless. If any
    /// event claims an (aggregate, sequence) that a *different* event holds,
    /// nothing of the batch is stored and the result is
    /// [`StoreError::SequenceConflict`].
    pub async fn append(&self, events: &[NewEvent]) -> Result<AppendOutcome, StoreError> {
        check_batch(events.iter())?;
        let mut attempt = 0;
        loop {
            let mut conn = self.pool.acquire().await?;
            let refs: Vec<&NewEvent> = events.iter().collect();
            match insert(&mut conn, &refs).await {
                Err(StoreError::SequenceConflict {
                    aggregate_type,
                    aggregate_id,
                    sequence,
                }) => {
                    // Postgres checks the non-arbiter unique key before it
                    // sees an in-flight insert of the same event_id commit,
                    // so a concurrent append of the same event can surface
                    // here. If the holder is our own event, run again: this
                    // time ON CONFLICT skips it.
                    let holder: Option<Uuid> = sqlx::query_scalar(EVENT_ID_AT)
                        .bind(&aggregate_type)
                        .bind(&aggregate_id)
                        .bind(sequence)
                        .fetch_optional(&mut *conn)
                        .await?;
                    // No holder at all: the racing transaction rolled back.
                    let ours = holder.is_none_or(|holder| {
                        events.iter().any(|e| {
                            e.event_id == holder
                                && e.sequence == sequence
                                && e.aggregate_type == aggregate_type
                                && e.aggregate_id == aggregate_id
                        })
                    });
                    if ours && attempt < DUPLICATE_RACE_RETRIES {
                        attempt += 1;
                        continue;
                    }
                    return Err(StoreError::SequenceConflict {
                        aggregate_type,
                        aggregate_id,
                        sequence,
                    });
                }
                other => return other,
            }
        }
    }

    /// Appends a batch inside the caller's transaction, so events commit
    /// atomically with the caller's own rows (pass `&mut tx`).
    ///
    /// Same semantics as [`EventStore::append`], with one difference: after
    /// an error (including [`StoreError::SequenceConflict`]) Postgres has
    /// aborted the transaction, which must be rolled back. In the rare race
    /// where another transaction appends the very same events at the same
    /// moment, the conflict can be reported for what is in fact a duplicate;
    /// retrying the whole transaction then succeeds.
    pub async fn append_in(
        &self,
        conn: &mut PgConnection,
        events: &[NewEvent],
    ) -> Result<AppendOutcome, StoreError> {
        check_batch(events.iter())?;
        let refs: Vec<&NewEvent> = events.iter().collect();
        insert(conn, &refs).await
    }

    /// [`EventStore::append_in`] for events held by reference (no copies of
    /// their data).
    pub async fn append_refs_in(
        &self,
        conn: &mut PgConnection,
        events: &[&NewEvent],
    ) -> Result<AppendOutcome, StoreError> {
        check_batch(events.iter().copied())?;
        insert(conn, events).await
    }

    /// All events of one aggregate, in sequence order.
    pub async fn events_for(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let events = sqlx::query_as(EVENTS_FOR)
            .bind(aggregate_type)
            .bind(aggregate_id)
            .fetch_all(&self.pool)
            .await?;
        Ok(events)
    }

    /// One page of events matching `filter`, in position (global) order.
    pub async fn replay(&self, filter: &ReplayFilter) -> Result<Vec<StoredEvent>, StoreError> {
        let sql = if filter.aggregate_type.is_some() {
            REPLAY_TYPE
        } else {
            REPLAY_ALL
        };
        let mut query = sqlx::query_as(sql)
            .bind(filter.after_position.unwrap_or(0))
            .bind(filter.from)
            .bind(filter.to)
            .bind(filter.limit.max(0));
        if let Some(aggregate_type) = &filter.aggregate_type {
            query = query.bind(aggregate_type);
        }
        Ok(query.fetch_all(&self.pool).await?)
    }

    /// The highest stored sequence of an aggregate, `None` if it has no events.
    pub async fn last_sequence(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<Option<i64>, StoreError> {
        let last: Option<i64> = sqlx::query_scalar(LAST_SEQUENCE)
            .bind(aggregate_type)
            .bind(aggregate_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(last)
    }
}

/// Rejects a batch that conflicts with itself: two different events with the
/// same (aggregate, sequence). The database would reject it too; checking
/// here names the key without a round trip.
fn check_batch<'a>(events: impl ExactSizeIterator<Item = &'a NewEvent>) -> Result<(), StoreError> {
    let mut seen: HashMap<(&str, &str, i64), Uuid> = HashMap::with_capacity(events.len());
    for event in events {
        let key = (
            event.aggregate_type.as_str(),
            event.aggregate_id.as_str(),
            event.sequence,
        );
        match seen.insert(key, event.event_id) {
            Some(previous) if previous != event.event_id => {
                return Err(StoreError::SequenceConflict {
                    aggregate_type: event.aggregate_type.clone(),
                    aggregate_id: event.aggregate_id.clone(),
                    sequence: event.sequence,
                });
            }
            _ => {}
        }
    }
    Ok(())
}

async fn insert(
    conn: &mut PgConnection,
    events: &[&NewEvent],
) -> Result<AppendOutcome, StoreError> {
    if events.is_empty() {
        return Ok(AppendOutcome::default());
    }
    let n = events.len();
    let columns = EventColumns::of(events);
    let result = sqlx::query(INSERT_EVENTS.as_str())
        .bind(columns.event_ids)
        .bind(columns.aggregate_types)
        .bind(columns.aggregate_ids)
        .bind(columns.sequences)
        .bind(columns.event_types)
        .bind(columns.data)
        .bind(columns.trace_ids)
        .bind(columns.sources)
        .bind(columns.occurred_ats)
        .execute(&mut *conn)
        .await
        .map_err(|err| classify(err, events))?;
    let inserted = result.rows_affected();
    Ok(AppendOutcome {
        inserted,
        duplicates: n as u64 - inserted,
    })
}

/// A batch of events as the nine column arrays of the `events` table, in
/// column order, for an `UNNEST` insert (also inside a caller's own
/// statement that writes other rows in the same round trip).
pub struct EventColumns<'a> {
    pub event_ids: Vec<Uuid>,
    pub aggregate_types: Vec<&'a str>,
    pub aggregate_ids: Vec<&'a str>,
    pub sequences: Vec<i64>,
    pub event_types: Vec<&'a str>,
    pub data: Vec<Json<&'a EventData>>,
    pub trace_ids: Vec<Option<&'a str>>,
    pub sources: Vec<&'a str>,
    pub occurred_ats: Vec<DateTime<Utc>>,
}

impl<'a> EventColumns<'a> {
    /// The columns of `events`, in order.
    pub fn of(events: &[&'a NewEvent]) -> Self {
        let n = events.len();
        let mut columns = Self {
            event_ids: Vec::with_capacity(n),
            aggregate_types: Vec::with_capacity(n),
            aggregate_ids: Vec::with_capacity(n),
            sequences: Vec::with_capacity(n),
            event_types: Vec::with_capacity(n),
            data: Vec::with_capacity(n),
            trace_ids: Vec::with_capacity(n),
            sources: Vec::with_capacity(n),
            occurred_ats: Vec::with_capacity(n),
        };
        for event in events.iter().copied() {
            columns.event_ids.push(event.event_id);
            columns.aggregate_types.push(event.aggregate_type.as_str());
            columns.aggregate_ids.push(event.aggregate_id.as_str());
            columns.sequences.push(event.sequence);
            columns.event_types.push(event.event_type.as_str());
            columns.data.push(Json(&event.data));
            columns.trace_ids.push(event.trace_id.as_deref());
            columns.sources.push(event.source.as_str());
            columns.occurred_ats.push(event.occurred_at);
        }
        columns
    }
}

/// Turns a violation of the sequence constraint into a typed conflict naming
/// the key. Postgres reports the key in the error detail as
/// `Key (aggregate_type, aggregate_id, sequence)=(task, t-1, 3) already exists.`;
/// we look for each event's own rendering of that tuple rather than parse it.
fn classify(err: sqlx::Error, events: &[&NewEvent]) -> StoreError {
    let conflict = match &err {
        sqlx::Error::Database(db) if db.constraint() == Some(SEQUENCE_CONSTRAINT) => db
            .try_downcast_ref::<PgDatabaseError>()
            .and_then(PgDatabaseError::detail)
            .and_then(|detail| {
                events.iter().find(|e| {
                    detail.contains(&format!(
                        "=({}, {}, {})",
                        e.aggregate_type, e.aggregate_id, e.sequence
                    ))
                })
            }),
        _ => None,
    };
    match conflict {
        Some(event) => StoreError::SequenceConflict {
            aggregate_type: event.aggregate_type.clone(),
            aggregate_id: event.aggregate_id.clone(),
            sequence: event.sequence,
        },
        None => StoreError::Database(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: Uuid, sequence: i64) -> NewEvent {
        NewEvent {
            event_id: id,
            aggregate_type: "task".into(),
            aggregate_id: "t-1".into(),
            sequence,
            event_type: "task.created".into(),
            data: serde_json::json!({}).into(),
            trace_id: None,
            source: "test".into(),
            occurred_at: Utc::now(),
        }
    }

    #[test]
    fn batch_with_two_events_on_one_sequence_is_a_conflict() {
        let err =
            check_batch([event(Uuid::new_v4(), 1), event(Uuid::new_v4(), 1)].iter()).unwrap_err();
        assert!(err.is_sequence_conflict(), "{err}");
    }

    #[test]
    fn the_insert_numbers_its_parameters_from_first_and_filters_when_asked() {
        let alone = insert_events_sql(1, None);
        assert!(
            alone.contains("$1::uuid[]") && alone.contains("$9::timestamptz[]"),
            "{alone}"
        );
        assert!(!alone.contains("where"), "{alone}");
        let inside = insert_events_sql(15, Some("e.aggregate_id in (select id from owned)"));
        assert!(inside.contains("$15::uuid[]") && inside.contains("$23::timestamptz[]"));
        assert!(
            !inside.contains("$14") && !inside.contains("$24"),
            "{inside}"
        );
        assert!(inside.contains("where e.aggregate_id in (select id from owned)\non conflict"));
    }

    #[test]
    fn batch_repeating_one_event_is_fine() {
        let id = Uuid::new_v4();
        check_batch([event(id, 1), event(id, 1), event(Uuid::new_v4(), 2)].iter()).unwrap();
    }
}
