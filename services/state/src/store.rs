//! Postgres access of the state service: documents and their history
//! (`migrations/state/`). Reads go straight to the pool; writes go through
//! [`crate::writer`], which commits them in batches with these statements.

use chrono::{DateTime, Utc};
use concord_store::NewEvent;
use concord_wire::v1::{Document, DocumentChange};
use serde_json::Value;
use sqlx::{PgConnection, PgPool, Row};

use crate::document::{Recorded, Stored};

/// A document row.
#[derive(Debug, Clone, PartialEq)]
pub struct DocumentRow {
    pub key: String,
    pub version: u64,
    /// `None`: deleted at `version`.
    pub value: Option<Value>,
    pub updated_by: String,
    pub updated_at: DateTime<Utc>,
}

impl DocumentRow {
    pub fn stored(&self) -> Stored {
        Stored {
            version: self.version,
            value: self.value.clone(),
        }
    }

    /// The wire form.
    pub fn to_document(&self) -> Document {
        Document {
            key: self.key.clone(),
            value: self.value.clone().map(concord_wire::json::to_wire_value),
            version: self.version,
            updated_by: self.updated_by.clone(),
            updated_at: Some(concord_wire::task_view::timestamp(self.updated_at)),
            deleted: self.value.is_none(),
        }
    }
}

/// One change as kept in the history.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeRow {
    pub key: String,
    pub version: u64,
    pub recorded: Recorded,
    /// The value after it (`None` after a delete).
    pub value: Option<Value>,
    pub actor: String,
    pub at: DateTime<Utc>,
}

impl ChangeRow {
    /// The wire form.
    pub fn to_change(&self) -> DocumentChange {
        let patch = match &self.recorded {
            Recorded::Patched(patch) => Some(concord_wire::json::to_wire_value(patch.clone())),
            _ => None,
        };
        DocumentChange {
            key: self.key.clone(),
            version: self.version,
            kind: self.recorded.kind().to_string(),
            value: self.value.clone().map(concord_wire::json::to_wire_value),
            patch,
            actor: self.actor.clone(),
            at: Some(concord_wire::task_view::timestamp(self.at)),
        }
    }

    /// The document after this change.
    pub fn to_row(&self) -> DocumentRow {
        DocumentRow {
            key: self.key.clone(),
            version: self.version,
            value: self.value.clone(),
            updated_by: self.actor.clone(),
            updated_at: self.at,
        }
    }
}

/// Reads and batch statements on the state tables.
#[derive(Clone)]
pub struct DocumentStore {
    pool: PgPool,
}

fn parse_json(text: Option<String>) -> Result<Option<Value>, sqlx::Error> {
    text.map(|t| serde_json::from_str(&t))
        .transpose()
        .map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

fn document_row(row: &sqlx::postgres::PgRow) -> Result<DocumentRow, sqlx::Error> {
    Ok(DocumentRow {
        key: row.try_get("key")?,
        version: row.try_get::<i64, _>("version")? as u64,
        value: parse_json(row.try_get("value")?)?,
        updated_by: row.try_get("updated_by")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// `LIKE` pattern of the keys starting with `prefix` (`_` and `%` escaped).
pub(crate) fn prefix_pattern(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '_' | '%' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

impl DocumentStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The row of `key` (a tombstone if deleted), if it was ever written.
    pub async fn get(&self, key: &str) -> Result<Option<DocumentRow>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT key, version, value::text AS value, updated_by, updated_at
             FROM state_documents WHERE key = $1",
        )
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(document_row).transpose()
    }

    /// Live documents whose key starts with `prefix`, after `after`, in key
    /// order: at most `limit`, and whether more follow.
    pub async fn list(
        &self,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<(Vec<DocumentRow>, bool), sqlx::Error> {
        let rows = sqlx::query(
            "SELECT key, version, value::text AS value, updated_by, updated_at
             FROM state_documents
             WHERE key LIKE $1 AND key > $2 AND value IS NOT NULL
             ORDER BY key LIMIT $3",
        )
        .bind(prefix_pattern(prefix))
        .bind(after)
        .bind(limit as i64 + 1)
        .fetch_all(&self.pool)
        .await?;
        let mut documents = rows
            .iter()
            .map(document_row)
            .collect::<Result<Vec<_>, _>>()?;
        let more = documents.len() > limit;
        documents.truncate(limit);
        Ok((documents, more))
    }

    /// Kept changes of `key` after `since`, oldest first: at most `limit`,
    /// whether more follow, and the oldest version kept (0: none). Changes
    /// are the key's `state.document` events; the newest `keep` versions
    /// are kept.
    pub async fn history(
        &self,
        key: &str,
        since: u64,
        limit: usize,
        keep: u64,
    ) -> Result<(Vec<ChangeRow>, bool, u64), sqlx::Error> {
        let version: Option<i64> =
            sqlx::query_scalar("SELECT version FROM state_documents WHERE key = $1")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?;
        let Some(version) = version.map(|v| v as u64) else {
            return Ok((Vec::new(), false, 0));
        };
        let oldest = crate::document::history_cutoff(version, keep) + 1;
        let rows = sqlx::query(
            "SELECT data::text AS data, occurred_at FROM events
             WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3
             ORDER BY sequence LIMIT $4",
        )
        .bind(crate::AGGREGATE)
        .bind(key)
        .bind(since.max(oldest - 1) as i64)
        .bind(limit as i64 + 1)
        .fetch_all(&self.pool)
        .await?;
        let mut changes = Vec::with_capacity(rows.len());
        for row in &rows {
            let data: Value = serde_json::from_str(&row.try_get::<String, _>("data")?)
                .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
            changes.push(change_of(key, &data, row.try_get("occurred_at")?)?);
        }
        let more = changes.len() > limit;
        changes.truncate(limit);
        Ok((changes, more, oldest))
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// Locks and reads the rows of `keys` (sorted, unique) for a batch.
pub async fn lock_rows(
    conn: &mut PgConnection,
    keys: &[&str],
) -> Result<Vec<DocumentRow>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT key, version, value::text AS value, updated_by, updated_at
         FROM state_documents
         WHERE key = ANY($1) ORDER BY key FOR UPDATE",
    )
    .bind(keys)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(document_row).collect()
}

/// Column arrays of document rows.
type RowColumns<'a> = (
    Vec<&'a str>,
    Vec<i64>,
    Vec<Option<String>>,
    Vec<&'a str>,
    Vec<DateTime<Utc>>,
);

fn row_columns<'a>(rows: &[&'a DocumentRow]) -> RowColumns<'a> {
    (
        rows.iter().map(|r| r.key.as_str()).collect(),
        rows.iter().map(|r| r.version as i64).collect(),
        rows.iter()
            .map(|r| r.value.as_ref().map(|v| v.to_string()))
            .collect(),
        rows.iter().map(|r| r.updated_by.as_str()).collect(),
        rows.iter().map(|r| r.updated_at).collect(),
    )
}

