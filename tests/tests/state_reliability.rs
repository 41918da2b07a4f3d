//! Reliability of the state service: two replicas (separate processes)
//! serve compare-and-set writes from eight writers; one is SIGKILLed mid-load
//! and restarted. Afterwards every acknowledged write is in its document's
//! history, and every document's versions form one unbroken chain in which
//! each version was built on the one before it (nothing applied twice,
//! nothing lost). The same kill under lock and barrier load: no two workers
//! are ever inside the lock at once, fencing tokens only grow, and a barrier
//! whose participants arrived on both sides of the kill releases once,
//! answering every one of them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use concord_bus::{Bus, ServiceError};
use concord_store::EventStore;
use concord_testkit::{ServiceProcess, service_binary};
use concord_tests::World;
use concord_wire::json::{from_wire_value, to_wire_value};
use concord_wire::v1::{
    AcquireLock, ArriveAtBarrier, Barrier, BarrierCondition, BarrierStatus, CreateBarrier,
    CreateDocument, Document, ErrorCode, GetBarrier, GetDocument, GetHistory, HistoryReply,
    LockGrant, LockMode, LockReleased, PutDocument, ReleaseLock,
};
use serde_json::json;

const KEYS: usize = 64;
const WRITERS: usize = 8;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

fn spawn_state(world: &World) -> ServiceProcess {
    let binary = service_binary("concord-state").expect("the state binary");
    let args: Vec<String> = [
        "--nats-url",
        &world.nats.url(),
        "--database-url",
        world.db.url(),
        "--subject-root",
        &world.root,
        "--metrics-addr",
        "127.0.0.1:0",
        "--history-keep",
        "100000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    ServiceProcess::spawn(&binary, &args, &[("CONCORD_LOG".into(), "warn".into())])
        .expect("concord-state starts")
}

async fn call<Q: concord_wire::WireMessage, R: concord_wire::WireMessage>(
    bus: &Bus,
    name: &str,
    message: &Q,
) -> Result<R, ServiceError> {
    bus.request(
        bus.subjects.endpoint("state", name),
        message,
        REQUEST_TIMEOUT,
    )
    .await
}

async fn get(bus: &Bus, key: &str) -> Result<Document, ServiceError> {
    call(bus, "get", &GetDocument { key: key.into() }).await
}

/// Waits until some replica answers.
async fn wait_served(bus: &Bus) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match get(bus, "ready/probe").await {
            Err(error) if error.code == ErrorCode::NotFound => return,
            _ if tokio::time::Instant::now() > deadline => panic!("no state replica answers"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Waits until at least `writes` more acknowledged writes happened.
async fn wait_for_writes(acked: &AtomicU64, writes: u64) {
    let target = acked.load(Ordering::Relaxed) + writes;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while acked.load(Ordering::Relaxed) < target {
        assert!(
            tokio::time::Instant::now() < deadline,
            "writes stalled at {}",
            acked.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_state_replica_loses_no_acknowledged_write_and_applies_none_twice()
-> anyhow::Result<()> {
    let world = World::start().await?;
    let mut first = spawn_state(&world);
    let second = spawn_state(&world);
    let bus = world.bus("setup").await?;
    wait_served(&bus).await;
    for key in 0..KEYS {
        let message = CreateDocument {
            key: format!("acct/k{key}"),
            value: Some(to_wire_value(json!({"n": 1}))),
            actor: "setup".into(),
        };
        let _: Document = call(&bus, "create", &message).await?;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let bus = world.bus(&format!("writer-{writer}")).await?;
        let (stop, acked) = (stop.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            // Writer w owns keys w, w + 8, ...; the value written is always
            // the version it makes, so the history shows what each built on.
            let mine: Vec<String> = (writer..KEYS)
                .step_by(WRITERS)
                .map(|k| format!("acct/k{k}"))
                .collect();
            let mut versions = vec![1u64; mine.len()];
            let mut acknowledged: Vec<(String, u64)> = Vec::new();
            let mut uncertain = 0u64;
            let mut next = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = &mine[next];
                let message = PutDocument {
                    key: key.clone(),
                    value: Some(to_wire_value(json!({"n": versions[next] + 1}))),
                    expected_version: Some(versions[next]),
                    actor: format!("w{writer}"),
                    fence: None,
                };
                match call::<_, Document>(&bus, "put", &message).await {
                    Ok(document) => {
                        assert_eq!(document.version, versions[next] + 1);
                        versions[next] = document.version;
                        acknowledged.push((key.clone(), document.version));
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(error) => {
                        // No answer (the replica died with it), or a conflict
                        // with our own unanswered write that did commit:
                        // read where the document is and go on from there.
                        assert!(
                            matches!(
                                error.code,
                                ErrorCode::Timeout | ErrorCode::Unavailable | ErrorCode::Conflict
                            ),
                            "{error}"
                        );
                        uncertain += 1;
                        loop {
                            match get(&bus, key).await {
                                Ok(document) => {
                                    versions[next] = document.version;
                                    break;
                                }
                                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                            }
                        }
                    }
                }
                next = (next + 1) % mine.len();
            }
            (acknowledged, uncertain)
        }));
    }

    wait_for_writes(&acked, 200).await;
    first.kill()?;
    // The other replica carries on alone, then the killed one comes back.
    wait_for_writes(&acked, 200).await;
    let restarted = spawn_state(&world);
    wait_for_writes(&acked, 200).await;
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut uncertain = 0;
    for writer in writers {
        let (writes, unsure) = writer.await?;
        uncertain += unsure;
        for (key, version) in writes {
            acknowledged.entry(key).or_default().push(version);
        }
    }

    let mut total = 0;
    for key in 0..KEYS {
        let key = format!("acct/k{key}");
        let current = get(&bus, &key).await?;
        let history: HistoryReply = call(
            &bus,
            "history",
            &GetHistory {
                key: key.clone(),
                since_version: 0,
                limit: 1000,
            },
        )
        .await?;
        let versions: Vec<u64> = history.changes.iter().map(|c| c.version).collect();
        let chain: Vec<u64> = (1..=current.version).collect();
        assert_eq!(versions, chain, "{key}: one unbroken chain of versions");
        for change in history.changes.iter().skip(1) {
            let n = from_wire_value(change.value.as_ref().unwrap())["n"]
                .as_u64()
                .unwrap();
            assert_eq!(
                n, change.version,
                "{key}: version {} built on the one before",
                change.version
            );
        }
        for version in acknowledged.get(&key).into_iter().flatten() {
            assert!(
                versions.contains(version),
                "{key}: acknowledged version {version} lost"
            );
            total += 1;
        }
    }
    assert!(total >= 600, "{total} acknowledged writes checked");
    println!(
        "{total} acknowledged writes kept, {uncertain} unanswered or conflicting, across a SIGKILL"
    );
    drop(restarted);
    drop(second);
    Ok(())
}

/// Waits until at least `count` more critical sections were entered.
async fn wait_for(counter: &AtomicU64, count: u64, what: &str) {
    let target = counter.load(Ordering::Relaxed) + count;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while counter.load(Ordering::Relaxed) < target {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} stalled at {}",
            counter.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Arrives at `id` as `participant`, waiting, until the answer is the
/// decision (a request lost with a killed replica is sent again: arrivals
/// are idempotent).
async fn arrive_until_decided(bus: &Bus, id: &str, participant: &str) -> Barrier {
    let message = ArriveAtBarrier {
        id: id.into(),
        participant: participant.into(),
        data: Some(to_wire_value(json!({ participant: true }))),
        wait: true,
    };
    loop {
        let answer: Result<Barrier, ServiceError> = bus
            .request(
                bus.subjects.endpoint("state", "barrier.arrive"),
                &message,
                Duration::from_secs(5),
            )
            .await;
        match answer {
            Ok(barrier) if barrier.status != BarrierStatus::BarrierWaiting as i32 => {
                return barrier;
            }
            Ok(_) => {}
            Err(error) => assert!(
                matches!(error.code, ErrorCode::Timeout | ErrorCode::Unavailable),
                "{error}"
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_state_replica_never_lets_two_hold_a_lock_and_a_barrier_releases_once()
-> anyhow::Result<()> {
    let world = World::start().await?;
    let mut first = spawn_state(&world);
    let second = spawn_state(&world);
    let bus = world.bus("setup").await?;
    wait_served(&bus).await;
    let participants: Vec<String> = (0..12).map(|n| format!("p{n:02}")).collect();
    let barrier = CreateBarrier {
        id: "meet".into(),
        participants: participants.clone(),
        condition: BarrierCondition::All as i32,
        timeout_ms: 120_000,
        ..Default::default()
    };
    let _: Barrier = call(&bus, "barrier.create", &barrier).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let inside = Arc::new(AtomicBool::new(false));
    let entered = Arc::new(AtomicU64::new(0));
    let last_token = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for worker in 0..6 {
        let bus = world.bus(&format!("locker-{worker}")).await?;
        let (stop, inside, entered, last_token) = (
            stop.clone(),
            inside.clone(),
            entered.clone(),
            last_token.clone(),
        );
        workers.push(tokio::spawn(async move {
            let acquire = AcquireLock {
                resource: "critical".into(),
                owner: format!("worker-{worker}"),
                mode: LockMode::Exclusive as i32,
                ttl_ms: 5_000,
                wait_ms: 20_000,
            };
            while !stop.load(Ordering::Relaxed) {
                let grant: LockGrant = match bus
                    .request(
                        bus.subjects.endpoint("state", "lock.acquire"),
                        &acquire,
                        Duration::from_secs(25),
                    )
                    .await
                {
                    Ok(grant) => grant,
                    // Lost with the killed replica, or the wait ran out:
                    // ask again (a retry while holding is the same grant).
                    Err(error) => {
                        assert!(
                            matches!(error.code, ErrorCode::Timeout | ErrorCode::Unavailable),
                            "{error}"
                        );
                        continue;
                    }
                };
                assert!(!inside.swap(true, Ordering::SeqCst), "two holders at once");
                // Tokens grow with every grant; the one case of the same
                // token again is this worker's own grant, whose release was
                // lost with the killed replica, answered again to its retry.
                // (Packed: token * 8 + worker.)
                let packed = grant.token * 8 + worker as u64;
                let before = last_token.swap(packed, Ordering::SeqCst);
                assert!(
                    grant.token > before / 8 || packed == before,
                    "token {} by worker {worker} after token {} by worker {}",
                    grant.token,
                    before / 8,
                    before % 8
                );
                entered.fetch_add(1, Ordering::Relaxed);
                tokio::task::yield_now().await;
                inside.store(false, Ordering::SeqCst);
                let release = ReleaseLock {
                    resource: grant.resource.clone(),
                    owner: grant.owner.clone(),
                    token: grant.token,
                };
                // Unanswered: the lease ends it.
                let _: Result<LockReleased, _> = call(&bus, "lock.release", &release).await;
            }
        }));
    }

    let mut arrivals = Vec::new();
    for participant in &participants[..6] {
        let bus = world.bus(participant).await?;
        let participant = participant.clone();
        arrivals.push(tokio::spawn(async move {
            arrive_until_decided(&bus, "meet", &participant).await
        }));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got: Result<Barrier, _> =
            call(&bus, "barrier.get", &GetBarrier { id: "meet".into() }).await;
        if got.is_ok_and(|b| b.arrivals.len() == 6) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first six never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    wait_for(&entered, 20, "locking").await;
    first.kill()?;
    wait_for(&entered, 20, "locking after the kill").await;
    for participant in &participants[6..] {
        let bus = world.bus(participant).await?;
        let participant = participant.clone();
        arrivals.push(tokio::spawn(async move {
            arrive_until_decided(&bus, "meet", &participant).await
        }));
    }
    for arrival in arrivals {
        let decided = arrival.await?;
        assert_eq!(decided.status, BarrierStatus::BarrierReleased as i32);
        assert_eq!(decided.arrivals.len(), 12);
    }
    let restarted = spawn_state(&world);
    wait_for(&entered, 20, "locking after the restart").await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await?;
    }

    let events = EventStore::new(world.db.pool().clone())
        .events_for("state.barrier", "meet")
        .await?;
    let count = |kind: &str| events.iter().filter(|e| e.event_type == kind).count();
    assert_eq!(
        (count("barrier.arrived"), count("barrier.released")),
        (12, 1)
    );
    println!(
        "{} critical sections, tokens up to {}, across a SIGKILL",
        entered.load(Ordering::Relaxed),
        last_token.load(Ordering::Relaxed) / 8
    );
    drop(restarted);
    drop(second);
    Ok(())
}
