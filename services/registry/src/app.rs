//! The registry's state and background work: the shared directory, the
//! heartbeat buffer, the liveness sweep and reputation updates.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use concord_bus::ServiceError;
use concord_runtime::ServiceContext;
use concord_store::NewEvent;
use concord_wire::v1::{AgentRecord, Liveness};
use futures::StreamExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::config::RegistryConfig;
use crate::identity::Identity;
use crate::liveness::{self, TransitionKind};
use crate::store::{AgentStore, ChangedRow, PendingHeartbeat, PlannedTransition};
use crate::validate::Limits;
use concord_directory::Directory;
use concord_directory::{DirectoryBucket, SharedDirectory};

/// Directory bucket writes kept in flight at once.
const BUCKET_WRITES_IN_FLIGHT: usize = 64;

/// Aggregate type of agent events in the event store.
pub const AGGREGATE: &str = "agent";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Default)]
struct Metrics {
    heartbeats: Counter,
    transitions: Family<KindLabel, Counter>,
    agents: Gauge,
}

/// One registry process: cheap to clone, shared by handlers and background tasks.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    context: ServiceContext,
    store: AgentStore,
    bucket: DirectoryBucket,
    directory: SharedDirectory,
    config: RegistryConfig,
    limits: Limits,
    heartbeats: Mutex<HashMap<String, PendingHeartbeat>>,
    outcomes: Mutex<HashMap<String, (i64, i64)>>,
    metrics: Metrics,
    identity: Identity,
}

/// What the registry knows of an agent id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Registered; `public_key` is empty for an agent without a key.
    Registered { public_key: String },
    /// An operator removed it; the reason it was given.
    Removed { reason: String },
    /// Never registered, or deregistered itself.
    Unknown,
}

impl Registry {
    pub(crate) async fn new(
        context: ServiceContext,
        config: RegistryConfig,
    ) -> anyhow::Result<Self> {
        let bucket = DirectoryBucket::open(&context.bus).await?;
        let metrics = Metrics {
            heartbeats: context.metrics.add(
                "registry_heartbeats",
                "Heartbeats received",
                Counter::default(),
            ),
            transitions: context.metrics.add(
                "registry_liveness_transitions",
                "Liveness transitions applied, by kind",
                Family::default(),
            ),
            agents: context.metrics.add(
                "registry_agents",
                "Agents in this replica's directory",
                Gauge::default(),
            ),
        };
        let identity = Identity::new(config.signature_max_skew, config.require_signatures);
        context.metrics.register(
            "registry_identity_faults",
            "Requests refused for their signature (PERMISSION_DENIED), by request and reason",
            identity.faults(),
        );
        Ok(Self {
            inner: Arc::new(Inner {
                identity,
                store: AgentStore::new(context.pool.clone()),
                bucket,
                directory: Arc::new(RwLock::new(Directory::new())),
                config,
                limits: Limits::default(),
                heartbeats: Mutex::new(HashMap::new()),
                outcomes: Mutex::new(HashMap::new()),
                metrics,
                context,
            }),
        })
    }

    pub fn context(&self) -> &ServiceContext {
        &self.inner.context
    }

    pub fn store(&self) -> &AgentStore {
        &self.inner.store
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.inner.config
    }

