//! Request/reply endpoints (service `concord-dispatcher`, queue group `q`):
//!
//! - `<root>.tasks.run`: `Task` → `TaskResult` once the task is final (or an
//!   error: invalid, timeout, dead-lettered, cancelled);
//! - `<root>.tasks.get`: `GetTask` → `TaskResult` (with `history` on request);
//! - `<root>.tasks.cancel`: `CancelTask` → `TaskResult` after the cancellation.
//!
//! Cancelling reaches the replica that holds the task through
//! `<root>.dispatcher.held.<task id>.cancel` (every replica listens, only
//! the holder answers); a task nobody holds is cancelled in the store.

use std::time::Duration;

use async_nats::HeaderMap;
use concord_bus::service::{Reply, Request, read_reply};
use concord_bus::{Bus, ServiceError, headers};
use concord_runtime::EventPublisher;
use concord_wire::codec::{self, ContentType};
use concord_wire::v1::{CancelTask, ErrorCode, Event, GetTask, TaskResult, TaskStatus};
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::DispatcherConfig;
use crate::engine::{Command, REPLAYED_HEADER};
use crate::projection::{AGGREGATE, Finality, TaskEvent, TaskView, from_wire_json};
use crate::store::{TaskStore, TaskWrite};
use crate::submission::{self, Origin};

/// How long `tasks.cancel` waits for the replica holding the task.
const HOLDER_TIMEOUT: Duration = Duration::from_millis(300);

/// Everything the endpoints share.
#[derive(Clone)]
pub struct Endpoints {
    pub bus: Bus,
    pub store: TaskStore,
    pub events: EventPublisher,
    pub config: DispatcherConfig,
    pub jetstream: async_nats::jetstream::Context,
}

/// `<root>.dispatcher.held.<task id>.cancel`.
pub fn holder_cancel_subject(bus: &Bus, task_id: &str) -> String {
    bus.subjects
        .join(&format!("dispatcher.held.{task_id}.cancel"))
}

/// `<root>.dispatcher.cancel_queued`: a cancellation was queued for a task
/// no replica holds (body: the `CancelTask`); every replica adds the id to
/// its known-ids filter, so the submission is looked up when it arrives.
pub fn cancel_queued_subject(bus: &Bus) -> String {
    bus.subjects.join("dispatcher.cancel_queued")
}

/// Error code of the reply to a cancellation queued for a submission still
/// waiting in the intake stream.
pub const CANCEL_QUEUED: &str = "cancel_queued";

impl Endpoints {
    /// `tasks.run`: submit through the intake stream, wait for the result.
    pub async fn run(&self, request: Request) -> Result<Reply, ServiceError> {
        let content_type = request.content_type()?;
        let fresh_id = uuid::Uuid::now_v7().simple().to_string();
        let origin = Origin {
            content_type: request.header(headers::CONTENT_TYPE),
            msg_id: Some(request.header(headers::MSG_ID).unwrap_or(&fresh_id)),
            stream_identity: "run",
            stream_sequence: 0,
            now_unix_ms: chrono::Utc::now().timestamp_millis(),
        };
        let spec = submission::parse(&request.payload, &origin, &self.config.limits)?;
        let wait = run_wait(&self.config, spec.timeout_ms, spec.max_attempts);
        let mut results = self
            .bus
            .client
            .subscribe(self.bus.subjects.task_result(&spec.id))
            .await
            .map_err(|e| {
                ServiceError::unavailable(format!("cannot subscribe to the result: {e}"))
            })?;
        let body = codec::encode(content_type, &spec.to_task())
            .map_err(|e| ServiceError::internal(format!("cannot encode the task: {e}")))?;
        let mut publish_headers = HeaderMap::new();
        publish_headers.insert(headers::CONTENT_TYPE, content_type.as_str());
        publish_headers.insert(headers::MSG_ID, spec.id.as_str());
        headers::inject_trace_context(&mut publish_headers);
        let ack = self
            .jetstream
            .publish_with_headers(
                self.bus.subjects.tasks_submit(),
                publish_headers,
                body.into(),
            )
            .await
            .map_err(|e| ServiceError::unavailable(format!("cannot submit the task: {e}")))?
            .await
            .map_err(|e| {
                ServiceError::unavailable(format!(
                    "the intake stream did not confirm the task: {e}"
                ))
            })?;
        if ack.duplicate {
            // The same id ran moments ago (inside the stream's duplicate
            // window): answer with its outcome if it has one.
            if let Ok(Some(view)) = self.store.get(&spec.id).await
                && view.status.is_final()
            {
                return final_reply(&request, view.result());
            }
        }
        let message = match tokio::time::timeout(wait, results.next()).await {
            Ok(Some(message)) => message,
            Ok(None) => {
                return Err(ServiceError::unavailable(
                    "the connection closed while waiting for the result",
                ));
            }
            Err(_) => {
                return Err(ServiceError::new(
                    ErrorCode::Timeout,
                    format!(
                        "task {} did not finish within {} ms; it goes on: `concord task get {}`",
                        spec.id,
                        wait.as_millis(),
                        spec.id
                    ),
                ));
            }
        };
        let _ = results.unsubscribe().await;
        let result: TaskResult = read_reply(&message)?;
        final_reply(&request, result)
    }

