//! Locks in Postgres: each resource is a row holding its [`Lock`] (the pure
//! rules) as JSON. A request locks the row (`FOR UPDATE`), ends the leases
//! and waits that ran out, applies the operation, writes the row and its
//! `state.lock` events, and commits: two replicas serialise on the row, so
//! an exclusive lock never has two holders. After the commit, waiters whose
//! turn came are answered on the reply subject they are waiting on (kept in
//! the row, so whichever replica frees the lock answers them), and waiters
//! whose wait ran out get a TIMEOUT error.
//!
//! Leases and waits also end without a request: [`crate::sweep`] applies
//! [`LockOp::Expire`] to the rows that are due, and [`crate::owners`]
//! applies [`LockOp::OwnerLost`] when an owner's agent goes away.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use concord_bus::{ReplyTo, ServiceError};
use concord_runtime::{Clock, EventPublisher};
use concord_wire::v1::{LockGrant, LockMode, LockState, LockWaiter};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use serde_json::json;
use sqlx::{PgPool, Row};

use crate::app::unavailable;
use crate::lock::{Acquire, Acquired, Changed, Holder, Lock, LockError, Mode, Waiter};

/// Aggregate type of lock events (`<root>.events.state.lock.<kind>`).
pub const AGGREGATE: &str = "state.lock";

/// What to do to one resource's lock.
#[derive(Debug, Clone)]
pub enum LockOp {
    Acquire(Acquire),
    Renew {
        owner: String,
        token: u64,
        /// 0: the grant's own TTL.
        ttl_ms: u64,
    },
    Release {
        owner: String,
        token: u64,
    },
    /// Only end what ran out (the sweep).
    Expire,
    /// End everything this owner holds or waits for (its agent went away).
    OwnerLost(String),
}

impl LockOp {
    fn name(&self) -> &'static str {
        match self {
            LockOp::Acquire(_) => "acquire",
            LockOp::Renew { .. } => "renew",
            LockOp::Release { .. } => "release",
            LockOp::Expire => "expire",
            LockOp::OwnerLost(_) => "owner_lost",
        }
    }
}

/// What an operation did.
#[derive(Debug, Clone)]
pub enum LockAnswer {
    Acquired(Acquired),
    Renewed(Holder),
    /// The grant that ended, and who was granted next.
    Released {
        ended: Holder,
        granted: Vec<Holder>,
    },
    /// What the sweep or a lost owner ended.
    Swept,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LockLabels {
    /// acquire, renew, release, expire, owner_lost.
    op: &'static str,
    /// granted, queued, busy, renewed, released, swept, refused, unavailable.
    outcome: &'static str,
}

/// Lock metrics (`concord_state_lock_*`).
#[derive(Clone)]
pub struct LockMetrics {
    requests: Family<LockLabels, Counter>,
    wait_seconds: Histogram,
    hold_seconds: Histogram,
    ended: Family<EndLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndLabels {
    /// released, expired, owner_lost, gave_up.
    how: &'static str,
}

impl LockMetrics {
    pub fn register(registry: &concord_telemetry::MetricsRegistry) -> Self {
        Self {
            requests: registry.add(
                "state_lock_operations",
                "Lock operations, by operation and outcome",
                Family::default(),
            ),
            wait_seconds: registry.add(
                "state_lock_wait_seconds",
                "Time a granted request waited in line",
                Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            ),
            hold_seconds: registry.add(
                "state_lock_hold_seconds",
                "Time a grant was held, from grant to release, expiry or loss",
                Histogram::new(exponential_buckets(0.001, 2.0, 20)),
            ),
            ended: registry.add(
                "state_lock_ends",
                "Grants and waits that ended, by how",
                Family::default(),
            ),
        }
    }

