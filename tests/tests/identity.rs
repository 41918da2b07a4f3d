//! Agent identity against real NATS and Postgres: an agent that registers
//! with a public key proves it holds the private key, and nobody else can
//! re-register, heartbeat or deregister as it; refusals are
//! `PERMISSION_DENIED` naming the header, dead letters and counted faults.
//! An operator's removal stops an SDK agent for good; SDK agents sign
//! everything; the dispatcher ignores forged heartbeats.

use std::sync::Arc;
use std::time::Duration;

use concord_bus::{Bus, BusConfig, ServiceError, Shutdown};
use concord_identity::{AgentKey, SIGNATURE, SIGNED_AT, SIGNER, purpose};
use concord_registry::RegistryConfig;
use concord_runtime::ManualClock;
use concord_sdk::{AgentConfig, AgentError};
use concord_store::{DeadLetterFilter, EventStore};
use concord_tests::{RunningRegistry, Stack, World, metric_counter};
use concord_wire::v1::{
    AgentHealth, AgentRecord, Capability, DeregisterAgent, DeregisterAgentReply, ErrorCode,
    GetAgent, Heartbeat, HeartbeatAck, RegisterAgent, RegisterAgentReply, RemoveAgent,
    RemoveAgentReply,
};
use tokio::task::JoinHandle;

const TIMEOUT: Duration = Duration::from_secs(5);

/// The registry's fault counter `registry_identity_faults{request,reason}`.
fn faults(running: &RunningRegistry, request: &str, reason: &str) -> u64 {
    let text = running.registry.context().metrics.encode();
    let series = format!(
        "concord_registry_identity_faults_total{{request=\"{request}\",reason=\"{reason}\"}}"
    );
    text.lines()
        .find_map(|line| line.strip_prefix(&series))
        .map(|value| value.trim().parse().unwrap())
        .unwrap_or(0)
}

async fn dead_letters(running: &RunningRegistry) -> Vec<concord_store::DeadLetter> {
    running
        .registry
        .context()
        .dead_letters
        .list(&DeadLetterFilter::default())
        .await
        .unwrap()
}

async fn start(world: &World, require_signatures: bool) -> anyhow::Result<RunningRegistry> {
    let config = RegistryConfig {
        clock: Arc::new(ManualClock::new()),
        background: false,
        require_signatures,
        ..RegistryConfig::default()
    };
    RunningRegistry::start(world, config).await
}

fn now_ms() -> u64 {
    chrono::Utc::now().timestamp_millis() as u64
}

/// How a test request is signed.
#[derive(Clone, Copy)]
enum Sign<'a> {
    No,
    /// With `key`, as `signer`, at `at` (Unix ms).
    As(&'a AgentKey, &'a str, u64),
}

async fn call<Req, Resp>(
    bus: &Bus,
    endpoint: &str,
    purpose: &'static str,
    message: &Req,
    sign: Sign<'_>,
) -> Result<Resp, ServiceError>
where
    Req: concord_wire::codec::WireMessage,
    Resp: concord_wire::codec::WireMessage,
{
    bus.request_with(
        bus.subjects.endpoint("registry", endpoint),
        message,
        TIMEOUT,
        |payload| match sign {
            Sign::No => Vec::new(),
            Sign::As(key, signer, at) => key.sign(purpose, signer, at, payload).headers().into(),
        },
    )
    .await
}

fn registration(id: &str, key: Option<&AgentKey>) -> RegisterAgent {
    RegisterAgent {
        id: id.into(),
        name: format!("agent {id}"),
        capabilities: vec![Capability {
            name: "echo".into(),
            level: 1.0,
        }],
        public_key: key.map(AgentKey::public_key_base64).unwrap_or_default(),
        ..Default::default()
    }
}

fn beat(id: &str, in_flight: u32) -> Heartbeat {
    Heartbeat {
        agent_id: id.into(),
        in_flight,
        capacity: 4,
        health: AgentHealth::Healthy as i32,
        ..Default::default()
    }
}

