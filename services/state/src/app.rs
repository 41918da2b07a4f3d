//! The state service's shared handle: configuration, storage, the writer's
//! queue, metrics. Cheap to clone; handlers take it by value.

use std::sync::Arc;

use concord_bus::ServiceError;
use concord_runtime::ServiceContext;
use concord_wire::v1::ErrorCode;
use tokio::sync::{mpsc, oneshot};

use crate::config::StateConfig;
use crate::document::{Refusal, Write};
use crate::key::DocKey;
use crate::metrics::Metrics;
use crate::store::{ChangeRow, DocumentStore};
use crate::writer::{Pending, WriteError};

/// Writes queued for the writer before requests wait for room.
const WRITE_QUEUE: usize = 4096;

/// One state service process.
#[derive(Clone)]
pub struct State {
    inner: Arc<Inner>,
}

struct Inner {
    context: ServiceContext,
    config: StateConfig,
    store: DocumentStore,
    writes: mpsc::Sender<Pending>,
}

impl State {
    /// The handle, and the writer to run (it stops when the last handle goes).
    pub(crate) fn new(
        context: ServiceContext,
        config: StateConfig,
    ) -> (Self, crate::writer::Writer, mpsc::Receiver<Pending>) {
        let store = DocumentStore::new(context.pool.clone());
        let metrics = Metrics::register(&context.metrics);
        let (writes, queue) = mpsc::channel(WRITE_QUEUE);
        let writer = crate::writer::Writer {
            store: store.clone(),
            events: context.events.clone(),
            bus: context.bus.clone(),
            max_document_bytes: config.max_document_bytes,
            history_keep: config.history_keep,
            batch: config.write_batch,
            clock: config.clock.clone(),
            metrics,
        };
        let state = Self {
            inner: Arc::new(Inner {
                context,
                config,
                store,
                writes,
            }),
        };
        (state, writer, queue)
    }

    pub fn context(&self) -> &ServiceContext {
        &self.inner.context
    }

    pub fn config(&self) -> &StateConfig {
        &self.inner.config
    }

    pub fn store(&self) -> &DocumentStore {
        &self.inner.store
    }

    /// Queues `write` of `key` by `actor` and waits for its commit.
    pub async fn write(
        &self,
        key: DocKey,
        write: Write,
        actor: String,
    ) -> Result<ChangeRow, ServiceError> {
        let (done, answer) = oneshot::channel();
        let shown = key.to_string();
        self.inner
            .writes
            .send(Pending {
                key,
                write,
                actor,
                done,
            })
            .await
            .map_err(|_| ServiceError::unavailable("the state service is shutting down"))?;
        let result = tokio::time::timeout(self.inner.config.write_timeout, answer)
            .await
            .map_err(|_| {
                ServiceError::unavailable(format!(
                    "the write of {shown} was not committed within {} ms; read it back before retrying",
                    self.inner.config.write_timeout.as_millis()
                ))
            })?
            .map_err(|_| ServiceError::unavailable("the state service is shutting down"))?;
        result.map_err(|error| refused(&shown, error))
    }
}

/// A refused write as the client sees it. Conflicts and existing documents
/// carry the current document in `details`.
pub fn refused(key: &str, error: WriteError) -> ServiceError {
    let (refusal, current) = match error {
        WriteError::Store(message) => return ServiceError::unavailable(message),
        WriteError::Refused { refusal, current } => (refusal, current),
    };
    let details = || {
        current
            .as_ref()
            .and_then(|row| serde_json::to_value(row.to_document()).ok())
            .unwrap_or(serde_json::Value::Null)
    };
    match refusal {
        Refusal::Exists { version } => ServiceError::new(
            ErrorCode::AlreadyExists,
            format!("document {key} exists (version {version}); put or patch it instead"),
        )
        .with_details(details()),
        Refusal::NotFound { version: 0 } => not_found(key),
        Refusal::NotFound { version } => {
            ServiceError::not_found(format!("document {key} was deleted at version {version}"))
        }
        Refusal::Conflict {
            expected,
            current: at,
            ..
        } => ServiceError::conflict(format!(
            "document {key} is at version {at}, not {expected}; read it again and retry"
        ))
        .with_details(details()),
        Refusal::PatchNotAnObject => {
            ServiceError::invalid("patch", "a merge patch must be a JSON object")
        }
        Refusal::TooLarge { bytes, limit } => {
            let mut error = ServiceError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "value: the document would be {bytes} bytes, more than the limit of {limit}"
                ),
            );
            error.field = Some("value".into());
            error
        }
    }
}

pub fn not_found(key: &str) -> ServiceError {
    ServiceError::not_found(format!("no document {key}"))
}

/// A storage failure as the client sees it.
pub fn unavailable(error: impl std::fmt::Display) -> ServiceError {
    ServiceError::unavailable(format!("state storage unavailable: {error}"))
}
