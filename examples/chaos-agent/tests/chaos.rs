//! The chaos agent on a real nats-server: injected failures in-process, and
//! the built binary crashing (SIGABRT) on its first task without replying.

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;

use concord_bus::{Bus, BusConfig, Shutdown};
use concord_chaos_agent::{ChaosAgent, ChaosConfig, RETRYABLE_CODE};
use concord_sdk::AgentConfig;
use concord_sdk::testing::FakeRegistry;
use concord_testkit::NatsServer;
use concord_wire::pbjson_types;
use concord_wire::v1::{AgentResult, ErrorCode, TaskAssignment, agent_result};

const WAIT: Duration = Duration::from_secs(15);

async fn setup() -> (NatsServer, Bus, FakeRegistry) {
    let nats = NatsServer::start().await.expect("nats-server starts");
    let root = format!("t{}", uuid::Uuid::new_v4().simple());
    let bus =
        concord_bus::connect(&BusConfig::new(nats.url(), "chaos-test").with_subject_root(root))
            .await
            .expect("test client connects");
    let registry = FakeRegistry::start(&bus.client, &bus.subjects)
        .await
        .unwrap();
    (nats, bus, registry)
}

fn assignment(task_id: &str) -> TaskAssignment {
    TaskAssignment {
        task_id: task_id.into(),
        attempt: 1,
        capability: "chaos".into(),
        payload: Some(pbjson_types::Value::from("payload")),
        ..Default::default()
    }
}

#[tokio::test]
async fn failure_rate_one_always_fails_retryable() {
    let (nats, bus, mut registry) = setup().await;
    let agent = ChaosAgent::new(ChaosConfig {
        failure_rate: 1.0,
        seed: 1,
        ..ChaosConfig::default()
    })
    .unwrap();
    let config = AgentConfig::new(
        "chaos",
        BusConfig::new(nats.url(), "chaos").with_subject_root(bus.subjects.root()),
    )
    .with_id("chaos-1");
    let shutdown = Shutdown::new();
    let running = tokio::spawn(concord_sdk::run(agent, config, shutdown.clone()));
    let registration = registry.next_registration(WAIT).await.expect("registers");
    assert_eq!(registration.capabilities[0].name, "chaos");

    for i in 0..20 {
        let result: AgentResult = bus
            .request(
                bus.subjects.agent_tasks("chaos-1"),
                &assignment(&format!("t-{i}")),
                WAIT,
            )
            .await
            .unwrap();
        match result.outcome {
            Some(agent_result::Outcome::Error(error)) => {
                assert!(error.retryable);
                assert_eq!(error.code, RETRYABLE_CODE);
            }
            other => panic!("expected a failure, got {other:?}"),
        }
    }
    shutdown.trigger();
    tokio::time::timeout(WAIT, running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn crash_after_one_aborts_on_the_first_task_without_replying() {
    let (nats, bus, mut registry) = setup().await;
    // ulimit: no core file from the abort.
    let mut child = tokio::process::Command::new("sh")
        .args(["-c", "ulimit -c 0 && exec \"$@\"", "sh"])
        .arg(env!("CARGO_BIN_EXE_concord-chaos-agent"))
        .args(["--nats-url", &nats.url()])
        .args(["--subject-root", bus.subjects.root()])
        .args(["--agent-id", "chaos-crash"])
        .args(["--crash-after", "1"])
        .args(["--log", "warn"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the chaos agent binary starts");

    let registration = registry.next_registration(WAIT).await.expect("registers");
    assert_eq!(registration.id, "chaos-crash");
    let seed = registration
        .labels
        .get("chaos-seed")
        .expect("the seed is a label");
    assert!(seed.parse::<u64>().is_ok(), "{seed}");

    let reply = {
        let bus = bus.clone();
        tokio::spawn(async move {
            bus.request::<_, AgentResult>(
                bus.subjects.agent_tasks("chaos-crash"),
                &assignment("t-doomed"),
                Duration::from_secs(1),
            )
            .await
        })
    };
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("the agent dies")
        .unwrap();
    assert_eq!(status.signal(), Some(6), "expected SIGABRT, got {status:?}");
    let error = reply
        .await
        .unwrap()
        .expect_err("no reply from a crashed agent");
    assert_eq!(error.code, ErrorCode::Timeout, "{error}");
    // It never said goodbye.
    assert!(
        registry
            .next_deregistration(Duration::from_millis(100))
            .await
            .is_none()
    );
}

#[test]
fn bad_rates_are_refused_by_the_binary() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_concord-chaos-agent"))
        .args(["--failure-rate", "1.5"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--failure-rate"), "{stderr}");
}