async fn register(
    bus: &Bus,
    message: &RegisterAgent,
    sign: Sign<'_>,
) -> Result<RegisterAgentReply, ServiceError> {
    call(bus, "register", purpose::REGISTER, message, sign).await
}

async fn heartbeat(
    bus: &Bus,
    message: &Heartbeat,
    sign: Sign<'_>,
) -> Result<HeartbeatAck, ServiceError> {
    call(bus, "heartbeat", purpose::HEARTBEAT, message, sign).await
}

async fn deregister(
    bus: &Bus,
    id: &str,
    sign: Sign<'_>,
) -> Result<DeregisterAgentReply, ServiceError> {
    call(
        bus,
        "deregister",
        purpose::DEREGISTER,
        &DeregisterAgent { id: id.into() },
        sign,
    )
    .await
}

async fn get(bus: &Bus, id: &str) -> Result<AgentRecord, ServiceError> {
    bus.request(
        bus.subjects.endpoint("registry", "get"),
        &GetAgent { id: id.into() },
        TIMEOUT,
    )
    .await
}

fn assert_denied<T: std::fmt::Debug>(result: Result<T, ServiceError>, header: &str) {
    let error = result.expect_err("should be refused");
    assert_eq!(error.code, ErrorCode::PermissionDenied, "{error}");
    assert_eq!(error.field.as_deref(), Some(header), "{error}");
    assert!(error.message.starts_with(header), "{error}");
}

