//! The directory other services read: a JetStream KV bucket
//! (`<ROOT>_AGENTS`, key = agent id, value = `AgentRecord` JSON) that the
//! registry writes after every committed change and every replica watches to
//! keep its in-memory [`Directory`] current.

use std::sync::{Arc, RwLock};

use async_nats::jetstream::kv::{self, Operation, Store};
use concord_bus::Bus;
use concord_wire::codec::{self, ContentType};
use concord_wire::v1::AgentRecord;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::Directory;

/// The shared in-memory directory of one registry process.
pub type SharedDirectory = Arc<RwLock<Directory>>;

/// Name of the directory bucket for a subject root.
pub fn bucket_name(bus: &Bus) -> String {
    bus.subjects.stream_name("agents")
}

/// Writes records to the directory bucket, never replacing a newer revision.
#[derive(Clone)]
pub struct DirectoryBucket {
    kv: Store,
}

impl DirectoryBucket {
    /// Opens (creating if needed) the bucket. History 1: readers want the
    /// current directory, the event store keeps the history.
    pub async fn open(bus: &Bus) -> anyhow::Result<Self> {
        let js = bus.jetstream();
        let name = bucket_name(bus);
        let kv = match js.get_key_value(&name).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: name.clone(),
                    description: "Concord agent directory, written by concord-registry".into(),
                    history: 1,
                    ..Default::default()
                })
                .await
                .map_err(|e| anyhow::anyhow!("cannot create KV bucket {name}: {e}"))?,
        };
        Ok(Self { kv })
    }

    pub fn store(&self) -> &Store {
        &self.kv
    }

    /// Puts `record` unless the bucket already holds the same or a newer
    /// revision (two replicas may publish out of order).
    pub async fn publish(&self, record: &AgentRecord) -> anyhow::Result<()> {
        let value = codec::encode(ContentType::Json, record)?;
        for _ in 0..5 {
            let current = self.kv.entry(record.id.as_str()).await?;
            let outcome = match current {
                Some(entry) if entry.operation == Operation::Put => {
                    let stored: AgentRecord =
                        codec::decode(ContentType::Json, &entry.value).unwrap_or_default();
                    if stored.revision >= record.revision {
                        return Ok(());
                    }
                    self.kv
                        .update(record.id.as_str(), value.clone().into(), entry.revision)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
                Some(entry) => self
                    .kv
                    .update(record.id.as_str(), value.clone().into(), entry.revision)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                None => self
                    .kv
                    .create(record.id.as_str(), value.clone().into())
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
            };
            match outcome {
                Ok(()) => return Ok(()),
                // Someone else wrote in between: look again.
                Err(error) => tracing::debug!(%error, agent = %record.id, "directory CAS retry"),
            }
        }
        anyhow::bail!(
            "could not publish agent {} to the directory after 5 attempts",
            record.id
        )
    }

    /// Removes a deregistered agent by publishing its tombstone (a record
    /// with `deregistered` set, at the deregistration's revision), so the
    /// revision guard of [`DirectoryBucket::publish`] keeps older records out.
    pub async fn remove(&self, tombstone: &AgentRecord) -> anyhow::Result<()> {
        debug_assert!(tombstone.deregistered, "remove takes a tombstone");
        self.publish(tombstone).await
    }
}

/// Feeds `directory` from the bucket (current values first, then changes)
/// until `stop`; resolves `ready` once the initial values are loaded.
pub async fn watch(
    bucket: DirectoryBucket,
    directory: SharedDirectory,
    stop: CancellationToken,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    watch_notifying(bucket, directory, stop, ready, None).await
}

/// [`watch`], and sends the id of every agent whose entry was applied
/// (updated or removed, the current values first) on `changed`: a service
/// that reacts to an agent going away (the state service frees its locks)
/// looks the id up in `directory` then.
pub async fn watch_notifying(
    bucket: DirectoryBucket,
    directory: SharedDirectory,
    stop: CancellationToken,
    ready: tokio::sync::oneshot::Sender<()>,
    changed: Option<tokio::sync::mpsc::UnboundedSender<String>>,
) {
    let mut ready = Some(ready);
    loop {
        let mut watch = match bucket.kv.watch_with_history(">").await {
            Ok(watch) => watch,
            Err(error) => {
                tracing::warn!(%error, "cannot watch the directory bucket; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                }
            }
        };
        // An empty bucket delivers nothing: mark ready right away in that case.
        let pending = bucket.kv.status().await.map(|s| s.values()).unwrap_or(0);
        if pending == 0
            && let Some(ready) = ready.take()
        {
            let _ = ready.send(());
        }
        loop {
            let entry = tokio::select! {
                _ = stop.cancelled() => return,
                entry = watch.next() => entry,
            };
            let Some(Ok(entry)) = entry else { break };
            apply(&directory, &entry);
            if let Some(changed) = &changed {
                let _ = changed.send(entry.key.clone());
            }
            if entry.delta == 0
                && let Some(ready) = ready.take()
            {
                let _ = ready.send(());
            }
        }
        tracing::warn!("directory watch ended; restarting it");
    }
}

fn apply(directory: &SharedDirectory, entry: &kv::Entry) {
    let mut directory = directory.write().expect("directory lock poisoned");
    match entry.operation {
        Operation::Put => match codec::decode::<AgentRecord>(ContentType::Json, &entry.value) {
            // Tombstones (`deregistered`) remove the agent.
            Ok(record) => {
                directory.upsert_if_newer(record);
            }
            Err(error) => tracing::warn!(%error, key = %entry.key, "undecodable directory entry"),
        },
        Operation::Delete | Operation::Purge => {
            directory.remove(&entry.key);
        }
    }
}
