//! The document writers: each commits writes in batches.
//!
//! Keys are spread over `write_shards` writers by a hash of the key, so one
//! key's writes are always committed, answered and published by the same
//! writer, in order, while the shards' transactions run side by side.
//!
//! A batch (up to `write_batch` requests, whatever arrived while the last
//! one committed) is one transaction: lock the rows of its keys (sorted, so
//! two batches, of two shards or two replicas, cannot deadlock), apply each
//! write in arrival order to the state so far with
//! [`crate::document::apply`], write the rows, the history and the events,
//! commit. The committed batch then goes to the writer's publisher, which
//! publishes the events and the changes and answers every request, while the
//! next batch already commits. Two replicas serialise on the row locks; a
//! key that had no row when read and got one from the other replica
//! meanwhile makes the batch start again, so a compare-and-set is never
//! applied twice or lost.

use std::collections::HashMap;
use std::time::Instant;

use concord_store::NewEvent;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::document::{self, Refusal, Stored, Write};
use crate::key::DocKey;
use crate::store::{self, ChangeRow, DocumentRow, DocumentStore};

/// How often a batch is redone after losing a race on a new key.
const MAX_TRIES: usize = 3;

/// One write waiting to be committed.
pub struct Pending {
    pub key: DocKey,
    pub write: Write,
    pub actor: String,
    /// `(resource, token)`: refused if a newer token was granted.
    pub fence: crate::app::Fence,
    pub done: oneshot::Sender<Result<ChangeRow, WriteError>>,
}

/// Why a write was not committed.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteError {
    /// The rules refused it; `current` is the stored document.
    Refused {
        refusal: Refusal,
        current: Option<DocumentRow>,
    },
    /// The write's fence names a token a newer grant superseded.
    Fenced {
        resource: String,
        token: u64,
        latest: u64,
    },
    /// Storage failed; nothing was written.
    Store(String),
}

/// A committed batch: each write's result, in order, and the events.
type Committed = (Vec<Result<ChangeRow, WriteError>>, Vec<NewEvent>);

/// A committed batch on its way to the publisher: the requests, their
/// results, the events.
type Batch = (
    Vec<Pending>,
    Vec<Result<ChangeRow, WriteError>>,
    Vec<NewEvent>,
);

/// Committed batches waiting to be published and answered.
const PUBLISH_QUEUE: usize = 4;

/// Which of `shards` writers commits `key`'s writes (FNV-1a of the key).
pub fn shard_of(key: &str, shards: usize) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % shards.max(1) as u64) as usize
}

/// What a writer needs.
#[derive(Clone)]
pub struct Writer {
    pub store: DocumentStore,
    pub events: concord_runtime::EventPublisher,
    pub bus: concord_bus::Bus,
    pub max_document_bytes: usize,
    pub batch: usize,
    pub clock: std::sync::Arc<dyn concord_runtime::Clock>,
    pub metrics: crate::metrics::Metrics,
}

impl Writer {
    /// Commits what arrives on `requests` until `stop` (the endpoints have
    /// drained by then), then what is still queued; returns once every
    /// committed batch is published and answered.
    pub async fn run(self, mut requests: mpsc::Receiver<Pending>, stop: CancellationToken) {
        let (published, mut to_publish) = mpsc::channel::<Batch>(PUBLISH_QUEUE);
        let commits = async {
            let mut batch = Vec::with_capacity(self.batch);
            loop {
                tokio::select! {
                    received = requests.recv_many(&mut batch, self.batch) => {
                        if received == 0 {
                            break;
                        }
                    }
                    _ = stop.cancelled() => {
                        requests.close();
                        while requests.recv_many(&mut batch, self.batch).await > 0 {
                            let pending = std::mem::take(&mut batch);
                            self.commit(pending, &published).await;
                        }
                        break;
                    }
                }
                let pending = std::mem::take(&mut batch);
                self.commit(pending, &published).await;
            }
            drop(published);
        };
        let publishes = async {
            while let Some((pending, results, events)) = to_publish.recv().await {
                self.publish(pending, results, events).await;
            }
        };
        tokio::join!(commits, publishes);
    }

