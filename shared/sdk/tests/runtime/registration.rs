//! Registration, heartbeats with real load, re-registration, refusals.

use std::time::Duration;

use futures::StreamExt;

use concord_bus::ServiceError;
use concord_sdk::AgentError;
use concord_sdk::testing::FakeRegistry;
use concord_wire::v1::{AgentHealth, ErrorCode};

use crate::support::{Harness, Running, WAIT, config_for, test_agent};

#[tokio::test]
async fn registers_capabilities_and_limits_heartbeats_and_deregisters() {
    let mut h = Harness::start().await;
    let (agent, _probe) = test_agent();
    let config = h
        .config("agent-reg")
        .with_max_concurrency(3)
        .with_label("region", "eu")
        .with_key(concord_sdk::AgentKey::from_seed([2; 32]));
    let agent = Running::spawn(agent, config);

    let registration = h.registry.next_registration(WAIT).await.expect("registers");
    assert_eq!(registration.id, "agent-reg");
    assert_eq!(registration.name, "sdk-test-agent");
    assert_eq!(registration.version, "9.9.9");
    assert_eq!(registration.max_concurrency, 3);
    assert_eq!(registration.labels["region"], "eu");
    assert_eq!(
        registration.public_key,
        concord_sdk::AgentKey::from_seed([2; 32]).public_key_base64()
    );
    let capabilities: Vec<_> = registration
        .capabilities
        .iter()
        .map(|c| (c.name.as_str(), c.level))
        .collect();
    assert_eq!(capabilities, [("test", 0.8), ("other", 0.0)]);

    let heartbeat = h.registry.next_heartbeat(WAIT).await.expect("heartbeats");
    assert_eq!(heartbeat.agent_id, "agent-reg");
    assert_eq!(heartbeat.in_flight, 0);
    assert_eq!(heartbeat.capacity, 3);
    assert_eq!(heartbeat.health, AgentHealth::Healthy as i32);
    assert!(h.registry.agent("agent-reg").is_some());

    agent.stop().await.expect("clean shutdown");
    let deregistration = h
        .registry
        .next_deregistration(WAIT)
        .await
        .expect("deregisters");
    assert_eq!(deregistration.id, "agent-reg");
    assert!(h.registry.agent("agent-reg").is_none());
}

#[tokio::test]
async fn heartbeats_carry_the_agents_health_and_finite_performance_figures() {
    let mut h = Harness::start().await;
    let (agent, _probe) = test_agent();
    let agent = agent
        .with_health(AgentHealth::Degraded)
        .with_performance("latency_ms_p50", 3.5)
        .with_performance("broken", f64::NAN);
    let running = Running::spawn(agent, h.config("agent-health"));
    let heartbeat = h.registry.next_heartbeat(WAIT).await.expect("heartbeats");
    assert_eq!(heartbeat.health, AgentHealth::Degraded as i32);
    assert_eq!(heartbeat.performance.len(), 1);
    assert_eq!(heartbeat.performance["latency_ms_p50"], 3.5);
    running.stop().await.unwrap();
}

#[tokio::test]
async fn not_found_on_heartbeat_triggers_a_new_registration() {
    let mut h = Harness::start().await;
    let (agent, _probe) = test_agent();
    let running = Running::spawn(agent, h.config("agent-forgotten"));
    h.registry.next_registration(WAIT).await.expect("registers");
    h.registry.next_heartbeat(WAIT).await.expect("heartbeats");

    assert!(h.registry.forget("agent-forgotten"));
    let again = h
        .registry
        .next_registration(WAIT)
        .await
        .expect("registers again");
    assert_eq!(again.id, "agent-forgotten");
    assert!(h.registry.agent("agent-forgotten").is_some());
    // And heartbeats go on being acknowledged.
    h.registry.clear();
    h.registry
        .next_heartbeat(WAIT)
        .await
        .expect("heartbeats again");
    running.stop().await.unwrap();
}

#[tokio::test]
async fn a_refused_registration_ends_run_with_the_registrys_error() {
    let h = Harness::start().await;
    h.registry.refuse_registrations(ServiceError {
        code: ErrorCode::AlreadyExists,
        message: "publicKey: the agent id is registered with a different public key".into(),
        field: Some("publicKey".into()),
        details: None,
    });
    let (agent, _probe) = test_agent();
    let outcome = Running::spawn(agent, h.config("agent-impostor"))
        .finished()
        .await;
    match outcome {
        Err(AgentError::Register { agent_id, source }) => {
            assert_eq!(agent_id, "agent-impostor");
            assert_eq!(source.code, ErrorCode::AlreadyExists);
            assert_eq!(source.field.as_deref(), Some("publicKey"));
        }
        other => panic!("expected a registration error, got {other:?}"),
    }
}

#[tokio::test]
async fn registration_is_retried_until_the_registry_answers() {
    let (nats, bus) = Harness::nats().await;
    let (agent, _probe) = test_agent();
    let config =
        config_for(&nats, &bus, "agent-early").with_request_timeout(Duration::from_millis(100));
    // A registry that hears but never answers: the first attempt times out.
    let mut silent = bus
        .client
        .subscribe(concord_sdk::protocol::register(&bus.subjects))
        .await
        .unwrap();
    bus.client.flush().await.unwrap();
    let running = Running::spawn(agent, config);
    tokio::time::timeout(WAIT, silent.next())
        .await
        .expect("a registration attempt")
        .unwrap();
    silent.unsubscribe().await.unwrap();
    let mut registry = FakeRegistry::start(&bus.client, &bus.subjects)
        .await
        .unwrap();
    let registration = registry
        .next_registration(WAIT)
        .await
        .expect("registers once the registry is up");
    assert_eq!(registration.id, "agent-early");
    running.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_before_the_registry_answers_returns_ok() {
    let (nats, bus) = Harness::nats().await;
    let (agent, _probe) = test_agent();
    let running = Running::spawn(agent, config_for(&nats, &bus, "agent-never"));
    running
        .stop()
        .await
        .expect("no error when stopped before registering");
}
