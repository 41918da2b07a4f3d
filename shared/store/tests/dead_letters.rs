//! Dead-letter store tests against a real, freshly migrated Postgres database.

use std::collections::BTreeMap;

use chrono::Utc;
use concord_store::{DeadLetterFilter, DeadLetterStore, NewDeadLetter, PurgeFilter};
use concord_testkit::TestDatabase;
use serde_json::json;
use uuid::Uuid;

fn letter(reason: &str, source: &str, attempts: i32) -> NewDeadLetter {
    NewDeadLetter {
        id: Uuid::now_v7(),
        subject: "concord.tasks.submit".into(),
        headers: BTreeMap::from([
            ("Nats-Msg-Id".to_owned(), "m-1".to_owned()),
            ("traceparent".to_owned(), "00-abc-def-01".to_owned()),
        ]),
        payload: vec![0, 159, 146, 150, b'{', b'}'],
        reason: reason.into(),
        error: format!("{reason} after {attempts} attempts"),
        attempts,
        source: source.into(),
        history: json!([{ "attempt": attempts, "at": "t0" }]),
    }
}

async fn store() -> anyhow::Result<(TestDatabase, DeadLetterStore)> {
    let db = TestDatabase::create().await?;
    let store = DeadLetterStore::new(db.pool().clone());
    Ok((db, store))
}

#[tokio::test]
async fn put_then_get_keeps_bytes_headers_and_history() -> anyhow::Result<()> {
    let (_db, store) = store().await?;
    let new = letter("invalid_input", "dispatcher", 1);
    store.put(&new).await?;

    let got = store.get(new.id).await?.expect("stored");
    assert_eq!(got.id, new.id);
    assert_eq!(got.subject, new.subject);
    assert_eq!(got.headers, new.headers);
    assert_eq!(got.payload, new.payload, "original bytes, not re-encoded");
    assert_eq!(got.reason, "invalid_input");
    assert_eq!(got.error, new.error);
    assert_eq!(got.attempts, 1);
    assert_eq!(got.source, "dispatcher");
    assert_eq!(got.history, new.history);
    assert_eq!(got.first_seen, got.last_seen);
    assert_eq!((got.replayed_at, got.replay_count), (None, 0));
    assert!(got.is_pending());
    assert!(store.get(Uuid::now_v7()).await?.is_none());
    assert_eq!(store.count().await?, 1);
    Ok(())
}

#[tokio::test]
async fn put_again_upserts() -> anyhow::Result<()> {
    let (_db, store) = store().await?;
    let first = letter("no_eligible_agent", "dispatcher", 3);
    store.put(&first).await?;

    let mut again = first.clone();
    again.attempts = 2; // an older report arriving late does not lower attempts
    again.reason = "max_attempts".into();
    again.error = "gave up".into();
    again.payload = b"other".to_vec();
    again.history = json!({ "attempt": 2, "at": "t1" });
    store.put(&again).await?;

    let got = store.get(first.id).await?.expect("stored");
    assert_eq!(got.attempts, 3);
    assert_eq!(got.reason, "max_attempts");
    assert_eq!(got.error, "gave up");
    assert_eq!(got.payload, first.payload, "first payload kept");
    assert_eq!(
        got.history,
        json!([{ "attempt": 3, "at": "t0" }, { "attempt": 2, "at": "t1" }])
    );
    assert!(got.last_seen >= got.first_seen);
    assert_eq!(store.count().await?, 1);
    Ok(())
}

#[tokio::test]
async fn put_many_batches_and_merges_repeated_ids() -> anyhow::Result<()> {
    let (_db, store) = store().await?;
    let mut batch: Vec<NewDeadLetter> = (0..200)
        .map(|i| letter("max_attempts", "dispatcher", i))
        .collect();
    let mut repeat = batch[7].clone();
    repeat.attempts = 99;
    repeat.history = json!([{ "again": true }]);
    batch.push(repeat);

    assert_eq!(store.put_many(&batch).await?, 200);
    assert_eq!(store.count().await?, 200);
    let merged = store.get(batch[7].id).await?.expect("stored");
    assert_eq!(merged.attempts, 99);
    assert_eq!(merged.history.as_array().map(Vec::len), Some(2));

    // The whole batch again: every row updated, none added.
    assert_eq!(store.put_many(&batch).await?, 200);
    assert_eq!(store.count().await?, 200);
    assert_eq!(store.put_many(&[]).await?, 0);
    Ok(())
}

