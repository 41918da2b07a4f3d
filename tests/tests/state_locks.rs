//! The state service's locks against real NATS and Postgres: grants,
//! FIFO waiters answered when their turn comes, shared and exclusive
//! modes, fencing tokens and fenced writes, leases that run out, an owner
//! agent that goes away, signed owners, bad input kept as dead letters,
//! and two replicas never granting one exclusive lock twice.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use concord_bus::service::read_reply;
use concord_bus::{Bus, ServiceError};
use concord_state::StateConfig;
use concord_store::{DeadLetterFilter, EventStore};
use concord_tests::{RunningState, World};
use concord_wire::json::to_wire_value;
use concord_wire::v1::{
    AcquireLock, AgentRecord, CheckLock, Document, ErrorCode, Fence, GetLock, ListLocks,
    ListLocksReply, Liveness, LockGrant, LockMode, LockReleased, LockState, LockTokenStatus,
    PutDocument, ReleaseLock, RenewLock, TokenStatus,
};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(10);

async fn call<Q: concord_wire::WireMessage, R: concord_wire::WireMessage>(
    bus: &Bus,
    name: &str,
    message: &Q,
) -> Result<R, ServiceError> {
    bus.request(bus.subjects.endpoint("state", name), message, TIMEOUT)
        .await
}

fn acquire(resource: &str, owner: &str, mode: LockMode, ttl_ms: u64, wait_ms: u64) -> AcquireLock {
    AcquireLock {
        resource: resource.into(),
        owner: owner.into(),
        mode: mode as i32,
        ttl_ms,
        wait_ms,
    }
}

async fn take(bus: &Bus, message: AcquireLock) -> Result<LockGrant, ServiceError> {
    call(bus, "lock.acquire", &message).await
}

async fn release(bus: &Bus, grant: &LockGrant) -> Result<LockReleased, ServiceError> {
    let message = ReleaseLock {
        resource: grant.resource.clone(),
        owner: grant.owner.clone(),
        token: grant.token,
    };
    call(bus, "lock.release", &message).await
}

async fn lock_state(bus: &Bus, resource: &str) -> LockState {
    call(
        bus,
        "lock.get",
        &GetLock {
            resource: resource.into(),
        },
    )
    .await
    .unwrap()
}

/// Waits until `resource` has `count` waiters.
async fn until_waiting(bus: &Bus, resource: &str, count: usize) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while lock_state(bus, resource).await.waiters.len() != count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{resource} never had {count} waiters"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A waiting acquire, answered when granted.
fn queue(
    bus: &Bus,
    message: AcquireLock,
) -> tokio::task::JoinHandle<Result<LockGrant, ServiceError>> {
    let bus = bus.clone();
    tokio::spawn(async move { take(&bus, message).await })
}

fn fenced_put(key: &str, resource: &str, token: u64) -> PutDocument {
    PutDocument {
        key: key.into(),
        value: Some(to_wire_value(json!({"by": token}))),
        expected_version: None,
        actor: "writer".into(),
        fence: Some(Fence {
            resource: resource.into(),
            token,
        }),
    }
}

