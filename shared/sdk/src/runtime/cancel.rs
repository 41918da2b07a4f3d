//! The cancel listener: `CancelTask` on `<root>.agent.<id>.cancel` cancels
//! the running attempts of that task.

use std::sync::Arc;

use async_nats::{HeaderMap, Message, Subscriber};
use concord_bus::service::error_reply;
use concord_bus::{ServiceError, headers};
use concord_wire::codec::{self, ContentType};
use concord_wire::v1::CancelTask;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::Shared;

/// Serves cancel requests until `stop`, then unsubscribes.
pub(crate) async fn listen<A>(
    shared: Arc<Shared<A>>,
    mut subscriber: Subscriber,
    stop: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            message = subscriber.next() => match message {
                Some(message) => message,
                None => break,
            },
        };
        handle(&shared, message).await;
    }
    let _ = subscriber.unsubscribe().await;
}

async fn handle<A>(shared: &Shared<A>, message: Message) {
    let (body, reply_headers) = match decode(&message) {
        Ok((request, content_type)) => {
            let reason = if request.reason.is_empty() {
                "cancelled by request".to_string()
            } else {
                request.reason
            };
            let cancelled = cancel(shared, &request.task_id, &reason);
            tracing::info!(
                agent_id = %shared.agent_id,
                task_id = %request.task_id,
                %reason,
                cancelled,
                "cancel requested"
            );
            // Idempotent: cancelling a task that is not (or no longer) running
            // here is not an error, there is just nothing to do.
            let body: &'static [u8] = match content_type {
                ContentType::Json => b"{}",
                ContentType::Protobuf => b"",
            };
            let mut reply_headers = HeaderMap::new();
            reply_headers.insert(headers::CONTENT_TYPE, content_type.as_str());
            (bytes::Bytes::from_static(body), reply_headers)
        }
        Err((error, content_type)) => {
            tracing::info!(agent_id = %shared.agent_id, %error, "malformed cancel request refused");
            error_reply(&error, content_type)
        }
    };
    if let Some(reply_to) = message.reply
        && let Err(error) = shared
            .bus
            .client
            .publish_with_headers(reply_to, reply_headers, body)
            .await
    {
        tracing::warn!(%error, "could not answer a cancel request");
    }
}

/// Cancels every running attempt of `task_id`; returns how many there were.
fn cancel<A>(shared: &Shared<A>, task_id: &str, reason: &str) -> usize {
    let running = shared.running.lock().expect("running-set lock poisoned");
    let mut count = 0;
    for ((id, _attempt), entry) in running.iter() {
        if id == task_id {
            entry.cancel(reason);
            count += 1;
        }
    }
    count
}

fn decode(message: &Message) -> Result<(CancelTask, ContentType), (ServiceError, ContentType)> {
    let content_type = ContentType::from_header(headers::get(
        message.headers.as_ref(),
        headers::CONTENT_TYPE,
    ))
    .map_err(|error| (ServiceError::from(error), ContentType::Json))?;
    let request: CancelTask = codec::decode(content_type, &message.payload)
        .map_err(|error| (ServiceError::from(error), content_type))?;
    if request.task_id.is_empty() {
        return Err((
            ServiceError::invalid("taskId", "must not be empty"),
            content_type,
        ));
    }
    Ok((request, content_type))
}