    /// `tasks.get`.
    pub async fn get(&self, request: Request) -> Result<Reply, ServiceError> {
        let query: GetTask = request.decode()?;
        check_id(&query.task_id, &self.config.limits)?;
        let view = self
            .store
            .get(&query.task_id)
            .await
            .map_err(|e| ServiceError::unavailable(format!("cannot read the task: {e:#}")))?
            .ok_or_else(|| not_found(&query.task_id))?;
        let mut result = view.result();
        if query.include_history {
            let history = self.store.history(&query.task_id).await.map_err(|e| {
                ServiceError::unavailable(format!("cannot read the task's events: {e}"))
            })?;
            result.history = history
                .iter()
                .map(to_wire_event)
                .collect::<Result<_, _>>()?;
        }
        Reply::to(&request, &result)
    }

    /// `tasks.cancel`.
    pub async fn cancel(&self, request: Request) -> Result<Reply, ServiceError> {
        let cancel: CancelTask = request.decode()?;
        check_id(&cancel.task_id, &self.config.limits)?;
        let payload = codec::encode(ContentType::Json, &cancel)
            .map_err(|e| ServiceError::internal(e.to_string()))?;
        let subject = holder_cancel_subject(&self.bus, &cancel.task_id);
        let asked = tokio::time::timeout(
            HOLDER_TIMEOUT,
            self.bus.client.request(subject, payload.into()),
        )
        .await;
        if let Ok(Ok(message)) = asked
            && message.status.is_none()
        {
            let result: TaskResult = read_reply(&message)?;
            return Reply::to(&request, &result);
        }
        // Nobody holds it: cancel it in the store (unless it is final).
        let reason = if cancel.reason.is_empty() {
            "cancelled by request".to_string()
        } else {
            cancel.reason.clone()
        };
        for _ in 0..3 {
            let stored =
                self.store.get(&cancel.task_id).await.map_err(|e| {
                    ServiceError::unavailable(format!("cannot read the task: {e:#}"))
                })?;
            let Some(view) = stored else {
                let result = self.queue_cancellation(&cancel, &reason).await?;
                return Reply::to(&request, &result);
            };
            if view.status.is_final() {
                return Reply::to(&request, &view.result());
            }
            let (write, event, result) = cancelled(&self.events, view, &reason);
            let owned = self.store.commit(&[&write]).await.map_err(|e| {
                ServiceError::unavailable(format!("cannot record the cancellation: {e:#}"))
            })?;
            if owned.first() == Some(&true) {
                self.events.publish_committed(&[event]).await;
                publish_result_json(&self.bus, &cancel.task_id, write.row.result, false).await;
                return Reply::to(&request, &result);
            }
        }
        Err(ServiceError::new(
            ErrorCode::Conflict,
            format!(
                "task {} changed while being cancelled; try again",
                cancel.task_id
            ),
        ))
    }