#[tokio::test]
async fn a_lock_is_granted_queued_handed_over_and_fences_writes() -> anyhow::Result<()> {
    let world = World::start().await?;
    let state = RunningState::start(&world, StateConfig::default()).await?;
    let bus = world.bus("client").await?;
    let exclusive =
        |owner, wait| acquire("printers/floor-2", owner, LockMode::Exclusive, 60_000, wait);

    let a = take(&bus, exclusive("a", 0)).await?;
    assert_eq!((a.token, a.owner.as_str()), (1, "a"));
    assert_eq!(
        take(&bus, exclusive("a", 0)).await?.token,
        1,
        "a retried acquire is the same grant"
    );
    let busy = take(&bus, exclusive("b", 0)).await.unwrap_err();
    assert_eq!(busy.code, ErrorCode::Conflict, "{busy}");

    let b = queue(&bus, exclusive("b", 30_000));
    until_waiting(&bus, "printers/floor-2", 1).await;
    let listed: ListLocksReply = call(
        &bus,
        "lock.list",
        &ListLocks {
            prefix: "printers/".into(),
            ..Default::default()
        },
    )
    .await?;
    assert_eq!(listed.locks.len(), 1);
    assert_eq!(listed.locks[0].waiters[0].owner, "b");

    let released = release(&bus, &a).await?;
    assert_eq!(released.token, 1);
    assert_eq!(released.granted.len(), 1);
    let b = b.await??;
    assert_eq!(
        (b.owner.as_str(), b.token),
        ("b", 2),
        "the waiter is answered with its grant"
    );

    // The old token is superseded: a write fenced by it is refused.
    let check: LockTokenStatus = call(
        &bus,
        "lock.check",
        &CheckLock {
            resource: "printers/floor-2".into(),
            token: 1,
        },
    )
    .await?;
    assert_eq!(check.status, TokenStatus::TokenSuperseded as i32);
    assert_eq!(check.latest_token, 2);
    let check: LockTokenStatus = call(
        &bus,
        "lock.check",
        &CheckLock {
            resource: "printers/floor-2".into(),
            token: 2,
        },
    )
    .await?;
    assert_eq!(check.status, TokenStatus::TokenHeld as i32);
    assert_eq!(check.holder.unwrap().owner, "b");
    let refused = call::<_, Document>(&bus, "put", &fenced_put("jobs/1", "printers/floor-2", 1))
        .await
        .unwrap_err();
    assert_eq!(refused.code, ErrorCode::Conflict, "{refused}");
    assert!(
        refused.message.contains("superseded by token 2"),
        "{refused}"
    );
    let invented = call::<_, Document>(&bus, "put", &fenced_put("jobs/1", "printers/floor-2", 9))
        .await
        .unwrap_err();
    assert_eq!(invented.code, ErrorCode::Conflict, "{invented}");
    assert!(invented.message.contains("never granted"), "{invented}");
    let written: Document = call(&bus, "put", &fenced_put("jobs/1", "printers/floor-2", 2)).await?;
    assert_eq!(written.version, 1);

    // Renewing or releasing with a stale token is bad input, kept.
    let renew = RenewLock {
        resource: "printers/floor-2".into(),
        owner: "a".into(),
        token: 1,
        ttl_ms: 0,
    };
    let stale = call::<_, LockGrant>(&bus, "lock.renew", &renew)
        .await
        .unwrap_err();
    assert_eq!(
        (stale.code, stale.field.as_deref()),
        (ErrorCode::InvalidArgument, Some("token")),
        "{stale}"
    );
    let renewed: LockGrant = call(
        &bus,
        "lock.renew",
        &RenewLock {
            owner: "b".into(),
            token: 2,
            ..renew
        },
    )
    .await?;
    assert_eq!(renewed.token, 2);
    release(&bus, &b).await?;
    let check: LockTokenStatus = call(
        &bus,
        "lock.check",
        &CheckLock {
            resource: "printers/floor-2".into(),
            token: 2,
        },
    )
    .await?;
    assert_eq!(
        check.status,
        TokenStatus::TokenReleased as i32,
        "released, and nobody newer"
    );

    let events = EventStore::new(world.db.pool().clone())
        .events_for("state.lock", "printers/floor-2")
        .await?;
    let kinds: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "lock.granted",
            "lock.queued",
            "lock.released",
            "lock.granted",
            "lock.renewed",
            "lock.released"
        ]
    );
    let letters = concord_store::DeadLetterStore::new(world.db.pool().clone());
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while letters.list(&DeadLetterFilter::default()).await?.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stale renewal was not kept"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    state.stop().await;
    Ok(())
}

