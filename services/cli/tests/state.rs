//! `concord state` against a real state service (in-process, real NATS and
//! Postgres): create, put with and without --expect, a conflict showing the
//! current document, patch, get, list, history, delete, watch printing
//! the current value then each change, snapshot take/show/list and restore,
//! and a workflow stage record stepped through.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use concord_bus::Shutdown;
use concord_testkit::{NatsServer, TestDatabase};

fn concord(nats: &NatsServer, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_concord"))
        .env("CONCORD_NATS_URL", nats.url())
        .args(args)
        .output()
        .expect("run concord")
}

fn stdout(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "concord failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn json(output: &std::process::Output) -> serde_json::Value {
    serde_json::from_str(&stdout(output)).expect("JSON on stdout")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_commands_read_write_list_and_watch() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let db = TestDatabase::create().await?;
    let args = concord_tests::service_args(&nats.url(), db.url(), "concord");
    let context =
        concord_runtime::ServiceContext::connect(&concord_state::INFO, &args, Shutdown::new())
            .await?;
    let shutdown = context.shutdown.clone();
    let service = concord_state::build(context).await?;
    let running = tokio::spawn(service.run_until_stopped());

    let created = json(&concord(
        &nats,
        &[
            "state",
            "create",
            "team/plan",
            r#"{"title":"Q4"}"#,
            "--actor",
            "ops",
        ],
    ));
    assert_eq!(created["version"], "1");
    assert_eq!(created["updatedBy"], "ops");
    let put = json(&concord(
        &nats,
        &[
            "state",
            "put",
            "team/plan",
            r#"{"title":"Q4","n":2}"#,
            "--expect",
            "1",
        ],
    ));
    assert_eq!(put["version"], "2");

    // A stale --expect fails, exit 1, and shows the current document.
    let conflict = concord(&nats, &["state", "put", "team/plan", "{}", "--expect", "1"]);
    assert!(!conflict.status.success());
    let stderr = String::from_utf8_lossy(&conflict.stderr);
    assert!(stderr.contains("CONFLICT"), "{stderr}");
    assert!(
        stderr.contains("current document") && stderr.contains("\"n\":2"),
        "{stderr}"
    );
    let bad = concord(&nats, &["state", "put", "team/plan", "{not json"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not valid JSON"));

    let patched = json(&concord(
        &nats,
        &["state", "patch", "team/plan", r#"{"n":null,"owner":"b"}"#],
    ));
    assert_eq!(
        patched["value"],
        serde_json::json!({"title": "Q4", "owner": "b"})
    );
    let got = json(&concord(&nats, &["state", "get", "team/plan"]));
    assert_eq!(got, patched);

    concord(&nats, &["state", "create", "team/other", "1"]);
    let table = stdout(&concord(&nats, &["state", "list", "team/"]));
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("KEY"), "{table}");
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[1].starts_with("team/other") && lines[2].starts_with("team/plan"));
    let listed = stdout(&concord(&nats, &["state", "list", "team/", "--json"]));
    assert_eq!(listed.lines().count(), 2);

    let history = stdout(&concord(
        &nats,
        &["state", "history", "team/plan", "--json"],
    ));
    let kinds: Vec<String> = history
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(kinds, ["created", "put", "patched"]);
    let table = stdout(&concord(
        &nats,
        &["state", "history", "team/plan", "--since", "2"],
    ));
    assert_eq!(table.lines().count(), 2, "header and one change: {table}");

    // watch prints the current value, then the next change.
    let mut watch = Command::new(env!("CARGO_BIN_EXE_concord"))
        .env("CONCORD_NATS_URL", nats.url())
        .args(["state", "watch", "team/plan"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let first: serde_json::Value = serde_json::from_str(&lines.next().unwrap()?)?;
    assert_eq!(first["version"], "3");
    let deleted = json(&concord(
        &nats,
        &["state", "delete", "team/plan", "--expect", "3"],
    ));
    assert_eq!(deleted["deleted"], true);
    let change: serde_json::Value = serde_json::from_str(&lines.next().unwrap()?)?;
    assert_eq!(
        (change["version"].as_str(), change["kind"].as_str()),
        (Some("4"), Some("deleted"))
    );
    watch.kill()?;
    let _ = watch.wait();

    // Snapshot the namespace, change it, restore it.
    let id = stdout(&concord(&nats, &["state", "snapshot", "take", "team"]))
        .trim()
        .to_string();
    let shown = json(&concord(
        &nats,
        &["state", "snapshot", "show", &id, "--values"],
    ));
    assert_eq!(shown["count"], 1, "{shown}");
    assert_eq!(shown["documents"][0]["key"], "team/other");
    assert_eq!(shown["documents"][0]["value"], 1);
    let listed = stdout(&concord(&nats, &["state", "snapshot", "list", "team"]));
    assert!(
        listed.lines().nth(1).is_some_and(|l| l.starts_with(&id)),
        "{listed}"
    );
    concord(&nats, &["state", "put", "team/other", "2"]);
    let restored = json(&concord(&nats, &["state", "restore", &id, "--json"]));
    assert_eq!(restored["changes"][0]["kind"], "restored", "{restored}");
    assert_eq!(
        json(&concord(&nats, &["state", "get", "team/other"]))["value"],
        1
    );

    // A workflow stage record, step by step.
    let record = json(&concord(
        &nats,
        &[
            "state",
            "workflow",
            "create",
            "--id",
            "article",
            "--stages",
            "draft,review",
            "--assign",
            "draft=writer-1",
        ],
    ));
    assert_eq!(record["status"], "WORKFLOW_CREATED", "{record}");
    assert_eq!(record["assignees"]["draft"], "writer-1");
    concord(&nats, &["state", "workflow", "start", "article"]);
    let drafted = json(&concord(
        &nats,
        &[
            "state", "workflow", "complete", "article", "draft", "--score", "0.7",
        ],
    ));
    assert_eq!(drafted["current"], "review");
    let stale = concord(
        &nats,
        &[
            "state",
            "workflow",
            "send-back",
            "article",
            "draft",
            "--expect",
            "1",
        ],
    );
    assert!(
        String::from_utf8_lossy(&stale.stderr).contains("CONFLICT"),
        "{stale:?}"
    );
    let back = json(&concord(
        &nats,
        &["state", "workflow", "send-back", "article", "draft"],
    ));
    assert_eq!(back["iteration"], 2);
    let table = stdout(&concord(
        &nats,
        &["state", "workflow", "list", "--status", "running"],
    ));
    assert!(
        table
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("article")),
        "{table}"
    );

    let missing = concord(&nats, &["state", "get", "team/plan"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("deleted at version 4"));

    shutdown.trigger();
    running.await??;
    Ok(())
}
