//! Event store tests against a real, freshly migrated Postgres database.

use chrono::{DateTime, Duration, TimeZone, Utc};
use concord_store::{EventStore, NewEvent, ReplayFilter, StoreError};
use concord_testkit::TestDatabase;
use serde_json::json;
use uuid::Uuid;

fn at(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000 + seconds, 0).unwrap()
}

fn event(
    aggregate_type: &str,
    aggregate_id: &str,
    sequence: i64,
    occurred_at: DateTime<Utc>,
) -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        aggregate_type: aggregate_type.into(),
        aggregate_id: aggregate_id.into(),
        sequence,
        event_type: format!("{aggregate_type}.step"),
        data: json!({ "sequence": sequence, "text": "héllo, \"world\"" }).into(),
        trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
        source: "test".into(),
        occurred_at,
    }
}

async fn store() -> anyhow::Result<(TestDatabase, EventStore)> {
    let db = TestDatabase::create().await?;
    let store = EventStore::new(db.pool().clone());
    Ok((db, store))
}

#[tokio::test]
async fn append_stores_every_field_and_is_idempotent() -> anyhow::Result<()> {
    let (_db, store) = store().await?;
    let mut batch: Vec<NewEvent> = (1..=3).map(|s| event("task", "t-1", s, at(s))).collect();
    batch[1].trace_id = None;

    let first = store.append(&batch).await?;
    assert_eq!((first.inserted, first.duplicates), (3, 0));
    let again = store.append(&batch).await?;
    assert_eq!((again.inserted, again.duplicates), (0, 3));

    let stored = store.events_for("task", "t-1").await?;
    assert_eq!(stored.len(), 3);
    for (new, old) in batch.iter().zip(&stored) {
        assert_eq!(old.event_id, new.event_id);
        assert_eq!(old.aggregate_type, new.aggregate_type);
        assert_eq!(old.aggregate_id, new.aggregate_id);
        assert_eq!(old.sequence, new.sequence);
        assert_eq!(old.event_type, new.event_type);
        assert_eq!(old.data, new.data.to_value());
        assert_eq!(old.trace_id, new.trace_id);
        assert_eq!(old.source, new.source);
        assert_eq!(old.occurred_at, new.occurred_at);
    }
    assert!(stored.windows(2).all(|w| w[0].position < w[1].position));
    assert_eq!(store.last_sequence("task", "t-1").await?, Some(3));
    assert_eq!(store.last_sequence("task", "nope").await?, None);
    assert!(store.append(&[]).await?.inserted == 0);
    Ok(())
}

#[tokio::test]
async fn partly_replayed_batch_inserts_only_the_new_events() -> anyhow::Result<()> {
    let (_db, store) = store().await?;
    let batch: Vec<NewEvent> = (1..=4).map(|s| event("task", "t-2", s, at(s))).collect();
    store.append(&batch[..2]).await?;
    let outcome = store.append(&batch).await?;
    assert_eq!((outcome.inserted, outcome.duplicates), (2, 2));
    assert_eq!(store.events_for("task", "t-2").await?.len(), 4);
    Ok(())
}

#[tokio::test]
async fn sequence_conflict_is_typed_and_stores_nothing_of_the_batch() -> anyhow::Result<()> {
    let (_db, store) = store().await?;
    store.append(&[event("task", "t-3", 1, at(1))]).await?;

    // A different writer also claims sequence 1, together with new events.
    let batch = vec![
        event("agent", "a-1", 1, at(2)),
        event("task", "t-3", 2, at(2)),
        event("task", "t-3", 1, at(2)),
    ];
    match store.append(&batch).await {
        Err(StoreError::SequenceConflict {
            aggregate_type,
            aggregate_id,
            sequence,
        }) => {
            assert_eq!(
                (aggregate_type.as_str(), aggregate_id.as_str(), sequence),
                ("task", "t-3", 1)
            );
        }
        other => panic!("expected a sequence conflict, got {other:?}"),
    }
    assert_eq!(store.events_for("task", "t-3").await?.len(), 1);
    assert!(store.events_for("agent", "a-1").await?.is_empty());

    // Two events of one batch on the same sequence: also a conflict.
    let err = store
        .append(&[
            event("task", "t-4", 1, at(3)),
            event("task", "t-4", 1, at(3)),
        ])
        .await
        .unwrap_err();
    assert!(err.is_sequence_conflict(), "{err}");
    assert!(err.to_string().contains("task/t-4"), "{err}");
    Ok(())
}

