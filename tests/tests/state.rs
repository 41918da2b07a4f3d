//! The state service's documents against real NATS and Postgres: create,
//! get, compare-and-set, merge patch, delete and re-create, list, history
//! with its bound, reconcile, change publications and events, bad input
//! kept as dead letters, a linearizability check of a contended key, and
//! two replicas writing the same keys.

use std::collections::BTreeMap;
use std::time::Duration;

use concord_bus::{Bus, ServiceError};
use concord_state::StateConfig;
use concord_store::{DeadLetterFilter, EventStore};
use concord_tests::World;
use concord_wire::json::{from_wire_value, to_wire_value};
use concord_wire::v1::{
    CreateDocument, DeleteDocument, Document, DocumentChange, ErrorCode, GetDocument, GetHistory,
    HistoryReply, ListDocuments, ListDocumentsReply, PatchDocument, PutDocument, Reconcile,
};
use futures::StreamExt;
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(10);

use concord_tests::RunningState as Running;

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
        actor: "tester".into(),
    };
    call(bus, "create", &message).await
}

async fn put(
    bus: &Bus,
    key: &str,
    value: Value,
    expected: Option<u64>,
    actor: &str,
) -> Result<Document, ServiceError> {
    let message = PutDocument {
        key: key.into(),
        value: Some(to_wire_value(value)),
        expected_version: expected,
        actor: actor.into(),
        fence: None,
    };
    call(bus, "put", &message).await
}

async fn get(bus: &Bus, key: &str) -> Result<Document, ServiceError> {
    call(bus, "get", &GetDocument { key: key.into() }).await
}

