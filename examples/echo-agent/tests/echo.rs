//! The built `concord-echo-agent` binary, configured by env vars: echoes a
//! task, and on SIGTERM shuts down cleanly and deregisters.

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;

use concord_bus::BusConfig;
use concord_sdk::testing::FakeRegistry;
use concord_testkit::NatsServer;
use concord_wire::v1::{AgentResult, TaskAssignment, agent_result};

const WAIT: Duration = Duration::from_secs(15);

#[tokio::test]
async fn the_binary_echoes_payloads_and_stops_cleanly_on_sigterm() {
    let nats = NatsServer::start().await.expect("nats-server starts");
    let root = format!("t{}", uuid::Uuid::new_v4().simple());
    let bus =
        concord_bus::connect(&BusConfig::new(nats.url(), "echo-test").with_subject_root(&root))
            .await
            .unwrap();
    let mut registry = FakeRegistry::start(&bus.client, &bus.subjects)
        .await
        .unwrap();

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_concord-echo-agent"))
        .env("CONCORD_NATS_URL", nats.url())
        .env("CONCORD_SUBJECT_ROOT", &root)
        .env("CONCORD_AGENT_ID", "echo-1")
        .env("CONCORD_AGENT_MAX_CONCURRENCY", "4")
        .env("CONCORD_LOG", "warn")
        .env_remove("CONCORD_METRICS_ADDR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("the echo agent binary starts");

    let registration = registry.next_registration(WAIT).await.expect("registers");
    assert_eq!(registration.id, "echo-1");
    assert_eq!(registration.name, "concord-echo-agent");
    assert_eq!(registration.max_concurrency, 4);
    assert_eq!(registration.capabilities.len(), 1);
    assert_eq!(registration.capabilities[0].name, "echo");

    let payload = serde_json::json!({"text": "hello", "nested": {"ok": true}});
    let task = TaskAssignment {
        task_id: "t-echo".into(),
        attempt: 1,
        capability: "echo".into(),
        payload: Some(serde_json::from_value(payload.clone()).unwrap()),
        ..Default::default()
    };
    let result: AgentResult = bus
        .request(bus.subjects.agent_tasks("echo-1"), &task, WAIT)
        .await
        .expect("the echo agent answers");
    match result.outcome {
        Some(agent_result::Outcome::Output(output)) => {
            assert_eq!(serde_json::to_value(&output).unwrap(), payload);
        }
        other => panic!("expected the payload back, got {other:?}"),
    }

    let pid = child.id().expect("running").to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert!(
        status.success(),
        "exit status {status:?} (signal {:?})",
        status.signal()
    );
    let deregistration = registry
        .next_deregistration(WAIT)
        .await
        .expect("deregisters");
    assert_eq!(deregistration.id, "echo-1");
}
