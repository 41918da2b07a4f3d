//! Keeps what a service could not process as a dead letter: the original
//! bytes, headers and reason in Postgres, plus a `dead_letter.created` event.
//! Every service goes through [`DeadLetterKeeper`]; refused requests reach it
//! through [`StoreRejectSink`], which the service host calls for them.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use concord_bus::service::{RejectSink, Rejected};
use concord_store::{DeadLetterStore, NewDeadLetter, StoreError};
use tokio_util::sync::CancellationToken;

use crate::EventPublisher;

use concord_wire::codes::{INVALID_INPUT, PERMISSION_DENIED};

/// How long [`DeadLetterKeeper::keep_retrying`] waits between tries.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// The dead-letter reason of a refused request.
pub fn reason_of(error: &concord_bus::ServiceError) -> &'static str {
    match error.code {
        concord_wire::v1::ErrorCode::PermissionDenied => PERMISSION_DENIED,
        _ => INVALID_INPUT,
    }
}

/// Stores dead letters and announces them; clone freely.
#[derive(Clone)]
pub struct DeadLetterKeeper {
    store: DeadLetterStore,
    events: EventPublisher,
}

impl DeadLetterKeeper {
    pub fn new(store: DeadLetterStore, events: EventPublisher) -> Self {
        Self { store, events }
    }

    /// Stores `letter` (storing the same id twice keeps one), then records
    /// its `dead_letter.created` event; `field` names the bad field when
    /// one is known (`null` in the event otherwise). Fails only when the letter could not be stored.
    pub async fn keep(
        &self,
        letter: &NewDeadLetter,
        field: Option<&str>,
    ) -> Result<(), StoreError> {
        self.store.put(letter).await?;
        let event = self.events.event(
            "dead_letter",
            &letter.id.to_string(),
            1,
            "dead_letter.created",
            serde_json::json!({
                "subject": letter.subject,
                "reason": letter.reason,
                "error": letter.error,
                "field": field,
                "source": letter.source,
            }),
        );
        if let Err(error) = self.events.emit(vec![event]).await {
            tracing::warn!(%error, dead_letter = %letter.id, "could not record dead_letter.created event");
        }
        Ok(())
    }

    /// [`DeadLetterKeeper::keep`], trying again every second while Postgres
    /// is unreachable, until stored or `stop` is cancelled; returns whether
    /// it was stored. For input that is acknowledged only once kept (a
    /// JetStream delivery).
    pub async fn keep_retrying(
        &self,
        letter: &NewDeadLetter,
        field: Option<&str>,
        stop: &CancellationToken,
    ) -> bool {
        loop {
            match self.keep(letter, field).await {
                Ok(()) => return true,
                Err(error) => {
                    tracing::warn!(%error, dead_letter = %letter.id, "cannot store dead letter; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return false,
                        _ = tokio::time::sleep(RETRY_EVERY) => {}
                    }
                }
            }
        }
    }
}

/// The dead letter of a request the service host refused.
fn refused_letter(rejected: Rejected) -> NewDeadLetter {
    NewDeadLetter {
        id: uuid::Uuid::now_v7(),
        reason: reason_of(&rejected.error).to_string(),
        subject: rejected.subject,
        headers: rejected.headers,
        payload: rejected.payload.to_vec(),
        error: rejected.error.message,
        attempts: 1,
        source: rejected.service,
        history: serde_json::json!([]),
    }
}

/// [`RejectSink`] that keeps every refused request as a dead letter.
pub struct StoreRejectSink {
    keeper: DeadLetterKeeper,
}

impl StoreRejectSink {
    pub fn new(keeper: DeadLetterKeeper) -> Self {
        Self { keeper }
    }
}

impl RejectSink for StoreRejectSink {
    fn reject(&self, rejected: Rejected) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let field = rejected.error.field.clone();
            let letter = refused_letter(rejected);
            if let Err(error) = self.keeper.keep(&letter, field.as_deref()).await {
                // The requester already has its error reply; losing the copy is
                // an operational problem, so say it loudly.
                tracing::error!(%error, subject = %letter.subject, "could not store dead letter");
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_bus::ServiceError;
    use concord_wire::v1::ErrorCode;

    #[test]
    fn a_refused_request_keeps_its_bytes_headers_and_reason() {
        let rejected = Rejected {
            service: "concord-registry".into(),
            subject: "concord.registry.register".into(),
            headers: [("Content-Type".to_string(), "application/json".to_string())].into(),
            payload: bytes::Bytes::from_static(b"{\"id\":1}"),
            error: ServiceError::invalid("id", "must be a string"),
        };
        let letter = refused_letter(rejected);
        assert_eq!(letter.reason, INVALID_INPUT);
        assert_eq!(letter.subject, "concord.registry.register");
        assert_eq!(letter.payload, b"{\"id\":1}");
        assert_eq!(letter.source, "concord-registry");
        assert_eq!(letter.headers["Content-Type"], "application/json");
        assert!(letter.error.contains("must be a string"));
    }

    #[test]
    fn a_bad_signature_is_kept_as_permission_denied() {
        let error = ServiceError::new(ErrorCode::PermissionDenied, "signature does not verify");
        assert_eq!(reason_of(&error), PERMISSION_DENIED);
        assert_eq!(reason_of(&ServiceError::not_found("x")), INVALID_INPUT);
    }
}
