//! Graceful shutdown: running tasks finish, new ones are refused, late ones are handed back.

use std::time::Duration;

use concord_wire::v1::ErrorCode;
use serde_json::json;

use crate::support::{
    Event, Harness, Running, WAIT, assign, assignment, error, output, test_agent,
};

#[tokio::test]
async fn shutdown_lets_the_running_task_finish_refuses_new_ones_and_deregisters() {
    let mut h = Harness::start().await;
    let (agent, mut probe) = test_agent();
    let running = Running::spawn(agent, h.config("agent-drain").with_shutdown_grace(WAIT));
    h.registry.next_registration(WAIT).await.unwrap();

    let in_flight = {
        let bus = h.bus.clone();
        tokio::spawn(async move {
            assign(
                &bus,
                "agent-drain",
                &assignment("t-long", json!({"op": "block"})),
            )
            .await
        })
    };
    assert_eq!(probe.next().await, Event::Started("t-long".into()));

    running.shutdown.trigger();
    // Draining: the registry hears at once that nothing more fits.
    let heartbeat = h
        .registry
        .heartbeat_where(WAIT, |hb| hb.capacity == 0)
        .await
        .expect("a capacity-0 heartbeat");
    assert_eq!(heartbeat.in_flight, 1);

    // New work finds nobody listening and never reaches the handler.
    let refused = assign(
        &h.bus,
        "agent-drain",
        &assignment("t-new", json!({"op": "echo"})),
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code, ErrorCode::Unavailable, "{refused}");
    assert_eq!(probe.next_within(Duration::from_millis(100)).await, None);
    assert!(
        h.registry.agent("agent-drain").is_some(),
        "still registered while draining"
    );

    // The running task finishes and its reply arrives.
    probe.release(1);
    let result = in_flight
        .await
        .unwrap()
        .expect("the running task is answered");
    assert_eq!(output(&result), json!({"done": "t-long"}));

    running.finished().await.expect("clean shutdown");
    let deregistration = h
        .registry
        .next_deregistration(WAIT)
        .await
        .expect("deregisters");
    assert_eq!(deregistration.id, "agent-drain");
}

#[tokio::test]
async fn a_task_still_running_after_the_grace_period_is_handed_back_retryable() {
    let mut h = Harness::start().await;
    let (agent, mut probe) = test_agent();
    let config = h
        .config("agent-handback")
        .with_shutdown_grace(Duration::from_millis(200));
    let running = Running::spawn(agent, config);
    h.registry.next_registration(WAIT).await.unwrap();

    let in_flight = {
        let bus = h.bus.clone();
        tokio::spawn(async move {
            assign(
                &bus,
                "agent-handback",
                &assignment("t-stuck", json!({"op": "block"})),
            )
            .await
        })
    };
    assert_eq!(probe.next().await, Event::Started("t-stuck".into()));

    running.stop().await.expect("clean shutdown");
    let result = in_flight.await.unwrap().expect("the task is answered");
    assert_eq!(result.task_id, "t-stuck");
    let failure = error(&result);
    assert!(failure.retryable);
    assert_eq!(failure.code, "agent_shutdown");
    h.registry
        .next_deregistration(WAIT)
        .await
        .expect("deregisters");
    // Answered exactly once: the handler's own (cancelled) answer is not sent.
    probe.release(1);
}
