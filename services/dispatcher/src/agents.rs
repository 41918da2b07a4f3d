//! What the dispatcher knows about agents: the registry's published
//! directory (a local copy kept by a KV watch), their latest heartbeats
//! (load, capacity, health) and this replica's own in-flight counts.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use concord_directory::SharedDirectory;
use concord_identity::{Claim, SIGNATURE, SIGNED_AT, SIGNER, Verifier, purpose};
use concord_runtime::Clock;
use concord_wire::codec::{self, ContentType};
use concord_wire::v1::{AgentHealth, AgentRecord, Heartbeat};

use crate::IdMap;
use crate::routing::Candidate;

/// How long a heartbeat's count of other senders' tasks is believed. The
/// count is a difference taken when the heartbeat arrives (the agent's
/// in-flight minus this replica's own attempts there), so it is skewed by
/// whatever was in transit; with long heartbeat intervals a stale figure
/// would make an idle agent look busy until the next heartbeat.
pub const OTHERS_FRESH_FOR: Duration = Duration::from_secs(3);

/// An agent's latest heartbeat, as far as routing cares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    /// Tasks it runs that this replica did not send (other replicas, or
    /// attempts this replica already gave up on), as of `seen`.
    pub others: u32,
    /// When the heartbeat arrived.
    pub seen: Instant,
    /// Tasks it accepts at once (0 while shutting down).
    pub capacity: u32,
    pub health: AgentHealth,
}

/// Heartbeat loads by agent id, shared between the heartbeat listener and the engine.
#[derive(Debug, Clone)]
pub struct Loads {
    inner: Arc<Mutex<IdMap<Load>>>,
    own: Arc<Mutex<IdMap<u32>>>,
    /// When heartbeats arrive and how old they are.
    clock: Arc<dyn Clock>,
}

impl Default for Loads {
    fn default() -> Self {
        Self::new(Arc::new(concord_runtime::SystemClock))
    }
}

impl Loads {
    /// No heartbeat seen yet; `clock` dates them.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            inner: Arc::default(),
            own: Arc::default(),
            clock,
        }
    }

    /// Records a heartbeat; `in_flight` includes this replica's own attempts.
    pub fn heartbeat(&self, beat: &Heartbeat) {
        let own = self
            .own
            .lock()
            .expect("loads lock")
            .get(&beat.agent_id)
            .copied()
            .unwrap_or(0);
        let load = Load {
            others: beat.in_flight.saturating_sub(own),
            seen: self.clock.instant(),
            capacity: beat.capacity,
            health: AgentHealth::try_from(beat.health).unwrap_or(AgentHealth::Unspecified),
        };
        self.inner
            .lock()
            .expect("loads lock")
            .insert(beat.agent_id.clone(), load);
    }

    /// This replica's attempts running on `agent_id`.
    #[cfg(test)]
    pub fn own(&self, agent_id: &str) -> u32 {
        self.own
            .lock()
            .expect("loads lock")
            .get(agent_id)
            .copied()
            .unwrap_or(0)
    }

    /// One more (or fewer) of this replica's attempts on `agent_id`.
    pub fn adjust_own(&self, agent_id: &str, delta: i32) {
        let mut own = self.own.lock().expect("loads lock");
        let count = own.entry(agent_id.to_string()).or_insert(0);
        *count = count.saturating_add_signed(delta);
        if *count == 0 {
            own.remove(agent_id);
        }
    }

    /// The candidate for `agent`: heartbeat capacity and health (when
    /// reported) if one was seen, in-flight = own attempts + others' from the
    /// heartbeat (while fresh, see [`OTHERS_FRESH_FOR`]). Heartbeats reach the dispatcher directly, so they are
    /// fresher than the registry's record.
    fn candidate<'a>(
        agent: &'a AgentRecord,
        inner: &IdMap<Load>,
        own: &IdMap<u32>,
        now: Instant,
    ) -> Candidate<'a> {
        let mut candidate = Candidate::new(agent);
        let own = own.get(&agent.id).copied().unwrap_or(0);
        match inner.get(&agent.id) {
            Some(load) => {
                let fresh = now.saturating_duration_since(load.seen) < OTHERS_FRESH_FOR;
                candidate.in_flight = own + if fresh { load.others } else { 0 };
                candidate.capacity = load.capacity;
                if load.health != AgentHealth::Unspecified {
                    candidate.health = load.health;
                }
            }
            None => candidate.in_flight = own,
        }
        candidate
    }

    /// Runs `f` with the candidates `select` picks from `directory`.
    pub fn with_candidates<R>(
        &self,
        directory: &SharedDirectory,
        select: impl for<'a> FnOnce(&'a concord_directory::Directory) -> Vec<&'a AgentRecord>,
        f: impl FnOnce(Vec<Candidate<'_>>) -> R,
    ) -> R {
        let directory = directory.read().expect("directory lock");
        let inner = self.inner.lock().expect("loads lock");
        let own = self.own.lock().expect("loads lock");
        let now = self.clock.instant();
        let candidates: Vec<Candidate<'_>> = select(&directory)
            .into_iter()
            .map(|agent| Self::candidate(agent, &inner, &own, now))
            .collect();
        drop(own);
        drop(inner);
        f(candidates)
    }
}

