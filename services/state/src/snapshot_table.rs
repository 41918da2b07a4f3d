//! Snapshots in Postgres. Taking one is a single `INSERT ... SELECT` over a
//! namespace's live documents, so it sees one consistent point (the writer
//! commits each batch atomically: a snapshot never holds half of one).
//! Restoring locks every row of the namespace in key order (the writer's
//! order, so the two cannot deadlock), applies [`document::restore`] to each,
//! and commits the changes, their history and events in one transaction;
//! then the changes are published like any other.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use concord_bus::ServiceError;
use concord_runtime::{Clock, EventPublisher};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::{PgPool, Row};

use crate::app::unavailable;
use crate::document::{self, Stored};
use crate::store::{self, ChangeRow, DocumentRow, prefix_pattern};

/// Aggregate type of snapshot events (`<root>.events.state.snapshot.<kind>`).
pub const AGGREGATE: &str = "state.snapshot";

/// Most documents one snapshot may hold.
pub const MAX_DOCUMENTS: i64 = 10_000;

/// A snapshot without its documents.
#[derive(Debug, Clone)]
pub struct SnapshotHead {
    pub id: String,
    pub namespace: String,
    pub taken_at: DateTime<Utc>,
    pub actor: String,
    pub count: u32,
}

/// One document as the snapshot holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub key: String,
    pub version: u64,
    pub value: Value,
}

/// What a restore did.
pub struct Restored {
    pub namespace: String,
    pub changes: Vec<ChangeRow>,
    pub unchanged: u32,
}

/// The snapshot rows and what taking and restoring need.
#[derive(Clone)]
pub struct Snapshots {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    events: EventPublisher,
    bus: concord_bus::Bus,
    clock: Arc<dyn Clock>,
}

fn not_found(id: &str) -> ServiceError {
    ServiceError::not_found(format!("no snapshot {id}"))
}

fn head(row: &sqlx::postgres::PgRow) -> Result<SnapshotHead, sqlx::Error> {
    Ok(SnapshotHead {
        id: row.try_get("id")?,
        namespace: row.try_get("namespace")?,
        taken_at: row.try_get("taken_at")?,
        actor: row.try_get("actor")?,
        count: row.try_get::<i32, _>("count")? as u32,
    })
}

