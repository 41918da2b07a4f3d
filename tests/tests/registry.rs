//! The registry against real NATS and Postgres: registration and its refusal
//! cases, liveness transitions under a manual clock, deregistration, restart
//! durability, two replicas, reputation and the published directory.

use std::sync::Arc;
use std::time::Duration;

use concord_bus::{Bus, ServiceError};
use concord_registry::RegistryConfig;
use concord_runtime::ManualClock;
use concord_store::{DeadLetterFilter, EventStore};
use concord_tests::{RunningRegistry, World};
use concord_wire::v1::{
    AgentRecord, Capability, DeregisterAgent, DeregisterAgentReply, DiscoverAgents,
    DiscoverAgentsReply, ErrorCode, GetAgent, Heartbeat, HeartbeatAck, Liveness, RegisterAgent,
    RegisterAgentReply,
};
use futures::StreamExt;

const TIMEOUT: Duration = Duration::from_secs(5);

async fn start(world: &World, clock: &ManualClock) -> anyhow::Result<RunningRegistry> {
    let config = RegistryConfig {
        clock: Arc::new(clock.clone()),
        background: false,
        ..RegistryConfig::default()
    };
    RunningRegistry::start(world, config).await
}

fn registration(id: &str) -> RegisterAgent {
    RegisterAgent {
        id: id.into(),
        name: format!("agent {id}"),
        capabilities: vec![
            Capability {
                name: "summarize".into(),
                level: 0.9,
            },
            Capability {
                name: "echo".into(),
                level: 1.0,
            },
        ],
        max_concurrency: 4,
        version: "1.2.3".into(),
        labels: [("region".to_string(), "eu".to_string())].into(),
        public_key: String::new(),
    }
}

