//! The registry's Postgres table (`registry_agents`): registrations, batched
//! heartbeats, liveness transitions and reputation, each change committed
//! together with its events in one transaction.

use chrono::{DateTime, Utc};
use concord_store::{EventStore, NewEvent, PgPool, StoreError};
use concord_wire::v1::{AgentHealth, AgentRecord, Liveness};
use sqlx::types::Json;

/// One row of `registry_agents`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AgentRow {
    pub id: String,
    pub record: Json<serde_json::Value>,
    pub public_key: String,
    pub liveness: String,
    pub health: String,
    pub in_flight: i32,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    pub revision: i64,
    pub event_seq: i64,
    pub deregistered_at: Option<DateTime<Utc>>,
    pub reputation: f64,
}

/// A row plus the liveness it had before the statement changed it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ChangedRow {
    #[sqlx(flatten)]
    pub row: AgentRow,
    pub old_liveness: String,
}

const COLUMNS: &str = "id, record, public_key, liveness, health, in_flight, last_heartbeat_at, \
                       revision, event_seq, deregistered_at, reputation";

impl AgentRow {
    /// The wire record: the stored registration plus the live columns.
    pub fn to_record(&self) -> AgentRecord {
        let mut record: AgentRecord =
            serde_json::from_value(self.record.0.clone()).unwrap_or_default();
        record.id.clone_from(&self.id);
        record.public_key.clone_from(&self.public_key);
        record.liveness = liveness_from(&self.liveness) as i32;
        record.health =
            AgentHealth::from_str_name(&self.health).unwrap_or(AgentHealth::Unspecified) as i32;
        record.in_flight = self.in_flight.max(0) as u32;
        record.reputation = self.reputation;
        record.revision = self.revision.max(0) as u64;
        record.last_heartbeat_at = self.last_heartbeat_at.map(timestamp);
        record.deregistered = self.deregistered_at.is_some();
        record
    }

    pub fn liveness(&self) -> Liveness {
        liveness_from(&self.liveness)
    }
}

pub fn liveness_from(name: &str) -> Liveness {
    Liveness::from_str_name(name).unwrap_or(Liveness::Unspecified)
}

/// A chrono time as a protobuf timestamp.
pub fn timestamp(time: DateTime<Utc>) -> concord_wire::pbjson_types::Timestamp {
    concord_wire::pbjson_types::Timestamp {
        seconds: time.timestamp(),
        nanos: time.timestamp_subsec_nanos() as i32,
    }
}

/// The stored JSON of a record: only the registration part (the live fields
/// are columns, so they are cleared here to keep one source of truth).
pub fn record_json(record: &AgentRecord) -> serde_json::Value {
    let mut stored = record.clone();
    stored.liveness = 0;
    stored.health = 0;
    stored.in_flight = 0;
    stored.reputation = 0.0;
    stored.revision = 0;
    stored.last_heartbeat_at = None;
    stored.deregistered = false;
    serde_json::to_value(&stored).expect("an AgentRecord with validated fields serializes")
}

/// Data access for the registry.
#[derive(Clone)]
pub struct AgentStore {
    pool: PgPool,
    events: EventStore,
}

/// A heartbeat waiting to be written.
#[derive(Debug, Clone)]
pub struct PendingHeartbeat {
    pub agent_id: String,
    pub at: DateTime<Utc>,
    pub in_flight: i32,
    pub health: AgentHealth,
}

/// A liveness change decided by the sweep, applied only if the row is unchanged.
#[derive(Debug, Clone)]
pub struct PlannedTransition {
    pub agent_id: String,
    pub from: Liveness,
    pub to: Liveness,
    pub last_heartbeat_at: DateTime<Utc>,
}