    fn count(&self, op: &'static str, outcome: &'static str) {
        self.requests
            .get_or_create(&LockLabels { op, outcome })
            .inc();
    }
}

/// The lock rows and what acting on them needs.
#[derive(Clone)]
pub struct Locks {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    events: EventPublisher,
    client: async_nats::Client,
    clock: Arc<dyn Clock>,
    metrics: LockMetrics,
}

/// Milliseconds since the epoch as a time.
pub fn time_of(ms: u64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(i64::try_from(ms).unwrap_or(i64::MAX)).unwrap_or_default()
}

fn wire_mode(mode: Mode) -> i32 {
    match mode {
        Mode::Exclusive => LockMode::Exclusive as i32,
        Mode::Shared => LockMode::Shared as i32,
    }
}

/// The wire form of a grant.
pub fn grant(resource: &str, holder: &Holder) -> LockGrant {
    LockGrant {
        resource: resource.to_string(),
        owner: holder.owner.clone(),
        mode: wire_mode(holder.mode),
        token: holder.token,
        ttl_ms: holder.ttl_ms,
        granted_at: Some(concord_wire::task_view::timestamp(time_of(
            holder.granted_ms,
        ))),
        expires_at: Some(concord_wire::task_view::timestamp(time_of(
            holder.expires_ms,
        ))),
    }
}

/// The wire form of a resource's lock.
pub fn state_of(resource: &str, lock: &Lock) -> LockState {
    LockState {
        resource: resource.to_string(),
        last_token: lock.last_token,
        holders: lock.holders.iter().map(|h| grant(resource, h)).collect(),
        waiters: lock
            .waiters
            .iter()
            .map(|w| LockWaiter {
                owner: w.owner.clone(),
                mode: wire_mode(w.mode),
                ttl_ms: w.ttl_ms,
                queued_at: Some(concord_wire::task_view::timestamp(time_of(w.queued_ms))),
                gives_up_at: Some(concord_wire::task_view::timestamp(time_of(w.give_up_ms))),
            })
            .collect(),
    }
}

/// The client-facing error of a refused operation.
pub fn refusal(resource: &str, error: LockError, latest: u64) -> ServiceError {
    match error {
        LockError::NotHolder { owner, token } => ServiceError::invalid(
            "token",
            format!(
                "{owner} does not hold lock {resource} with token {token} (the latest token is {latest}); acquire it again"
            ),
        ),
        LockError::HeldInOtherMode { mode } => ServiceError::conflict(format!(
            "the owner holds lock {resource} {mode:?}; release it before asking for the other mode"
        )),
        LockError::WaitingInOtherMode { mode } => ServiceError::conflict(format!(
            "the owner already waits for lock {resource} {mode:?}"
        )),
    }
}

fn decode_lock(text: &str) -> Result<Lock, ServiceError> {
    serde_json::from_str(text)
        .map_err(|error| ServiceError::internal(format!("stored lock is unreadable: {error}")))
}

/// Events and notifications of one committed operation.
struct Aftermath {
    resource: String,
    changed: Changed,
    /// Why waiters in `changed.gave_up` stopped waiting.
    gave_up_because: &'static str,
}

impl Locks {
    pub fn new(
        pool: PgPool,
        events: EventPublisher,
        client: async_nats::Client,
        clock: Arc<dyn Clock>,
        metrics: LockMetrics,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                events,
                client,
                clock,
                metrics,
            }),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.inner.clock.unix_ms()).unwrap_or(0)
    }

    /// Applies `op` to `resource`'s lock in one transaction; answers the
    /// waiters it granted or let go once committed.
    pub async fn apply(&self, resource: &str, op: LockOp) -> Result<LockAnswer, ServiceError> {
        let name = op.name();
        let result = self.transact(resource, op).await;
        let outcome = match &result {
            Ok((LockAnswer::Acquired(Acquired::Granted(_)), _)) => "granted",
            Ok((LockAnswer::Acquired(Acquired::Queued { .. }), _)) => "queued",
            Ok((LockAnswer::Acquired(Acquired::Busy), _)) => "busy",
            Ok((LockAnswer::Renewed(_), _)) => "renewed",
            Ok((LockAnswer::Released { .. }, _)) => "released",
            Ok((LockAnswer::Swept, _)) => "swept",
            Err(error) if error.code == concord_wire::v1::ErrorCode::Unavailable => "unavailable",
            Err(_) => "refused",
        };
        self.inner.metrics.count(name, outcome);
        let (answer, aftermath) = result?;
        if let Some(aftermath) = aftermath {
            self.notify(aftermath).await;
        }
        Ok(answer)
    }

    async fn transact(
        &self,
        resource: &str,
        op: LockOp,
    ) -> Result<(LockAnswer, Option<Aftermath>), ServiceError> {
        let mut tx = self.inner.pool.begin().await.map_err(unavailable)?;
        let mut row = select_for_update(&mut tx, resource).await?;
        if row.is_none() && matches!(op, LockOp::Acquire(_)) {
            sqlx::query(
                "INSERT INTO state_locks (resource, lock, updated_at)
                 VALUES ($1, '{}'::jsonb, now()) ON CONFLICT (resource) DO NOTHING",
            )
            .bind(resource)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
            row = select_for_update(&mut tx, resource).await?;
        }
        let Some((mut lock, seq)) = row else {
            // Nothing was ever granted here.
            return match op {
                LockOp::Renew { owner, token, .. } | LockOp::Release { owner, token } => {
                    Err(refusal(resource, LockError::NotHolder { owner, token }, 0))
                }
                _ => Ok((LockAnswer::Swept, None)),
            };
        };
        let before = lock.clone();
        let now = self.now_ms();
        let mut changed = lock.expire(now);
        let mut ended_how = vec![("expired", changed.ended.len())];
        let mut gave_up_because = "its wait ran out";
        let answer = match op {
            LockOp::Acquire(request) => {
                let acquired = lock
                    .acquire(request, now)
                    .map_err(|e| refusal(resource, e, before.last_token))?;
                LockAnswer::Acquired(acquired)
            }
            LockOp::Renew {
                owner,
                token,
                ttl_ms,
            } => {
                let ttl = if ttl_ms == 0 {
                    lock.holders
                        .iter()
                        .find(|h| h.owner == owner && h.token == token)
                        .map(|h| h.ttl_ms)
                        .unwrap_or(0)
                } else {
                    ttl_ms
                };
                let renewed = lock.renew(&owner, token, ttl, now);
                match renewed {
                    Ok(holder) => LockAnswer::Renewed(holder),
                    Err(error) => {
                        let latest = lock.last_token;
                        drop(tx);
                        return Err(refusal(resource, error, latest));
                    }
                }
            }
            LockOp::Release { owner, token } => match lock.release(&owner, token, now) {
                Ok(released) => {
                    let ended = released.ended[0].clone();
                    let granted = released.granted.iter().map(|(_, h)| h.clone()).collect();
                    ended_how.push(("released", 1));
                    changed.ended.extend(released.ended);
                    changed.granted.extend(released.granted);
                    LockAnswer::Released { ended, granted }
                }
                Err(error) => {
                    let latest = lock.last_token;
                    drop(tx);
                    return Err(refusal(resource, error, latest));
                }
            },
            LockOp::Expire => LockAnswer::Swept,
            LockOp::OwnerLost(owner) => {
                let lost = lock.owner_lost(&owner, now);
                ended_how.push(("owner_lost", lost.ended.len()));
                if !lost.gave_up.is_empty() {
                    gave_up_because = "its agent went away";
                }
                changed.ended.extend(lost.ended);
                changed.gave_up.extend(lost.gave_up);
                changed.granted.extend(lost.granted);
                LockAnswer::Swept
            }
        };
        if lock == before {
            drop(tx);
            return Ok((answer, None));
        }
        let mut events = Vec::new();
        let mut seq = seq;
        let mut event = |kind: &str, data: serde_json::Value| {
            seq += 1;
            events.push(self.inner.events.event(
                AGGREGATE,
                resource,
                seq,
                &format!("lock.{kind}"),
                data,
            ));
        };
        let mut ended = changed.ended.iter();
        for (how, count) in &ended_how {
            for holder in ended.by_ref().take(*count) {
                event(
                    how,
                    json!({"resource": resource, "owner": holder.owner, "token": holder.token}),
                );
                self.inner
                    .metrics
                    .ended
                    .get_or_create(&EndLabels { how })
                    .inc();
                self.inner
                    .metrics
                    .hold_seconds
                    .observe(now.saturating_sub(holder.granted_ms) as f64 / 1000.0);
            }
        }
        for waiter in &changed.gave_up {
            event(
                "gave_up",
                json!({"resource": resource, "owner": waiter.owner, "reason": gave_up_because}),
            );
        }
        if let LockAnswer::Acquired(acquired) = &answer {
            match acquired {
                Acquired::Granted(holder) if !before.holders.contains(holder) => {
                    event("granted", grant_event(resource, holder));
                }
                Acquired::Queued { position } if lock.waiters.len() > before.waiters.len() => {
                    let waiter = lock.waiters.back().expect("just queued");
                    event(
                        "queued",
                        json!({"resource": resource, "owner": waiter.owner, "mode": waiter.mode, "position": position}),
                    );
                }
                _ => {}
            }
        }
        if let LockAnswer::Renewed(holder) = &answer {
            event("renewed", grant_event(resource, holder));
        }
        for (_, holder) in &changed.granted {
            event("granted", grant_event(resource, holder));
        }
        let owners: Vec<String> = {
            let mut owners: Vec<String> = lock
                .holders
                .iter()
                .map(|h| h.owner.clone())
                .chain(lock.waiters.iter().map(|w| w.owner.clone()))
                .collect();
            owners.sort_unstable();
            owners.dedup();
            owners
        };
        let text = serde_json::to_string(&lock).expect("a lock serialises");
        sqlx::query(
            "UPDATE state_locks
             SET lock = $2::jsonb, seq = $3, owners = $4, next_deadline_ms = $5, updated_at = now()
             WHERE resource = $1",
        )
        .bind(resource)
        .bind(text)
        .bind(seq)
        .bind(&owners)
        .bind(lock.next_deadline().map(|ms| ms as i64))
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        crate::app::commit_with_events(&self.inner.events, tx, &events).await?;
        Ok((
            answer,
            Some(Aftermath {
                resource: resource.to_string(),
                changed,
                gave_up_because,
            }),
        ))
    }

    /// Answers the waiters an operation granted or let go.
    async fn notify(&self, aftermath: Aftermath) {
        let Aftermath {
            resource,
            changed,
            gave_up_because,
        } = aftermath;
        for (waiter, holder) in &changed.granted {
            self.inner
                .metrics
                .wait_seconds
                .observe(holder.granted_ms.saturating_sub(waiter.queued_ms) as f64 / 1000.0);
            let message = grant(&resource, holder);
            self.answer(waiter, Ok(&message)).await;
        }
        for waiter in &changed.gave_up {
            self.inner
                .metrics
                .ended
                .get_or_create(&EndLabels { how: "gave_up" })
                .inc();
            let error = if gave_up_because == "its wait ran out" {
                ServiceError::new(
                    concord_wire::v1::ErrorCode::Timeout,
                    format!(
                        "lock {resource} was not granted to {} within its waitMs of {} ms",
                        waiter.owner,
                        waiter.give_up_ms.saturating_sub(waiter.queued_ms)
                    ),
                )
            } else {
                ServiceError::unavailable(format!(
                    "{} stopped waiting for lock {resource}: its agent went away",
                    waiter.owner
                ))
            };
            self.answer(waiter, Err(&error)).await;
        }
    }

    async fn answer(&self, waiter: &Waiter, result: Result<&LockGrant, &ServiceError>) {
        let Some(to) = ReplyTo::from_text(&waiter.reply) else {
            return;
        };
        if let Err(error) = concord_bus::send_reply(&self.inner.client, &to, result).await {
            tracing::warn!(%error, owner = %waiter.owner, "could not answer a lock waiter");
        }
    }

    /// The lock of `resource` as stored (leases that ran out but were not
    /// swept yet are shown ended).
    pub async fn get(&self, resource: &str) -> Result<Option<Lock>, ServiceError> {
        let row = sqlx::query("SELECT lock::text AS lock FROM state_locks WHERE resource = $1")
            .bind(resource)
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(unavailable)?;
        let Some(row) = row else { return Ok(None) };
        let mut lock = decode_lock(&row.get::<String, _>("lock"))?;
        lock.expire(self.now_ms());
        Ok(Some(lock))
    }

    /// Locks held or waited for whose resource starts with `prefix`, after
    /// `after`, in name order: of at most `limit` rows, and the resource to
    /// continue after when more follow (empty on the last page).
    pub async fn list(
        &self,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<(Vec<(String, Lock)>, String), ServiceError> {
        let rows = sqlx::query(
            "SELECT resource, lock::text AS lock FROM state_locks
             WHERE resource LIKE $1 AND resource > $2 AND cardinality(owners) > 0
             ORDER BY resource LIMIT $3",
        )
        .bind(crate::store::prefix_pattern(prefix))
        .bind(after)
        .bind(limit as i64 + 1)
        .fetch_all(&self.inner.pool)
        .await
        .map_err(unavailable)?;
        let more = rows.len() > limit;
        let now = self.now_ms();
        let mut locks = Vec::with_capacity(rows.len().min(limit));
        let mut last = String::new();
        for row in rows.into_iter().take(limit) {
            let mut lock = decode_lock(&row.get::<String, _>("lock"))?;
            last = row.get("resource");
            lock.expire(now);
            if !lock.is_idle() {
                locks.push((last.clone(), lock));
            }
        }
        Ok((locks, if more { last } else { String::new() }))
    }

    /// Resources with a lease or a wait that has run out.
    pub async fn due(&self, limit: i64) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT resource FROM state_locks WHERE next_deadline_ms <= $1
             ORDER BY next_deadline_ms LIMIT $2",
        )
        .bind(self.now_ms() as i64)
        .bind(limit)
        .fetch_all(&self.inner.pool)
        .await
    }

    /// Resources `owner` holds or waits for.
    pub async fn held_by(&self, owner: &str) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT resource FROM state_locks WHERE $1 = ANY(owners)")
            .bind(owner)
            .fetch_all(&self.inner.pool)
            .await
    }

    /// Checks that every fence holds: `(resource, token)` pairs, read under
    /// a share lock in `conn`'s transaction (so no grant commits between the
    /// check and the write). Returns the refused ones with the latest token.
    pub async fn fences_in(
        conn: &mut sqlx::PgConnection,
        fences: &[(&str, u64)],
    ) -> Result<Vec<(String, u64, u64)>, sqlx::Error> {
        let mut resources: Vec<&str> = fences.iter().map(|(r, _)| *r).collect();
        resources.sort_unstable();
        resources.dedup();
        let rows = sqlx::query(
            "SELECT resource, lock::text AS lock FROM state_locks
             WHERE resource = ANY($1) ORDER BY resource FOR SHARE",
        )
        .bind(&resources)
        .fetch_all(&mut *conn)
        .await?;
        let mut locks = std::collections::HashMap::new();
        for row in rows {
            let lock: Lock = serde_json::from_str(&row.get::<String, _>("lock"))
                .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
            locks.insert(row.get::<String, _>("resource"), lock);
        }
        Ok(fences
            .iter()
            .filter_map(|(resource, token)| {
                let lock = locks.get(*resource).cloned().unwrap_or_default();
                lock.fence(*token)
                    .err()
                    .map(|_| (resource.to_string(), *token, lock.last_token))
            })
            .collect())
    }
}

fn grant_event(resource: &str, holder: &Holder) -> serde_json::Value {
    json!({
        "resource": resource,
        "owner": holder.owner,
        "mode": holder.mode,
        "token": holder.token,
        "ttlMs": holder.ttl_ms,
        "expiresAt": concord_wire::task_view::rfc3339(time_of(holder.expires_ms)),
    })
}

async fn select_for_update(
    tx: &mut sqlx::PgConnection,
    resource: &str,
) -> Result<Option<(Lock, i64)>, ServiceError> {
    let row = sqlx::query(
        "SELECT lock::text AS lock, seq FROM state_locks WHERE resource = $1 FOR UPDATE",
    )
    .bind(resource)
    .fetch_optional(&mut *tx)
    .await
    .map_err(unavailable)?;
    row.map(|row| Ok((decode_lock(&row.get::<String, _>("lock"))?, row.get("seq"))))
        .transpose()
}
