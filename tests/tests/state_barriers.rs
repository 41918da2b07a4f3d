//! The state service's barriers against real NATS and Postgres: ALL,
//! MAJORITY and MIN_COUNT releases answering every waiting participant with
//! the merged shared data, idempotent arrivals, a timeout naming who is
//! missing, a barrier that outlives the replica it was created on, a
//! hundred participants over two replicas released once, and bad barriers
//! refused naming the field and kept as dead letters.

use std::time::Duration;

use concord_bus::{Bus, ServiceError};
use concord_state::StateConfig;
use concord_store::{DeadLetterFilter, DeadLetterStore, EventStore};
use concord_tests::{RunningState, World};
use concord_wire::json::{from_wire_value, to_wire_value};
use concord_wire::v1::{
    ArriveAtBarrier, Barrier, BarrierCondition, BarrierStatus, CreateBarrier, ErrorCode, GetBarrier,
};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(15);

async fn call<Q: concord_wire::WireMessage, R: concord_wire::WireMessage>(
    bus: &Bus,
    name: &str,
    message: &Q,
) -> Result<R, ServiceError> {
    bus.request(bus.subjects.endpoint("state", name), message, TIMEOUT)
        .await
}

fn named(id: &str, participants: &[&str], condition: BarrierCondition) -> CreateBarrier {
    CreateBarrier {
        id: id.into(),
        participants: participants.iter().map(|p| p.to_string()).collect(),
        condition: condition as i32,
        timeout_ms: 60_000,
        actor: "coordinator".into(),
        ..Default::default()
    }
}

async fn create(bus: &Bus, message: &CreateBarrier) -> Result<Barrier, ServiceError> {
    call(bus, "barrier.create", message).await
}

fn arrival(id: &str, participant: &str, data: Value, wait: bool) -> ArriveAtBarrier {
    ArriveAtBarrier {
        id: id.into(),
        participant: participant.into(),
        data: (!data.is_null()).then(|| to_wire_value(data)),
        wait,
    }
}

async fn arrive(bus: &Bus, message: ArriveAtBarrier) -> Result<Barrier, ServiceError> {
    call(bus, "barrier.arrive", &message).await
}

/// An arrival that waits for the release, answered then.
fn waiting(
    bus: &Bus,
    id: &str,
    participant: &str,
    data: Value,
) -> tokio::task::JoinHandle<Result<Barrier, ServiceError>> {
    let bus = bus.clone();
    let message = arrival(id, participant, data, true);
    tokio::spawn(async move { arrive(&bus, message).await })
}

async fn get(bus: &Bus, id: &str) -> Result<Barrier, ServiceError> {
    call(bus, "barrier.get", &GetBarrier { id: id.into() }).await
}

/// Waits until `id` counts `arrivals` arrivals.
async fn until_arrived(bus: &Bus, id: &str, arrivals: usize) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while get(bus, id).await.map(|b| b.arrivals.len()).unwrap_or(0) < arrivals {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} never had {arrivals} arrivals"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn status(barrier: &Barrier) -> BarrierStatus {
    BarrierStatus::try_from(barrier.status).unwrap()
}

fn data(barrier: &Barrier) -> Value {
    barrier
        .data
        .clone()
        .map(|v| from_wire_value(&v))
        .unwrap_or(Value::Null)
}

fn arrived(barrier: &Barrier) -> Vec<&str> {
    barrier
        .arrivals
        .iter()
        .map(|a| a.participant.as_str())
        .collect()
}

#[tokio::test]
async fn all_arrived_releases_every_waiting_participant_with_the_merged_data() -> anyhow::Result<()>
{
    let world = World::start().await?;
    let state = RunningState::start(&world, StateConfig::default()).await?;
    let bus = world.bus("client").await?;
    let mut spec = named("stage-2", &["a", "b", "c"], BarrierCondition::All);
    spec.data = Some(to_wire_value(json!({"plan": "q4", "votes": {}})));

    let created = create(&bus, &spec).await?;
    assert_eq!(status(&created), BarrierStatus::BarrierWaiting);
    assert_eq!((created.needed, created.missing.len()), (3, 3));
    assert_eq!(
        create(&bus, &spec).await?.created_at,
        created.created_at,
        "the same barrier again is the one that exists"
    );

    let a = waiting(&bus, "stage-2", "a", json!({"votes": {"a": 1}}));
    until_arrived(&bus, "stage-2", 1).await;
    let b = waiting(&bus, "stage-2", "b", json!({"votes": {"b": 2}}));
    until_arrived(&bus, "stage-2", 2).await;
    let again = arrive(
        &bus,
        arrival("stage-2", "a", json!({"votes": {"a": 9}}), false),
    )
    .await?;
    assert_eq!(arrived(&again), ["a", "b"], "arriving twice counts once");
    assert_eq!(status(&again), BarrierStatus::BarrierWaiting);

    let c = arrive(
        &bus,
        arrival("stage-2", "c", json!({"votes": {"c": 3}}), false),
    )
    .await?;
    let expected = json!({"plan": "q4", "votes": {"a": 1, "b": 2, "c": 3}});
    for released in [c, a.await??, b.await??] {
        assert_eq!(status(&released), BarrierStatus::BarrierReleased);
        assert_eq!(arrived(&released), ["a", "b", "c"]);
        assert!(released.missing.is_empty());
        assert_eq!(data(&released), expected);
        assert!(released.decided_at.is_some());
    }
    let late = arrive(&bus, arrival("stage-2", "b", Value::Null, true)).await?;
    assert_eq!(
        status(&late),
        BarrierStatus::BarrierReleased,
        "a retried arrival after the release gets the release at once"
    );

    let events = EventStore::new(world.db.pool().clone())
        .events_for("state.barrier", "stage-2")
        .await?;
    let kinds: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "barrier.created",
            "barrier.arrived",
            "barrier.arrived",
            "barrier.arrived",
            "barrier.released"
        ]
    );
    state.stop().await;
    Ok(())
}