impl AgentStore {
    pub fn new(pool: PgPool) -> Self {
        Self {
            events: EventStore::new(pool.clone()),
            pool,
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The row of `id`, deregistered or not.
    pub async fn get(&self, id: &str) -> Result<Option<AgentRow>, StoreError> {
        let query = format!("select {COLUMNS} from registry_agents where id = $1");
        Ok(sqlx::query_as::<_, AgentRow>(sqlx::AssertSqlSafe(query))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Every agent, deregistered ones included (they become tombstones).
    pub async fn all(&self) -> Result<Vec<AgentRow>, StoreError> {
        let query = format!("select {COLUMNS} from registry_agents order by id");
        Ok(sqlx::query_as::<_, AgentRow>(sqlx::AssertSqlSafe(query))
            .fetch_all(&self.pool)
            .await?)
    }

    /// Runs `change` on the locked row of `id` (None if absent) inside a
    /// transaction; `change` returns the new row to write (or None to leave
    /// it) and the events to append. Commits both or nothing.
    pub async fn modify<F, T>(&self, id: &str, change: F) -> Result<(T, Vec<NewEvent>), ModifyError>
    where
        F: FnOnce(Option<AgentRow>) -> Result<(Option<AgentRow>, Vec<NewEvent>, T), ModifyError>,
    {
        let mut tx = self.pool.begin().await.map_err(StoreError::from)?;
        // Make sure a row exists to lock, so two first registrations of one id
        // serialise here instead of racing on the insert.
        let query = format!("select {COLUMNS} from registry_agents where id = $1 for update");
        let current = sqlx::query_as::<_, AgentRow>(sqlx::AssertSqlSafe(query))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        let existed = current.is_some();
        let (new_row, events, output) = change(current)?;
        if let Some(row) = &new_row {
            let sql = if existed {
                "update registry_agents set record = $2, public_key = $3, liveness = $4, health = $5, \
                 in_flight = $6, last_heartbeat_at = $7, revision = $8, event_seq = $9, \
                 deregistered_at = $10, reputation = $11 where id = $1"
            } else {
                "insert into registry_agents (id, record, public_key, liveness, health, in_flight, \
                 last_heartbeat_at, revision, event_seq, deregistered_at, reputation) \
                 values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
            };
            let result = sqlx::query(sql)
                .bind(&row.id)
                .bind(&row.record)
                .bind(&row.public_key)
                .bind(&row.liveness)
                .bind(&row.health)
                .bind(row.in_flight)
                .bind(row.last_heartbeat_at)
                .bind(row.revision)
                .bind(row.event_seq)
                .bind(row.deregistered_at)
                .bind(row.reputation)
                .execute(&mut *tx)
                .await;
            if let Err(error) = result {
                // A concurrent first registration of the same id won the insert.
                if is_unique_violation(&error) {
                    return Err(ModifyError::Retry);
                }
                return Err(StoreError::from(error).into());
            }
        }
        self.commit_with_events(tx, &events).await?;
        Ok((output, events))
    }

    /// Writes a batch of heartbeats (ids unique, any order): last heartbeat,
    /// load and health, and ALIVE for agents that were not. Returns the rows
    /// that changed liveness, with their recovery events appended in the same
    /// transaction by `events_for`.
    pub async fn apply_heartbeats<F>(
        &self,
        mut batch: Vec<PendingHeartbeat>,
        events_for: F,
    ) -> Result<(Vec<ChangedRow>, Vec<NewEvent>), StoreError>
    where
        F: Fn(&ChangedRow) -> NewEvent,
    {
        // Lock rows in one global order so concurrent batches cannot deadlock.
        batch.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        let ids: Vec<&str> = batch.iter().map(|h| h.agent_id.as_str()).collect();
        let times: Vec<DateTime<Utc>> = batch.iter().map(|h| h.at).collect();
        let loads: Vec<i32> = batch.iter().map(|h| h.in_flight).collect();
        let health: Vec<&str> = batch.iter().map(|h| h.health.as_str_name()).collect();
        // Two statements in one transaction. The first locks every row of the
        // batch in id order (so concurrent flushes from replicas cannot
        // deadlock) and writes the common case, agents already ALIVE, without
        // returning anything. The second revives the rare others and returns
        // them for their `agent.recovered` events.
        //
        // Both run unprepared (`persistent(false)`): a cached generic plan
        // does not know the batch size, assumes a tiny `unnest`, and joins
        // with a nested loop that goes quadratic on thousands of rows.
        const ALIVE: &str = "with input as (
                 select * from unnest($1::text[], $2::timestamptz[], $3::int4[], $4::text[]) as t(id, at, in_flight, health)
             ), locked as (
                 select a.id from registry_agents a join input i on i.id = a.id
                 where a.deregistered_at is null order by a.id for update of a
             )
             update registry_agents a set
                 last_heartbeat_at = greatest(a.last_heartbeat_at, i.at),
                 in_flight = i.in_flight,
                 health = i.health
             from input i join locked l on l.id = i.id
             where a.id = i.id and a.liveness = 'ALIVE'";
        let revive = format!(
            "with input as (
                 select * from unnest($1::text[], $2::timestamptz[], $3::int4[], $4::text[]) as t(id, at, in_flight, health)
             ), old as (
                 select a.id, a.liveness as old_liveness from registry_agents a join input i on i.id = a.id
                 where a.deregistered_at is null and a.liveness <> 'ALIVE'
             )
             update registry_agents a set
                 last_heartbeat_at = greatest(a.last_heartbeat_at, i.at),
                 in_flight = i.in_flight,
                 health = i.health,
                 liveness = 'ALIVE',
                 revision = a.revision + 1,
                 event_seq = a.event_seq + 1
             from input i join old o on o.id = i.id
             where a.id = i.id
             returning {}, o.old_liveness",
            prefixed("a")
        );
        let mut tx = self.pool.begin().await?;
        sqlx::query(ALIVE)
            .persistent(false)
            .bind(&ids)
            .bind(&times)
            .bind(&loads)
            .bind(&health)
            .execute(&mut *tx)
            .await?;
        let changed = sqlx::query_as::<_, ChangedRow>(sqlx::AssertSqlSafe(revive))
            .persistent(false)
            .bind(&ids)
            .bind(&times)
            .bind(&loads)
            .bind(&health)
            .fetch_all(&mut *tx)
            .await?;
        let events: Vec<NewEvent> = changed.iter().map(&events_for).collect();
        self.commit_with_events(tx, &events).await?;
        Ok((changed, events))
    }

    /// Agents due for a liveness change: not yet SUSPECT with a heartbeat
    /// older than `suspect_before`, or SUSPECT with one older than
    /// `unavailable_before`. Only due rows, so a page full of agents that are
    /// already SUSPECT cannot hide others that are due.
    pub async fn stale(
        &self,
        suspect_before: DateTime<Utc>,
        unavailable_before: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<AgentRow>, StoreError> {
        let query = format!(
            "select {COLUMNS} from registry_agents
             where deregistered_at is null and liveness <> 'UNAVAILABLE'
               and ((liveness <> 'SUSPECT' and last_heartbeat_at < $1)
                 or (liveness = 'SUSPECT' and last_heartbeat_at < $2))
             order by last_heartbeat_at limit $3"
        );
        Ok(sqlx::query_as::<_, AgentRow>(sqlx::AssertSqlSafe(query))
            .bind(suspect_before)
            .bind(unavailable_before)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Applies planned liveness transitions to rows still as planned (same
    /// liveness, no newer heartbeat; another replica may have got there first).
    pub async fn apply_transitions<F>(
        &self,
        mut planned: Vec<PlannedTransition>,
        events_for: F,
    ) -> Result<(Vec<ChangedRow>, Vec<NewEvent>), StoreError>
    where
        F: Fn(&ChangedRow) -> NewEvent,
    {
        planned.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        let ids: Vec<&str> = planned.iter().map(|p| p.agent_id.as_str()).collect();
        let from: Vec<&str> = planned.iter().map(|p| p.from.as_str_name()).collect();
        let to: Vec<&str> = planned.iter().map(|p| p.to.as_str_name()).collect();
        let last: Vec<DateTime<Utc>> = planned.iter().map(|p| p.last_heartbeat_at).collect();
        let query = format!(
            "with input as (
                 select * from unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[]) as t(id, old, new, last)
             ), locked as (
                 select a.id from registry_agents a join input i on i.id = a.id
                 where a.liveness = i.old and a.last_heartbeat_at = i.last and a.deregistered_at is null
                 order by a.id for update of a
             )
             update registry_agents a set
                 liveness = i.new, revision = a.revision + 1, event_seq = a.event_seq + 1
             from input i join locked l on l.id = i.id
             where a.id = i.id and a.liveness = i.old and a.last_heartbeat_at = i.last
             returning {}, i.old as old_liveness",
            prefixed("a")
        );
        let mut tx = self.pool.begin().await?;
        let changed = sqlx::query_as::<_, ChangedRow>(sqlx::AssertSqlSafe(query))
            .persistent(false)
            .bind(&ids)
            .bind(&from)
            .bind(&to)
            .bind(&last)
            .fetch_all(&mut *tx)
            .await?;
        let events: Vec<NewEvent> = changed.iter().map(&events_for).collect();
        self.commit_with_events(tx, &events).await?;
        Ok((changed, events))
    }

    /// Adds task outcomes to agents' counts and recomputes their reputation
    /// (Laplace-smoothed success rate, so it starts at 0.5 and converges).
    pub async fn add_outcomes(
        &self,
        mut outcomes: Vec<(String, i64, i64)>,
    ) -> Result<Vec<AgentRow>, StoreError> {
        outcomes.sort_by(|a, b| a.0.cmp(&b.0));
        let ids: Vec<&str> = outcomes.iter().map(|o| o.0.as_str()).collect();
        let successes: Vec<i64> = outcomes.iter().map(|o| o.1).collect();
        let failures: Vec<i64> = outcomes.iter().map(|o| o.2).collect();
        let query = format!(
            "with input as (
                 select * from unnest($1::text[], $2::int8[], $3::int8[]) as t(id, s, f)
             ), locked as (
                 select a.id from registry_agents a join input i on i.id = a.id
                 where a.deregistered_at is null order by a.id for update of a
             )
             update registry_agents a set
                 successes = a.successes + i.s,
                 failures = a.failures + i.f,
                 reputation = (a.successes + i.s + 1)::float8 / (a.successes + i.s + a.failures + i.f + 2),
                 revision = a.revision + 1
             from input i join locked l on l.id = i.id
             where a.id = i.id
             returning {}",
            prefixed("a")
        );
        Ok(sqlx::query_as::<_, AgentRow>(sqlx::AssertSqlSafe(query))
            .persistent(false)
            .bind(&ids)
            .bind(&successes)
            .bind(&failures)
            .fetch_all(&self.pool)
            .await?)
    }
}

impl AgentStore {
    /// Appends `events` in the transaction that made the change, then commits
    /// both: an agent's state and its events are never stored apart.
    async fn commit_with_events(
        &self,
        mut tx: concord_store::Transaction<'static, concord_store::Postgres>,
        events: &[NewEvent],
    ) -> Result<(), StoreError> {
        if !events.is_empty() {
            self.events.append_in(&mut tx, events).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

fn prefixed(alias: &str) -> String {
    COLUMNS
        .split(", ")
        .map(|c| format!("{alias}.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// Why [`AgentStore::modify`] did not commit.
#[derive(Debug, thiserror::Error)]
pub enum ModifyError {
    /// The caller refused the change (bad key, unknown agent ...).
    #[error(transparent)]
    Refused(#[from] concord_bus::ServiceError),
    /// Lost a race on creating the row; run the whole change again.
    #[error("concurrent registration of the same id; retry")]
    Retry,
    #[error(transparent)]
    Store(#[from] StoreError),
}