async fn register(bus: &Bus, message: &RegisterAgent) -> Result<RegisterAgentReply, ServiceError> {
    bus.request(
        bus.subjects.endpoint("registry", "register"),
        message,
        TIMEOUT,
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

async fn heartbeat(bus: &Bus, id: &str) -> Result<HeartbeatAck, ServiceError> {
    let beat = Heartbeat {
        agent_id: id.into(),
        in_flight: 1,
        capacity: 4,
        health: 1,
        ..Default::default()
    };
    bus.request(
        bus.subjects.endpoint("registry", "heartbeat"),
        &beat,
        TIMEOUT,
    )
    .await
}

async fn discover(bus: &Bus, query: DiscoverAgents) -> DiscoverAgentsReply {
    bus.request(
        bus.subjects.endpoint("registry", "discover"),
        &query,
        TIMEOUT,
    )
    .await
    .expect("discover")
}

fn by_capability(capability: &str, liveness: &[Liveness]) -> DiscoverAgents {
    DiscoverAgents {
        capability: capability.into(),
        liveness: liveness.iter().map(|l| *l as i32).collect(),
        ..Default::default()
    }
}

async fn agent_events(world: &World, id: &str) -> Vec<String> {
    let store = EventStore::new(world.db.pool().clone());
    store
        .events_for("agent", id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event_type)
        .collect()
}

#[tokio::test]
async fn register_update_discover_get_and_events() -> anyhow::Result<()> {
    let world = World::start().await?;
    let clock = ManualClock::new();
    let running = start(&world, &clock).await?;
    let bus = world.bus("client").await?;
    let mut live = bus
        .client
        .subscribe(bus.subjects.join("events.agent.*"))
        .await?;
    bus.client.flush().await?;

    let reply = register(&bus, &registration("a1")).await?;
    assert!(reply.created);
    let agent = reply.agent.unwrap();
    assert_eq!(agent.id, "a1");
    assert_eq!(agent.liveness, Liveness::Alive as i32);
    assert_eq!(agent.revision, 1);
    assert_eq!(agent.reputation, 0.5);
    assert_eq!(agent.capabilities.len(), 2);

    // An update keeps the id, bumps the revision, says created=false.
    let mut changed = registration("a1");
    changed.capabilities.truncate(1);
    let reply = register(&bus, &changed).await?;
    assert!(!reply.created);
    assert_eq!(reply.agent.as_ref().unwrap().revision, 2);
    assert_eq!(reply.agent.unwrap().capabilities.len(), 1);

    // An id is assigned when absent.
    let mut anonymous = registration("");
    anonymous.name = "anon".into();
    let assigned = register(&bus, &anonymous).await?.agent.unwrap().id;
    assert!(assigned.starts_with("agent-"), "{assigned}");

    let found = discover(&bus, by_capability("summarize", &[Liveness::Alive])).await;
    let ids: Vec<&str> = found.agents.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, vec!["a1", assigned.as_str()]);
    // "echo" was removed from a1 by the update.
    let echo = discover(&bus, by_capability("echo", &[])).await;
    assert_eq!(
        echo.agents
            .iter()
            .map(|a| a.id.as_str())
            .collect::<Vec<_>>(),
        vec![assigned.as_str()]
    );

    assert_eq!(get(&bus, "a1").await?.name, "agent a1");
    assert_eq!(
        get(&bus, "nope").await.unwrap_err().code,
        ErrorCode::NotFound
    );

    assert_eq!(
        agent_events(&world, "a1").await,
        vec!["agent.registered", "agent.updated"]
    );
    let first = tokio::time::timeout(TIMEOUT, live.next()).await?.unwrap();
    assert!(first.subject.ends_with("events.agent.registered"));

    // The directory bucket holds the current record for other services.
    let kv = bus
        .jetstream()
        .get_key_value(bus.subjects.stream_name("agents"))
        .await?;
    let stored: AgentRecord = serde_json::from_slice(&kv.get("a1").await?.unwrap())?;
    assert_eq!(stored.revision, 2);

    running.stop().await;
    Ok(())
}

#[tokio::test]
async fn bad_registrations_name_the_field_store_nothing_and_are_dead_lettered() -> anyhow::Result<()>
{
    let world = World::start().await?;
    let running = start(&world, &ManualClock::new()).await?;
    let bus = world.bus("client").await?;

    type Spoil = Box<dyn Fn(&mut RegisterAgent)>;
    let cases: Vec<(&str, Spoil)> = vec![
        ("name", Box::new(|r| r.name.clear())),
        ("capabilities", Box::new(|r| r.capabilities.clear())),
        (
            "capabilities[0].level",
            Box::new(|r| r.capabilities[0].level = 3.0),
        ),
        (
            "labels",
            Box::new(|r| {
                for n in 0..100 {
                    r.labels.insert(format!("k{n}"), "v".into());
                }
            }),
        ),
        (
            "publicKey",
            Box::new(|r| r.public_key = "not base64!".into()),
        ),
    ];
    for (field, spoil) in &cases {
        let mut message = registration("bad1");
        spoil(&mut message);
        let error = register(&bus, &message).await.unwrap_err();
        assert_eq!(error.code, ErrorCode::InvalidArgument, "{field}: {error}");
        assert_eq!(error.field.as_deref(), Some(*field), "{error}");
    }
    assert_eq!(
        get(&bus, "bad1").await.unwrap_err().code,
        ErrorCode::NotFound
    );
    assert!(agent_events(&world, "bad1").await.is_empty());
    // Dead letters are written right after each error reply went out.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let letters = running
            .registry
            .context()
            .dead_letters
            .list(&DeadLetterFilter::default())
            .await?;
        if letters.len() == cases.len() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {} dead letters, found {}",
            cases.len(),
            letters.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.stop().await;
    Ok(())
}

#[tokio::test]
async fn liveness_moves_to_suspect_then_unavailable_and_back_on_heartbeat() -> anyhow::Result<()> {
    let world = World::start().await?;
    let clock = ManualClock::new();
    let running = start(&world, &clock).await?;
    let registry = &running.registry;
    let bus = world.bus("client").await?;
    register(&bus, &registration("l1")).await?;
    register(&bus, &registration("l2")).await?;

    // Within three intervals nothing changes.
    clock.advance(Duration::from_millis(2900));
    heartbeat(&bus, "l2").await?;
    assert_eq!(registry.sweep().await?, 0);

    // l1 misses its third heartbeat: suspect. l2 heartbeated at 2.9 s.
    clock.advance(Duration::from_millis(200));
    assert_eq!(registry.sweep().await?, 1);
    assert_eq!(get(&bus, "l1").await?.liveness, Liveness::Suspect as i32);
    assert_eq!(get(&bus, "l2").await?.liveness, Liveness::Alive as i32);
    let suspects = discover(&bus, by_capability("echo", &[Liveness::Suspect])).await;
    assert_eq!(suspects.agents.len(), 1);
    assert!(
        discover(&bus, by_capability("echo", &[Liveness::Alive]))
            .await
            .agents
            .iter()
            .all(|a| a.id == "l2")
    );

    // Sweeping again without time passing changes nothing (no repeated events).
    assert_eq!(registry.sweep().await?, 0);

    // Six intervals: unavailable (l2 too, by now it is three late).
    clock.advance(Duration::from_secs(3));
    assert_eq!(registry.sweep().await?, 2);
    assert_eq!(
        get(&bus, "l1").await?.liveness,
        Liveness::Unavailable as i32
    );
    assert_eq!(get(&bus, "l2").await?.liveness, Liveness::Suspect as i32);

    // A heartbeat brings l1 back.
    heartbeat(&bus, "l1").await?;
    registry.flush_heartbeats().await?;
    assert_eq!(get(&bus, "l1").await?.liveness, Liveness::Alive as i32);
    assert_eq!(
        agent_events(&world, "l1").await,
        vec![
            "agent.registered",
            "agent.suspect",
            "agent.unavailable",
            "agent.recovered"
        ]
    );
    running.stop().await;
    Ok(())
}

#[tokio::test]
async fn deregistered_agents_are_gone_and_may_register_again() -> anyhow::Result<()> {
    let world = World::start().await?;
    let running = start(&world, &ManualClock::new()).await?;
    let bus = world.bus("client").await?;
    register(&bus, &registration("d1")).await?;
    let subject = bus.subjects.endpoint("registry", "deregister");
    let reply: DeregisterAgentReply = bus
        .request(
            subject.clone(),
            &DeregisterAgent { id: "d1".into() },
            TIMEOUT,
        )
        .await?;
    assert_eq!(reply.agent.unwrap().id, "d1");

    assert_eq!(get(&bus, "d1").await.unwrap_err().code, ErrorCode::NotFound);
    assert!(
        discover(&bus, by_capability("echo", &[]))
            .await
            .agents
            .is_empty()
    );
    // Heartbeats from a deregistered agent tell it to register again.
    assert_eq!(
        heartbeat(&bus, "d1").await.unwrap_err().code,
        ErrorCode::NotFound
    );
    // Deregistering twice is NOT_FOUND.
    let again = bus
        .request::<_, DeregisterAgentReply>(subject, &DeregisterAgent { id: "d1".into() }, TIMEOUT)
        .await;
    assert_eq!(again.unwrap_err().code, ErrorCode::NotFound);
    let kv = bus
        .jetstream()
        .get_key_value(bus.subjects.stream_name("agents"))
        .await?;
    // The bucket keeps a tombstone at the deregistration's revision, so an
    // older record published late cannot bring the agent back.
    let tombstone: AgentRecord = serde_json::from_slice(&kv.get("d1").await?.unwrap())?;
    assert!(tombstone.deregistered);
    let mut stale = tombstone.clone();
    stale.deregistered = false;
    stale.revision -= 1;
    running.registry.bucket().publish(&stale).await?;
    let still: AgentRecord = serde_json::from_slice(&kv.get("d1").await?.unwrap())?;
    assert!(still.deregistered, "an older record replaced the tombstone");
    assert!(
        running
            .registry
            .directory()
            .read()
            .unwrap()
            .get("d1")
            .is_none()
    );

    // Registering again continues the agent's history.
    assert!(register(&bus, &registration("d1")).await?.created);
    assert_eq!(
        agent_events(&world, "d1").await,
        vec!["agent.registered", "agent.deregistered", "agent.registered"]
    );
    running.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_restarted_registry_keeps_its_directory() -> anyhow::Result<()> {
    let world = World::start().await?;
    let clock = ManualClock::new();
    let first = start(&world, &clock).await?;
    let bus = world.bus("client").await?;
    for n in 0..20 {
        register(&bus, &registration(&format!("r{n}"))).await?;
    }
    first.stop().await;

    let second = start(&world, &clock).await?;
    let found = discover(&bus, by_capability("echo", &[Liveness::Alive])).await;
    assert_eq!(found.agents.len(), 20);
    // Agents need not re-register: their heartbeats are accepted.
    heartbeat(&bus, "r3").await?;
    second.stop().await;
    Ok(())
}

#[tokio::test]
async fn two_replicas_share_the_work_without_conflicts() -> anyhow::Result<()> {
    let world = World::start().await?;
    let clock = ManualClock::new();
    let a = start(&world, &clock).await?;
    let b = start(&world, &clock).await?;
    let bus = world.bus("client").await?;

    // Concurrent registrations (some of the same id) spread over both replicas.
    let mut tasks = Vec::new();
    for n in 0..40 {
        let bus = bus.clone();
        tasks.push(tokio::spawn(async move {
            register(&bus, &registration(&format!("p{}", n % 20))).await
        }));
    }
    for task in tasks {
        task.await??;
    }
    // Each replica's directory converges on all 20 agents.
    for registry in [&a.registry, &b.registry] {
        let directory = registry.directory();
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while directory.read().unwrap().len() < 20 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "replica directory did not converge"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Every agent has exactly one `registered` event and one `updated`.
    for n in 0..20 {
        assert_eq!(
            agent_events(&world, &format!("p{n}")).await,
            vec!["agent.registered", "agent.updated"]
        );
    }
    // Both replicas sweep at the same moment: each transition happens once.
    clock.advance(Duration::from_millis(3100));
    let (swept_a, swept_b) = tokio::join!(a.registry.sweep(), b.registry.sweep());
    assert_eq!(swept_a? + swept_b?, 20);
    for n in 0..20 {
        let events = agent_events(&world, &format!("p{n}")).await;
        assert_eq!(
            events.iter().filter(|e| *e == "agent.suspect").count(),
            1,
            "{events:?}"
        );
    }
    a.stop().await;
    b.stop().await;
    Ok(())
}

#[tokio::test]
async fn task_outcomes_move_reputation() -> anyhow::Result<()> {
    let world = World::start().await?;
    let running = start(&world, &ManualClock::new()).await?;
    let bus = world.bus("client").await?;
    register(&bus, &registration("good")).await?;
    register(&bus, &registration("bad")).await?;
    // Wait until the outcome subscription is live: a flush makes the server see it.
    bus.client.flush().await?;
    running.registry.context().bus.client.flush().await?;
    for (agent, outcome, count) in [
        ("good", "completed", 8),
        ("bad", "failed", 8),
        ("bad", "completed", 2),
    ] {
        for _ in 0..count {
            let body =
                serde_json::json!({"type": format!("task.{outcome}"), "data": {"agentId": agent}});
            bus.client
                .publish(
                    bus.subjects.event("task", outcome),
                    serde_json::to_vec(&body)?.into(),
                )
                .await?;
        }
    }
    bus.client.flush().await?;
    // Outcomes arrive asynchronously; flush until all 18 are counted.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let mut counted = 0;
    while counted < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "outcomes not received"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        running.registry.flush_outcomes().await?;
        let good = get(&bus, "good").await?.reputation;
        let bad = get(&bus, "bad").await?.reputation;
        counted = usize::from(good == 0.9) + usize::from((bad - 0.25).abs() < 1e-9);
    }
    running.stop().await;
    Ok(())
}