    /// A task neither held nor stored: while submissions wait in the intake
    /// stream, it may be one of them, so the cancellation is recorded and
    /// applied when the submission is taken (the reply says `PENDING`, error
    /// code [`CANCEL_QUEUED`]); with the stream empty the id is unknown.
    async fn queue_cancellation(
        &self,
        cancel: &CancelTask,
        reason: &str,
    ) -> Result<TaskResult, ServiceError> {
        let waiting = self
            .jetstream
            .get_stream(crate::streams::stream_name(&self.bus.subjects))
            .await
            .map_err(|e| ServiceError::unavailable(format!("cannot read the intake stream: {e}")))?
            // Fetched just now by `get_stream`: no second request.
            .cached_info()
            .state
            .messages;
        if waiting == 0 {
            return Err(ServiceError::not_found(format!(
                "task {} is not known, and no submission waits in the intake stream",
                cancel.task_id
            )));
        }
        self.store
            .queue_cancellation(&cancel.task_id, reason)
            .await
            .map_err(|e| {
                ServiceError::unavailable(format!("cannot record the cancellation: {e:#}"))
            })?;
        let notice = CancelTask {
            task_id: cancel.task_id.clone(),
            reason: reason.to_string(),
        };
        let payload = codec::encode(ContentType::Json, &notice)
            .map_err(|e| ServiceError::internal(e.to_string()))?;
        // Core NATS: a replica that misses it reloads its filter from the
        // store (which has the cancellation) after its reconnect.
        let _ = self
            .bus
            .client
            .publish(cancel_queued_subject(&self.bus), payload.into())
            .await;
        Ok(TaskResult {
            task_id: cancel.task_id.clone(),
            status: TaskStatus::Pending as i32,
            error: Some(concord_wire::v1::TaskError {
                message: format!(
                    "cancellation queued: no dispatcher holds task {} yet; if its submission waits in the intake stream it is cancelled when taken ({reason})",
                    cancel.task_id
                ),
                retryable: false,
                code: CANCEL_QUEUED.to_string(),
            }),
            ..TaskResult::default()
        })
    }
}

/// Publishes a final result on `<root>.tasks.result.<id>`; `replayed`
/// marks a re-publication (header [`REPLAYED_HEADER`]).
pub(crate) async fn publish_result(bus: &Bus, result: &TaskResult, replayed: bool) {
    let payload = codec::encode(ContentType::Json, result).expect("results encode");
    publish_result_json(bus, &result.task_id, payload.into(), replayed).await;
}

/// [`publish_result`] of a result already encoded as JSON.
pub(crate) async fn publish_result_json(
    bus: &Bus,
    task_id: &str,
    payload: bytes::Bytes,
    replayed: bool,
) {
    let mut headers = HeaderMap::new();
    headers.insert(headers::CONTENT_TYPE, ContentType::Json.as_str());
    if replayed {
        headers.insert(REPLAYED_HEADER, "true");
    }
    if let Err(error) = bus
        .client
        .publish_with_headers(bus.subjects.task_result(task_id), headers, payload)
        .await
    {
        tracing::warn!(%error, %task_id, "cannot publish task result");
    }
}

/// The write that cancels a stored task nobody holds.
fn cancelled(
    events: &EventPublisher,
    mut view: TaskView,
    reason: &str,
) -> (TaskWrite, concord_store::NewEvent, TaskResult) {
    let expected = view.last_sequence;
    let event = TaskEvent::Cancelled {
        reason: reason.to_string(),
    };
    let stored = events.event(
        AGGREGATE,
        &view.task_id,
        expected + 1,
        event.event_type(),
        event.data(),
    );
    view.apply(expected + 1, &event, stored.occurred_at);
    (
        TaskWrite::new(&view, expected, vec![stored.clone()]),
        stored,
        view.result(),
    )
}

