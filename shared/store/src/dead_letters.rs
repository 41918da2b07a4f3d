//! The dead-letter store: messages that could not be processed, kept for inspection and replay.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use sqlx::types::Json;
use uuid::Uuid;

use crate::StoreError;

/// A message to dead-letter (or a new failure of one already dead-lettered).
#[derive(Debug, Clone, PartialEq)]
pub struct NewDeadLetter {
    /// Stable id: the same id again updates the existing dead letter.
    pub id: Uuid,
    /// Subject the message was published on.
    pub subject: String,
    /// Headers of the original message.
    pub headers: BTreeMap<String, String>,
    /// The original message bytes.
    pub payload: Vec<u8>,
    /// Stable short code: `invalid_input`, `no_eligible_agent`, `max_attempts`, ...
    pub reason: String,
    /// Human-readable message.
    pub error: String,
    /// How many times processing was attempted.
    pub attempts: i32,
    /// Service that gave up on the message.
    pub source: String,
    /// What happened to the message: a JSON array of entries (appended to the
    /// stored history on update); a single value counts as one entry and
    /// `null` as none.
    pub history: serde_json::Value,
}

/// A stored dead letter.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct DeadLetter {
    /// See [`NewDeadLetter::id`].
    pub id: Uuid,
    /// See [`NewDeadLetter::subject`].
    pub subject: String,
    /// See [`NewDeadLetter::headers`].
    #[sqlx(json)]
    pub headers: BTreeMap<String, String>,
    /// See [`NewDeadLetter::payload`].
    pub payload: Vec<u8>,
    /// Reason code of the latest failure.
    pub reason: String,
    /// Error message of the latest failure.
    pub error: String,
    /// Highest attempt count reported.
    pub attempts: i32,
    /// See [`NewDeadLetter::source`].
    pub source: String,
    /// JSON array of all history entries, oldest first.
    pub history: serde_json::Value,
    /// When the message was first dead-lettered.
    pub first_seen: DateTime<Utc>,
    /// When it was last dead-lettered (again).
    pub last_seen: DateTime<Utc>,
    /// When an operator last replayed it, if ever.
    pub replayed_at: Option<DateTime<Utc>>,
    /// How many times it was replayed.
    pub replay_count: i32,
}

impl DeadLetter {
    /// The cursor that continues a [`DeadLetterStore::list`] after this item.
    pub fn cursor(&self) -> DeadLetterCursor {
        DeadLetterCursor {
            last_seen: self.last_seen,
            id: self.id,
        }
    }

    /// True if it was never replayed, or failed again after its last replay.
    pub fn is_pending(&self) -> bool {
        self.replayed_at.is_none_or(|at| at < self.last_seen)
    }
}

/// Position in the newest-first listing: the last item of the previous page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadLetterCursor {
    /// `last_seen` of the last item seen.
    pub last_seen: DateTime<Utc>,
    /// `id` of the last item seen.
    pub id: Uuid,
}

/// Which dead letters [`DeadLetterStore::list`] returns: those matching every
/// set field, newest `last_seen` first.
///
/// Paging is by `(last_seen, id)`; a dead letter that fails again while an
/// operator pages moves to the front and may be seen twice or not at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterFilter {
    /// Only this reason code.
    pub reason: Option<String>,
    /// Only from this service.
    pub source: Option<String>,
    /// Only those not replayed since their last failure (see [`DeadLetter::is_pending`]).
    pub pending_only: bool,
    /// Continue after this item (from [`DeadLetter::cursor`]).
    pub after: Option<DeadLetterCursor>,
    /// Page size; values below zero count as zero.
    pub limit: i64,
}

impl Default for DeadLetterFilter {
    /// Everything, newest first, 100 at a time.
    fn default() -> Self {
        Self {
            reason: None,
            source: None,
            pending_only: false,
            after: None,
            limit: 100,
        }
    }
}

/// Which dead letters [`DeadLetterStore::purge`] deletes: those matching every
/// set field. There is no `Default`, so deleting everything is spelled out
/// as [`PurgeFilter::all`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeFilter {
    /// Only these ids (an empty list matches nothing).
    pub ids: Option<Vec<Uuid>>,
    /// Only those last seen before this time.
    pub older_than: Option<DateTime<Utc>>,
    /// Only this reason code.
    pub reason: Option<String>,
}