fn value_of(document: &Document) -> Value {
    document
        .value
        .as_ref()
        .map(from_wire_value)
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn documents_are_created_read_compared_and_set_patched_and_deleted() -> anyhow::Result<()> {
    let world = World::start().await?;
    let running = Running::start(&world, StateConfig::default()).await?;
    let bus = world.bus("client").await?;

    let created = create(&bus, "team/plans/q4", json!({"title": "Q4", "n": 1})).await?;
    assert_eq!((created.version, created.deleted), (1, false));
    assert_eq!(created.updated_by, "tester");
    let error = create(&bus, "team/plans/q4", json!({})).await.unwrap_err();
    assert_eq!(error.code, ErrorCode::AlreadyExists);

    let read = get(&bus, "team/plans/q4").await?;
    assert_eq!(read, created, "get answers what the create committed");

    // Compare-and-set: the right version wins, a stale one is a conflict
    // carrying the current document.
    let second = put(
        &bus,
        "team/plans/q4",
        json!({"title": "Q4", "n": 2}),
        Some(1),
        "a",
    )
    .await?;
    assert_eq!((second.version, second.updated_by.as_str()), (2, "a"));
    let conflict = put(&bus, "team/plans/q4", json!({"n": 99}), Some(1), "b")
        .await
        .unwrap_err();
    assert_eq!(conflict.code, ErrorCode::Conflict);
    assert!(
        conflict.message.contains("version 2, not 1"),
        "{}",
        conflict.message
    );
    let details = conflict
        .details
        .expect("a conflict carries the current document");
    assert_eq!(details["version"], json!("2"));
    assert_eq!(details["value"], json!({"title": "Q4", "n": 2}));

    let patched: Document = call(
        &bus,
        "patch",
        &PatchDocument {
            key: "team/plans/q4".into(),
            patch: Some(to_wire_value(json!({"n": null, "owner": "b"}))),
            expected_version: Some(2),
            actor: "b".into(),
            fence: None,
        },
    )
    .await?;
    assert_eq!(patched.version, 3);
    assert_eq!(value_of(&patched), json!({"title": "Q4", "owner": "b"}));

    let deleted: Document = call(
        &bus,
        "delete",
        &DeleteDocument {
            key: "team/plans/q4".into(),
            expected_version: Some(3),
            actor: "b".into(),
            fence: None,
        },
    )
    .await?;
    assert_eq!((deleted.version, deleted.deleted), (4, true));
    let gone = get(&bus, "team/plans/q4").await.unwrap_err();
    assert_eq!(gone.code, ErrorCode::NotFound);
    assert!(
        gone.message.contains("deleted at version 4"),
        "{}",
        gone.message
    );

    // Re-created, the chain goes on.
    let again = create(&bus, "team/plans/q4", json!("back")).await?;
    assert_eq!(again.version, 5);

    // An unconditional put creates; expecting version 0 means "must not exist".
    let fresh = put(&bus, "team/other", json!(1), None, "a").await?;
    assert_eq!(fresh.version, 1);
    let refused = put(&bus, "team/other", json!(2), Some(0), "a")
        .await
        .unwrap_err();
    assert_eq!(refused.code, ErrorCode::Conflict);

    running.stop().await;
    Ok(())
}

#[tokio::test]
async fn history_keeps_its_bound_and_reconcile_catches_a_lagging_replica_up() -> anyhow::Result<()>
{
    let world = World::start().await?;
    let config = StateConfig {
        history_keep: 5,
        ..StateConfig::default()
    };
    let running = Running::start(&world, config).await?;
    let bus = world.bus("client").await?;
    create(&bus, "ns/doc", json!({"v": 1})).await?;
    for v in 2..=8 {
        put(&bus, "ns/doc", json!({"v": v}), Some(v - 1), "w").await?;
    }

    let history: HistoryReply = call(
        &bus,
        "history",
        &GetHistory {
            key: "ns/doc".into(),
            since_version: 0,
            limit: 0,
        },
    )
    .await?;
    let versions: Vec<u64> = history.changes.iter().map(|c| c.version).collect();
    assert_eq!(versions, [4, 5, 6, 7, 8], "the newest 5 are kept");
    assert_eq!(history.oldest_kept, 4);
    assert_eq!(history.changes[0].kind, "put");
    let page: HistoryReply = call(
        &bus,
        "history",
        &GetHistory {
            key: "ns/doc".into(),
            since_version: 5,
            limit: 2,
        },
    )
    .await?;
    let versions: Vec<u64> = page.changes.iter().map(|c| c.version).collect();
    assert_eq!((versions, page.more), (vec![6, 7], true));

    // A replica at version 6 gets the two changes since; one at version 1
    // is past the kept history and gets the document to start again from.
    let caught_up: HistoryReply = call(
        &bus,
        "reconcile",
        &Reconcile {
            key: "ns/doc".into(),
            since_version: 6,
        },
    )
    .await?;
    let versions: Vec<u64> = caught_up.changes.iter().map(|c| c.version).collect();
    assert_eq!(versions, [7, 8]);
    assert!(caught_up.reset.is_none());
    let reset: HistoryReply = call(
        &bus,
        "reconcile",
        &Reconcile {
            key: "ns/doc".into(),
            since_version: 1,
        },
    )
    .await?;
    assert!(reset.changes.is_empty());
    let document = reset.reset.expect("a reset document");
    assert_eq!(
        (document.version, value_of(&document)),
        (8, json!({"v": 8}))
    );
    let ahead = call::<_, HistoryReply>(
        &bus,
        "reconcile",
        &Reconcile {
            key: "ns/doc".into(),
            since_version: 9,
        },
    )
    .await
    .unwrap_err();
    assert_eq!(ahead.field.as_deref(), Some("sinceVersion"));

    running.stop().await;
    Ok(())
}

#[tokio::test]
async fn list_pages_through_a_prefix_in_key_order() -> anyhow::Result<()> {
    let world = World::start().await?;
    let running = Running::start(&world, StateConfig::default()).await?;
    let bus = world.bus("client").await?;
    for key in ["a/x_1", "a/x_2", "a/x_3", "a/y", "a/xz", "b/x_1", "a/x%"] {
        if key.contains('%') {
            assert!(create(&bus, key, json!(0)).await.is_err(), "bad key {key}");
            continue;
        }
        create(&bus, key, json!(key)).await?;
    }
    let list = |prefix: &str, after: &str, limit| {
        let bus = bus.clone();
        let message = ListDocuments {
            prefix: prefix.into(),
            limit,
            after: after.into(),
        };
        async move { call::<_, ListDocumentsReply>(&bus, "list", &message).await }
    };
    let keys = |reply: &ListDocumentsReply| -> Vec<String> {
        reply.documents.iter().map(|d| d.key.clone()).collect()
    };
    // `_` is a plain character, not a LIKE wildcard: `a/x_` does not match `a/xz`.
    let first = list("a/x_", "", 2).await?;
    assert_eq!(keys(&first), ["a/x_1", "a/x_2"]);
    assert_eq!(first.next, "a/x_2");
    let rest = list("a/x_", &first.next, 2).await?;
    assert_eq!(
        (keys(&rest), rest.next.as_str()),
        (vec!["a/x_3".to_string()], "")
    );
    assert_eq!(keys(&list("a/", "", 0).await?).len(), 5);
    let error = list("nonamespace", "", 0).await.unwrap_err();
    assert_eq!(error.field.as_deref(), Some("prefix"));
    running.stop().await;
    Ok(())
}

#[tokio::test]
async fn every_change_is_published_and_recorded_as_an_event() -> anyhow::Result<()> {
    let world = World::start().await?;
    let running = Running::start(&world, StateConfig::default()).await?;
    let bus = world.bus("client").await?;
    let mut changes = bus
        .client
        .subscribe(bus.subjects.join("state.changed.team.>"))
        .await?;
    let mut events = bus
        .client
        .subscribe(bus.subjects.join("events.state.document.*"))
        .await?;
    bus.client.flush().await?;
    create(&bus, "team/doc", json!({"a": 1})).await?;
    put(&bus, "team/doc", json!({"a": 2}), Some(1), "w").await?;

    for (version, kind) in [(1, "created"), (2, "put")] {
        let message = tokio::time::timeout(TIMEOUT, changes.next())
            .await?
            .unwrap();
        assert_eq!(
            message.subject.as_str(),
            bus.subjects.join("state.changed.team.doc")
        );
        let change: DocumentChange =
            concord_wire::decode(concord_wire::ContentType::Json, &message.payload)?;
        assert_eq!((change.version, change.kind.as_str()), (version, kind));
        let event = tokio::time::timeout(TIMEOUT, events.next()).await?.unwrap();
        let event: Value = serde_json::from_slice(&event.payload)?;
        assert_eq!(event["type"], json!(format!("document.{kind}")));
        assert_eq!(event["aggregateId"], json!("team/doc"));
    }
    let stored = EventStore::new(world.db.pool().clone())
        .events_for("state.document", "team/doc")
        .await?;
    let sequences: Vec<i64> = stored.iter().map(|e| e.sequence).collect();
    assert_eq!(
        sequences,
        [1, 2],
        "one event per version, in the event store"
    );
    running.stop().await;
    Ok(())
}

#[tokio::test]
async fn bad_input_names_the_field_and_is_kept_as_a_dead_letter() -> anyhow::Result<()> {
    let world = World::start().await?;
    let config = StateConfig {
        max_document_bytes: 64,
        ..StateConfig::default()
    };
    let running = Running::start(&world, config).await?;
    let bus = world.bus("client").await?;
    let cases: Vec<(&str, Value, &str)> = vec![
        ("create", json!({"key": "nonamespace", "value": 1}), "key"),
        ("create", json!({"key": "a/b.c", "value": 1}), "key"),
        ("create", json!({"key": "a/b"}), "value"),
        ("patch", json!({"key": "a/b", "patch": [1, 2]}), "patch"),
        (
            "put",
            json!({"key": "a/b", "value": 1, "expectedVersion": "x"}),
            "expectedVersion",
        ),
        (
            "create",
            json!({"key": "a/big", "value": "x".repeat(100)}),
            "value",
        ),
        ("list", json!({"prefix": "a/", "limit": 5000}), "limit"),
    ];
    for (name, body, field) in &cases {
        let reply = bus
            .client
            .request(
                bus.subjects.endpoint("state", name),
                serde_json::to_vec(body)?.into(),
            )
            .await?;
        let error = concord_bus::service::read_reply::<Document>(&reply).unwrap_err();
        assert_eq!(
            error.field.as_deref(),
            Some(*field),
            "{name} {body}: {error}"
        );
        assert!(
            matches!(
                error.code,
                ErrorCode::InvalidArgument | ErrorCode::PayloadTooLarge
            ),
            "{name} {body}: {error}"
        );
    }
    let store = concord_store::DeadLetterStore::new(world.db.pool().clone());
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let letters = store.list(&DeadLetterFilter::default()).await?;
        if letters.len() == cases.len() {
            for letter in &letters {
                assert_eq!(
                    letter.reason,
                    concord_wire::codes::INVALID_INPUT,
                    "{letter:?}"
                );
                assert!(letter.subject.contains(".state."), "{}", letter.subject);
                assert!(!letter.payload.is_empty(), "the raw bytes are kept");
            }
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} kept",
            letters.len(),
            cases.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.stop().await;
    Ok(())
}

/// Eight writers do read-modify-write with compare-and-set on one key;
/// the acknowledged writes must form one chain of versions (each version
/// acknowledged once, each write built on the value of the version before
/// it), so no update was lost.
#[tokio::test]
async fn a_contended_key_stays_linearizable_under_eight_cas_writers() -> anyhow::Result<()> {
    const WRITERS: usize = 8;
    const WRITES_EACH: usize = 25;
    let world = World::start().await?;
    let running = Running::start(&world, StateConfig::default()).await?;
    let second = Running::start(&world, StateConfig::default()).await?;
    let bus = world.bus("client").await?;
    create(&bus, "bank/counter", json!({"count": 0, "by": ""})).await?;
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let bus = world.bus(&format!("writer-{writer}")).await?;
        writers.push(tokio::spawn(async move {
            let name = format!("w{writer}");
            let mut acked = Vec::new();
            let mut conflicts = 0;
            while acked.len() < WRITES_EACH {
                let current = get(&bus, "bank/counter").await?;
                let count = value_of(&current)["count"].as_u64().unwrap();
                let next = json!({"count": count + 1, "by": name});
                match put(&bus, "bank/counter", next, Some(current.version), &name).await {
                    Ok(document) => acked.push((document.version, count + 1)),
                    Err(error) if error.code == ErrorCode::Conflict => conflicts += 1,
                    Err(error) => return Err(anyhow::anyhow!(error)),
                }
            }
            anyhow::Ok((acked, conflicts))
        }));
    }
    let mut chain: BTreeMap<u64, u64> = BTreeMap::new();
    let mut conflicts = 0;
    for writer in writers {
        let (acked, lost) = writer.await??;
        conflicts += lost;
        for (version, count) in acked {
            assert!(
                chain.insert(version, count).is_none(),
                "version {version} acknowledged twice"
            );
        }
    }
    let total = (WRITERS * WRITES_EACH) as u64;
    assert_eq!(chain.len() as u64, total);
    for (version, count) in &chain {
        assert_eq!(
            *count,
            version - 1,
            "version {version} built on version {}",
            version - 1
        );
    }
    assert_eq!(*chain.keys().next().unwrap(), 2);
    assert_eq!(
        *chain.keys().last().unwrap(),
        total + 1,
        "no gap, no lost update"
    );
    let last = get(&bus, "bank/counter").await?;
    assert_eq!(value_of(&last)["count"], json!(total));
    println!("{total} acknowledged CAS writes, {conflicts} conflicts, over two replicas");
    second.stop().await;
    running.stop().await;
    Ok(())
}

