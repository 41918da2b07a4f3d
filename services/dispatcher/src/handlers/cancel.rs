//! `<root>.tasks.cancel`: `CancelTask` → the `TaskResult` after the
//! cancellation.
//!
//! Cancelling reaches the replica that holds the task through
//! `<root>.dispatcher.held.<task id>.cancel` (see [`crate::holder`]); a task
//! nobody holds is cancelled in the store, and a task not stored yet gets a
//! queued cancellation applied when its submission is taken.

use std::time::Duration;

use concord_bus::ServiceError;
use concord_bus::service::{Reply, Request, read_reply};
use concord_runtime::EventPublisher;
use concord_wire::codec::{self, ContentType};
use concord_wire::v1::{CancelTask, ErrorCode, TaskResult, TaskStatus};

use super::check_id;
use crate::app::Dispatcher;
use crate::projection::Finality;
use crate::projection::{AGGREGATE, TaskEvent, TaskView};
use crate::store::TaskWrite;

/// How long `tasks.cancel` waits for the replica holding the task.
const HOLDER_TIMEOUT: Duration = Duration::from_millis(300);

/// `tasks.cancel`.
pub async fn handle(dispatcher: Dispatcher, request: Request) -> Result<Reply, ServiceError> {
    let cancel: CancelTask = request.decode()?;
    check_id(&cancel.task_id, &dispatcher.config.limits)?;
    let payload = codec::encode(ContentType::Json, &cancel)
        .map_err(|e| ServiceError::internal(e.to_string()))?;
    let subject = crate::holder::cancel_subject(&dispatcher.bus, &cancel.task_id);
    let asked = tokio::time::timeout(
        HOLDER_TIMEOUT,
        dispatcher.bus.client.request(subject, payload.into()),
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
        let stored = dispatcher
            .store
            .get(&cancel.task_id)
            .await
            .map_err(|e| ServiceError::unavailable(format!("cannot read the task: {e:#}")))?;
        let Some(view) = stored else {
            let result = queue_cancellation(&dispatcher, &cancel, &reason).await?;
            return Reply::to(&request, &result);
        };
        if view.status.is_final() {
            return Reply::to(&request, &view.result());
        }
        let (write, event, result) = cancelled(&dispatcher.events, view, &reason);
        let owned = dispatcher.store.commit(&[&write]).await.map_err(|e| {
            ServiceError::unavailable(format!("cannot record the cancellation: {e:#}"))
        })?;
        if owned.first() == Some(&true) {
            dispatcher.events.publish_committed(&[event]).await;
            crate::results::publish_json(&dispatcher.bus, &cancel.task_id, write.row.result, false)
                .await;
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
    dispatcher: &Dispatcher,
    cancel: &CancelTask,
    reason: &str,
) -> Result<TaskResult, ServiceError> {
    let waiting = dispatcher
        .jetstream
        .get_stream(crate::streams::stream_name(&dispatcher.bus.subjects))
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
    dispatcher
        .store
        .queue_cancellation(&cancel.task_id, reason)
        .await
        .map_err(|e| ServiceError::unavailable(format!("cannot record the cancellation: {e:#}")))?;
    let notice = CancelTask {
        task_id: cancel.task_id.clone(),
        reason: reason.to_string(),
    };
    let payload = codec::encode(ContentType::Json, &notice)
        .map_err(|e| ServiceError::internal(e.to_string()))?;
    // Core NATS: a replica that misses it reloads its filter from the
    // store (which has the cancellation) after its reconnect.
    let _ = dispatcher
        .bus
        .client
        .publish(
            crate::holder::cancel_queued_subject(&dispatcher.bus),
            payload.into(),
        )
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
            code: concord_wire::codes::CANCEL_QUEUED.to_string(),
        }),
        ..TaskResult::default()
    })
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
