//! Test support: [`FakeRegistry`], a stand-in for the registry service that
//! answers the agent protocol on a real NATS server and records what it got.
//!
//! Use it to test an agent without Postgres and the registry service; the
//! broker stays real (start one with `concord_testkit::NatsServer`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::{HeaderMap, Message};
use concord_bus::service::error_reply;
use concord_bus::{ServiceError, Subjects, headers};
use concord_wire::codec::{self, ContentType, WireMessage};
use concord_wire::v1::{
    AgentHealth, AgentRecord, DeregisterAgent, DeregisterAgentReply, ErrorCode, Heartbeat,
    HeartbeatAck, Liveness, RegisterAgent, RegisterAgentReply,
};
use futures::StreamExt;
use tokio::sync::mpsc;

/// Answers `<root>.registry.register`, `.heartbeat` and `.deregister` like
/// the registry does, minus persistence, validation and liveness timing:
///
/// - register: stores the agent (capability levels of 0 become 1) and
///   replies `RegisterAgentReply { agent, created }`, or the error set with
///   [`FakeRegistry::refuse_registrations`];
/// - heartbeat: `HeartbeatAck { liveness: ALIVE, heartbeatIntervalSecs }` for
///   a known agent, an error reply `NOT_FOUND` for an unknown one;
/// - deregister: forgets the agent, `DeregisterAgentReply`, or `NOT_FOUND`.
///
/// Every decoded request is recorded and can be awaited in order. Stops when dropped.
///
/// ```no_run
/// use std::time::Duration;
/// use concord_sdk::bus::Subjects;
/// use concord_sdk::testing::FakeRegistry;
///
/// # async fn example(client: async_nats::Client) {
/// let subjects = Subjects::new("test-root").unwrap();
/// let mut registry = FakeRegistry::start(&client, &subjects).await.unwrap();
/// // ... start an agent on the same root ...
/// let registration = registry.next_registration(Duration::from_secs(5)).await.expect("registered");
/// registry.forget(&registration.id); // the next heartbeat gets NOT_FOUND
/// # }
/// ```
pub struct FakeRegistry {
    state: Arc<Mutex<State>>,
    registrations: mpsc::UnboundedReceiver<RegisterAgent>,
    heartbeats: mpsc::UnboundedReceiver<Heartbeat>,
    deregistrations: mpsc::UnboundedReceiver<DeregisterAgent>,
    task: tokio::task::JoinHandle<()>,
}

struct State {
    agents: BTreeMap<String, AgentRecord>,
    refusal: Option<ServiceError>,
    heartbeat_interval_secs: u32,
}

struct Recorders {
    registrations: mpsc::UnboundedSender<RegisterAgent>,
    heartbeats: mpsc::UnboundedSender<Heartbeat>,
    deregistrations: mpsc::UnboundedSender<DeregisterAgent>,
}

impl FakeRegistry {
    /// Subscribes to `<root>.registry.>` and serves it until dropped. Returns
    /// once the server has the subscription.
    pub async fn start(
        client: &async_nats::Client,
        subjects: &Subjects,
    ) -> Result<Self, async_nats::Error> {
        let mut subscriber = client.subscribe(subjects.join("registry.>")).await?;
        client.flush().await?;
        let state = Arc::new(Mutex::new(State {
            agents: BTreeMap::new(),
            refusal: None,
            heartbeat_interval_secs: 1,
        }));
        let (registrations_tx, registrations) = mpsc::unbounded_channel();
        let (heartbeats_tx, heartbeats) = mpsc::unbounded_channel();
        let (deregistrations_tx, deregistrations) = mpsc::unbounded_channel();
        let recorders = Recorders {
            registrations: registrations_tx,
            heartbeats: heartbeats_tx,
            deregistrations: deregistrations_tx,
        };
        let client = client.clone();
        let served = state.clone();
        let task = tokio::spawn(async move {
            while let Some(message) = subscriber.next().await {
                serve(&client, &served, &recorders, message).await;
            }
        });
        Ok(Self {
            state,
            registrations,
            heartbeats,
            deregistrations,
            task,
        })
    }