#[tokio::test]
async fn list_filters_newest_first_and_pages() -> anyhow::Result<()> {
    let (_db, store) = store().await?;
    let mut ids = Vec::new();
    for i in 0..7 {
        let (reason, source) = if i % 2 == 0 {
            ("invalid_input", "dispatcher")
        } else {
            ("max_attempts", "auction")
        };
        let new = letter(reason, source, i);
        ids.push(new.id);
        store.put(&new).await?; // one by one: distinct last_seen
    }

    let all = store.list(&DeadLetterFilter::default()).await?;
    assert_eq!(all.len(), 7);
    assert!(all.windows(2).all(|w| w[0].last_seen >= w[1].last_seen));
    assert_eq!(all[0].id, ids[6], "newest first");

    let invalid = store
        .list(&DeadLetterFilter {
            reason: Some("invalid_input".into()),
            ..Default::default()
        })
        .await?;
    assert_eq!(invalid.len(), 4);
    assert!(invalid.iter().all(|l| l.reason == "invalid_input"));

    let auction = store
        .list(&DeadLetterFilter {
            source: Some("auction".into()),
            ..Default::default()
        })
        .await?;
    assert_eq!(auction.len(), 3);

    let mut paged = Vec::new();
    let mut filter = DeadLetterFilter {
        limit: 2,
        ..Default::default()
    };
    loop {
        let page = store.list(&filter).await?;
        if page.is_empty() {
            break;
        }
        filter.after = page.last().map(|l| l.cursor());
        paged.extend(page.into_iter().map(|l| l.id));
    }
    assert_eq!(paged, all.iter().map(|l| l.id).collect::<Vec<_>>());
    Ok(())
}

#[tokio::test]
async fn mark_replayed_and_pending() -> anyhow::Result<()> {
    let (_db, store) = store().await?;
    let new = letter("no_eligible_agent", "dispatcher", 1);
    store.put(&new).await?;

    assert!(store.mark_replayed(new.id).await?);
    assert!(store.mark_replayed(new.id).await?);
    assert!(!store.mark_replayed(Uuid::now_v7()).await?);
    let got = store.get(new.id).await?.expect("stored");
    assert_eq!(got.replay_count, 2);
    assert!(got.replayed_at.is_some());
    assert!(!got.is_pending());
    let pending = DeadLetterFilter {
        pending_only: true,
        ..Default::default()
    };
    assert!(store.list(&pending).await?.is_empty());

    // It fails again after the replay: pending again.
    store.put(&new).await?;
    let got = store.get(new.id).await?.expect("stored");
    assert!(got.is_pending());
    assert_eq!(store.list(&pending).await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn purge_by_ids_reason_age_and_all() -> anyhow::Result<()> {
    let (_db, store) = store().await?;
    let batch: Vec<NewDeadLetter> = (0..6)
        .map(|i| {
            letter(
                if i < 3 {
                    "invalid_input"
                } else {
                    "max_attempts"
                },
                "dispatcher",
                i,
            )
        })
        .collect();
    store.put_many(&batch).await?;

    assert_eq!(store.purge(&PurgeFilter::ids(vec![])).await?, 0);
    assert_eq!(
        store
            .purge(&PurgeFilter::ids(vec![batch[0].id, Uuid::now_v7()]))
            .await?,
        1
    );
    assert!(store.get(batch[0].id).await?.is_none());

    let by_reason = PurgeFilter {
        reason: Some("invalid_input".into()),
        ..PurgeFilter::all()
    };
    assert_eq!(store.purge(&by_reason).await?, 2);

    let past = Utc::now() - chrono::Duration::hours(1);
    assert_eq!(store.purge(&PurgeFilter::older_than(past)).await?, 0);
    let future = Utc::now() + chrono::Duration::hours(1);
    assert_eq!(store.purge(&PurgeFilter::older_than(future)).await?, 3);
    assert_eq!(store.count().await?, 0);

    store.put_many(&batch).await?;
    assert_eq!(store.purge(&PurgeFilter::all()).await?, 6);
    Ok(())
}