#[tokio::test]
async fn append_in_commits_with_the_callers_transaction() -> anyhow::Result<()> {
    let (db, store) = store().await?;

    let mut tx = db.pool().begin().await?;
    let outcome = store
        .append_in(&mut tx, &[event("task", "t-5", 1, at(1))])
        .await?;
    assert_eq!(outcome.inserted, 1);
    tx.rollback().await?;
    assert_eq!(store.last_sequence("task", "t-5").await?, None);

    let mut tx = db.pool().begin().await?;
    store
        .append_in(&mut tx, &[event("task", "t-5", 1, at(1))])
        .await?;
    tx.commit().await?;
    assert_eq!(store.last_sequence("task", "t-5").await?, Some(1));

    // A conflict inside a transaction is typed too; the transaction is then aborted.
    let mut tx = db.pool().begin().await?;
    let err = store
        .append_in(&mut tx, &[event("task", "t-5", 1, at(1))])
        .await
        .unwrap_err();
    assert!(err.is_sequence_conflict(), "{err}");
    tx.rollback().await?;
    Ok(())
}

#[tokio::test]
async fn replay_filters_by_type_and_time_and_pages_by_position() -> anyhow::Result<()> {
    let (_db, store) = store().await?;
    let mut batch = Vec::new();
    for s in 1..=10 {
        batch.push(event("task", "t-6", s, at(s)));
        batch.push(event("agent", "a-6", s, at(s)));
    }
    store.append(&batch).await?;

    let everything = store
        .replay(&ReplayFilter {
            limit: 100,
            ..Default::default()
        })
        .await?;
    assert_eq!(everything.len(), 20);
    let ids: Vec<Uuid> = everything.iter().map(|e| e.event_id).collect();
    let expected: Vec<Uuid> = batch.iter().map(|e| e.event_id).collect();
    assert_eq!(ids, expected, "position order follows append order");

    // Paging through one aggregate type, 3 at a time.
    let mut seen = Vec::new();
    let mut filter = ReplayFilter {
        aggregate_type: Some("task".into()),
        limit: 3,
        ..Default::default()
    };
    loop {
        let page = store.replay(&filter).await?;
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 3);
        filter.after_position = page.last().map(|e| e.position);
        seen.extend(page.into_iter().map(|e| e.sequence));
    }
    assert_eq!(seen, (1..=10).collect::<Vec<_>>());

    // Time window [at(3), at(6)) of all types.
    let window = store
        .replay(&ReplayFilter {
            from: Some(at(3)),
            to: Some(at(6)),
            limit: 100,
            ..Default::default()
        })
        .await?;
    assert_eq!(window.len(), 6);
    assert!(
        window
            .iter()
            .all(|e| e.occurred_at >= at(3) && e.occurred_at < at(6))
    );

    // Open-ended on either side, combined with the type.
    let late_agents = store
        .replay(&ReplayFilter {
            aggregate_type: Some("agent".into()),
            from: Some(at(9)),
            limit: 100,
            ..Default::default()
        })
        .await?;
    assert_eq!(
        late_agents.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [9, 10]
    );
    let early = store
        .replay(&ReplayFilter {
            to: at(2).into(),
            limit: 100,
            ..Default::default()
        })
        .await?;
    assert_eq!(early.len(), 2);
    Ok(())
}

#[tokio::test]
async fn appends_a_thousand_events_in_one_batch() -> anyhow::Result<()> {
    let (_db, store) = store().await?;
    let start = Utc::now();
    let batch: Vec<NewEvent> = (0..1000)
        .map(|i| {
            event(
                "task",
                &format!("t-{}", i % 50),
                i / 50,
                start + Duration::milliseconds(i),
            )
        })
        .collect();
    let outcome = store.append(&batch).await?;
    assert_eq!(outcome.inserted, 1000);
    assert_eq!(store.last_sequence("task", "t-7").await?, Some(19));
    let again = store.append(&batch).await?;
    assert_eq!(again.duplicates, 1000);
    let all = store
        .replay(&ReplayFilter {
            limit: 5000,
            ..Default::default()
        })
        .await?;
    assert_eq!(all.len(), 1000);
    Ok(())
}

#[tokio::test]
async fn concurrent_appends_of_the_same_events_are_not_conflicts() -> anyhow::Result<()> {
    let (_db, store) = store().await?;
    for round in 0..20 {
        let batch: Vec<NewEvent> = (1..=20)
            .map(|s| event("race", &format!("r-{round}"), s, at(s)))
            .collect();
        let (a, b) = tokio::join!(store.append(&batch), store.append(&batch));
        let (a, b) = (a?, b?);
        assert_eq!(a.inserted + b.inserted, 20);
        assert_eq!(a.duplicates + b.duplicates, 20);
    }
    Ok(())
}