impl Snapshots {
    pub fn new(
        pool: PgPool,
        events: EventPublisher,
        bus: concord_bus::Bus,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                events,
                bus,
                clock,
            }),
        }
    }

    /// Takes a snapshot of `namespace`'s live documents.
    pub async fn take(&self, namespace: &str, actor: &str) -> Result<SnapshotHead, ServiceError> {
        let id = uuid::Uuid::now_v7().to_string();
        let at = concord_runtime::whole_micros(self.inner.clock.now());
        let mut tx = self.inner.pool.begin().await.map_err(unavailable)?;
        let count: i32 = sqlx::query_scalar(
            "WITH docs AS (
                 SELECT key, version, value FROM state_documents
                 WHERE key LIKE $4 AND value IS NOT NULL
             )
             INSERT INTO state_snapshots (id, namespace, taken_at, actor, count, documents)
             SELECT $1, $2, $3, $5, count(*),
                    coalesce(jsonb_agg(jsonb_build_object('key', key, 'version', version, 'value', value) ORDER BY key), '[]'::jsonb)
             FROM docs
             RETURNING count",
        )
        .bind(&id)
        .bind(namespace)
        .bind(at)
        .bind(prefix_pattern(&format!("{namespace}/")))
        .bind(actor)
        .fetch_one(&mut *tx)
        .await
        .map_err(unavailable)?;
        if i64::from(count) > MAX_DOCUMENTS {
            return Err(ServiceError::invalid(
                "namespace",
                format!(
                    "{namespace} holds {count} documents; a snapshot holds at most {MAX_DOCUMENTS}"
                ),
            ));
        }
        let event = self.inner.events.event(
            AGGREGATE,
            &id,
            1,
            "snapshot.taken",
            json!({"id": id, "namespace": namespace, "count": count, "actor": actor}),
        );
        crate::app::commit_with_events(&self.inner.events, tx, &[event]).await?;
        Ok(SnapshotHead {
            id,
            namespace: namespace.to_string(),
            taken_at: at,
            actor: actor.to_string(),
            count: count as u32,
        })
    }

    /// Snapshot `id` and a page of its documents after key `after`
    /// (`limit` of them; true when more follow).
    pub async fn get(
        &self,
        id: &str,
        after: &str,
        limit: u32,
    ) -> Result<(SnapshotHead, Vec<Entry>, bool), ServiceError> {
        let row = sqlx::query(
            "SELECT id, namespace, taken_at, actor, count FROM state_snapshots WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.inner.pool)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| not_found(id))?;
        let head = head(&row).map_err(unavailable)?;
        // The array is in key order, so its ordinal order is key order.
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT d.e::text FROM state_snapshots s,
                    jsonb_array_elements(s.documents) WITH ORDINALITY AS d(e, n)
             WHERE s.id = $1 AND d.e->>'key' > $2
             ORDER BY d.n LIMIT $3",
        )
        .bind(id)
        .bind(after)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.inner.pool)
        .await
        .map_err(unavailable)?;
        let more = rows.len() > limit as usize;
        let entries = rows
            .iter()
            .take(limit as usize)
            .map(|text| serde_json::from_str(text))
            .collect::<Result<Vec<Entry>, _>>()
            .map_err(|e| ServiceError::internal(format!("stored snapshot is unreadable: {e}")))?;
        Ok((head, entries, more))
    }

    /// `namespace`'s snapshots, newest first, after snapshot id `after`.
    pub async fn list(
        &self,
        namespace: &str,
        after: &str,
        limit: u32,
    ) -> Result<(Vec<SnapshotHead>, bool), ServiceError> {
        let rows = sqlx::query(
            "SELECT id, namespace, taken_at, actor, count FROM state_snapshots
             WHERE namespace = $1 AND ($2 = '' OR id < $2)
             ORDER BY id DESC LIMIT $3",
        )
        .bind(namespace)
        .bind(after)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.inner.pool)
        .await
        .map_err(unavailable)?;
        let more = rows.len() > limit as usize;
        let heads = rows
            .iter()
            .take(limit as usize)
            .map(head)
            .collect::<Result<Vec<_>, _>>()
            .map_err(unavailable)?;
        Ok((heads, more))
    }

    /// Brings snapshot `id`'s namespace back to it, in one transaction.
    pub async fn restore(&self, id: &str, actor: &str) -> Result<Restored, ServiceError> {
        let mut tx = self.inner.pool.begin().await.map_err(unavailable)?;
        let row = sqlx::query(
            "UPDATE state_snapshots SET restores = restores + 1 WHERE id = $1
             RETURNING namespace, documents::text AS documents, restores",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| not_found(id))?;
        let namespace: String = row.get("namespace");
        let restores: i32 = row.get("restores");
        let entries: Vec<Entry> = serde_json::from_str(&row.get::<String, _>("documents"))
            .map_err(|e| ServiceError::internal(format!("stored snapshot is unreadable: {e}")))?;
        let targets: BTreeMap<&str, &Value> =
            entries.iter().map(|e| (e.key.as_str(), &e.value)).collect();

        let current = store::lock_namespace(&mut tx, &prefix_pattern(&format!("{namespace}/")))
            .await
            .map_err(unavailable)?;
        let at = concord_runtime::whole_micros(self.inner.clock.now());
        let mut changes = Vec::new();
        let mut unchanged = 0u32;
        let mut seen = std::collections::BTreeSet::new();
        let mut restore = |key: &str, stored: Option<Stored>| {
            let target = targets.get(key).copied();
            match document::restore(stored.as_ref(), target) {
                Some(change) => changes.push(ChangeRow {
                    key: key.to_string(),
                    version: change.version,
                    recorded: change.recorded,
                    value: change.value,
                    actor: actor.to_string(),
                    at,
                }),
                None => {
                    if target.is_some() {
                        unchanged += 1;
                    }
                }
            }
        };
        for row in &current {
            seen.insert(row.key.as_str());
            restore(&row.key, Some(row.stored()));
        }
        // Rows are never removed, so every key the snapshot holds has one;
        // should one be missing all the same, it is created.
        let missing: std::collections::BTreeSet<&str> = targets
            .keys()
            .copied()
            .filter(|key| !seen.contains(key))
            .collect();
        for key in missing.iter().copied() {
            restore(key, None);
        }
        let rows: Vec<DocumentRow> = changes.iter().map(ChangeRow::to_row).collect();
        let (new, old): (Vec<&DocumentRow>, Vec<&DocumentRow>) = rows
            .iter()
            .partition(|row| missing.contains(&row.key.as_str()));
        if !store::insert_new(&mut tx, &new)
            .await
            .map_err(unavailable)?
        {
            return Err(ServiceError::unavailable(
                "a document was created during the restore; try again",
            ));
        }
        store::update_locked(&mut tx, &old)
            .await
            .map_err(unavailable)?;
        let mut events: Vec<concord_store::NewEvent> = changes
            .iter()
            .map(|change| store::change_event(&self.inner.events, change))
            .collect();
        events.push(self.inner.events.event(
            AGGREGATE,
            id,
            i64::from(restores) + 1,
            "snapshot.restored",
            json!({
                "id": id,
                "namespace": namespace,
                "changed": changes.len(),
                "unchanged": unchanged,
                "actor": actor,
            }),
        ));
        crate::app::commit_with_events(&self.inner.events, tx, &events).await?;
        for change in &changes {
            crate::writer::publish_change(&self.inner.bus, change).await;
        }
        Ok(Restored {
            namespace,
            changes,
            unchanged,
        })
    }
}
