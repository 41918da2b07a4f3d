//! The state service's shared handle: configuration, storage, the writer's
//! queue, metrics. Cheap to clone; handlers take it by value.

use std::sync::Arc;

use concord_bus::ServiceError;
use concord_runtime::ServiceContext;
use concord_wire::v1::ErrorCode;
use tokio::sync::{mpsc, oneshot};

use concord_directory::SharedDirectory;

use crate::barrier_table::{BarrierMetrics, Barriers};
use crate::config::StateConfig;
use crate::document::{Refusal, Write};
use crate::identity::Identity;
use crate::key::DocKey;
use crate::lock_table::{LockMetrics, Locks};
use crate::metrics::Metrics;
use crate::snapshot_table::Snapshots;
use crate::store::{ChangeRow, DocumentStore};
use crate::workflow_table::Workflows;
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
    /// One queue per writer shard ([`crate::writer::shard_of`]).
    writes: Vec<mpsc::Sender<Pending>>,
    locks: Locks,
    barriers: Barriers,
    snapshots: Snapshots,
    workflows: Workflows,
    identity: Identity,
}

/// A write fenced by a lock's token: `(resource, token)`.
pub type Fence = Option<(String, u64)>;

impl State {
    /// The handle, and the writers to run with their queues (one per
    /// shard; each stops when the last handle goes).
    pub(crate) fn new(
        context: ServiceContext,
        config: StateConfig,
        directory: SharedDirectory,
    ) -> (Self, Vec<(crate::writer::Writer, mpsc::Receiver<Pending>)>) {
        let store = DocumentStore::new(context.pool.clone());
        let locks = Locks::new(
            context.pool.clone(),
            context.events.clone(),
            context.bus.client.clone(),
            config.clock.clone(),
            LockMetrics::register(&context.metrics),
        );
        let barriers = Barriers::new(
            context.pool.clone(),
            context.events.clone(),
            context.bus.client.clone(),
            config.clock.clone(),
            BarrierMetrics::register(&context.metrics),
        );
        let snapshots = Snapshots::new(
            context.pool.clone(),
            context.events.clone(),
            context.bus.clone(),
            config.clock.clone(),
        );
        let workflows = Workflows::new(
            context.pool.clone(),
            context.events.clone(),
            config.clock.clone(),
        );
        let identity = Identity::new(directory, &context.metrics);
        let metrics = Metrics::register(&context.metrics);
        let writer = crate::writer::Writer {
            store: store.clone(),
            events: context.events.clone(),
            bus: context.bus.clone(),
            max_document_bytes: config.max_document_bytes,
            batch: config.write_batch,
            clock: config.clock.clone(),
            metrics,
        };
        let (writes, writers): (Vec<_>, Vec<_>) = (0..config.write_shards)
            .map(|_| {
                let (send, queue) = mpsc::channel(WRITE_QUEUE);
                (send, (writer.clone(), queue))
            })
            .unzip();
        let state = Self {
            inner: Arc::new(Inner {
                context,
                config,
                store,
                writes,
                locks,
                barriers,
                snapshots,
                workflows,
                identity,
            }),
        };
        (state, writers)
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

    pub fn locks(&self) -> &Locks {
        &self.inner.locks
    }

    pub fn barriers(&self) -> &Barriers {
        &self.inner.barriers
    }

    pub fn snapshots(&self) -> &Snapshots {
        &self.inner.snapshots
    }

    pub fn workflows(&self) -> &Workflows {
        &self.inner.workflows
    }

    /// The directory copy this service keeps.
    pub fn directory(&self) -> &SharedDirectory {
        self.inner.identity.directory()
    }

    /// Refuses `request` unless `agent` signed it for `purpose` (when the
    /// directory holds a key for `agent`).
    pub fn check_identity(
        &self,
        request: &concord_bus::Request,
        purpose: &'static str,
        agent: &str,
    ) -> Result<(), ServiceError> {
        let now = u64::try_from(self.inner.config.clock.unix_ms()).unwrap_or(0);
        self.inner.identity.check(request, purpose, agent, now)
    }

    /// Queues `write` of `key` by `actor` (refused when `fence` names a
    /// lock token that a newer grant superseded) and waits for its commit.
    pub async fn write(
        &self,
        key: DocKey,
        write: Write,
        actor: String,
        fence: Fence,
    ) -> Result<ChangeRow, ServiceError> {
        let (done, answer) = oneshot::channel();
        let shown = key.to_string();
        let shard = crate::writer::shard_of(key.as_str(), self.inner.writes.len());
        self.inner.writes[shard]
            .send(Pending {
                key,
                write,
                actor,
                fence,
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
        WriteError::Fenced {
            resource,
            token,
            latest,
        } => {
            let why = if token > latest {
                format!("was never granted (the latest token is {latest})")
            } else {
                format!("was superseded by token {latest}")
            };
            return ServiceError::conflict(format!(
                "fence: token {token} of lock {resource} {why}; the write to {key} was refused"
            ))
            .with_details(
                serde_json::json!({"resource": resource, "token": token, "latestToken": latest}),
            );
        }
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

/// Appends `events` in `tx`, commits, then publishes them: how a lock,
/// barrier, snapshot or workflow change is made durable.
pub async fn commit_with_events(
    publisher: &concord_runtime::EventPublisher,
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    events: &[concord_store::NewEvent],
) -> Result<(), ServiceError> {
    publisher
        .store()
        .append_in(&mut tx, events)
        .await
        .map_err(|error| ServiceError::unavailable(format!("event store: {error}")))?;
    tx.commit().await.map_err(unavailable)?;
    publisher.publish_committed(events).await;
    Ok(())
}
