//! Snapshots of a namespace against real NATS and Postgres: taking one with
//! the versions and values at that point, paging its documents, listing
//! snapshots, restoring (each document that differs gets a new version,
//! documents the snapshot does not hold are deleted, other namespaces are
//! untouched, the changes are published and are events), a snapshot taken
//! under concurrent writers holding only committed versions, and bad
//! requests naming the field.

use std::time::Duration;

use concord_bus::{Bus, ServiceError};
use concord_state::StateConfig;
use concord_store::EventStore;
use concord_tests::{RunningState, World};
use concord_wire::json::{from_wire_value, to_wire_value};
use concord_wire::v1::{
    CreateDocument, DeleteDocument, Document, DocumentChange, ErrorCode, GetDocument, GetHistory,
    GetSnapshot, HistoryReply, ListSnapshots, ListSnapshotsReply, PutDocument, RestoreReply,
    RestoreSnapshot, Snapshot, TakeSnapshot,
};
use futures::StreamExt;
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(10);

async fn call<Q: concord_wire::WireMessage, R: concord_wire::WireMessage>(
    bus: &Bus,
    name: &str,
    message: &Q,
) -> Result<R, ServiceError> {
    bus.request(bus.subjects.endpoint("state", name), message, TIMEOUT)
        .await
}

async fn create(bus: &Bus, key: &str, value: Value) -> Result<Document, ServiceError> {
    let message = CreateDocument {
        key: key.into(),
        value: Some(to_wire_value(value)),
        actor: "writer".into(),
    };
    call(bus, "create", &message).await
}

async fn put(
    bus: &Bus,
    key: &str,
    value: Value,
    expected: Option<u64>,
) -> Result<Document, ServiceError> {
    let message = PutDocument {
        key: key.into(),
        value: Some(to_wire_value(value)),
        expected_version: expected,
        actor: "writer".into(),
        fence: None,
    };
    call(bus, "put", &message).await
}

async fn get(bus: &Bus, key: &str) -> Result<Document, ServiceError> {
    call(bus, "get", &GetDocument { key: key.into() }).await
}

async fn take(bus: &Bus, namespace: &str) -> Result<Snapshot, ServiceError> {
    let message = TakeSnapshot {
        namespace: namespace.into(),
        actor: "ops".into(),
    };
    call(bus, "snapshot.take", &message).await
}

async fn snapshot(bus: &Bus, id: &str, after: &str, limit: u32) -> Result<Snapshot, ServiceError> {
    let message = GetSnapshot {
        id: id.into(),
        values: true,
        limit,
        after: after.into(),
    };
    call(bus, "snapshot.get", &message).await
}

async fn restore(bus: &Bus, id: &str) -> Result<RestoreReply, ServiceError> {
    let message = RestoreSnapshot {
        id: id.into(),
        actor: "ops".into(),
    };
    call(bus, "snapshot.restore", &message).await
}

