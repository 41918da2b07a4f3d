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
    /// whether more follow, and the oldest version kept (0: none).
    pub async fn history(
        &self,
        key: &str,
        since: u64,
        limit: usize,
    ) -> Result<(Vec<ChangeRow>, bool, u64), sqlx::Error> {
        let rows = sqlx::query(
            "SELECT key, version, kind, value::text AS value, patch::text AS patch, actor, at
             FROM state_history WHERE key = $1 AND version > $2
             ORDER BY version LIMIT $3",
        )
        .bind(key)
        .bind(since as i64)
        .bind(limit as i64 + 1)
        .fetch_all(&self.pool)
        .await?;
        let mut changes = Vec::with_capacity(rows.len());
        for row in &rows {
            let value = parse_json(row.try_get("value")?)?;
            let patch = parse_json(row.try_get("patch")?)?;
            let kind: String = row.try_get("kind")?;
            let recorded = match (kind.as_str(), &value, patch) {
                ("created", Some(v), _) => Recorded::Created(v.clone()),
                ("put", Some(v), _) => Recorded::Put(v.clone()),
                ("restored", Some(v), _) => Recorded::Restored(v.clone()),
                ("patched", _, Some(p)) => Recorded::Patched(p),
                _ => Recorded::Deleted,
            };
            changes.push(ChangeRow {
                key: row.try_get("key")?,
                version: row.try_get::<i64, _>("version")? as u64,
                recorded,
                value,
                actor: row.try_get("actor")?,
                at: row.try_get("at")?,
            });
        }
        let more = changes.len() > limit;
        changes.truncate(limit);
        let oldest: Option<i64> =
            sqlx::query_scalar("SELECT min(version) FROM state_history WHERE key = $1")
                .bind(key)
                .fetch_one(&self.pool)
                .await?;
        Ok((changes, more, oldest.unwrap_or(0) as u64))
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

/// Appends history entries, then drops, per key, the entries at or below
/// its cutoff (`cutoffs`: key, version; zero cutoffs skipped).
pub async fn append_history(
    conn: &mut PgConnection,
    changes: &[ChangeRow],
    cutoffs: &[(&str, u64)],
) -> Result<(), sqlx::Error> {
    if changes.is_empty() {
        return Ok(());
    }
    let patch = |c: &ChangeRow| match &c.recorded {
        Recorded::Patched(p) => Some(p.to_string()),
        _ => None,
    };
    sqlx::query(
        "INSERT INTO state_history (key, version, kind, value, patch, actor, at)
         SELECT k, v, kind, j::jsonb, p::jsonb, a, t
         FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[])
              AS u(k, v, kind, j, p, a, t)",
    )
    .bind(changes.iter().map(|c| c.key.as_str()).collect::<Vec<_>>())
    .bind(changes.iter().map(|c| c.version as i64).collect::<Vec<_>>())
    .bind(changes.iter().map(|c| c.recorded.kind()).collect::<Vec<_>>())
    .bind(
        changes
            .iter()
            .map(|c| c.value.as_ref().map(|v| v.to_string()))
            .collect::<Vec<_>>(),
    )
    .bind(changes.iter().map(patch).collect::<Vec<_>>())
    .bind(changes.iter().map(|c| c.actor.as_str()).collect::<Vec<_>>())
    .bind(changes.iter().map(|c| c.at).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    let trimmed: Vec<&(&str, u64)> = cutoffs.iter().filter(|(_, v)| *v > 0).collect();
    if !trimmed.is_empty() {
        sqlx::query(
            "DELETE FROM state_history h
             USING UNNEST($1::text[], $2::bigint[]) AS c(k, v)
             WHERE h.key = c.k AND h.version <= c.v",
        )
        .bind(trimmed.iter().map(|(k, _)| *k).collect::<Vec<_>>())
        .bind(trimmed.iter().map(|(_, v)| *v as i64).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
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