impl PurgeFilter {
    /// Every dead letter.
    pub fn all() -> Self {
        Self {
            ids: None,
            older_than: None,
            reason: None,
        }
    }

    /// Exactly these ids.
    pub fn ids(ids: Vec<Uuid>) -> Self {
        Self {
            ids: Some(ids),
            ..Self::all()
        }
    }

    /// Those last seen before `time`.
    pub fn older_than(time: DateTime<Utc>) -> Self {
        Self {
            older_than: Some(time),
            ..Self::all()
        }
    }
}

const UPSERT: &str = "\
insert into dead_letters as d (id, subject, headers, payload, reason, error, attempts, source, history)
select * from unnest($1::uuid[], $2::text[], $3::jsonb[], $4::bytea[], $5::text[], $6::text[], $7::int4[], $8::text[], $9::jsonb[])
on conflict (id) do update set
    attempts = greatest(d.attempts, excluded.attempts),
    reason = excluded.reason,
    error = excluded.error,
    last_seen = now(),
    history = d.history || excluded.history";

const LIST: &str = "\
select id, subject, headers, payload, reason, error, attempts, source, history, first_seen, last_seen, replayed_at, replay_count
from dead_letters
where ($1::text is null or reason = $1)
  and ($2::text is null or source = $2)
  and (not $3 or replayed_at is null or replayed_at < last_seen)
  and ($4::timestamptz is null or (last_seen, id) < ($4, $5::uuid))
order by last_seen desc, id desc
limit $6";

const GET: &str = "\
select id, subject, headers, payload, reason, error, attempts, source, history, first_seen, last_seen, replayed_at, replay_count
from dead_letters where id = $1";

const MARK_REPLAYED: &str =
    "update dead_letters set replayed_at = now(), replay_count = replay_count + 1 where id = $1";

const PURGE: &str = "\
delete from dead_letters
where ($1::uuid[] is null or id = any($1))
  and ($2::timestamptz is null or last_seen < $2)
  and ($3::text is null or reason = $3)";

const COUNT: &str = "select count(*) from dead_letters";

/// Dead letters in Postgres. Cheap to clone (holds the pool).
#[derive(Debug, Clone)]
pub struct DeadLetterStore {
    pool: PgPool,
}

impl DeadLetterStore {
    /// Wraps a pool (see [`crate::connect`]); the schema must be migrated.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Stores a dead letter, or updates the one with the same id: attempts
    /// become the larger of both, reason and error the new ones, `last_seen`
    /// now, and the new history entries are appended. Subject, headers,
    /// payload, source and `first_seen` keep their first values.
    pub async fn put(&self, letter: &NewDeadLetter) -> Result<(), StoreError> {
        self.put_many(std::slice::from_ref(letter)).await?;
        Ok(())
    }