fn value(document: &Document) -> Value {
    document
        .value
        .as_ref()
        .map(from_wire_value)
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn a_snapshot_is_taken_paged_listed_and_restored() -> anyhow::Result<()> {
    let world = World::start().await?;
    let state = RunningState::start(&world, StateConfig::default()).await?;
    let bus = world.bus("client").await?;
    create(&bus, "team/a", json!({"n": 1})).await?;
    create(&bus, "team/b", json!({"n": 2})).await?;
    create(&bus, "other/x", json!("untouched")).await?;

    let taken = take(&bus, "team").await?;
    assert_eq!(
        (taken.namespace.as_str(), taken.count, taken.actor.as_str()),
        ("team", 2, "ops")
    );
    let first = snapshot(&bus, &taken.id, "", 1).await?;
    assert_eq!(first.documents.len(), 1);
    assert_eq!(
        (first.documents[0].key.as_str(), first.documents[0].version),
        ("team/a", 1)
    );
    assert_eq!(first.next, "team/a");
    let second = snapshot(&bus, &taken.id, &first.next, 1).await?;
    assert_eq!(second.documents[0].key, "team/b");
    assert_eq!(
        second.documents[0].value.as_ref().map(from_wire_value),
        Some(json!({"n": 2}))
    );
    assert!(second.next.is_empty(), "the last page");

    // The namespace moves on: a changed, b deleted, c created.
    put(&bus, "team/a", json!({"n": 10}), Some(1)).await?;
    let delete = DeleteDocument {
        key: "team/b".into(),
        expected_version: Some(1),
        actor: "writer".into(),
        fence: None,
    };
    call::<_, Document>(&bus, "delete", &delete).await?;
    create(&bus, "team/c", json!({"new": true})).await?;
    let later = take(&bus, "team").await?;
    let listed: ListSnapshotsReply = call(
        &bus,
        "snapshot.list",
        &ListSnapshots {
            namespace: "team".into(),
            ..Default::default()
        },
    )
    .await?;
    let ids: Vec<&str> = listed.snapshots.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, [later.id.as_str(), taken.id.as_str()], "newest first");

    let mut changes = bus
        .client
        .subscribe(bus.subjects.join("state.changed.team.>"))
        .await?;
    bus.client.flush().await?;
    let restored = restore(&bus, &taken.id).await?;
    let summary: Vec<(&str, u64, &str)> = restored
        .changes
        .iter()
        .map(|c| (c.key.as_str(), c.version, c.kind.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            ("team/a", 3, "restored"),
            ("team/b", 3, "restored"),
            ("team/c", 2, "deleted")
        ]
    );
    assert_eq!(restored.unchanged, 0);
    assert_eq!(value(&get(&bus, "team/a").await?), json!({"n": 1}));
    assert_eq!(get(&bus, "team/b").await?.version, 3);
    assert_eq!(
        get(&bus, "team/c").await.unwrap_err().code,
        ErrorCode::NotFound
    );
    assert_eq!(value(&get(&bus, "other/x").await?), json!("untouched"));
    for _ in 0..3 {
        let message = tokio::time::timeout(TIMEOUT, changes.next())
            .await?
            .unwrap();
        let change: DocumentChange =
            concord_wire::decode(concord_wire::ContentType::Json, &message.payload)?;
        assert!(
            restored
                .changes
                .iter()
                .any(|c| c.key == change.key && c.version == change.version),
            "{change:?}"
        );
    }
    let history: HistoryReply = call(
        &bus,
        "history",
        &GetHistory {
            key: "team/a".into(),
            since_version: 0,
            limit: 10,
        },
    )
    .await?;
    let kinds: Vec<&str> = history.changes.iter().map(|c| c.kind.as_str()).collect();
    assert_eq!(kinds, ["created", "put", "restored"]);

    let again = restore(&bus, &taken.id).await?;
    assert!(again.changes.is_empty(), "already as in the snapshot");
    assert_eq!(again.unchanged, 2);

    let events = EventStore::new(world.db.pool().clone())
        .events_for("state.snapshot", &taken.id)
        .await?;
    let kinds: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        kinds,
        ["snapshot.taken", "snapshot.restored", "snapshot.restored"]
    );
    let document_events = EventStore::new(world.db.pool().clone())
        .events_for("state.document", "team/a")
        .await?;
    assert_eq!(
        document_events.last().unwrap().event_type,
        "document.restored"
    );
    state.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_snapshot_under_concurrent_writers_holds_only_committed_versions() -> anyhow::Result<()> {
    let world = World::start().await?;
    let state = RunningState::start(&world, StateConfig::default()).await?;
    let bus = world.bus("client").await?;
    let keys: Vec<String> = (0..16).map(|n| format!("load/k{n:02}")).collect();
    for key in &keys {
        create(&bus, key, json!({"n": 0})).await?;
    }
    let mut writers = Vec::new();
    for writer in 0..4 {
        let bus = world.bus(&format!("writer-{writer}")).await?;
        let keys = keys.clone();
        writers.push(tokio::spawn(async move {
            for round in 0..25u64 {
                for key in keys.iter().skip(writer).step_by(4) {
                    let current = get(&bus, key).await.unwrap();
                    put(&bus, key, json!({"n": round + 1}), Some(current.version))
                        .await
                        .unwrap();
                }
            }
        }));
    }
    let mut snapshots = Vec::new();
    for _ in 0..5 {
        snapshots.push(take(&bus, "load").await?);
        tokio::task::yield_now().await;
    }
    for writer in writers {
        writer.await?;
    }
    for taken in snapshots {
        let page = snapshot(&bus, &taken.id, "", 100).await?;
        assert_eq!(page.documents.len(), keys.len());
        for entry in page.documents {
            let history: HistoryReply = call(
                &bus,
                "history",
                &GetHistory {
                    key: entry.key.clone(),
                    since_version: entry.version - 1,
                    limit: 1,
                },
            )
            .await?;
            let committed = &history.changes[0];
            assert_eq!(committed.version, entry.version);
            assert_eq!(
                committed.value.as_ref().map(from_wire_value),
                entry.value.as_ref().map(from_wire_value),
                "{} at version {}",
                entry.key,
                entry.version
            );
        }
    }
    state.stop().await;
    Ok(())
}

#[tokio::test]
async fn bad_snapshot_requests_name_the_field() -> anyhow::Result<()> {
    let world = World::start().await?;
    let state = RunningState::start(&world, StateConfig::default()).await?;
    let bus = world.bus("client").await?;
    let error = take(&bus, "not ok").await.unwrap_err();
    assert_eq!(
        (error.code, error.field.as_deref()),
        (ErrorCode::InvalidArgument, Some("namespace")),
        "{error}"
    );
    let error = restore(&bus, "nope").await.unwrap_err();
    assert_eq!(error.field.as_deref(), Some("id"), "{error}");
    let error = restore(&bus, &uuid::Uuid::now_v7().to_string())
        .await
        .unwrap_err();
    assert_eq!(error.code, ErrorCode::NotFound, "{error}");
    let error = snapshot(&bus, &uuid::Uuid::now_v7().to_string(), "", 5000)
        .await
        .unwrap_err();
    assert_eq!(error.field.as_deref(), Some("limit"), "{error}");
    let empty = take(&bus, "nothing-here").await?;
    assert_eq!(empty.count, 0, "an empty namespace has an empty snapshot");
    state.stop().await;
    Ok(())
}
