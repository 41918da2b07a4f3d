//! `<root>.tasks.get`: `GetTask` → the task's `TaskResult`, with its event
//! history on request.

use concord_bus::ServiceError;
use concord_bus::service::{Reply, Request};
use concord_wire::v1::{Event, GetTask};

use super::{check_id, not_found};
use crate::app::Dispatcher;
use crate::projection::from_wire_json;

/// `tasks.get`.
pub async fn handle(dispatcher: Dispatcher, request: Request) -> Result<Reply, ServiceError> {
    let query: GetTask = request.decode()?;
    check_id(&query.task_id, &dispatcher.config.limits)?;
    let view = dispatcher
        .store
        .get(&query.task_id)
        .await
        .map_err(|e| ServiceError::unavailable(format!("cannot read the task: {e:#}")))?
        .ok_or_else(|| not_found(&query.task_id))?;
    let mut result = view.result();
    if query.include_history {
        let history = dispatcher
            .store
            .history(&query.task_id)
            .await
            .map_err(|e| {
                ServiceError::unavailable(format!("cannot read the task's events: {e}"))
            })?;
        result.history = history
            .iter()
            .map(to_wire_event)
            .collect::<Result<_, _>>()?;
    }
    Reply::to(&request, &result)
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
