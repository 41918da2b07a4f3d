//! Workflow stage records (seed 003) against real NATS and Postgres: the
//! research → writing → editing → verification flow with scores, a send-back
//! for another iteration, assignees and metadata, every step an event;
//! compare-and-set steps and two replicas racing on one stage; listing by
//! status; bad steps naming the field and kept as dead letters.

use std::time::Duration;

use concord_bus::{Bus, ServiceError};
use concord_state::StateConfig;
use concord_store::{DeadLetterFilter, DeadLetterStore, EventStore};
use concord_tests::{RunningState, World};
use concord_wire::json::{from_wire_value, to_wire_value};
use concord_wire::v1::{
    CreateWorkflowRecord, ErrorCode, GetWorkflowRecord, ListWorkflowRecords,
    ListWorkflowRecordsReply, WorkflowRecord, WorkflowStatus, WorkflowStep, WorkflowStepKind,
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

fn definition(id: &str) -> CreateWorkflowRecord {
    CreateWorkflowRecord {
        id: id.into(),
        stages: ["research", "writing", "editing", "verification"]
            .map(String::from)
            .to_vec(),
        assignees: [("research".to_string(), "researcher-1".to_string())].into(),
        metadata: Some(to_wire_value(json!({"topic": "ML in healthcare"}))),
        actor: "editor".into(),
    }
}

fn step(id: &str, kind: WorkflowStepKind, stage: &str) -> WorkflowStep {
    WorkflowStep {
        id: id.into(),
        kind: kind as i32,
        stage: stage.into(),
        actor: "editor".into(),
        ..Default::default()
    }
}

fn complete(id: &str, stage: &str, score: f64) -> WorkflowStep {
    WorkflowStep {
        score: Some(score),
        ..step(id, WorkflowStepKind::StepComplete, stage)
    }
}

async fn apply(bus: &Bus, message: WorkflowStep) -> Result<WorkflowRecord, ServiceError> {
    call(bus, "workflow.step", &message).await
}

fn status(record: &WorkflowRecord) -> WorkflowStatus {
    WorkflowStatus::try_from(record.status).unwrap()
}

#[tokio::test]
async fn a_writing_workflow_runs_its_stages_with_scores_and_a_send_back() -> anyhow::Result<()> {
    let world = World::start().await?;
    let state = RunningState::start(&world, StateConfig::default()).await?;
    let bus = world.bus("client").await?;
    let id = "article-7";

    let created: WorkflowRecord = call(&bus, "workflow.create", &definition(id)).await?;
    assert_eq!(status(&created), WorkflowStatus::WorkflowCreated);
    assert_eq!(
        (created.version, created.iteration, created.current.as_str()),
        (1, 1, "")
    );
    assert_eq!(created.pending.len(), 4);
    let again: WorkflowRecord = call(&bus, "workflow.create", &definition(id)).await?;
    assert_eq!(
        again.version, 1,
        "the same definition again is the same record"
    );

    let started = apply(&bus, step(id, WorkflowStepKind::StepStart, "")).await?;
    assert_eq!(started.current, "research");
    apply(&bus, complete(id, "research", 0.9)).await?;
    let assigned = apply(
        &bus,
        WorkflowStep {
            agent: "writer-2".into(),
            ..step(id, WorkflowStepKind::StepAssign, "writing")
        },
    )
    .await?;
    assert_eq!(assigned.assignees["writing"], "writer-2");
    let drafted = apply(&bus, complete(id, "writing", 0.55)).await?;
    assert_eq!(drafted.current, "editing");

    // The editor sends the draft back: writing and everything after reopen.
    let back = apply(&bus, step(id, WorkflowStepKind::StepSendBack, "writing")).await?;
    assert_eq!(back.iteration, 2);
    assert_eq!(back.current, "writing");
    assert_eq!(back.completed, ["research"]);
    assert_eq!(back.pending, ["writing", "editing", "verification"]);
    assert!(
        !back.scores.contains_key("writing"),
        "the reopened stage's score goes"
    );

    apply(&bus, complete(id, "writing", 0.8)).await?;
    apply(&bus, step(id, WorkflowStepKind::StepAdvance, "editing")).await?;
    let annotated = apply(
        &bus,
        WorkflowStep {
            patch: Some(to_wire_value(json!({"words": 1200}))),
            ..step(id, WorkflowStepKind::StepAnnotate, "")
        },
    )
    .await?;
    assert_eq!(
        annotated.metadata.as_ref().map(from_wire_value),
        Some(json!({"topic": "ML in healthcare", "words": 1200}))
    );
    let finished = apply(&bus, complete(id, "verification", 1.0)).await?;
    assert_eq!(status(&finished), WorkflowStatus::WorkflowFinished);
    assert_eq!(finished.current, "");
    assert!(finished.pending.is_empty());
    assert_eq!(
        finished.completed,
        ["research", "writing", "editing", "verification"]
    );
    let mean = finished.mean_score.unwrap();
    assert!((mean - (0.9 + 0.8 + 1.0) / 3.0).abs() < 1e-9, "{mean}");
    let after = apply(&bus, complete(id, "verification", 1.0))
        .await
        .unwrap_err();
    assert_eq!(after.field.as_deref(), Some("step"), "{after}");

    let got: WorkflowRecord =
        call(&bus, "workflow.get", &GetWorkflowRecord { id: id.into() }).await?;
    assert_eq!(got, finished);
    let events = EventStore::new(world.db.pool().clone())
        .events_for("state.workflow", id)
        .await?;
    let kinds: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "workflow.created",
            "workflow.started",
            "workflow.stage_completed",
            "workflow.assigned",
            "workflow.stage_completed",
            "workflow.sent_back",
            "workflow.stage_completed",
            "workflow.advanced",
            "workflow.annotated",
            "workflow.stage_completed",
            "workflow.finished",
        ]
    );
    assert_eq!(events.last().unwrap().sequence as u64, finished.version);
    state.stop().await;
    Ok(())
}

