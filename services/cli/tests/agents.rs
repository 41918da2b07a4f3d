//! `concord agents` against a real registry (in-process, real NATS and
//! Postgres): list with filters, get, remove, and a clear error when the
//! agent does not exist.

use std::process::Command;
use std::time::Duration;

use concord_bus::Shutdown;
use concord_config::ServiceArgs;
use concord_testkit::{NatsServer, TestDatabase};
use concord_wire::v1::{Capability, RegisterAgent, RegisterAgentReply};

fn args(nats: &NatsServer, db: &TestDatabase) -> ServiceArgs {
    concord_tests::service_args(&nats.url(), db.url(), "concord")
}

fn concord(nats: &NatsServer, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_concord"))
        .env("CONCORD_NATS_URL", nats.url())
        .args(args)
        .output()
        .expect("run concord")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_list_get_and_remove() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let db = TestDatabase::create().await?;
    let context = concord_runtime::ServiceContext::connect(
        &concord_registry::INFO,
        &args(&nats, &db),
        Shutdown::new(),
    )
    .await?;
    let shutdown = context.shutdown.clone();
    let service = concord_registry::build(context.clone()).await?;
    let running = tokio::spawn(service.run_until_stopped());

    for (id, capability, region) in [
        ("a1", "echo", "eu"),
        ("a2", "echo", "us"),
        ("a3", "summarize", "eu"),
    ] {
        let _: RegisterAgentReply = context
            .bus
            .request(
                context.bus.subjects.endpoint("registry", "register"),
                &RegisterAgent {
                    id: id.into(),
                    name: id.into(),
                    capabilities: vec![Capability {
                        name: capability.into(),
                        level: 1.0,
                    }],
                    labels: [("region".to_string(), region.to_string())].into(),
                    ..Default::default()
                },
                Duration::from_secs(5),
            )
            .await?;
    }

    let nats_ref = &nats;
    let run = |args: Vec<&'static str>| {
        let url = nats_ref.url();
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_concord"))
                .env("CONCORD_NATS_URL", url)
                .args(args)
                .output()
                .unwrap()
        })
    };
    let all = run(vec!["agents", "list"]).await?;
    assert!(
        all.status.success(),
        "{}",
        String::from_utf8_lossy(&all.stderr)
    );
    let text = String::from_utf8_lossy(&all.stdout);
    assert_eq!(text.lines().count(), 3, "{text}");

    let filtered = run(vec![
        "agents",
        "list",
        "--capability",
        "echo",
        "--label",
        "region=eu",
        "--liveness",
        "alive",
        "--json",
    ])
    .await?;
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&filtered.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["id"], "a1");

    let got = run(vec!["agents", "get", "a3"]).await?;
    let record: serde_json::Value = serde_json::from_slice(&got.stdout)?;
    assert_eq!(record["capabilities"][0]["name"], "summarize");

    let gone = run(vec!["agents", "remove", "a2", "--reason", "retired"]).await?;
    assert!(
        gone.status.success(),
        "{}",
        String::from_utf8_lossy(&gone.stderr)
    );
    assert!(String::from_utf8_lossy(&gone.stdout).contains("removed a2 (retired)"));
    let missing = run(vec!["agents", "get", "a2"]).await?;
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("NOT_FOUND") && stderr.contains("a2"),
        "{stderr}"
    );

    let bad = concord(&nats, &["agents", "list", "--liveness", "sleepy"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("alive, suspect or unavailable"));

    shutdown.trigger();
    running.await??;
    Ok(())
}
