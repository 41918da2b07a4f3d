//! Cancellation of tasks this replica holds: `tasks.cancel` (answered by any
//! replica) asks on `<root>.dispatcher.held.<task id>.cancel`; every replica
//! listens, only the one holding the task answers.

use async_nats::HeaderMap;
use concord_bus::{Bus, headers};
use concord_runtime::Service;
use concord_wire::codec::{self, ContentType};
use concord_wire::v1::CancelTask;
use tokio::sync::{mpsc, oneshot};

use crate::engine::Command;

/// `<root>.dispatcher.held.<task id>.cancel`.
pub fn cancel_subject(bus: &Bus, task_id: &str) -> String {
    bus.subjects
        .join(&format!("dispatcher.held.{task_id}.cancel"))
}

/// `<root>.dispatcher.cancel_queued`: a cancellation was queued for a task
/// no replica holds (body: the `CancelTask`); every replica adds the id to
/// its known-ids filter, so the submission is looked up when it arrives.
pub fn cancel_queued_subject(bus: &Bus) -> String {
    bus.subjects.join("dispatcher.cancel_queued")
}

/// Hands cancellations of held tasks to the engine (`commands`) and answers
/// with the engine's result; a replica that does not hold the task stays
/// silent.
pub async fn listen(service: &Service, commands: mpsc::Sender<Command>) -> anyhow::Result<()> {
    let bus = service.context().bus.clone();
    let background = service.background();
    let subject = bus.subjects.join("dispatcher.held.*.cancel");
    service
        .listen([subject], None, move |message| {
            let commands = commands.clone();
            let client = bus.client.clone();
            let background = background.clone();
            async move {
                let Some(reply_to) = message.reply.clone() else {
                    return;
                };
                let Ok(cancel) = codec::decode::<CancelTask>(ContentType::Json, &message.payload)
                else {
                    return;
                };
                let reason = if cancel.reason.is_empty() {
                    "cancelled by request".to_string()
                } else {
                    cancel.reason
                };
                let (reply, answer) = oneshot::channel();
                let command = Command::Cancel {
                    task_id: cancel.task_id,
                    reason,
                    reply,
                };
                if commands.send(command).await.is_err() {
                    // The engine has stopped: shutdown is under way.
                    return;
                }
                // The engine answers once the cancellation is written; the
                // next request need not wait for it.
                background.spawn(async move {
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
        })
        .await
}