/// Two replicas creating the same new keys at once: each key is created
/// exactly once, the others are told it exists.
#[tokio::test]
async fn two_replicas_never_create_a_key_twice() -> anyhow::Result<()> {
    let world = World::start().await?;
    let first = Running::start(&world, StateConfig::default()).await?;
    let second = Running::start(&world, StateConfig::default()).await?;
    let mut tasks = Vec::new();
    for client in 0..6 {
        let bus = world.bus(&format!("c{client}")).await?;
        tasks.push(tokio::spawn(async move {
            let mut created = Vec::new();
            for key in 0..20 {
                match create(&bus, &format!("race/k{key}"), json!(client)).await {
                    Ok(document) => {
                        assert_eq!(document.version, 1);
                        created.push(key);
                    }
                    Err(error) => assert_eq!(error.code, ErrorCode::AlreadyExists, "{error}"),
                }
            }
            created
        }));
    }
    let mut winners: BTreeMap<u32, usize> = BTreeMap::new();
    for task in tasks {
        for key in task.await? {
            *winners.entry(key).or_default() += 1;
        }
    }
    assert_eq!(winners.len(), 20, "every key created");
    assert!(winners.values().all(|n| *n == 1), "{winners:?}");
    second.stop().await;
    first.stop().await;
    Ok(())
}
