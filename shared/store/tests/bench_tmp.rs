//! temp bench
use chrono::Utc;
use concord_store::{DeadLetterStore, EventStore, NewDeadLetter, NewEvent};
use concord_testkit::TestDatabase;
use std::time::Instant;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench() -> anyhow::Result<()> {
    let t = Instant::now();
    let db = TestDatabase::create().await?;
    eprintln!("create db {:?}", t.elapsed());
    let store = EventStore::new(db.pool().clone());
    let batches: Vec<Vec<NewEvent>> = (0..100)
        .map(|b| {
            (0..500)
                .map(|i| NewEvent {
                    event_id: Uuid::now_v7(),
                    aggregate_type: "task".into(),
                    aggregate_id: format!("t-{b}-{}", i / 3),
                    sequence: i % 3,
                    event_type: "task.completed".into(),
                    data: serde_json::json!({"agent":"a-17","result":{"ok":true,"n":i}}),
                    trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
                    source: "dispatcher".into(),
                    occurred_at: Utc::now(),
                })
                .collect()
        })
        .collect();
    let t = Instant::now();
    let mut handles = vec![];
    for chunk in batches.chunks(25) {
        let store = store.clone();
        let chunk = chunk.to_vec();
        handles.push(tokio::spawn(async move {
            for b in &chunk {
                store.append(b).await.unwrap();
            }
        }));
    }
    for h in handles {
        h.await?;
    }
    let el = t.elapsed();
    eprintln!(
        "50k events in {:?}: {:.0}/s",
        el,
        50000.0 / el.as_secs_f64()
    );
    let dl = DeadLetterStore::new(db.pool().clone());
    let letters: Vec<NewDeadLetter> = (0..5000)
        .map(|i| NewDeadLetter {
            id: Uuid::now_v7(),
            subject: "concord.tasks.submit".into(),
            headers: Default::default(),
            payload: vec![b'x'; 200],
            reason: "max_attempts".into(),
            error: "boom".into(),
            attempts: i,
            source: "dispatcher".into(),
            history: serde_json::json!([{"a":1}]),
        })
        .collect();
    let t = Instant::now();
    for c in letters.chunks(500) {
        dl.put_many(c).await?;
    }
    eprintln!("5k dead letters {:?}", t.elapsed());
    let t = Instant::now();
    drop(db);
    eprintln!("drop db {:?}", t.elapsed());
    Ok(())
}
