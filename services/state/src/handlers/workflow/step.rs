//! `<root>.state.workflow.step`: start, complete a stage with a score,
//! advance, send back for another iteration, assign, annotate.

use concord_bus::{Reply, Request, ServiceError};
use concord_identity::purpose;
use concord_wire::v1::{WorkflowStep, WorkflowStepKind};

use crate::app::State;
use crate::workflow::Step;
use crate::workflow_table::view;

pub async fn handle(state: State, request: Request) -> Result<Reply, ServiceError> {
    let message: WorkflowStep = request.decode()?;
    super::id(&message.id)?;
    let step = step(&message)?;
    let actor = super::super::actor(&message.actor)?;
    state.check_identity(&request, purpose::STATE_WORKFLOW, &actor)?;
    let record = state
        .workflows()
        .step(&message.id, step, &actor, message.expected_version)
        .await?;
    Reply::to(&request, &view(&record))
}

/// The operation the request names, with the fields it needs.
fn step(message: &WorkflowStep) -> Result<Step, ServiceError> {
    let stage = || {
        super::name("stage", &message.stage)?;
        Ok::<_, ServiceError>(message.stage.clone())
    };
    Ok(match WorkflowStepKind::try_from(message.kind) {
        Ok(WorkflowStepKind::StepStart) => Step::Start,
        Ok(WorkflowStepKind::StepComplete) => {
            let score = message.score.ok_or_else(|| {
                ServiceError::invalid("score", "required: the stage's quality score, 0..1")
            })?;
            Step::Complete {
                stage: stage()?,
                score,
            }
        }
        Ok(WorkflowStepKind::StepAdvance) => Step::Advance { stage: stage()? },
        Ok(WorkflowStepKind::StepSendBack) => Step::SendBack { stage: stage()? },
        Ok(WorkflowStepKind::StepAssign) => {
            super::name("agent", &message.agent)?;
            Step::Assign {
                stage: stage()?,
                agent: message.agent.clone(),
            }
        }
        Ok(WorkflowStepKind::StepAnnotate) => Step::Annotate {
            patch: message
                .patch
                .as_ref()
                .map(concord_wire::json::from_wire_value)
                .ok_or_else(|| ServiceError::invalid("patch", "required: a JSON merge patch"))?,
        },
        Ok(WorkflowStepKind::Unspecified) | Err(_) => {
            return Err(ServiceError::invalid(
                "kind",
                format!(
                    "{} is not a step: STEP_START, STEP_COMPLETE, STEP_ADVANCE, STEP_SEND_BACK, STEP_ASSIGN or STEP_ANNOTATE",
                    message.kind
                ),
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(message: WorkflowStep) -> Option<String> {
        step(&message).unwrap_err().field
    }

    #[test]
    fn each_kind_needs_its_fields() {
        let base = WorkflowStep {
            id: "w".into(),
            ..Default::default()
        };
        assert_eq!(field(base.clone()).as_deref(), Some("kind"));
        let complete = WorkflowStep {
            kind: WorkflowStepKind::StepComplete as i32,
            stage: "research".into(),
            ..base.clone()
        };
        assert_eq!(field(complete.clone()).as_deref(), Some("score"));
        assert_eq!(
            step(&WorkflowStep {
                score: Some(0.5),
                ..complete
            })
            .unwrap(),
            Step::Complete {
                stage: "research".into(),
                score: 0.5
            }
        );
        let advance = WorkflowStep {
            kind: WorkflowStepKind::StepAdvance as i32,
            ..base.clone()
        };
        assert_eq!(field(advance).as_deref(), Some("stage"));
        let assign = WorkflowStep {
            kind: WorkflowStepKind::StepAssign as i32,
            stage: "writing".into(),
            ..base.clone()
        };
        assert_eq!(field(assign).as_deref(), Some("agent"));
        let annotate = WorkflowStep {
            kind: WorkflowStepKind::StepAnnotate as i32,
            ..base.clone()
        };
        assert_eq!(field(annotate).as_deref(), Some("patch"));
        let start = WorkflowStep {
            kind: WorkflowStepKind::StepStart as i32,
            ..base
        };
        assert_eq!(step(&start).unwrap(), Step::Start);
    }
}