#[tokio::test]
async fn shared_holders_go_together_and_a_waiting_writer_is_not_starved() -> anyhow::Result<()> {
    let world = World::start().await?;
    let state = RunningState::start(&world, StateConfig::default()).await?;
    let bus = world.bus("client").await?;
    let lock = |owner, mode| acquire("db", owner, mode, 60_000, 30_000);

    let r1 = take(&bus, lock("r1", LockMode::Shared)).await?;
    let r2 = take(&bus, lock("r2", LockMode::Shared)).await?;
    let writer = queue(&bus, lock("w", LockMode::Exclusive));
    until_waiting(&bus, "db", 1).await;
    let late_reader = queue(&bus, lock("r3", LockMode::Shared));
    until_waiting(&bus, "db", 2).await;

    release(&bus, &r1).await?;
    assert_eq!(
        lock_state(&bus, "db").await.holders.len(),
        1,
        "the writer waits for r2"
    );
    release(&bus, &r2).await?;
    let w = writer.await??;
    assert_eq!((w.owner.as_str(), w.token), ("w", 3));
    assert!(
        !late_reader.is_finished(),
        "the reader behind the writer still waits"
    );
    release(&bus, &w).await?;
    let r3 = late_reader.await??;
    assert_eq!(
        (r3.owner.as_str(), r3.token, r3.mode),
        ("r3", 4, LockMode::Shared as i32)
    );
    state.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_lease_that_runs_out_frees_the_lock_and_a_wait_that_runs_out_times_out()
-> anyhow::Result<()> {
    let world = World::start().await?;
    let state = RunningState::start(&world, StateConfig::default()).await?;
    let bus = world.bus("client").await?;

    let stale = take(
        &bus,
        acquire("lease", "sleepy", LockMode::Exclusive, 300, 0),
    )
    .await?;
    let next = take(
        &bus,
        acquire("lease", "next", LockMode::Exclusive, 60_000, 30_000),
    )
    .await?;
    assert_eq!(
        next.token,
        stale.token + 1,
        "granted once the lease ran out"
    );
    let renew = RenewLock {
        resource: "lease".into(),
        owner: "sleepy".into(),
        token: stale.token,
        ttl_ms: 0,
    };
    assert!(
        call::<_, LockGrant>(&bus, "lock.renew", &renew)
            .await
            .is_err(),
        "an ended lease cannot be renewed"
    );

    let impatient = take(
        &bus,
        acquire("lease", "impatient", LockMode::Exclusive, 1_000, 300),
    )
    .await
    .unwrap_err();
    assert_eq!(impatient.code, ErrorCode::Timeout, "{impatient}");
    assert!(
        impatient.message.contains("waitMs of 300 ms"),
        "{impatient}"
    );
    assert!(lock_state(&bus, "lease").await.waiters.is_empty());
    state.stop().await;
    Ok(())
}

fn agent(id: &str, liveness: Liveness, revision: u64, public_key: &str) -> AgentRecord {
    AgentRecord {
        id: id.into(),
        liveness: liveness as i32,
        revision,
        public_key: public_key.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn an_agent_that_goes_away_loses_its_locks_long_before_its_lease() -> anyhow::Result<()> {
    let world = World::start().await?;
    let state = RunningState::start(&world, StateConfig::default()).await?;
    let bus = world.bus("client").await?;
    let directory = concord_directory::DirectoryBucket::open(&bus).await?;
    directory
        .publish(&agent("worker-1", Liveness::Alive, 1, ""))
        .await?;

    let held = take(
        &bus,
        acquire("model-gpu", "worker-1", LockMode::Exclusive, 600_000, 0),
    )
    .await?;
    let next = queue(
        &bus,
        acquire("model-gpu", "worker-2", LockMode::Exclusive, 60_000, 60_000),
    );
    until_waiting(&bus, "model-gpu", 1).await;

    // The registry marks the agent UNAVAILABLE (its heartbeats stopped).
    directory
        .publish(&agent("worker-1", Liveness::Unavailable, 2, ""))
        .await?;
    let next = next.await??;
    assert_eq!(
        (next.owner.as_str(), next.token),
        ("worker-2", held.token + 1)
    );
    let events = EventStore::new(world.db.pool().clone())
        .events_for("state.lock", "model-gpu")
        .await?;
    assert!(
        events.iter().any(|e| e.event_type == "lock.owner_lost"),
        "{events:?}"
    );
    state.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_agent_with_a_key_must_sign_its_lock_requests() -> anyhow::Result<()> {
    let world = World::start().await?;
    let state = RunningState::start(&world, StateConfig::default()).await?;
    let bus = world.bus("client").await?;
    let key = concord_identity::AgentKey::from_seed([9; 32]);
    let directory = concord_directory::DirectoryBucket::open(&bus).await?;
    directory
        .publish(&agent(
            "signer-1",
            Liveness::Alive,
            1,
            &key.public_key_base64(),
        ))
        .await?;
    concord_tests::stack::wait_for_directory_agent(&bus, "signer-1").await;
    let subject = bus.subjects.endpoint("state", "lock.acquire");
    let message = acquire("vault", "signer-1", LockMode::Exclusive, 60_000, 0);

    // The directory copy of the state service may lag the bucket a moment:
    // probe with an unsigned release, which changes nothing either way (not
    // held while the key is unknown, refused once it is known).
    let probe = ReleaseLock {
        resource: "probe".into(),
        owner: "signer-1".into(),
        token: 1,
    };
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while call::<_, LockReleased>(&bus, "lock.release", &probe)
        .await
        .unwrap_err()
        .code
        != ErrorCode::PermissionDenied
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the state service never learnt signer-1's key"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let forged: ServiceError = bus
        .request::<_, LockGrant>(subject.clone(), &message, TIMEOUT)
        .await
        .unwrap_err();
    assert_eq!(forged.code, ErrorCode::PermissionDenied, "{forged}");
    let thief = concord_identity::AgentKey::from_seed([1; 32]);
    let stolen: Result<LockGrant, _> = bus
        .request_with(subject.clone(), &message, TIMEOUT, |payload| {
            thief
                .sign(
                    concord_identity::purpose::STATE_LOCK,
                    "signer-1",
                    concord_identity::now_ms(),
                    payload,
                )
                .headers()
                .into()
        })
        .await;
    assert_eq!(stolen.unwrap_err().code, ErrorCode::PermissionDenied);
    let granted: LockGrant = bus
        .request_with(subject, &message, TIMEOUT, |payload| {
            key.sign(
                concord_identity::purpose::STATE_LOCK,
                "signer-1",
                concord_identity::now_ms(),
                payload,
            )
            .headers()
            .into()
        })
        .await?;
    assert_eq!(granted.owner, "signer-1");
    state.stop().await;
    Ok(())
}

#[tokio::test]
async fn bad_lock_requests_name_the_field() -> anyhow::Result<()> {
    let world = World::start().await?;
    let state = RunningState::start(&world, StateConfig::default()).await?;
    let bus = world.bus("client").await?;
    let cases: [(AcquireLock, &str); 4] = [
        (acquire("", "a", LockMode::Exclusive, 0, 0), "resource"),
        (
            acquire("has space", "a", LockMode::Exclusive, 0, 0),
            "resource",
        ),
        (acquire("r", "", LockMode::Exclusive, 0, 0), "owner"),
        (acquire("r", "a", LockMode::Exclusive, 5, 0), "ttlMs"),
    ];
    for (message, field) in cases {
        let error = take(&bus, message).await.unwrap_err();
        assert_eq!(
            (error.code, error.field.as_deref()),
            (ErrorCode::InvalidArgument, Some(field)),
            "{error}"
        );
    }
    // A mode no client library would encode, as the NATS CLI can send it.
    let raw = world
        .nats
        .client()
        .await
        .request(
            bus.subjects.endpoint("state", "lock.acquire"),
            r#"{"resource":"r","owner":"a","mode":"MOSTLY"}"#.into(),
        )
        .await?;
    let error = read_reply::<LockGrant>(&raw).unwrap_err();
    assert_eq!(
        (error.code, error.field.as_deref()),
        (ErrorCode::InvalidArgument, Some("mode")),
        "{error}"
    );
    let unknown = call::<_, LockReleased>(
        &bus,
        "lock.release",
        &ReleaseLock {
            resource: "never".into(),
            owner: "a".into(),
            token: 3,
        },
    )
    .await
    .unwrap_err();
    assert_eq!(unknown.field.as_deref(), Some("token"), "{unknown}");
    state.stop().await;
    Ok(())
}

#[tokio::test]
async fn two_replicas_never_grant_one_exclusive_lock_twice() -> anyhow::Result<()> {
    let world = World::start().await?;
    let one = RunningState::start(&world, StateConfig::default()).await?;
    let two = RunningState::start(&world, StateConfig::default()).await?;
    let held = Arc::new(AtomicBool::new(false));
    let last_token = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for worker in 0..8 {
        let bus = world.bus(&format!("worker-{worker}")).await?;
        let held = held.clone();
        let last_token = last_token.clone();
        workers.push(tokio::spawn(async move {
            for _ in 0..15 {
                let grant = take(
                    &bus,
                    acquire(
                        "one-at-a-time",
                        &format!("w{worker}"),
                        LockMode::Exclusive,
                        60_000,
                        60_000,
                    ),
                )
                .await
                .unwrap();
                assert!(!held.swap(true, Ordering::SeqCst), "two holders at once");
                let before = last_token.swap(grant.token, Ordering::SeqCst);
                assert!(
                    grant.token > before,
                    "tokens only grow: {} after {before}",
                    grant.token
                );
                tokio::task::yield_now().await;
                held.store(false, Ordering::SeqCst);
                release(&bus, &grant).await.unwrap();
            }
        }));
    }
    for worker in workers {
        worker.await?;
    }
    assert_eq!(
        last_token.load(Ordering::SeqCst),
        8 * 15,
        "every grant its own token"
    );
    one.stop().await;
    two.stop().await;
    Ok(())
}
