//! Barriers in Postgres: each barrier is a row holding its [`Barrier`] (the
//! pure rules) as JSON, with the reply subjects of the arrivals waiting for
//! it. An arrival locks the row, applies the rules, writes the row and its
//! `state.barrier` events and commits; two replicas serialise on the row,
//! so a barrier releases once. When it releases or times out, every
//! waiting arrival is answered on its reply subject (kept in the row, so
//! whichever replica decides answers them all, and a restart loses none);
//! [`crate::sweep`] times out the barriers whose deadline passed.

use std::sync::Arc;

use concord_bus::{ReplyTo, ServiceError};
use concord_runtime::{Clock, EventPublisher};
use concord_wire::v1::{BarrierArrival, BarrierCondition, BarrierStatus};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use serde_json::{Value, json};
use sqlx::{PgPool, Row};

use crate::app::unavailable;
use crate::barrier::{Barrier, Condition, Participants, Status};
use crate::lock_table::time_of;

/// Aggregate type of barrier events (`<root>.events.state.barrier.<kind>`).
pub const AGGREGATE: &str = "state.barrier";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecidedLabels {
    /// released, timeout.
    status: &'static str,
}

/// Barrier metrics (`concord_state_barrier_*`).
#[derive(Clone)]
pub struct BarrierMetrics {
    decided: Family<DecidedLabels, Counter>,
    wait_seconds: Histogram,
    arrivals: Counter,
}

impl BarrierMetrics {
    pub fn register(registry: &concord_telemetry::MetricsRegistry) -> Self {
        Self {
            decided: registry.add(
                "state_barriers_decided",
                "Barriers released or timed out, by status",
                Family::default(),
            ),
            wait_seconds: registry.add(
                "state_barrier_wait_seconds",
                "Time from a barrier's creation to its release or timeout",
                Histogram::new(exponential_buckets(0.001, 2.0, 20)),
            ),
            arrivals: registry.add(
                "state_barrier_arrivals",
                "First arrivals of participants at barriers",
                Counter::default(),
            ),
        }
    }
}

/// The barrier rows and what acting on them needs.
#[derive(Clone)]
pub struct Barriers {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    events: EventPublisher,
    client: async_nats::Client,
    clock: Arc<dyn Clock>,
    metrics: BarrierMetrics,
}

/// What an arrival got.
pub struct ArriveAnswer {
    pub barrier: Barrier,
    /// The reply comes at the release or the timeout.
    pub later: bool,
}

fn status_text(status: Status) -> &'static str {
    match status {
        Status::Waiting => "WAITING",
        Status::Released => "RELEASED",
        Status::Timeout => "TIMEOUT",
    }
}

/// The wire form of barrier `id`.
pub fn view(id: &str, barrier: &Barrier) -> concord_wire::v1::Barrier {
    let ts = |ms: u64| Some(concord_wire::task_view::timestamp(time_of(ms)));
    let (participants, count) = match &barrier.spec.participants {
        Participants::Named(ids) => (ids.iter().cloned().collect(), ids.len() as u32),
        Participants::Count(n) => (Vec::new(), *n),
    };
    let (condition, min_count) = match barrier.spec.condition {
        Condition::All => (BarrierCondition::All, 0),
        Condition::Majority => (BarrierCondition::Majority, 0),
        Condition::MinCount(n) => (BarrierCondition::MinCount, n),
    };
    concord_wire::v1::Barrier {
        id: id.to_string(),
        participants,
        count,
        condition: condition as i32,
        min_count,
        needed: barrier.spec.needed(),
        status: match barrier.status {
            Status::Waiting => BarrierStatus::BarrierWaiting,
            Status::Released => BarrierStatus::BarrierReleased,
            Status::Timeout => BarrierStatus::BarrierTimeout,
        } as i32,
        arrivals: barrier
            .arrivals
            .iter()
            .map(|a| BarrierArrival {
                participant: a.participant.clone(),
                at: ts(a.at_ms),
                data: a.data.clone().map(concord_wire::json::to_wire_value),
            })
            .collect(),
        missing: barrier.missing(),
        data: Some(concord_wire::json::to_wire_value(barrier.shared_data())),
        created_at: ts(barrier.created_ms),
        deadline: ts(barrier.deadline_ms),
        decided_at: barrier.decided_ms.and_then(ts),
    }
}