    /// The next registration received, waiting at most `within`.
    pub async fn next_registration(&mut self, within: Duration) -> Option<RegisterAgent> {
        tokio::time::timeout(within, self.registrations.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next heartbeat received, waiting at most `within`.
    pub async fn next_heartbeat(&mut self, within: Duration) -> Option<Heartbeat> {
        tokio::time::timeout(within, self.heartbeats.recv())
            .await
            .ok()
            .flatten()
    }

    /// The first heartbeat from now on for which `matches` holds, waiting at
    /// most `within` in total.
    pub async fn heartbeat_where(
        &mut self,
        within: Duration,
        mut matches: impl FnMut(&Heartbeat) -> bool,
    ) -> Option<Heartbeat> {
        let wait = async {
            while let Some(heartbeat) = self.heartbeats.recv().await {
                if matches(&heartbeat) {
                    return Some(heartbeat);
                }
            }
            None
        };
        tokio::time::timeout(within, wait).await.ok().flatten()
    }

    /// The next deregistration received, waiting at most `within`.
    pub async fn next_deregistration(&mut self, within: Duration) -> Option<DeregisterAgent> {
        tokio::time::timeout(within, self.deregistrations.recv())
            .await
            .ok()
            .flatten()
    }

    /// Drops everything received so far and not yet awaited.
    pub fn clear(&mut self) {
        while self.registrations.try_recv().is_ok() {}
        while self.heartbeats.try_recv().is_ok() {}
        while self.deregistrations.try_recv().is_ok() {}
    }

    /// Forgets an agent, as a registry that lost it would: its next heartbeat
    /// is answered `NOT_FOUND`. Returns whether it was known.
    pub fn forget(&self, agent_id: &str) -> bool {
        self.lock().agents.remove(agent_id).is_some()
    }

    /// The stored record of an agent.
    pub fn agent(&self, agent_id: &str) -> Option<AgentRecord> {
        self.lock().agents.get(agent_id).cloned()
    }

    /// Answers every registration from now on with `error` (e.g. `ALREADY_EXISTS`).
    pub fn refuse_registrations(&self, error: ServiceError) {
        self.lock().refusal = Some(error);
    }

    /// The `heartbeatIntervalSecs` put in acknowledgements (default 1).
    pub fn set_heartbeat_interval_secs(&self, secs: u32) {
        self.lock().heartbeat_interval_secs = secs;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("fake registry lock poisoned")
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    client: &async_nats::Client,
    state: &Mutex<State>,
    recorders: &Recorders,
    message: Message,
) {
    let content_type = match ContentType::from_header(headers::get(
        message.headers.as_ref(),
        headers::CONTENT_TYPE,
    )) {
        Ok(content_type) => content_type,
        Err(error) => {
            let (body, reply_headers) = error_reply(&error.into(), ContentType::Json);
            return respond(client, &message, reply_headers, body).await;
        }
    };
    let operation = message.subject.rsplit('.').next().unwrap_or_default();
    let reply = match operation {
        "register" => decode(content_type, &message).and_then(|request: RegisterAgent| {
            let _ = recorders.registrations.send(request.clone());
            register(state, request).and_then(|reply| encode(content_type, &reply))
        }),
        "heartbeat" => decode(content_type, &message).and_then(|request: Heartbeat| {
            let _ = recorders.heartbeats.send(request.clone());
            heartbeat(state, &request).and_then(|reply| encode(content_type, &reply))
        }),
        "deregister" => decode(content_type, &message).and_then(|request: DeregisterAgent| {
            let _ = recorders.deregistrations.send(request.clone());
            deregister(state, &request).and_then(|reply| encode(content_type, &reply))
        }),
        other => Err(ServiceError::not_found(format!(
            "the fake registry does not serve {other:?}"
        ))),
    };
    let (body, reply_headers) = match reply {
        Ok(body) => {
            let mut reply_headers = HeaderMap::new();
            reply_headers.insert(headers::CONTENT_TYPE, content_type.as_str());
            (body, reply_headers)
        }
        Err(error) => error_reply(&error, content_type),
    };
    respond(client, &message, reply_headers, body).await;
}

fn register(
    state: &Mutex<State>,
    request: RegisterAgent,
) -> Result<RegisterAgentReply, ServiceError> {
    let mut state = state.lock().expect("fake registry lock poisoned");
    if let Some(error) = &state.refusal {
        return Err(error.clone());
    }
    if request.id.is_empty() {
        return Err(ServiceError::invalid("id", "must not be empty"));
    }
    if request.capabilities.is_empty() {
        return Err(ServiceError::invalid("capabilities", "must not be empty"));
    }
    let mut capabilities = request.capabilities;
    for capability in &mut capabilities {
        if capability.level == 0.0 {
            capability.level = 1.0;
        }
    }
    let created = !state.agents.contains_key(&request.id);
    let record = AgentRecord {
        id: request.id.clone(),
        name: request.name,
        capabilities,
        max_concurrency: request.max_concurrency.max(1),
        version: request.version,
        labels: request.labels,
        public_key: request.public_key,
        liveness: Liveness::Alive.into(),
        health: AgentHealth::Healthy.into(),
        reputation: 0.5,
        ..Default::default()
    };
    state.agents.insert(request.id, record.clone());
    Ok(RegisterAgentReply {
        agent: Some(record),
        created,
    })
}

fn heartbeat(state: &Mutex<State>, request: &Heartbeat) -> Result<HeartbeatAck, ServiceError> {
    let mut state = state.lock().expect("fake registry lock poisoned");
    let interval = state.heartbeat_interval_secs;
    let Some(record) = state.agents.get_mut(&request.agent_id) else {
        return Err(ServiceError::not_found(format!(
            "no agent {:?}; register first",
            request.agent_id
        )));
    };
    record.in_flight = request.in_flight;
    record.health = request.health;
    Ok(HeartbeatAck {
        liveness: Liveness::Alive.into(),
        heartbeat_interval_secs: interval,
    })
}

fn deregister(
    state: &Mutex<State>,
    request: &DeregisterAgent,
) -> Result<DeregisterAgentReply, ServiceError> {
    let mut state = state.lock().expect("fake registry lock poisoned");
    match state.agents.remove(&request.id) {
        Some(mut record) => {
            record.liveness = Liveness::Unavailable.into();
            Ok(DeregisterAgentReply {
                agent: Some(record),
            })
        }
        None => Err(ServiceError::new(
            ErrorCode::NotFound,
            format!("no agent {:?}", request.id),
        )),
    }
}

fn decode<M: WireMessage>(content_type: ContentType, message: &Message) -> Result<M, ServiceError> {
    Ok(codec::decode(content_type, &message.payload)?)
}

fn encode<M: WireMessage>(
    content_type: ContentType,
    reply: &M,
) -> Result<bytes::Bytes, ServiceError> {
    codec::encode(content_type, reply)
        .map(Into::into)
        .map_err(|error| ServiceError::internal(error.to_string()))
}

async fn respond(
    client: &async_nats::Client,
    message: &Message,
    reply_headers: HeaderMap,
    body: bytes::Bytes,
) {
    if let Some(reply_to) = message.reply.clone() {
        let _ = client
            .publish_with_headers(reply_to, reply_headers, body)
            .await;
    }
}
