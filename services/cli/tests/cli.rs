//! The `concord` binary against a real nats-server and Postgres: `ping` waits
//! for expected services and fails naming the missing ones.

use std::process::Command;
use std::time::Duration;

use concord_bus::{BusConfig, ServiceHost, ServiceSpec};
use concord_telemetry::MetricsRegistry;
use concord_testkit::NatsServer;

fn concord(nats: &NatsServer, db_url: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_concord"))
        .env("CONCORD_NATS_URL", nats.url())
        .env("CONCORD_DATABASE_URL", db_url)
        .args(args)
        .output()
        .expect("run concord")
}

#[tokio::test]
async fn ping_waits_for_expected_services_and_names_missing_ones() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let bus = concord_bus::connect(&BusConfig::new(nats.url(), "test")).await?;
    let host = ServiceHost::start(
        &bus,
        ServiceSpec::new("concord-pingtest", "ping test"),
        &MetricsRegistry::default(),
    )
    .await?;

    let ok = tokio::task::spawn_blocking({
        let url = nats.url();
        move || {
            Command::new(env!("CARGO_BIN_EXE_concord"))
                .env("CONCORD_NATS_URL", url)
                .args(["ping", "--wait", "10", "--expect", "concord-pingtest"])
                .output()
                .unwrap()
        }
    })
    .await?;
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("concord-pingtest"));

    let missing = concord(
        &nats,
        "",
        &["ping", "--wait", "1", "--expect", "concord-nothere"],
    );
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("concord-nothere"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
    host.shutdown(Duration::from_secs(1)).await;
    Ok(())
}

#[tokio::test]
async fn unreachable_nats_is_one_line_naming_the_flag() -> anyhow::Result<()> {
    let output = Command::new(env!("CARGO_BIN_EXE_concord"))
        .env("CONCORD_NATS_URL", "nats://127.0.0.1:1")
        .args(["ping"])
        .output()?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--nats-url"), "{stderr}");
    Ok(())
}