#[tokio::test]
async fn steps_are_compare_and_set_and_two_replicas_complete_a_stage_once() -> anyhow::Result<()> {
    let world = World::start().await?;
    let one = RunningState::start(&world, StateConfig::default()).await?;
    let two = RunningState::start(&world, StateConfig::default()).await?;
    let bus = world.bus("client").await?;
    call::<_, WorkflowRecord>(&bus, "workflow.create", &definition("race")).await?;
    let started = apply(&bus, step("race", WorkflowStepKind::StepStart, "")).await?;

    let stale = apply(
        &bus,
        WorkflowStep {
            expected_version: Some(started.version - 1),
            ..complete("race", "research", 0.5)
        },
    )
    .await
    .unwrap_err();
    assert_eq!(stale.code, ErrorCode::Conflict, "{stale}");
    assert!(stale.details.is_some(), "the conflict carries the record");

    let mut racers = Vec::new();
    for n in 0..8 {
        let bus = world.bus(&format!("agent-{n}")).await?;
        racers.push(tokio::spawn(async move {
            apply(&bus, complete("race", "research", 0.1 * f64::from(n))).await
        }));
    }
    let mut won = 0;
    for racer in racers {
        match racer.await? {
            Ok(record) => {
                won += 1;
                assert_eq!(record.completed, ["research"]);
            }
            Err(error) => assert_eq!(error.field.as_deref(), Some("stage"), "{error}"),
        }
    }
    assert_eq!(won, 1, "one completion of the stage");

    let running: ListWorkflowRecordsReply = call(
        &bus,
        "workflow.list",
        &ListWorkflowRecords {
            status: WorkflowStatus::WorkflowRunning as i32,
            ..Default::default()
        },
    )
    .await?;
    assert_eq!(running.workflows.len(), 1);
    let finished: ListWorkflowRecordsReply = call(
        &bus,
        "workflow.list",
        &ListWorkflowRecords {
            status: WorkflowStatus::WorkflowFinished as i32,
            ..Default::default()
        },
    )
    .await?;
    assert!(finished.workflows.is_empty());
    one.stop().await;
    two.stop().await;
    Ok(())
}

#[tokio::test]
async fn bad_steps_name_the_field_and_are_kept_as_dead_letters() -> anyhow::Result<()> {
    let world = World::start().await?;
    let state = RunningState::start(&world, StateConfig::default()).await?;
    let bus = world.bus("client").await?;
    let mut twice = definition("bad");
    twice.stages.push("research".into());
    let error = call::<_, WorkflowRecord>(&bus, "workflow.create", &twice)
        .await
        .unwrap_err();
    assert_eq!(error.field.as_deref(), Some("stages"), "{error}");
    call::<_, WorkflowRecord>(&bus, "workflow.create", &definition("w")).await?;

    let cases = [
        (complete("w", "research", 0.5), "step"),
        (
            step("w", WorkflowStepKind::StepComplete, "research"),
            "score",
        ),
        (step("w", WorkflowStepKind::Unspecified, ""), "kind"),
        (
            step("w", WorkflowStepKind::StepSendBack, "nowhere"),
            "stage",
        ),
    ];
    let refused = cases.len() + 1;
    for (message, field) in cases {
        let error = apply(&bus, message).await.unwrap_err();
        assert_eq!(
            (error.code, error.field.as_deref()),
            (ErrorCode::InvalidArgument, Some(field)),
            "{error}"
        );
    }
    apply(&bus, step("w", WorkflowStepKind::StepStart, "")).await?;
    let score = apply(&bus, complete("w", "research", 1.5))
        .await
        .unwrap_err();
    assert_eq!(score.field.as_deref(), Some("score"), "{score}");
    let wrong = apply(&bus, complete("w", "editing", 0.5))
        .await
        .unwrap_err();
    assert!(wrong.message.contains("not the current stage"), "{wrong}");
    let missing = apply(&bus, step("nope", WorkflowStepKind::StepStart, ""))
        .await
        .unwrap_err();
    assert_eq!(missing.code, ErrorCode::NotFound, "{missing}");

    let letters = DeadLetterStore::new(world.db.pool().clone());
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while letters.list(&DeadLetterFilter::default()).await?.len() < refused + 2 {
        assert!(tokio::time::Instant::now() < deadline, "bad steps not kept");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    state.stop().await;
    Ok(())
}