/// Listens to `<root>.registry.heartbeat` (a plain subscription: every
/// dispatcher replica sees every heartbeat; the registry answers them).
/// A heartbeat of an agent the directory lists with a public key counts only
/// if its signature verifies (the registry refuses the others), so nobody
/// can steer routing by reporting loads or health for another agent.
pub async fn listen_heartbeats(
    service: &concord_runtime::Service,
    loads: Loads,
    directory: SharedDirectory,
    refused: prometheus_client::metrics::counter::Counter,
) -> anyhow::Result<()> {
    let verifier = Verifier::default();
    let subject = service
        .context()
        .bus
        .subjects
        .endpoint("registry", "heartbeat");
    service
        .listen([subject], None, move |message| {
            let content_type = ContentType::from_header(concord_bus::headers::get(
                message.headers.as_ref(),
                concord_bus::headers::CONTENT_TYPE,
            ))
            .unwrap_or(ContentType::Json);
            // Malformed heartbeats are the registry's to refuse; ignore them here.
            if let Ok(beat) = codec::decode::<Heartbeat>(content_type, &message.payload) {
                if heartbeat_is_genuine(&verifier, &directory, &beat, &message) {
                    loads.heartbeat(&beat);
                } else {
                    refused.inc();
                }
            }
            std::future::ready(())
        })
        .await
}

/// Whether `beat` may be believed: its agent has no key in the directory
/// (or is not there yet), or the signature verifies with that key.
fn heartbeat_is_genuine(
    verifier: &Verifier,
    directory: &SharedDirectory,
    beat: &Heartbeat,
    message: &async_nats::Message,
) -> bool {
    let public_key = {
        let directory = directory.read().expect("directory lock poisoned");
        match directory.get(&beat.agent_id) {
            Some(record) if !record.public_key.is_empty() => record.public_key.clone(),
            _ => return true,
        }
    };
    let headers = message.headers.as_ref();
    let header = |name| concord_bus::headers::get(headers, name);
    let claim = Claim::from_headers(header(SIGNER), header(SIGNED_AT), header(SIGNATURE));
    verifier
        .verify_as(
            &beat.agent_id,
            &public_key,
            purpose::HEARTBEAT,
            &message.payload,
            &claim,
            concord_identity::now_ms(),
        )
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_wire::v1::Liveness;

    fn agent(id: &str, max: u32) -> AgentRecord {
        AgentRecord {
            id: id.into(),
            max_concurrency: max,
            liveness: Liveness::Alive as i32,
            ..Default::default()
        }
    }

    #[test]
    fn in_flight_adds_own_attempts_to_what_others_run() {
        let loads = Loads::default();
        loads.adjust_own("a", 1);
        loads.adjust_own("a", 1);
        // The agent reports 5 running, 2 of them ours: 3 belong to others.
        loads.heartbeat(&Heartbeat {
            agent_id: "a".into(),
            in_flight: 5,
            capacity: 8,
            ..Default::default()
        });
        loads.adjust_own("a", -1);
        let record = agent("a", 16);
        let inner = loads.inner.lock().unwrap().clone();
        let own = loads.own.lock().unwrap().clone();
        let candidate = Loads::candidate(&record, &inner, &own, Instant::now());
        assert_eq!(candidate.in_flight, 1 + 3);
        assert_eq!(candidate.capacity, 8, "the heartbeat's capacity wins");
        assert_eq!(loads.own("a"), 1);
    }

    #[test]
    fn a_reported_heartbeat_health_overrides_the_record() {
        let loads = Loads::default();
        let mut record = agent("h", 4);
        record.health = AgentHealth::Healthy as i32;
        let beat = |health: AgentHealth| Heartbeat {
            agent_id: "h".into(),
            capacity: 4,
            health: health as i32,
            ..Default::default()
        };
        let candidate_now = |loads: &Loads| {
            let inner = loads.inner.lock().unwrap().clone();
            let own = loads.own.lock().unwrap().clone();
            Loads::candidate(&record, &inner, &own, Instant::now()).health
        };
        loads.heartbeat(&beat(AgentHealth::Unhealthy));
        assert_eq!(candidate_now(&loads), AgentHealth::Unhealthy);
        // A heartbeat that does not report health leaves the record's.
        loads.heartbeat(&beat(AgentHealth::Unspecified));
        assert_eq!(candidate_now(&loads), AgentHealth::Healthy);
    }

    #[test]
    fn others_load_from_an_old_heartbeat_is_not_believed() {
        let loads = Loads::default();
        // The agent reports 4 running, none of them ours (as far as we know
        // when the heartbeat arrives): 4 belong to others, for a while.
        loads.heartbeat(&Heartbeat {
            agent_id: "s".into(),
            in_flight: 4,
            capacity: 4,
            ..Default::default()
        });
        let record = agent("s", 4);
        let inner = loads.inner.lock().unwrap().clone();
        let seen = inner["s"].seen;
        let own = IdMap::default();
        let fresh = Loads::candidate(&record, &inner, &own, seen + Duration::from_secs(1));
        assert_eq!(fresh.in_flight, 4, "a fresh heartbeat counts");
        let stale = Loads::candidate(&record, &inner, &own, seen + OTHERS_FRESH_FOR);
        assert_eq!(stale.in_flight, 0, "an old one no longer blocks the agent");
        assert_eq!(stale.capacity, 4, "its capacity still counts");
    }

    #[test]
    fn without_a_heartbeat_the_record_decides() {
        let record = agent("b", 4);
        let candidate = Loads::candidate(
            &record,
            &IdMap::default(),
            &IdMap::default(),
            Instant::now(),
        );
        assert_eq!(candidate.in_flight, 0);
        assert_eq!(candidate.capacity, 4);
    }

    #[test]
    fn own_counts_never_go_negative() {
        let loads = Loads::default();
        loads.adjust_own("c", -1);
        assert_eq!(loads.own("c"), 0);
    }
}