#[tokio::test]
async fn majority_and_min_count_release_before_everyone_arrived() -> anyhow::Result<()> {
    let world = World::start().await?;
    let state = RunningState::start(&world, StateConfig::default()).await?;
    let bus = world.bus("client").await?;

    let five = ["v1", "v2", "v3", "v4", "v5"];
    create(&bus, &named("majority", &five, BarrierCondition::Majority)).await?;
    for (n, voter) in five.iter().take(3).enumerate() {
        let answer = arrive(&bus, arrival("majority", voter, Value::Null, false)).await?;
        let expected = if n < 2 {
            BarrierStatus::BarrierWaiting
        } else {
            BarrierStatus::BarrierReleased
        };
        assert_eq!(status(&answer), expected, "after {} of 5", n + 1);
    }
    let released = get(&bus, "majority").await?;
    assert_eq!(released.needed, 3);
    assert_eq!(released.missing, ["v4", "v5"]);
    let after = arrive(&bus, arrival("majority", "v4", Value::Null, false)).await?;
    assert_eq!(
        arrived(&after),
        ["v1", "v2", "v3"],
        "arrivals after the release are not counted"
    );

    let counted = CreateBarrier {
        id: "workers".into(),
        count: 4,
        condition: BarrierCondition::MinCount as i32,
        min_count: 2,
        timeout_ms: 60_000,
        ..Default::default()
    };
    create(&bus, &counted).await?;
    let first = waiting(&bus, "workers", "anyone-1", Value::Null);
    until_arrived(&bus, "workers", 1).await;
    arrive(&bus, arrival("workers", "anyone-2", Value::Null, false)).await?;
    let first = first.await??;
    assert_eq!(status(&first), BarrierStatus::BarrierReleased);
    assert_eq!(arrived(&first), ["anyone-1", "anyone-2"]);
    state.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_barrier_that_times_out_names_who_arrived_and_who_did_not() -> anyhow::Result<()> {
    let world = World::start().await?;
    let state = RunningState::start(&world, StateConfig::default()).await?;
    let bus = world.bus("client").await?;
    let mut spec = named("sync", &["a", "b", "c"], BarrierCondition::All);
    spec.timeout_ms = 300;
    create(&bus, &spec).await?;

    let a = arrive(&bus, arrival("sync", "a", Value::Null, true)).await?;
    assert_eq!(status(&a), BarrierStatus::BarrierTimeout);
    assert_eq!(arrived(&a), ["a"]);
    assert_eq!(a.missing, ["b", "c"]);
    assert_eq!(a.decided_at, a.deadline, "it timed out at its deadline");

    let late = arrive(&bus, arrival("sync", "b", Value::Null, true)).await?;
    assert_eq!(status(&late), BarrierStatus::BarrierTimeout);
    assert_eq!(arrived(&late), ["a"], "a late arrival is not counted");

    let events = EventStore::new(world.db.pool().clone())
        .events_for("state.barrier", "sync")
        .await?;
    let timeout = events
        .iter()
        .find(|e| e.event_type == "barrier.timeout")
        .expect("a timeout event");
    assert_eq!(timeout.data["missing"], json!(["b", "c"]));
    assert_eq!(
        events
            .iter()
            .filter(|e| e.event_type == "barrier.timeout")
            .count(),
        1
    );
    state.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_waiting_participant_is_released_by_the_replica_that_came_after() -> anyhow::Result<()> {
    let world = World::start().await?;
    let first = RunningState::start(&world, StateConfig::default()).await?;
    let bus = world.bus("client").await?;
    create(&bus, &named("restart", &["a", "b"], BarrierCondition::All)).await?;
    let a = waiting(&bus, "restart", "a", json!({"a": true}));
    until_arrived(&bus, "restart", 1).await;
    first.stop().await;

    let second = RunningState::start(&world, StateConfig::default()).await?;
    let b = arrive(&bus, arrival("restart", "b", json!({"b": true}), false)).await?;
    assert_eq!(status(&b), BarrierStatus::BarrierReleased);
    let a = a.await??;
    assert_eq!(status(&a), BarrierStatus::BarrierReleased);
    assert_eq!(data(&a), json!({"a": true, "b": true}));
    second.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_hundred_participants_over_two_replicas_are_released_once() -> anyhow::Result<()> {
    let world = World::start().await?;
    let one = RunningState::start(&world, StateConfig::default()).await?;
    let two = RunningState::start(&world, StateConfig::default()).await?;
    let bus = world.bus("client").await?;
    let participants: Vec<String> = (0..100).map(|n| format!("p{n:03}")).collect();
    let ids: Vec<&str> = participants.iter().map(String::as_str).collect();
    create(&bus, &named("hundred", &ids, BarrierCondition::All)).await?;

    let mut arrivals = Vec::new();
    for participant in &participants {
        arrivals.push(waiting(
            &bus,
            "hundred",
            participant,
            json!({ participant.clone(): 1 }),
        ));
    }
    for arrival in arrivals {
        let released = arrival.await??;
        assert_eq!(status(&released), BarrierStatus::BarrierReleased);
        assert_eq!(released.arrivals.len(), 100);
        assert_eq!(data(&released).as_object().map(|o| o.len()), Some(100));
    }
    let events = EventStore::new(world.db.pool().clone())
        .events_for("state.barrier", "hundred")
        .await?;
    let count = |kind: &str| events.iter().filter(|e| e.event_type == kind).count();
    assert_eq!(
        (count("barrier.arrived"), count("barrier.released")),
        (100, 1)
    );
    one.stop().await;
    two.stop().await;
    Ok(())
}

#[tokio::test]
async fn bad_barriers_name_the_field_and_are_kept_as_dead_letters() -> anyhow::Result<()> {
    let world = World::start().await?;
    let state = RunningState::start(&world, StateConfig::default()).await?;
    let bus = world.bus("client").await?;

    let mut above = named("quorum", &["a", "b"], BarrierCondition::MinCount);
    above.min_count = 3;
    let mut no_timeout = named("quorum", &["a", "b"], BarrierCondition::All);
    no_timeout.timeout_ms = 0;
    let mut list = named("quorum", &["a", "b"], BarrierCondition::All);
    list.data = Some(to_wire_value(json!([1, 2])));
    let cases = [
        (above, "minCount"),
        (no_timeout, "timeoutMs"),
        (list, "data"),
        (
            named("quorum", &["a", "a"], BarrierCondition::All),
            "participants",
        ),
        (named("bad id", &["a"], BarrierCondition::All), "id"),
    ];
    let refused = cases.len();
    for (message, field) in cases {
        let error = create(&bus, &message).await.unwrap_err();
        assert_eq!(
            (error.code, error.field.as_deref()),
            (ErrorCode::InvalidArgument, Some(field)),
            "{error}"
        );
    }

    create(&bus, &named("quorum", &["a", "b"], BarrierCondition::All)).await?;
    let other = create(
        &bus,
        &named("quorum", &["a", "b", "c"], BarrierCondition::All),
    )
    .await
    .unwrap_err();
    assert_eq!(other.code, ErrorCode::AlreadyExists, "{other}");
    let stranger = arrive(&bus, arrival("quorum", "z", Value::Null, false))
        .await
        .unwrap_err();
    assert_eq!(stranger.field.as_deref(), Some("participant"), "{stranger}");
    let not_object = arrive(&bus, arrival("quorum", "a", json!("hello"), false))
        .await
        .unwrap_err();
    assert_eq!(not_object.field.as_deref(), Some("data"), "{not_object}");
    let missing = arrive(&bus, arrival("nowhere", "a", Value::Null, false))
        .await
        .unwrap_err();
    assert_eq!(missing.code, ErrorCode::NotFound, "{missing}");

    let letters = DeadLetterStore::new(world.db.pool().clone());
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let kept = letters.list(&DeadLetterFilter::default()).await?;
        if kept.len() >= refused + 2 {
            assert!(
                kept.iter()
                    .all(|l| l.subject.contains(".state.barrier.") && !l.payload.is_empty()),
                "{kept:?}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "bad barriers not kept: {kept:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    state.stop().await;
    Ok(())
}
