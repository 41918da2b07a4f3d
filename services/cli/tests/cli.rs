//! The `concord` binary against a real nats-server and Postgres: `ping` waits
//! for expected services and fails naming the missing ones; `dlq` lists,
//! shows, replays and purges dead letters.

use std::process::Command;
use std::time::Duration;

use concord_bus::{BusConfig, ServiceHost, ServiceSpec};
use concord_store::{DeadLetterStore, NewDeadLetter};
use concord_telemetry::MetricsRegistry;
use concord_testkit::{NatsServer, TestDatabase};
use futures::StreamExt;

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

#[tokio::test]
async fn dlq_lists_shows_replays_and_purges() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let db = TestDatabase::create().await?;
    let store = DeadLetterStore::new(db.pool().clone());
    let id = uuid::Uuid::now_v7();
    store
        .put(&NewDeadLetter {
            id,
            subject: "concord.registry.register".into(),
            headers: [
                ("Content-Type".to_string(), "application/json".to_string()),
                ("Nats-Msg-Id".to_string(), "m-1".to_string()),
            ]
            .into(),
            payload: br#"{"bad":true}"#.to_vec(),
            reason: "invalid_input".into(),
            error: "bad: unknown field".into(),
            attempts: 1,
            source: "concord-registry".into(),
            history: serde_json::json!([]),
        })
        .await?;

    let list = concord(&nats, db.url(), &["dlq", "list"]);
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    let stdout = String::from_utf8_lossy(&list.stdout);
    assert!(
        stdout.contains(&id.to_string()) && stdout.contains("invalid_input"),
        "{stdout}"
    );

    let show = concord(&nats, db.url(), &["dlq", "show", &id.to_string()]);
    let shown: serde_json::Value = serde_json::from_slice(&show.stdout)?;
    assert_eq!(shown["payload"], r#"{"bad":true}"#);
    assert_eq!(shown["headers"]["Content-Type"], "application/json");

    let client = nats.client().await;
    let mut replayed = client.subscribe("concord.registry.register").await?;
    client.flush().await?;
    let replay = concord(&nats, db.url(), &["dlq", "replay", &id.to_string()]);
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    let message = tokio::time::timeout(Duration::from_secs(5), replayed.next())
        .await?
        .unwrap();
    assert_eq!(&message.payload[..], br#"{"bad":true}"#);
    let headers = message.headers.unwrap();
    assert_eq!(
        headers.get("Content-Type").unwrap().as_str(),
        "application/json"
    );
    // The duplicate window must not swallow the replay; the receiver learns
    // which dead letter it replays.
    assert!(headers.get("Nats-Msg-Id").is_none());
    assert_eq!(
        headers.get("Concord-Replay-Of").unwrap().as_str(),
        id.to_string()
    );
    assert_eq!(store.get(id).await?.unwrap().replay_count, 1);

    let unknown = concord(
        &nats,
        db.url(),
        &["dlq", "show", &uuid::Uuid::nil().to_string()],
    );
    assert!(!unknown.status.success());

    let purge = concord(&nats, db.url(), &["dlq", "purge", &id.to_string()]);
    assert!(String::from_utf8_lossy(&purge.stdout).contains("purged 1"));
    assert_eq!(store.count().await?, 0);
    Ok(())
}
