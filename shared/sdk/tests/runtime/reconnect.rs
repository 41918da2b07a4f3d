//! Surviving a NATS restart: heartbeats resume and tasks are served again.

use serde_json::json;

use crate::support::{Harness, Running, WAIT, assignment, output, test_agent};

#[tokio::test]
async fn heartbeats_resume_and_tasks_are_served_after_a_nats_restart() {
    let mut h = Harness::start().await;
    let (agent, _probe) = test_agent();
    let running = Running::spawn(agent, h.config("agent-restart"));
    h.registry.next_registration(WAIT).await.unwrap();
    h.registry
        .next_heartbeat(WAIT)
        .await
        .expect("heartbeats before");

    h.nats.restart().await.expect("nats-server restarts");
    h.registry.clear();
    // Both the agent and the registry's client reconnect by themselves.
    h.registry
        .next_heartbeat(WAIT)
        .await
        .expect("heartbeats after the restart");

    let result = h
        .assign(
            "agent-restart",
            &assignment("t-after", json!({"op": "echo", "x": 1})),
        )
        .await
        .expect("a task is served after the restart");
    assert_eq!(output(&result), json!({"op": "echo", "x": 1}));
    running.stop().await.unwrap();
    h.registry
        .next_deregistration(WAIT)
        .await
        .expect("deregisters");
}
