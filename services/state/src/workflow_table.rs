//! Workflow stage records in Postgres: each record is a row holding its
//! [`Workflow`] (the pure rules) as JSON. A step locks the row, applies the
//! rules, writes the row and its `state.workflow` event, and commits, so two
//! replicas (or two agents) never apply steps on top of a stale record; an
//! expected version makes a step a compare-and-set. The version is the
//! sequence of the record's last event (a step that finishes the workflow
//! adds two: the step's and `workflow.finished`).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use concord_bus::ServiceError;
use concord_runtime::{Clock, EventPublisher};
use concord_wire::v1::{ErrorCode, WorkflowRecord, WorkflowStatus};
use serde_json::{Value, json};
use sqlx::{PgPool, Row};

use crate::app::unavailable;
use crate::workflow::{Status, Step, Workflow};

/// Aggregate type of workflow events (`<root>.events.state.workflow.<kind>`).
pub const AGGREGATE: &str = "state.workflow";

/// A record as stored.
#[derive(Debug, Clone)]
pub struct Stored {
    pub id: String,
    pub workflow: Workflow,
    pub version: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub updated_by: String,
}

/// The record rows.
#[derive(Clone)]
pub struct Workflows {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    events: EventPublisher,
    clock: Arc<dyn Clock>,
}

fn not_found(id: &str) -> ServiceError {
    ServiceError::not_found(format!("no workflow record {id}"))
}

/// The status as stored in the `status` column.
pub fn status_text(status: Status) -> &'static str {
    match status {
        Status::Created => "CREATED",
        Status::Running => "RUNNING",
        Status::Finished => "FINISHED",
    }
}

fn stored(row: &sqlx::postgres::PgRow) -> Result<Stored, ServiceError> {
    let workflow = serde_json::from_str(&row.get::<String, _>("workflow")).map_err(|e| {
        ServiceError::internal(format!("stored workflow record is unreadable: {e}"))
    })?;
    Ok(Stored {
        id: row.get("id"),
        workflow,
        version: row.get::<i64, _>("version") as u64,
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
        updated_by: row.get("updated_by"),
    })
}

/// The wire form of a record.
pub fn view(record: &Stored) -> WorkflowRecord {
    let workflow = &record.workflow;
    WorkflowRecord {
        id: record.id.clone(),
        stages: workflow.stages.clone(),
        status: match workflow.status {
            Status::Created => WorkflowStatus::WorkflowCreated,
            Status::Running => WorkflowStatus::WorkflowRunning,
            Status::Finished => WorkflowStatus::WorkflowFinished,
        } as i32,
        current: workflow.current.clone().unwrap_or_default(),
        completed: workflow.completed.clone(),
        pending: workflow.pending.clone(),
        scores: workflow.scores.clone(),
        iteration: workflow.iteration,
        assignees: workflow.assignees.clone(),
        metadata: Some(concord_wire::json::to_wire_value(workflow.metadata.clone())),
        version: record.version,
        created_at: Some(concord_wire::task_view::timestamp(record.created_at)),
        updated_at: Some(concord_wire::task_view::timestamp(record.updated_at)),
        updated_by: record.updated_by.clone(),
        mean_score: workflow.mean_score(),
    }
}

fn summary(id: &str, workflow: &Workflow, actor: &str) -> Value {
    json!({
        "id": id,
        "status": status_text(workflow.status),
        "current": workflow.current,
        "iteration": workflow.iteration,
        "actor": actor,
    })
}