    /// [`DeadLetterStore::put`] for a batch, in one statement. Entries with
    /// the same id are merged first, in order. Returns the number of dead
    /// letters written.
    pub async fn put_many(&self, letters: &[NewDeadLetter]) -> Result<u64, StoreError> {
        if letters.is_empty() {
            return Ok(0);
        }
        let rows = merge_by_id(letters);
        let n = rows.len();
        let mut ids = Vec::with_capacity(n);
        let mut subjects = Vec::with_capacity(n);
        let mut headers = Vec::with_capacity(n);
        let mut payloads = Vec::with_capacity(n);
        let mut reasons = Vec::with_capacity(n);
        let mut errors = Vec::with_capacity(n);
        let mut attempts = Vec::with_capacity(n);
        let mut sources = Vec::with_capacity(n);
        let mut histories = Vec::with_capacity(n);
        for row in &rows {
            ids.push(row.first.id);
            subjects.push(row.first.subject.as_str());
            headers.push(Json(&row.first.headers));
            payloads.push(row.first.payload.as_slice());
            reasons.push(row.last.reason.as_str());
            errors.push(row.last.error.as_str());
            attempts.push(row.attempts);
            sources.push(row.first.source.as_str());
            histories.push(Json(&row.history));
        }
        let result = sqlx::query(UPSERT)
            .bind(ids)
            .bind(subjects)
            .bind(headers)
            .bind(payloads)
            .bind(reasons)
            .bind(errors)
            .bind(attempts)
            .bind(sources)
            .bind(histories)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected())
    }

    /// One page of dead letters matching `filter`, newest first.
    pub async fn list(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>, StoreError> {
        let letters = sqlx::query_as(LIST)
            .bind(filter.reason.as_deref())
            .bind(filter.source.as_deref())
            .bind(filter.pending_only)
            .bind(filter.after.map(|c| c.last_seen))
            .bind(filter.after.map(|c| c.id))
            .bind(filter.limit.max(0))
            .fetch_all(&self.pool)
            .await?;
        Ok(letters)
    }

    /// The dead letter with this id, if stored.
    pub async fn get(&self, id: Uuid) -> Result<Option<DeadLetter>, StoreError> {
        Ok(sqlx::query_as(GET)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Records that the caller re-published the message: sets `replayed_at`
    /// to now and bumps `replay_count`. False if there is no such id.
    pub async fn mark_replayed(&self, id: Uuid) -> Result<bool, StoreError> {
        let result = sqlx::query(MARK_REPLAYED)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Deletes the dead letters matching `filter`; returns how many.
    pub async fn purge(&self, filter: &PurgeFilter) -> Result<u64, StoreError> {
        let result = sqlx::query(PURGE)
            .bind(filter.ids.as_deref())
            .bind(filter.older_than)
            .bind(filter.reason.as_deref())
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected())
    }

    /// How many dead letters are stored.
    pub async fn count(&self) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar(COUNT).fetch_one(&self.pool).await?;
        Ok(count.max(0) as u64)
    }
}

/// One row of an upsert batch: several entries with the same id folded together.
struct MergedRow<'a> {
    first: &'a NewDeadLetter,
    last: &'a NewDeadLetter,
    attempts: i32,
    history: Vec<serde_json::Value>,
}

/// Folds entries with equal ids (ON CONFLICT DO UPDATE may touch a row only
/// once per statement) and sorts by id, so that concurrent batches lock rows
/// in the same order and cannot deadlock.
fn merge_by_id(letters: &[NewDeadLetter]) -> Vec<MergedRow<'_>> {
    let mut sorted: Vec<&NewDeadLetter> = letters.iter().collect();
    // Stable: entries with the same id keep their order.
    sorted.sort_by_key(|letter| letter.id);
    let mut rows: Vec<MergedRow<'_>> = Vec::with_capacity(sorted.len());
    for letter in sorted {
        match rows.last_mut() {
            Some(row) if row.first.id == letter.id => {
                row.last = letter;
                row.attempts = row.attempts.max(letter.attempts);
                row.history.extend(history_entries(&letter.history));
            }
            _ => rows.push(MergedRow {
                first: letter,
                last: letter,
                attempts: letter.attempts,
                history: history_entries(&letter.history),
            }),
        }
    }
    rows
}

fn history_entries(history: &serde_json::Value) -> Vec<serde_json::Value> {
    match history {
        serde_json::Value::Null => Vec::new(),
        serde_json::Value::Array(entries) => entries.clone(),
        entry => vec![entry.clone()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn letter(id: Uuid, attempts: i32, reason: &str, history: serde_json::Value) -> NewDeadLetter {
        NewDeadLetter {
            id,
            subject: "concord.tasks.submit".into(),
            headers: BTreeMap::new(),
            payload: b"{}".to_vec(),
            reason: reason.into(),
            error: format!("error {attempts}"),
            attempts,
            source: "dispatcher".into(),
            history,
        }
    }

    #[test]
    fn merge_folds_same_ids_in_order() {
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(2);
        let letters = [
            letter(b, 1, "x", json!(null)),
            letter(a, 3, "first", json!([{"n": 1}])),
            letter(a, 2, "second", json!({"n": 2})),
        ];
        let rows = merge_by_id(&letters);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].first.id, a);
        assert_eq!(rows[0].attempts, 3);
        assert_eq!(rows[0].last.reason, "second");
        assert_eq!(rows[0].history, vec![json!({"n": 1}), json!({"n": 2})]);
        assert!(rows[1].history.is_empty());
    }
}