fn decode(text: &str) -> Result<Barrier, ServiceError> {
    serde_json::from_str(text)
        .map_err(|error| ServiceError::internal(format!("stored barrier is unreadable: {error}")))
}

fn not_found(id: &str) -> ServiceError {
    ServiceError::not_found(format!("no barrier {id}"))
}

impl Barriers {
    pub fn new(
        pool: PgPool,
        events: EventPublisher,
        client: async_nats::Client,
        clock: Arc<dyn Clock>,
        metrics: BarrierMetrics,
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

    /// Creates barrier `id` (the same settings again answer the existing
    /// barrier; other settings are ALREADY_EXISTS).
    pub async fn create(
        &self,
        id: &str,
        spec: crate::barrier::Spec,
        actor: &str,
    ) -> Result<Barrier, ServiceError> {
        let barrier = Barrier::new(spec, self.now_ms())
            .map_err(|e| ServiceError::invalid(e.field, e.message))?;
        let mut tx = self.inner.pool.begin().await.map_err(unavailable)?;
        let inserted = sqlx::query(
            "INSERT INTO state_barriers (id, barrier, seq, status, deadline_ms, created_at)
             VALUES ($1, $2::jsonb, 1, 'WAITING', $3, now()) ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(serde_json::to_string(&barrier).expect("a barrier serialises"))
        .bind(barrier.deadline_ms as i64)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?
        .rows_affected()
            == 1;
        if !inserted {
            drop(tx);
            let existing = self.get(id).await?.ok_or_else(|| not_found(id))?;
            if existing.spec == barrier.spec {
                return Ok(existing);
            }
            return Err(ServiceError::new(
                concord_wire::v1::ErrorCode::AlreadyExists,
                format!("barrier {id} exists with other settings; choose another id"),
            )
            .with_details(serde_json::to_value(view(id, &existing)).unwrap_or(Value::Null)));
        }
        let event = self.inner.events.event(
            AGGREGATE,
            id,
            1,
            "barrier.created",
            json!({
                "id": id,
                "needed": barrier.spec.needed(),
                "participants": barrier.spec.participants.count(),
                "deadline": concord_wire::task_view::rfc3339(time_of(barrier.deadline_ms)),
                "actor": actor,
            }),
        );
        crate::app::commit_with_events(&self.inner.events, tx, &[event]).await?;
        Ok(barrier)
    }

    /// Barrier `id` as stored, timed out if its deadline passed.
    pub async fn get(&self, id: &str) -> Result<Option<Barrier>, ServiceError> {
        let row = sqlx::query("SELECT barrier::text AS barrier FROM state_barriers WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(unavailable)?;
        let Some(row) = row else { return Ok(None) };
        let mut barrier = decode(&row.get::<String, _>("barrier"))?;
        barrier.check_timeout(self.now_ms());
        Ok(Some(barrier))
    }

    /// `participant` arrives at `id`; with `wait`, the answer comes at the
    /// release or the timeout on `wait`'s subject.
    pub async fn arrive(
        &self,
        id: &str,
        participant: &str,
        data: Option<Value>,
        wait: Option<ReplyTo>,
    ) -> Result<ArriveAnswer, ServiceError> {
        let step = |barrier: &mut Barrier, now| {
            barrier
                .arrive(participant, data, now)
                .map(|_| ())
                .map_err(|e| ServiceError::invalid(e.field, e.message))
        };
        self.transact(id, step, Some(participant), wait).await
    }

    /// Times out `id` if its deadline passed (the sweep).
    pub async fn expire(&self, id: &str) -> Result<(), ServiceError> {
        self.transact(
            id,
            |barrier: &mut Barrier, now| {
                barrier.check_timeout(now);
                Ok(())
            },
            None,
            None,
        )
        .await
        .map(|_| ())
    }

    async fn transact(
        &self,
        id: &str,
        step: impl FnOnce(&mut Barrier, u64) -> Result<(), ServiceError>,
        participant: Option<&str>,
        wait: Option<ReplyTo>,
    ) -> Result<ArriveAnswer, ServiceError> {
        let mut tx = self.inner.pool.begin().await.map_err(unavailable)?;
        let row = sqlx::query(
            "SELECT barrier::text AS barrier, replies::text AS replies, seq
             FROM state_barriers WHERE id = $1 FOR UPDATE",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| not_found(id))?;
        let mut barrier = decode(&row.get::<String, _>("barrier"))?;
        let mut replies: Vec<String> = serde_json::from_str(&row.get::<String, _>("replies"))
            .map_err(|e| ServiceError::internal(format!("stored replies are unreadable: {e}")))?;
        let mut seq: i64 = row.get("seq");
        let before = barrier.clone();
        let now = self.now_ms();
        // A deadline that passed decides first: an arrival after it is late.
        barrier.check_timeout(now);
        step(&mut barrier, now)?;
        let waiting = barrier.status == Status::Waiting;
        let later = waiting && wait.is_some();
        if later {
            replies.push(wait.expect("checked").to_text());
        }
        if barrier == before && !later {
            drop(tx);
            return Ok(ArriveAnswer {
                barrier,
                later: false,
            });
        }
        let mut events = Vec::new();
        let mut event = |kind: &str, data: Value| {
            seq += 1;
            events.push(self.inner.events.event(
                AGGREGATE,
                id,
                seq,
                &format!("barrier.{kind}"),
                data,
            ));
        };
        if let Some(participant) = participant
            && barrier.arrivals.len() > before.arrivals.len()
        {
            self.inner.metrics.arrivals.inc();
            event(
                "arrived",
                json!({"id": id, "participant": participant, "arrived": barrier.arrivals.len(), "needed": barrier.spec.needed()}),
            );
        }
        let decided = before.status == Status::Waiting && !waiting;
        let to_answer = if decided {
            let status = status_text(barrier.status);
            event(
                &status.to_ascii_lowercase(),
                json!({"id": id, "arrived": barrier.arrived(), "missing": barrier.missing()}),
            );
            std::mem::take(&mut replies)
        } else {
            Vec::new()
        };
        sqlx::query(
            "UPDATE state_barriers SET barrier = $2::jsonb, replies = $3::jsonb, seq = $4, status = $5
             WHERE id = $1",
        )
        .bind(id)
        .bind(serde_json::to_string(&barrier).expect("a barrier serialises"))
        .bind(serde_json::to_string(&replies).expect("strings serialise"))
        .bind(seq)
        .bind(status_text(barrier.status))
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        crate::app::commit_with_events(&self.inner.events, tx, &events).await?;
        if decided {
            let status = if barrier.status == Status::Released {
                "released"
            } else {
                "timeout"
            };
            self.inner
                .metrics
                .decided
                .get_or_create(&DecidedLabels { status })
                .inc();
            let decided_ms = barrier.decided_ms.unwrap_or(now);
            self.inner
                .metrics
                .wait_seconds
                .observe(decided_ms.saturating_sub(barrier.created_ms) as f64 / 1000.0);
            let message = view(id, &barrier);
            for reply in to_answer {
                if let Some(to) = ReplyTo::from_text(&reply)
                    && let Err(error) =
                        concord_bus::send_reply(&self.inner.client, &to, Ok(&message)).await
                {
                    tracing::warn!(%error, barrier = %id, "could not answer a barrier waiter");
                }
            }
        }
        Ok(ArriveAnswer { barrier, later })
    }

    /// Waiting barriers whose deadline passed.
    pub async fn due(&self, limit: i64) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT id FROM state_barriers WHERE status = 'WAITING' AND deadline_ms <= $1
             ORDER BY deadline_ms LIMIT $2",
        )
        .bind(self.now_ms() as i64)
        .bind(limit)
        .fetch_all(&self.inner.pool)
        .await
    }
}
