//! Keeps requests the services refused as bad input: a dead letter with the
//! original bytes, headers and reason, plus a `dead_letter.created` event.

use std::future::Future;
use std::pin::Pin;

use concord_bus::service::{RejectSink, Rejected};
use concord_store::{DeadLetterStore, NewDeadLetter};

use crate::EventPublisher;

/// Reason recorded for requests refused because of their content.
pub const REASON_INVALID_INPUT: &str = "invalid_input";
/// Reason recorded for requests refused for their signature (`PERMISSION_DENIED`).
pub const REASON_PERMISSION_DENIED: &str = "permission_denied";

/// The dead-letter reason of a refused request.
pub fn reason_of(error: &concord_bus::ServiceError) -> &'static str {
    match error.code {
        concord_wire::v1::ErrorCode::PermissionDenied => REASON_PERMISSION_DENIED,
        _ => REASON_INVALID_INPUT,
    }
}

/// [`RejectSink`] backed by the dead-letter table.
pub struct StoreRejectSink {
    store: DeadLetterStore,
    events: EventPublisher,
}

impl StoreRejectSink {
    pub fn new(store: DeadLetterStore, events: EventPublisher) -> Self {
        Self { store, events }
    }
}

impl RejectSink for StoreRejectSink {
    fn reject(&self, rejected: Rejected) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let id = uuid::Uuid::now_v7();
            let reason = reason_of(&rejected.error);
            let letter = NewDeadLetter {
                id,
                subject: rejected.subject.clone(),
                headers: rejected.headers,
                payload: rejected.payload.to_vec(),
                reason: reason.to_string(),
                error: rejected.error.message.clone(),
                attempts: 1,
                source: rejected.service.clone(),
                history: serde_json::json!([]),
            };
            if let Err(error) = self.store.put(&letter).await {
                // The requester already has its error reply; losing the copy is
                // an operational problem, so say it loudly.
                tracing::error!(%error, subject = %rejected.subject, "could not store dead letter");
                return;
            }
            let event = self.events.event(
                "dead_letter",
                &id.to_string(),
                1,
                "dead_letter.created",
                serde_json::json!({
                    "subject": rejected.subject,
                    "reason": reason,
                    "error": rejected.error.message,
                    "field": rejected.error.field,
                    "source": rejected.service,
                }),
            );
            if let Err(error) = self.events.emit(vec![event]).await {
                tracing::warn!(%error, "could not record dead_letter.created event");
            }
        })
    }
}