/// Waits until the registry has kept `count` dead letters.
async fn wait_for_dead_letters(
    running: &RunningRegistry,
    count: usize,
) -> Vec<concord_store::DeadLetter> {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let letters = dead_letters(running).await;
        if letters.len() >= count {
            return letters;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {count} dead letters, found {}",
            letters.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_registration_with_a_key_must_be_signed_with_it() -> anyhow::Result<()> {
    let world = World::start().await?;
    let running = start(&world, false).await?;
    let bus = world.bus("client").await?;
    let key = AgentKey::from_seed([1; 32]);
    let thief = AgentKey::from_seed([2; 32]);
    let message = registration("k1", Some(&key));

    assert_denied(register(&bus, &message, Sign::No).await, SIGNER);
    assert_denied(
        register(&bus, &message, Sign::As(&thief, "k1", now_ms())).await,
        SIGNATURE,
    );
    assert_denied(
        register(&bus, &message, Sign::As(&key, "other", now_ms())).await,
        SIGNER,
    );
    let ten_minutes_ago = now_ms() - 600_000;
    assert_denied(
        register(&bus, &message, Sign::As(&key, "k1", ten_minutes_ago)).await,
        SIGNED_AT,
    );
    // The signature names the agent, so a keyed registration needs an id.
    let anonymous = registration("", Some(&key));
    let error = register(&bus, &anonymous, Sign::As(&key, "", now_ms()))
        .await
        .unwrap_err();
    assert_eq!(
        (error.code, error.field.as_deref()),
        (ErrorCode::InvalidArgument, Some("id"))
    );
    assert_eq!(get(&bus, "k1").await.unwrap_err().code, ErrorCode::NotFound);

    // Each refusal is kept with its bytes and reason, and counted.
    let letters = wait_for_dead_letters(&running, 5).await;
    let denied: Vec<_> = letters
        .iter()
        .filter(|l| l.reason == "permission_denied")
        .map(|l| l.error.split(':').next().unwrap())
        .collect();
    assert_eq!(denied.len(), 4, "{letters:?}");
    assert!(
        denied
            .iter()
            .all(|header| header.starts_with("Concord-Sign")),
        "{denied:?}"
    );
    assert_eq!(faults(&running, "register", "missing_signature"), 1);
    assert_eq!(faults(&running, "register", "bad_signature"), 1);
    assert_eq!(faults(&running, "register", "wrong_signer"), 1);
    assert_eq!(faults(&running, "register", "stale_signature"), 1);

    let reply = register(&bus, &message, Sign::As(&key, "k1", now_ms())).await?;
    assert!(reply.created);
    assert_eq!(get(&bus, "k1").await?.public_key, key.public_key_base64());
    running.stop().await;
    Ok(())
}

#[tokio::test]
async fn only_the_key_holder_can_heartbeat_deregister_or_register_again() -> anyhow::Result<()> {
    let world = World::start().await?;
    let running = start(&world, false).await?;
    let bus = world.bus("client").await?;
    let key = AgentKey::from_seed([1; 32]);
    let thief = AgentKey::from_seed([2; 32]);
    let owner = Sign::As(&key, "k2", now_ms());
    register(&bus, &registration("k2", Some(&key)), owner).await?;

    // Heartbeats: unsigned, forged, or a genuine signature moved onto
    // another body are refused; the owner's pass.
    assert_denied(heartbeat(&bus, &beat("k2", 0), Sign::No).await, SIGNER);
    assert_denied(
        heartbeat(&bus, &beat("k2", 0), Sign::As(&thief, "k2", now_ms())).await,
        SIGNATURE,
    );
    let at = now_ms();
    let genuine = key.sign(purpose::HEARTBEAT, "k2", at, b"{\"agentId\":\"k2\"}");
    let claim = genuine.headers();
    let replayed: Result<HeartbeatAck, _> = bus
        .request_with(
            bus.subjects.endpoint("registry", "heartbeat"),
            &beat("k2", 3),
            TIMEOUT,
            |_| claim.to_vec(),
        )
        .await;
    assert_denied(replayed, SIGNATURE);
    heartbeat(&bus, &beat("k2", 1), Sign::As(&key, "k2", now_ms())).await?;

    // Re-registration: another key is a conflict on the id; the owner's key
    // without the owner's signature is refused.
    let error = register(
        &bus,
        &registration("k2", Some(&thief)),
        Sign::As(&thief, "k2", now_ms()),
    )
    .await
    .unwrap_err();
    assert_eq!(
        (error.code, error.field.as_deref()),
        (ErrorCode::AlreadyExists, Some("publicKey"))
    );
    let mut impostor = registration("k2", Some(&key));
    impostor.name = "impostor".into();
    assert_denied(
        register(&bus, &impostor, Sign::As(&thief, "k2", now_ms())).await,
        SIGNATURE,
    );
    let error = register(&bus, &registration("k2", None), Sign::No)
        .await
        .unwrap_err();
    assert_eq!(
        error.code,
        ErrorCode::AlreadyExists,
        "dropping the key is refused"
    );
    assert_eq!(get(&bus, "k2").await?.name, "agent k2");

    // Deregistration.
    assert_denied(deregister(&bus, "k2", Sign::No).await, SIGNER);
    assert_denied(
        deregister(&bus, "k2", Sign::As(&thief, "k2", now_ms())).await,
        SIGNATURE,
    );
    assert!(
        get(&bus, "k2").await.is_ok(),
        "a refused deregistration removed the agent"
    );
    deregister(&bus, "k2", Sign::As(&key, "k2", now_ms())).await?;
    assert_eq!(get(&bus, "k2").await.unwrap_err().code, ErrorCode::NotFound);

    assert_eq!(faults(&running, "heartbeat", "missing_signature"), 1);
    assert_eq!(faults(&running, "heartbeat", "bad_signature"), 2);
    assert_eq!(faults(&running, "register", "bad_signature"), 1);
    assert_eq!(faults(&running, "deregister", "missing_signature"), 1);
    assert_eq!(faults(&running, "deregister", "bad_signature"), 1);
    // Refused signatures are dead letters (3 heartbeats, 1 registration, 2
    // deregistrations); ALREADY_EXISTS is a conflict, not kept.
    let letters = wait_for_dead_letters(&running, 6).await;
    assert!(
        letters.iter().all(|l| l.reason == "permission_denied"),
        "{letters:?}"
    );
    running.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_agent_without_a_key_works_unsigned_unless_keys_are_required() -> anyhow::Result<()> {
    let world = World::start().await?;
    let running = start(&world, false).await?;
    let bus = world.bus("client").await?;
    register(&bus, &registration("open-1", None), Sign::No).await?;
    heartbeat(&bus, &beat("open-1", 0), Sign::No).await?;
    deregister(&bus, "open-1", Sign::No).await?;
    running.stop().await;

    let strict = start(&world, true).await?;
    let error = register(&bus, &registration("open-2", None), Sign::No)
        .await
        .unwrap_err();
    assert_eq!(error.code, ErrorCode::PermissionDenied);
    assert_eq!(error.field.as_deref(), Some("publicKey"));
    assert_eq!(faults(&strict, "register", "key_required"), 1);
    let key = AgentKey::from_seed([3; 32]);
    register(
        &bus,
        &registration("open-2", Some(&key)),
        Sign::As(&key, "open-2", now_ms()),
    )
    .await?;
    strict.stop().await;
    Ok(())
}

/// Starts an SDK echo agent against `world`; its `run` outcome comes back
/// through the handle.
fn sdk_agent(config: AgentConfig) -> (Shutdown, JoinHandle<Result<(), AgentError>>) {
    let shutdown = Shutdown::new();
    let handle = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { concord_sdk::run(concord_echo_agent::EchoAgent, config, shutdown).await }
    });
    (shutdown, handle)
}

fn agent_config(world: &World, id: &str) -> AgentConfig {
    AgentConfig::new(
        id,
        BusConfig::new(world.nats.url(), id).with_subject_root(world.root.clone()),
    )
    .with_id(id)
    .with_heartbeat_interval(Duration::from_millis(100))
}

async fn wait_until_registered(bus: &Bus, id: &str) -> AgentRecord {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        if let Ok(record) = get(bus, id).await {
            return record;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "agent {id} never registered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_sdk_agent_signs_its_registration_heartbeats_and_deregistration() -> anyhow::Result<()> {
    let world = World::start().await?;
    let running = RunningRegistry::start(&world, RegistryConfig::default()).await?;
    let metrics = running.registry.context().metrics.clone();
    let bus = world.bus("client").await?;

    let key = AgentKey::from_seed([4; 32]);
    let (stop, agent) = sdk_agent(agent_config(&world, "sdk-1").with_key(key.clone()));
    let record = wait_until_registered(&bus, "sdk-1").await;
    assert_eq!(record.public_key, key.public_key_base64());
    // Heartbeats are accepted: the counter moves and no fault is counted.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while metric_counter(&metrics.encode(), "registry_heartbeats") < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no signed heartbeat accepted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !metrics.encode().contains("registry_identity_faults_total{"),
        "{}",
        metrics.encode()
    );
    stop.trigger();
    agent.await??;
    assert_eq!(
        get(&bus, "sdk-1").await.unwrap_err().code,
        ErrorCode::NotFound
    );
    let events: Vec<String> = EventStore::new(world.db.pool().clone())
        .events_for("agent", "sdk-1")
        .await?
        .into_iter()
        .map(|e| e.event_type)
        .collect();
    assert_eq!(events, ["agent.registered", "agent.deregistered"]);
    running.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_operator_removal_stops_the_agent_and_it_does_not_come_back() -> anyhow::Result<()> {
    let world = World::start().await?;
    let running = RunningRegistry::start(&world, RegistryConfig::default()).await?;
    let bus = world.bus("operator").await?;

    let key = AgentKey::from_seed([5; 32]);
    let (_stop, agent) = sdk_agent(agent_config(&world, "doomed").with_key(key.clone()));
    wait_until_registered(&bus, "doomed").await;
    let reply: RemoveAgentReply = bus
        .request(
            bus.subjects.endpoint("registry", "remove"),
            &RemoveAgent {
                id: "doomed".into(),
                reason: "retired".into(),
            },
            TIMEOUT,
        )
        .await?;
    let tombstone = reply.agent.unwrap();
    assert!(tombstone.deregistered);
    assert_eq!(tombstone.removed_reason, "retired");

    // The agent stops on its own (its next heartbeat is answered AGENT_REMOVED).
    let outcome = tokio::time::timeout(TIMEOUT, agent).await??;
    match outcome {
        Err(AgentError::Removed { agent_id, reason }) => {
            assert_eq!(agent_id, "doomed");
            assert!(reason.contains("retired"), "{reason}");
        }
        other => panic!("expected a removal, got {other:?}"),
    }
    // ... and has not registered again.
    assert_eq!(
        get(&bus, "doomed").await.unwrap_err().code,
        ErrorCode::NotFound
    );
    let error = heartbeat(&bus, &beat("doomed", 0), Sign::As(&key, "doomed", now_ms()))
        .await
        .unwrap_err();
    assert_eq!(error.code, ErrorCode::AgentRemoved);
    assert_eq!(error.status(), 410);
    // Removing it again answers the same tombstone; unknown ids are NOT_FOUND.
    let again: RemoveAgentReply = bus
        .request(
            bus.subjects.endpoint("registry", "remove"),
            &RemoveAgent {
                id: "doomed".into(),
                reason: String::new(),
            },
            TIMEOUT,
        )
        .await?;
    assert_eq!(again.agent.unwrap().removed_reason, "retired");
    let unknown = bus
        .request::<_, RemoveAgentReply>(
            bus.subjects.endpoint("registry", "remove"),
            &RemoveAgent {
                id: "nobody".into(),
                reason: String::new(),
            },
            TIMEOUT,
        )
        .await
        .unwrap_err();
    assert_eq!(unknown.code, ErrorCode::NotFound);

    // Started again (a new registration), it is back and no longer removed.
    let (stop, agent) = sdk_agent(agent_config(&world, "doomed").with_key(key));
    let record = wait_until_registered(&bus, "doomed").await;
    assert!(record.removed_reason.is_empty());
    let events: Vec<String> = EventStore::new(world.db.pool().clone())
        .events_for("agent", "doomed")
        .await?
        .into_iter()
        .map(|e| e.event_type)
        .collect();
    assert_eq!(
        events,
        ["agent.registered", "agent.removed", "agent.registered"]
    );
    stop.trigger();
    agent.await??;
    running.stop().await;
    Ok(())
}

#[tokio::test]
async fn the_dispatcher_ignores_forged_heartbeats() -> anyhow::Result<()> {
    let stack = Stack::start(concord_tests::stack::test_config()).await;
    // Stack agents have configured ids; give this one a key.
    let key = AgentKey::from_seed([6; 32]);
    let config = AgentConfig::new(
        "keyed",
        BusConfig::new(stack.world.nats.url(), "keyed").with_subject_root(stack.world.root.clone()),
    )
    .with_id("keyed")
    .with_key(key)
    .with_heartbeat_interval(Duration::from_secs(5));
    let (stop, agent) = sdk_agent(config);
    stack.wait_for_agent("keyed").await;

    // An unsigned heartbeat claiming the agent is UNHEALTHY.
    let forged = Heartbeat {
        health: AgentHealth::Unhealthy as i32,
        ..beat("keyed", 0)
    };
    let refused_before = stack.dispatcher_counter("dispatcher_heartbeats_refused");
    let _ = heartbeat(&stack.client, &forged, Sign::No).await;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while stack.dispatcher_counter("dispatcher_heartbeats_refused") == refused_before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the forged heartbeat was believed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Work still reaches the agent at once (with the forged health believed
    // it would wait for the agent's next genuine heartbeat, 5 s away).
    let reply = stack
        .client
        .client
        .request(
            stack.client.subjects.tasks_run(),
            br#"{"capability":"echo","payload":{"n":1}}"#.as_slice().into(),
        )
        .await?;
    let result: concord_wire::v1::TaskResult = concord_bus::service::read_reply(&reply)?;
    assert_eq!(
        result.status,
        concord_wire::v1::TaskStatus::Completed as i32
    );
    stop.trigger();
    agent.await??;
    stack.stop().await;
    Ok(())
}