    /// Signature checks (see [`crate::identity`]).
    pub fn identity(&self) -> &Identity {
        &self.inner.identity
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    pub fn bucket(&self) -> &DirectoryBucket {
        &self.inner.bucket
    }

    /// This replica's copy of the directory.
    pub fn directory(&self) -> SharedDirectory {
        self.inner.directory.clone()
    }

    /// An agent event with the next sequence of `row`.
    pub fn event(
        &self,
        agent_id: &str,
        sequence: i64,
        kind: &str,
        data: serde_json::Value,
    ) -> NewEvent {
        self.inner.context.events.event(
            AGGREGATE,
            agent_id,
            sequence,
            &format!("agent.{kind}"),
            data,
        )
    }

    /// After a commit: publish the events, update the bucket and the local copy.
    pub async fn announce(&self, events: &[NewEvent], records: &[AgentRecord]) {
        self.inner.context.events.publish_committed(events).await;
        // Each publish is a read and a conditional write on the bucket; a
        // sweep after an outage or a startup reconcile can carry thousands.
        // Tombstones (`deregistered`) go the same way, so the revision guard
        // orders them with everything else.
        futures::stream::iter(records)
            .for_each_concurrent(BUCKET_WRITES_IN_FLIGHT, |record| async move {
                if let Err(error) = self.inner.bucket.publish(record).await {
                    tracing::error!(%error, agent = %record.id, "directory bucket not updated; the next change or restart republishes it");
                }
            })
            .await;
        let mut directory = self
            .inner
            .directory
            .write()
            .expect("directory lock poisoned");
        for record in records {
            directory.upsert_if_newer(record.clone());
        }
        self.inner.metrics.agents.set(directory.len() as i64);
    }

    /// What the registry knows of `agent_id`, from the local copy or, when
    /// this replica has not seen it, from Postgres.
    pub async fn standing(&self, agent_id: &str) -> Result<Standing, ServiceError> {
        if let Some(record) = self
            .inner
            .directory
            .read()
            .expect("directory lock poisoned")
            .get(agent_id)
        {
            return Ok(Standing::Registered {
                public_key: record.public_key.clone(),
            });
        }
        let row = self.inner.store.get(agent_id).await.map_err(unavailable)?;
        Ok(match row {
            Some(row) if row.deregistered_at.is_none() => Standing::Registered {
                public_key: row.public_key,
            },
            Some(row) => {
                let reason = row.to_record().removed_reason;
                if reason.is_empty() {
                    Standing::Unknown
                } else {
                    Standing::Removed { reason }
                }
            }
            None => Standing::Unknown,
        })
    }

    /// Buffers a heartbeat; [`Registry::flush_heartbeats`] writes it.
    pub fn record_heartbeat(&self, heartbeat: PendingHeartbeat) {
        self.inner.metrics.heartbeats.inc();
        let mut buffer = self
            .inner
            .heartbeats
            .lock()
            .expect("heartbeat lock poisoned");
        buffer.insert(heartbeat.agent_id.clone(), heartbeat);
    }

    /// Writes buffered heartbeats in one statement; agents that were SUSPECT
    /// or UNAVAILABLE recover (with an event). Returns how many were written.
    pub async fn flush_heartbeats(&self) -> anyhow::Result<usize> {
        let batch: Vec<PendingHeartbeat> = {
            let mut buffer = self
                .inner
                .heartbeats
                .lock()
                .expect("heartbeat lock poisoned");
            buffer.drain().map(|(_, h)| h).collect()
        };
        if batch.is_empty() {
            return Ok(0);
        }
        let count = batch.len();
        let result = self
            .inner
            .store
            .apply_heartbeats(batch.clone(), |row| {
                self.transition_event(row, TransitionKind::Recovered)
            })
            .await;
        let (changed, events) = match result {
            Ok(outcome) => outcome,
            Err(error) => {
                // Keep the heartbeats for the next flush (a newer one for the
                // same agent wins): dropping them would make a Postgres
                // restart look like every agent went silent.
                let mut buffer = self
                    .inner
                    .heartbeats
                    .lock()
                    .expect("heartbeat lock poisoned");
                for heartbeat in batch {
                    buffer
                        .entry(heartbeat.agent_id.clone())
                        .or_insert(heartbeat);
                }
                return Err(error.into());
            }
        };
        self.after_transitions(&changed, &events, TransitionKind::Recovered)
            .await;
        Ok(count)
    }

    /// Judges agents whose heartbeats are late and applies SUSPECT /
    /// UNAVAILABLE transitions. Returns how many changed.
    pub async fn sweep(&self) -> anyhow::Result<usize> {
        // Heartbeats this replica holds must count before judging.
        self.flush_heartbeats().await?;
        let policy = self.inner.config.liveness;
        let now = self.inner.config.clock.now();
        let suspect_after = policy.heartbeat_interval * policy.suspect_after_missed;
        let unavailable_after = policy.heartbeat_interval * policy.unavailable_after_missed;
        let suspect_before = now - chrono::Duration::from_std(suspect_after)?;
        let unavailable_before = now - chrono::Duration::from_std(unavailable_after)?;
        let now_ms = now.timestamp_millis().max(0) as u64;
        let mut total = 0;
        loop {
            let stale = self
                .inner
                .store
                .stale(suspect_before, unavailable_before, 1000)
                .await?;
            let planned: Vec<PlannedTransition> = stale
                .iter()
                .filter_map(|row| {
                    let last = row.last_heartbeat_at?;
                    let transition = liveness::evaluate(
                        row.liveness(),
                        last.timestamp_millis().max(0) as u64,
                        now_ms,
                        &policy,
                    )?;
                    Some(PlannedTransition {
                        agent_id: row.id.clone(),
                        from: transition.from,
                        to: transition.to,
                        last_heartbeat_at: last,
                    })
                })
                .collect();
            if planned.is_empty() {
                return Ok(total);
            }
            let (changed, events) = self
                .inner
                .store
                .apply_transitions(planned, |row| {
                    let kind = match row.row.liveness() {
                        Liveness::Unavailable => TransitionKind::Unavailable,
                        _ => TransitionKind::Suspect,
                    };
                    self.transition_event(row, kind)
                })
                .await?;
            total += changed.len();
            for row in &changed {
                let kind = match row.row.liveness() {
                    Liveness::Unavailable => TransitionKind::Unavailable,
                    _ => TransitionKind::Suspect,
                };
                self.inner
                    .metrics
                    .transitions
                    .get_or_create(&KindLabel {
                        kind: kind.as_str(),
                    })
                    .inc();
            }
            self.announce(
                &events,
                &changed
                    .iter()
                    .map(|r| r.row.to_record())
                    .collect::<Vec<_>>(),
            )
            .await;
            if stale.len() < 1000 || changed.is_empty() {
                return Ok(total);
            }
        }
    }

    fn transition_event(&self, row: &ChangedRow, kind: TransitionKind) -> NewEvent {
        self.event(
            &row.row.id,
            row.row.event_seq,
            kind.as_str(),
            serde_json::json!({
                "agentId": row.row.id,
                "from": row.old_liveness,
                "to": row.row.liveness,
                "lastHeartbeatAt": row.row.last_heartbeat_at,
            }),
        )
    }

    async fn after_transitions(
        &self,
        changed: &[ChangedRow],
        events: &[NewEvent],
        kind: TransitionKind,
    ) {
        if changed.is_empty() {
            return;
        }
        self.inner
            .metrics
            .transitions
            .get_or_create(&KindLabel {
                kind: kind.as_str(),
            })
            .inc_by(changed.len() as u64);
        let records: Vec<AgentRecord> = changed.iter().map(|r| r.row.to_record()).collect();
        self.announce(events, &records).await;
    }

    /// Counts a task outcome for an agent's reputation.
    pub fn record_outcome(&self, agent_id: &str, success: bool) {
        let mut outcomes = self.inner.outcomes.lock().expect("outcome lock poisoned");
        let entry = outcomes.entry(agent_id.to_string()).or_default();
        if success {
            entry.0 += 1;
        } else {
            entry.1 += 1;
        }
    }

    /// Writes accumulated outcomes and republishes the changed records.
    pub async fn flush_outcomes(&self) -> anyhow::Result<usize> {
        let batch: Vec<(String, i64, i64)> = {
            let mut outcomes = self.inner.outcomes.lock().expect("outcome lock poisoned");
            outcomes.drain().map(|(id, (s, f))| (id, s, f)).collect()
        };
        if batch.is_empty() {
            return Ok(0);
        }
        let rows = self.inner.store.add_outcomes(batch).await?;
        let records: Vec<AgentRecord> = rows.iter().map(|r| r.to_record()).collect();
        self.announce(&[], &records).await;
        Ok(rows.len())
    }

    /// Publishes every agent to the bucket, deregistered ones as tombstones
    /// (those already there at the same revision are skipped): heals a bucket
    /// that missed writes.
    pub async fn reconcile(&self) -> anyhow::Result<usize> {
        let rows = self.inner.store.all().await?;
        let records: Vec<AgentRecord> = rows.iter().map(|r| r.to_record()).collect();
        self.announce(&[], &records).await;
        Ok(records.len())
    }
}

/// The answer to an agent an operator removed: stop, do not register again.
pub fn removed(agent_id: &str, reason: &str) -> ServiceError {
    ServiceError::new(
        concord_wire::v1::ErrorCode::AgentRemoved,
        format!("agent {agent_id} was removed ({reason}); stop and do not register again"),
    )
}

/// A failed one-row change as the client sees it (the handler's own refusal,
/// a race lost twice, or storage trouble).
pub fn refused(error: crate::store::ModifyError) -> ServiceError {
    match error {
        crate::store::ModifyError::Refused(error) => error,
        crate::store::ModifyError::Retry => ServiceError::conflict("concurrent change; retry"),
        crate::store::ModifyError::Store(error) => unavailable(error),
    }
}

/// A storage failure as the client sees it.
pub fn unavailable(error: impl std::fmt::Display) -> ServiceError {
    ServiceError::unavailable(format!("registry storage unavailable: {error}"))
}