/// Locks every row whose key matches `pattern` (a [`prefix_pattern`]), in
/// key order like [`lock_rows`], and reads them.
pub async fn lock_namespace(
    conn: &mut PgConnection,
    pattern: &str,
) -> Result<Vec<DocumentRow>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT key, version, value::text AS value, updated_by, updated_at
         FROM state_documents
         WHERE key LIKE $1 ORDER BY key FOR UPDATE",
    )
    .bind(pattern)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(document_row).collect()
}

/// Inserts rows of keys that had none when the batch read them; false when
/// another writer inserted one of them meanwhile (the batch must be redone).
pub async fn insert_new(
    conn: &mut PgConnection,
    rows: &[&DocumentRow],
) -> Result<bool, sqlx::Error> {
    if rows.is_empty() {
        return Ok(true);
    }
    let (keys, versions, values, by, at) = row_columns(rows);
    let inserted = sqlx::query(
        "INSERT INTO state_documents (key, version, value, updated_by, updated_at)
         SELECT k, v, j::jsonb, b, t
         FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::timestamptz[]) AS u(k, v, j, b, t)
         ON CONFLICT (key) DO NOTHING",
    )
    .bind(keys)
    .bind(versions)
    .bind(values)
    .bind(by)
    .bind(at)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(inserted == rows.len() as u64)
}

/// Updates rows the batch holds locked.
pub async fn update_locked(
    conn: &mut PgConnection,
    rows: &[&DocumentRow],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let (keys, versions, values, by, at) = row_columns(rows);
    sqlx::query(
        "UPDATE state_documents d
         SET version = u.v, value = u.j::jsonb, updated_by = u.b, updated_at = u.t
         FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::timestamptz[]) AS u(k, v, j, b, t)
         WHERE d.key = u.k",
    )
    .bind(keys)
    .bind(versions)
    .bind(values)
    .bind(by)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A change as its event's `data` holds it (`at` falls back to when the
/// event was recorded, for events written before `at` was in the data).
fn change_of(
    key: &str,
    data: &Value,
    occurred_at: DateTime<Utc>,
) -> Result<ChangeRow, sqlx::Error> {
    let bad = |what: &str| sqlx::Error::Decode(format!("state event of {key}: {what}").into());
    let value = match &data["value"] {
        Value::Null => None,
        value => Some(value.clone()),
    };
    let recorded = match (data["kind"].as_str(), &value) {
        (Some("created"), Some(v)) => Recorded::Created(v.clone()),
        (Some("put"), Some(v)) => Recorded::Put(v.clone()),
        (Some("restored"), Some(v)) => Recorded::Restored(v.clone()),
        (Some("patched"), _) => Recorded::Patched(data["patch"].clone()),
        (Some("deleted"), _) => Recorded::Deleted,
        _ => return Err(bad("unknown kind")),
    };
    let at = match data["at"].as_str() {
        Some(text) => DateTime::parse_from_rfc3339(text)
            .map_err(|_| bad("unreadable at"))?
            .with_timezone(&Utc),
        None => occurred_at,
    };
    Ok(ChangeRow {
        key: key.to_string(),
        version: data["version"].as_u64().ok_or_else(|| bad("no version"))?,
        recorded,
        value,
        actor: data["actor"].as_str().unwrap_or_default().to_string(),
        at,
    })
}

/// The event of one change: aggregate `state.document`, id the key,
/// sequence the version (so a change is recorded once).
pub fn change_event(events: &concord_runtime::EventPublisher, change: &ChangeRow) -> NewEvent {
    let data = serde_json::json!({
        "key": change.key,
        "version": change.version,
        "kind": change.recorded.kind(),
        "actor": change.actor,
        "value": change.value,
        "patch": match &change.recorded { Recorded::Patched(p) => p.clone(), _ => Value::Null },
        "at": change.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    });
    events.event(
        crate::AGGREGATE,
        &change.key,
        change.version as i64,
        &format!("document.{}", change.recorded.kind()),
        data,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_pattern_escapes_like_wildcards() {
        assert_eq!(prefix_pattern("team/plans"), "team/plans%");
        assert_eq!(prefix_pattern("my_team/"), "my\\_team/%");
    }
}