/// Serves `<root>.dispatcher.held.*.cancel` for the engine: answers only for
/// tasks this replica holds.
pub async fn listen_holder_cancels(
    bus: Bus,
    mut subscriber: async_nats::Subscriber,
    commands: mpsc::Sender<Command>,
    stop: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => break,
            message = subscriber.next() => match message { Some(m) => m, None => break },
        };
        let Some(reply_to) = message.reply.clone() else {
            continue;
        };
        let Ok(cancel) = codec::decode::<CancelTask>(ContentType::Json, &message.payload) else {
            continue;
        };
        let (reply, answer) = oneshot::channel();
        let reason = if cancel.reason.is_empty() {
            "cancelled by request".to_string()
        } else {
            cancel.reason
        };
        if commands
            .send(Command::Cancel {
                task_id: cancel.task_id,
                reason,
                reply,
            })
            .await
            .is_err()
        {
            break;
        }
        let client = bus.client.clone();
        tokio::spawn(async move {
            if let Ok(Some(result)) = answer.await {
                let payload = codec::encode(ContentType::Json, &result).expect("encodes");
                let mut headers = HeaderMap::new();
                headers.insert(headers::CONTENT_TYPE, ContentType::Json.as_str());
                let _ = client
                    .publish_with_headers(reply_to, headers, payload.into())
                    .await;
            }
        });
    }
    let _ = subscriber.unsubscribe().await;
}

/// How long `tasks.run` waits: every attempt's lease, the retry delays and
/// the wait for an agent, bounded to ten minutes.
fn run_wait(config: &DispatcherConfig, timeout_ms: u64, max_attempts: u32) -> Duration {
    let attempts = Duration::from_millis(timeout_ms.saturating_mul(u64::from(max_attempts)));
    let retries = config
        .backoff
        .max
        .saturating_mul(max_attempts.saturating_sub(1));
    (attempts + retries + config.no_agent_wait + Duration::from_secs(5))
        .min(Duration::from_secs(600))
}

/// The reply to `tasks.run` for a final result.
fn final_reply(request: &Request, result: TaskResult) -> Result<Reply, ServiceError> {
    let status = TaskStatus::try_from(result.status).unwrap_or(TaskStatus::Unspecified);
    let why = result
        .error
        .as_ref()
        .map(|e| e.message.clone())
        .unwrap_or_default();
    match status {
        TaskStatus::Completed => Reply::to(request, &result),
        TaskStatus::DeadLettered | TaskStatus::Failed => {
            let no_agent = result
                .error
                .as_ref()
                .is_some_and(|e| e.code == crate::projection::reason::NO_ELIGIBLE_AGENT);
            let code = if no_agent {
                ErrorCode::NoEligibleAgent
            } else {
                ErrorCode::DeadLettered
            };
            Err(ServiceError::new(
                code,
                format!("task {} was dead-lettered: {why}", result.task_id),
            ))
        }
        TaskStatus::Cancelled => Err(ServiceError::new(
            ErrorCode::Cancelled,
            format!("task {} was cancelled: {why}", result.task_id),
        )),
        _ => Reply::to(request, &result),
    }
}

/// A task id as `tasks.get` and `tasks.cancel` accept it: what a submission
/// may use as its id.
fn check_id(task_id: &str, limits: &crate::task_spec::TaskLimits) -> Result<(), ServiceError> {
    concord_bus::validate::check_token("taskId", task_id, limits.max_id_chars)
}

fn not_found(task_id: &str) -> ServiceError {
    ServiceError::not_found(format!("no task with id {task_id}"))
}

fn to_wire_event(stored: &concord_store::StoredEvent) -> Result<Event, ServiceError> {
    let json = concord_runtime::event_json(&concord_store::NewEvent {
        event_id: stored.event_id,
        aggregate_type: stored.aggregate_type.clone(),
        aggregate_id: stored.aggregate_id.clone(),
        sequence: stored.sequence,
        event_type: stored.event_type.clone(),
        data: (&stored.data).into(),
        trace_id: stored.trace_id.clone(),
        source: stored.source.clone(),
        occurred_at: stored.occurred_at,
    });
    from_wire_json(&json).map_err(ServiceError::internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_waits_for_every_attempt_and_the_agent_wait() {
        let config = DispatcherConfig::default();
        let wait = run_wait(&config, 1000, 3);
        assert!(wait >= Duration::from_secs(3) + config.no_agent_wait);
        assert_eq!(run_wait(&config, 3_600_000, 100), Duration::from_secs(600));
    }

    #[test]
    fn task_ids_are_checked() {
        let limits = crate::task_spec::TaskLimits::default();
        assert!(check_id("", &limits).is_err());
        assert!(check_id("a b", &limits).is_err());
        assert!(check_id("t-1", &limits).is_ok());
    }
}