impl Workflows {
    pub fn new(pool: PgPool, events: EventPublisher, clock: Arc<dyn Clock>) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                events,
                clock,
            }),
        }
    }

    fn now(&self) -> DateTime<Utc> {
        concord_runtime::whole_micros(self.inner.clock.now())
    }

    /// Creates record `id` (the same stages again answer the existing
    /// record; other stages are ALREADY_EXISTS).
    pub async fn create(
        &self,
        id: &str,
        workflow: Workflow,
        actor: &str,
    ) -> Result<Stored, ServiceError> {
        let at = self.now();
        let mut tx = self.inner.pool.begin().await.map_err(unavailable)?;
        let inserted = sqlx::query(
            "INSERT INTO state_workflows (id, workflow, version, status, created_at, updated_at, updated_by)
             VALUES ($1, $2::jsonb, 1, $3, $4, $4, $5) ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(serde_json::to_string(&workflow).expect("a workflow serialises"))
        .bind(status_text(workflow.status))
        .bind(at)
        .bind(actor)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?
        .rows_affected()
            == 1;
        if !inserted {
            drop(tx);
            let existing = self.get(id).await?.ok_or_else(|| not_found(id))?;
            if existing.workflow.stages == workflow.stages {
                return Ok(existing);
            }
            return Err(ServiceError::new(
                ErrorCode::AlreadyExists,
                format!("workflow record {id} exists with other stages; choose another id"),
            )
            .with_details(serde_json::to_value(view(&existing)).unwrap_or(Value::Null)));
        }
        let mut data = summary(id, &workflow, actor);
        data["stages"] = json!(workflow.stages);
        let event = self
            .inner
            .events
            .event(AGGREGATE, id, 1, "workflow.created", data);
        crate::app::commit_with_events(&self.inner.events, tx, &[event]).await?;
        Ok(Stored {
            id: id.to_string(),
            workflow,
            version: 1,
            created_at: at,
            updated_at: at,
            updated_by: actor.to_string(),
        })
    }

    /// Record `id` as stored.
    pub async fn get(&self, id: &str) -> Result<Option<Stored>, ServiceError> {
        let row = sqlx::query(
            "SELECT id, workflow::text AS workflow, version, created_at, updated_at, updated_by
             FROM state_workflows WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.inner.pool)
        .await
        .map_err(unavailable)?;
        row.as_ref().map(stored).transpose()
    }

    /// Records by id after `after`, only `status` when given.
    pub async fn list(
        &self,
        status: Option<Status>,
        after: &str,
        limit: u32,
    ) -> Result<(Vec<Stored>, bool), ServiceError> {
        let rows = sqlx::query(
            "SELECT id, workflow::text AS workflow, version, created_at, updated_at, updated_by
             FROM state_workflows
             WHERE id > $1 AND ($2::text IS NULL OR status = $2)
             ORDER BY id LIMIT $3",
        )
        .bind(after)
        .bind(status.map(status_text))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.inner.pool)
        .await
        .map_err(unavailable)?;
        let more = rows.len() > limit as usize;
        let records = rows
            .iter()
            .take(limit as usize)
            .map(stored)
            .collect::<Result<Vec<_>, _>>()?;
        Ok((records, more))
    }

    /// Applies `step` to record `id` by `actor` (only at version `expected`
    /// when given).
    pub async fn step(
        &self,
        id: &str,
        step: Step,
        actor: &str,
        expected: Option<u64>,
    ) -> Result<Stored, ServiceError> {
        let mut tx = self.inner.pool.begin().await.map_err(unavailable)?;
        let row = sqlx::query(
            "SELECT id, workflow::text AS workflow, version, created_at, updated_at, updated_by
             FROM state_workflows WHERE id = $1 FOR UPDATE",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| not_found(id))?;
        let mut record = stored(&row)?;
        if let Some(expected) = expected
            && expected != record.version
        {
            return Err(ServiceError::conflict(format!(
                "workflow record {id} is at version {}, not {expected}",
                record.version
            ))
            .with_details(serde_json::to_value(view(&record)).unwrap_or(Value::Null)));
        }
        let kind = step.kind();
        let detail = match &step {
            Step::Complete { stage, score } => json!({"stage": stage, "score": score}),
            Step::Advance { stage } | Step::SendBack { stage } => json!({"stage": stage}),
            Step::Assign { stage, agent } => json!({"stage": stage, "agent": agent}),
            Step::Annotate { patch } => json!({"patch": patch}),
            Step::Start => json!({}),
        };
        let before = record.workflow.status;
        record
            .workflow
            .apply(step)
            .map_err(|e| ServiceError::invalid(e.field, e.message))?;
        let at = self.now();
        record.version += 1;
        record.updated_at = at;
        record.updated_by = actor.to_string();
        let mut data = summary(id, &record.workflow, actor);
        if let (Value::Object(data), Value::Object(detail)) = (&mut data, detail) {
            data.extend(detail);
        }
        let mut events = vec![self.inner.events.event(
            AGGREGATE,
            id,
            record.version as i64,
            &format!("workflow.{kind}"),
            data,
        )];
        if before != Status::Finished && record.workflow.status == Status::Finished {
            // The finish is an event of its own; the record's version is
            // the sequence of its last event, so it moves on once more.
            record.version += 1;
            events.push(self.inner.events.event(
                AGGREGATE,
                id,
                record.version as i64,
                "workflow.finished",
                json!({
                    "id": id,
                    "iteration": record.workflow.iteration,
                    "meanScore": record.workflow.mean_score(),
                    "scores": record.workflow.scores,
                    "actor": actor,
                }),
            ));
        }
        sqlx::query(
            "UPDATE state_workflows SET workflow = $2::jsonb, version = $3, status = $4,
                 updated_at = $5, updated_by = $6
             WHERE id = $1",
        )
        .bind(id)
        .bind(serde_json::to_string(&record.workflow).expect("a workflow serialises"))
        .bind(record.version as i64)
        .bind(status_text(record.workflow.status))
        .bind(at)
        .bind(actor)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        crate::app::commit_with_events(&self.inner.events, tx, &events).await?;
        Ok(record)
    }
}