    async fn commit(&self, pending: Vec<Pending>, published: &mpsc::Sender<Batch>) {
        let started = Instant::now();
        let mut outcome = Ok(None);
        for _ in 0..MAX_TRIES {
            outcome = self.try_commit(&pending).await;
            if !matches!(&outcome, Ok(None)) {
                break;
            }
        }
        self.metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        let (results, events) = match outcome {
            Ok(Some(done)) => done,
            Ok(None) => {
                let message = "the batch kept losing races on new keys".to_string();
                return fail_all(pending, &message);
            }
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), writes = pending.len(), "state batch not committed");
                return fail_all(pending, &format!("state storage unavailable: {error}"));
            }
        };
        // The publisher answers; should it be gone (it only ends after this
        // loop), answer here.
        if let Err(mpsc::error::SendError((pending, results, events))) =
            published.send((pending, results, events)).await
        {
            self.publish(pending, results, events).await;
        }
    }

    /// Publishes a committed batch's events and changes, then answers its
    /// requests.
    async fn publish(
        &self,
        pending: Vec<Pending>,
        results: Vec<Result<ChangeRow, WriteError>>,
        events: Vec<NewEvent>,
    ) {
        self.events.publish_committed(&events).await;
        for (pending, result) in pending.into_iter().zip(results) {
            if let Ok(change) = &result {
                publish_change(&self.bus, change).await;
            }
            self.metrics.count(pending.write.kind(), &result);
            let _ = pending.done.send(result);
        }
    }

    /// One attempt: `Ok(None)` when a new key was inserted by someone else
    /// meanwhile (try again), `Ok(Some)` once committed.
    async fn try_commit(&self, pending: &[Pending]) -> anyhow::Result<Option<Committed>> {
        let mut keys: Vec<&str> = pending.iter().map(|p| p.key.as_str()).collect();
        keys.sort_unstable();
        keys.dedup();
        let mut tx = self.store.pool().begin().await?;
        let read = store::lock_rows(&mut tx, &keys).await?;
        let mut current: HashMap<String, DocumentRow> =
            read.into_iter().map(|row| (row.key.clone(), row)).collect();
        let existed: Vec<String> = current.keys().cloned().collect();
        let fences: Vec<(&str, u64)> = pending
            .iter()
            .filter_map(|p| p.fence.as_ref().map(|(r, t)| (r.as_str(), *t)))
            .collect();
        let refused_fences = if fences.is_empty() {
            Vec::new()
        } else {
            crate::lock_table::Locks::fences_in(&mut tx, &fences).await?
        };
        let at = concord_runtime::whole_micros(self.clock.now());
        let mut results = Vec::with_capacity(pending.len());
        let mut changes = Vec::new();
        for write in pending {
            if let Some((resource, token)) = &write.fence
                && let Some((_, _, latest)) = refused_fences
                    .iter()
                    .find(|(r, t, _)| r == resource && t == token)
            {
                results.push(Err(WriteError::Fenced {
                    resource: resource.clone(),
                    token: *token,
                    latest: *latest,
                }));
                continue;
            }
            let stored: Option<Stored> = current.get(write.key.as_str()).map(DocumentRow::stored);
            match document::apply(
                stored.as_ref(),
                write.write.clone(),
                self.max_document_bytes,
            ) {
                Ok(change) => {
                    let row = ChangeRow {
                        key: write.key.to_string(),
                        version: change.version,
                        recorded: change.recorded,
                        value: change.value,
                        actor: write.actor.clone(),
                        at,
                    };
                    current.insert(row.key.clone(), row.to_row());
                    changes.push(row.clone());
                    results.push(Ok(row));
                }
                Err(refusal) => results.push(Err(WriteError::Refused {
                    refusal,
                    current: current.get(write.key.as_str()).cloned(),
                })),
            }
        }
        if changes.is_empty() {
            tx.rollback().await?;
            return Ok(Some((results, Vec::new())));
        }
        let changed: Vec<&str> = {
            let mut keys: Vec<&str> = changes.iter().map(|c| c.key.as_str()).collect();
            keys.sort_unstable();
            keys.dedup();
            keys
        };
        let (old, new): (Vec<&DocumentRow>, Vec<&DocumentRow>) = changed
            .iter()
            .map(|key| &current[*key])
            .partition(|row| existed.iter().any(|k| k == &row.key));
        if !store::insert_new(&mut tx, &new).await? {
            tx.rollback().await?;
            return Ok(None);
        }
        store::update_locked(&mut tx, &old).await?;
        // The events are the history (`DocumentStore::history` reads them).
        let events: Vec<NewEvent> = changes
            .iter()
            .map(|change| store::change_event(&self.events, change))
            .collect();
        if let Err(error) = self.events.store().append_in(&mut tx, &events).await {
            let _ = tx.rollback().await;
            if error.is_sequence_conflict() {
                return Ok(None);
            }
            return Err(error.into());
        }
        tx.commit().await?;
        Ok(Some((results, events)))
    }
}

fn fail_all(pending: Vec<Pending>, message: &str) {
    for p in pending {
        let _ = p.done.send(Err(WriteError::Store(message.to_string())));
    }
}

/// Publishes a committed change on `<root>.state.changed.<ns>.<key>`.
pub async fn publish_change(bus: &concord_bus::Bus, change: &ChangeRow) {
    let key = DocKey::parse(&change.key).expect("stored keys are valid");
    let subject = crate::changed_subject(bus, &key);
    let payload = concord_wire::codec::encode(concord_wire::ContentType::Json, &change.to_change())
        .expect("a change encodes");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        concord_bus::headers::CONTENT_TYPE,
        concord_wire::ContentType::Json.as_str(),
    );
    if let Err(error) = bus
        .client
        .publish_with_headers(subject, headers, payload.into())
        .await
    {
        tracing::warn!(%error, key = %change.key, "could not publish a document change");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_always_goes_to_the_same_shard_and_keys_spread() {
        assert_eq!(shard_of("team/a", 4), shard_of("team/a", 4));
        assert_eq!(shard_of("team/a", 1), 0);
        let mut counts = [0usize; 4];
        for n in 0..4000 {
            counts[shard_of(&format!("bench/k{n}"), 4)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }
}
