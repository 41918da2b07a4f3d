//! `<root>.tasks.run`: submits a task through the intake stream and answers
//! with its result once it is final (or an error: invalid, timeout,
//! dead-lettered, no eligible agent, cancelled).

use std::time::Duration;

use async_nats::HeaderMap;
use concord_bus::service::{Reply, Request, read_reply};
use concord_bus::{ServiceError, headers};
use concord_wire::codec;
use concord_wire::v1::{ErrorCode, TaskResult, TaskStatus};
use futures::StreamExt;

use crate::app::Dispatcher;
use crate::config::DispatcherConfig;
use crate::projection::Finality;
use crate::submission::{self, Origin};

/// `tasks.run`: submit through the intake stream, wait for the result.
pub async fn handle(dispatcher: Dispatcher, request: Request) -> Result<Reply, ServiceError> {
    let content_type = request.content_type()?;
    let fresh_id = uuid::Uuid::now_v7().simple().to_string();
    let origin = Origin {
        content_type: request.header(headers::CONTENT_TYPE),
        msg_id: Some(request.header(headers::MSG_ID).unwrap_or(&fresh_id)),
        stream_identity: "run",
        stream_sequence: 0,
        now_unix_ms: dispatcher.config.clock.unix_ms(),
    };
    let spec = submission::parse(&request.payload, &origin, &dispatcher.config.limits)?;
    let wait = run_wait(&dispatcher.config, spec.timeout_ms, spec.max_attempts);
    let mut results = dispatcher
        .bus
        .client
        .subscribe(dispatcher.bus.subjects.task_result(&spec.id))
        .await
        .map_err(|e| ServiceError::unavailable(format!("cannot subscribe to the result: {e}")))?;
    let body = codec::encode(content_type, &spec.to_task())
        .map_err(|e| ServiceError::internal(format!("cannot encode the task: {e}")))?;
    let mut publish_headers = HeaderMap::new();
    publish_headers.insert(headers::CONTENT_TYPE, content_type.as_str());
    publish_headers.insert(headers::MSG_ID, spec.id.as_str());
    headers::inject_trace_context(&mut publish_headers);
    let ack = dispatcher
        .jetstream
        .publish_with_headers(
            dispatcher.bus.subjects.tasks_submit(),
            publish_headers,
            body.into(),
        )
        .await
        .map_err(|e| ServiceError::unavailable(format!("cannot submit the task: {e}")))?
        .await
        .map_err(|e| {
            ServiceError::unavailable(format!("the intake stream did not confirm the task: {e}"))
        })?;
    if ack.duplicate {
        // The same id ran moments ago (inside the stream's duplicate
        // window): answer with its outcome if it has one.
        if let Ok(Some(view)) = dispatcher.store.get(&spec.id).await
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
}
