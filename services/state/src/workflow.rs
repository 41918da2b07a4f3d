//! Workflow stage state (seed 003), without I/O: stages in order, the
//! current one, what is completed and pending, a quality score per stage,
//! iterations, an assignee per stage and free-form metadata.
//!
//! Life: created (nothing current) → `start` (the first stage is current)
//! → `complete` each stage with its score, or `advance` past it without one
//! → finished when no stage is pending. `send_back` reopens a stage and
//! every stage after it for another iteration.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Most stages a workflow may have.
pub const MAX_STAGES: usize = 64;

/// Where a workflow is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Created,
    Running,
    Finished,
}

/// A workflow's stage state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Workflow {
    pub stages: Vec<String>,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    pub completed: Vec<String>,
    pub pending: Vec<String>,
    pub scores: BTreeMap<String, f64>,
    /// Starts at 1; each send-back starts the next.
    pub iteration: u32,
    pub assignees: BTreeMap<String, String>,
    pub metadata: Value,
}

/// An operation on a workflow.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Start,
    /// Completes the current stage `stage` with a quality score in 0..=1.
    Complete {
        stage: String,
        score: f64,
    },
    /// Moves past the current stage `stage` without a score.
    Advance {
        stage: String,
    },
    /// Reopens `stage` (completed or current) and everything after it.
    SendBack {
        stage: String,
    },
    /// Names the agent working on `stage`.
    Assign {
        stage: String,
        agent: String,
    },
    /// Merges `patch` into the metadata (JSON merge patch).
    Annotate {
        patch: Value,
    },
}

/// A refused workflow or step, naming the field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowError {
    pub field: &'static str,
    pub message: String,
}

fn refuse(field: &'static str, message: impl Into<String>) -> WorkflowError {
    WorkflowError {
        field,
        message: message.into(),
    }
}

impl Step {
    /// The step's name in events and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Step::Start => "started",
            Step::Complete { .. } => "stage_completed",
            Step::Advance { .. } => "advanced",
            Step::SendBack { .. } => "sent_back",
            Step::Assign { .. } => "assigned",
            Step::Annotate { .. } => "annotated",
        }
    }
}

impl Workflow {
    /// A workflow over `stages` (unique, non-empty names), not started.
    pub fn new(
        stages: Vec<String>,
        assignees: BTreeMap<String, String>,
        metadata: Value,
    ) -> Result<Self, WorkflowError> {
        if stages.is_empty() {
            return Err(refuse("stages", "a workflow needs at least one stage"));
        }
        if stages.len() > MAX_STAGES {
            return Err(refuse(
                "stages",
                format!(
                    "{} stages is more than the {MAX_STAGES} allowed",
                    stages.len()
                ),
            ));
        }
        for (i, stage) in stages.iter().enumerate() {
            if stage.is_empty() {
                return Err(refuse("stages", format!("stage {i} has an empty name")));
            }
            if stages[..i].contains(stage) {
                return Err(refuse("stages", format!("stage {stage:?} appears twice")));
            }
        }
        if let Some(unknown) = assignees.keys().find(|s| !stages.contains(s)) {
            return Err(refuse("assignees", format!("no stage named {unknown:?}")));
        }
        if !(metadata.is_object() || metadata.is_null()) {
            return Err(refuse("metadata", "metadata must be a JSON object"));
        }
        Ok(Self {
            pending: stages.clone(),
            stages,
            status: Status::Created,
            current: None,
            completed: Vec::new(),
            scores: BTreeMap::new(),
            iteration: 1,
            assignees,
            metadata: if metadata.is_null() {
                Value::Object(Default::default())
            } else {
                metadata
            },
        })
    }

    /// Applies `step`.
    pub fn apply(&mut self, step: Step) -> Result<(), WorkflowError> {
        match step {
            Step::Start => {
                if self.status != Status::Created {
                    return Err(refuse("step", "the workflow has started already"));
                }
                self.status = Status::Running;
                self.current = self.pending.first().cloned();
            }
            Step::Complete { stage, score } => {
                if !(0.0..=1.0).contains(&score) {
                    return Err(refuse("score", format!("score {score} is not within 0..1")));
                }
                self.check_current(&stage)?;
                self.scores.insert(stage.clone(), score);
                self.move_on(stage);
            }
            Step::Advance { stage } => {
                self.check_current(&stage)?;
                self.move_on(stage);
            }
            Step::SendBack { stage } => {
                let Some(position) = self.stages.iter().position(|s| *s == stage) else {
                    return Err(refuse("stage", format!("no stage named {stage:?}")));
                };
                let reached =
                    self.completed.contains(&stage) || self.current.as_deref() == Some(&stage);
                if !reached {
                    return Err(refuse(
                        "stage",
                        format!(
                            "stage {stage:?} has not been reached; only a completed or current stage can be sent back"
                        ),
                    ));
                }
                let reopened = &self.stages[position..];
                self.completed.retain(|s| !reopened.contains(s));
                for s in reopened {
                    self.scores.remove(s);
                }
                self.pending = reopened.to_vec();
                self.current = Some(stage);
                self.status = Status::Running;
                self.iteration += 1;
            }
            Step::Assign { stage, agent } => {
                if !self.stages.contains(&stage) {
                    return Err(refuse("stage", format!("no stage named {stage:?}")));
                }
                if agent.is_empty() {
                    return Err(refuse("agent", "agent id is empty"));
                }
                self.assignees.insert(stage, agent);
            }
            Step::Annotate { patch } => {
                if !patch.is_object() {
                    return Err(refuse("patch", "a metadata patch must be a JSON object"));
                }
                crate::merge_patch::apply(&mut self.metadata, &patch);
            }
        }
        Ok(())
    }

    fn check_current(&self, stage: &str) -> Result<(), WorkflowError> {
        match (&self.status, self.current.as_deref()) {
            (Status::Running, Some(current)) if current == stage => Ok(()),
            (Status::Running, Some(current)) => Err(refuse(
                "stage",
                format!("stage {stage:?} is not the current stage ({current:?})"),
            )),
            (Status::Created, _) => Err(refuse("step", "the workflow has not started")),
            _ => Err(refuse("step", "the workflow has finished")),
        }
    }

    fn move_on(&mut self, stage: String) {
        self.pending.retain(|s| *s != stage);
        self.completed.push(stage);
        self.current = self.pending.first().cloned();
        if self.current.is_none() {
            self.status = Status::Finished;
        }
    }

    /// Mean score of the scored completed stages.
    pub fn mean_score(&self) -> Option<f64> {
        let scores: Vec<f64> = self
            .completed
            .iter()
            .filter_map(|s| self.scores.get(s).copied())
            .collect();
        (!scores.is_empty()).then(|| scores.iter().sum::<f64>() / scores.len() as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn names(stages: &[&str]) -> Vec<String> {
        stages.iter().map(|s| s.to_string()).collect()
    }

    fn writing() -> Workflow {
        Workflow::new(
            names(&["research", "writing", "editing", "verification"]),
            BTreeMap::new(),
            json!({"topic": "ML in healthcare"}),
        )
        .unwrap()
    }

    fn complete(stage: &str, score: f64) -> Step {
        Step::Complete {
            stage: stage.into(),
            score,
        }
    }

    #[test]
    fn a_new_workflow_has_every_stage_pending_and_nothing_current() {
        let workflow = writing();
        assert_eq!(workflow.status, Status::Created);
        assert_eq!(workflow.current, None);
        assert_eq!(workflow.pending.len(), 4);
        assert_eq!(workflow.iteration, 1);
    }

    #[test]
    fn bad_definitions_name_the_field() {
        let field = |stages: &[&str], assignees: &[(&str, &str)], metadata: Value| {
            let assignees = assignees
                .iter()
                .map(|(s, a)| (s.to_string(), a.to_string()))
                .collect();
            Workflow::new(names(stages), assignees, metadata)
                .unwrap_err()
                .field
        };
        assert_eq!(field(&[], &[], json!({})), "stages");
        assert_eq!(field(&["a", "a"], &[], json!({})), "stages");
        assert_eq!(field(&["a", ""], &[], json!({})), "stages");
        assert_eq!(field(&["a"], &[("b", "agent")], json!({})), "assignees");
        assert_eq!(field(&["a"], &[], json!([1])), "metadata");
        let many: Vec<String> = (0..=MAX_STAGES).map(|i| format!("s{i}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(field(&refs, &[], json!({})), "stages");
    }

    #[test]
    fn stages_complete_in_order_with_scores_until_finished() {
        let mut workflow = writing();
        workflow.apply(Step::Start).unwrap();
        assert_eq!(workflow.current.as_deref(), Some("research"));
        workflow.apply(complete("research", 0.9)).unwrap();
        workflow.apply(complete("writing", 0.7)).unwrap();
        workflow
            .apply(Step::Advance {
                stage: "editing".into(),
            })
            .unwrap();
        assert_eq!(workflow.current.as_deref(), Some("verification"));
        workflow.apply(complete("verification", 0.8)).unwrap();
        assert_eq!(workflow.status, Status::Finished);
        assert_eq!(workflow.current, None);
        assert!(workflow.pending.is_empty());
        assert_eq!(
            workflow.completed,
            names(&["research", "writing", "editing", "verification"])
        );
        assert_eq!(workflow.scores.len(), 3, "advance records no score");
        assert!((workflow.mean_score().unwrap() - 0.8).abs() < 1e-9);
    }

    #[test]
    fn only_the_current_stage_of_a_running_workflow_completes() {
        let mut workflow = writing();
        let error = workflow.apply(complete("research", 0.5)).unwrap_err();
        assert_eq!(
            (error.field, error.message.as_str()),
            ("step", "the workflow has not started")
        );
        workflow.apply(Step::Start).unwrap();
        assert_eq!(workflow.apply(Step::Start).unwrap_err().field, "step");
        let error = workflow.apply(complete("editing", 0.5)).unwrap_err();
        assert_eq!(error.field, "stage");
        assert!(error.message.contains("(\"research\")"));
        assert_eq!(
            workflow.apply(complete("research", 1.5)).unwrap_err().field,
            "score"
        );
        assert_eq!(
            workflow
                .apply(complete("research", -0.1))
                .unwrap_err()
                .field,
            "score"
        );
        assert!(workflow.scores.is_empty(), "refused steps change nothing");
    }

    #[test]
    fn sending_back_reopens_the_stage_and_everything_after_it() {
        let mut workflow = writing();
        workflow.apply(Step::Start).unwrap();
        workflow.apply(complete("research", 0.9)).unwrap();
        workflow.apply(complete("writing", 0.4)).unwrap();
        workflow.apply(complete("editing", 0.6)).unwrap();
        workflow
            .apply(Step::SendBack {
                stage: "writing".into(),
            })
            .unwrap();
        assert_eq!(workflow.iteration, 2);
        assert_eq!(workflow.current.as_deref(), Some("writing"));
        assert_eq!(workflow.completed, names(&["research"]));
        assert_eq!(
            workflow.pending,
            names(&["writing", "editing", "verification"])
        );
        assert_eq!(workflow.scores.keys().collect::<Vec<_>>(), ["research"]);
        // A finished workflow can be sent back too.
        for (stage, score) in [("writing", 0.8), ("editing", 0.9), ("verification", 1.0)] {
            workflow.apply(complete(stage, score)).unwrap();
        }
        assert_eq!(workflow.status, Status::Finished);
        workflow
            .apply(Step::SendBack {
                stage: "verification".into(),
            })
            .unwrap();
        assert_eq!((workflow.status, workflow.iteration), (Status::Running, 3));
    }

    #[test]
    fn a_stage_not_reached_cannot_be_sent_back() {
        let mut workflow = writing();
        workflow.apply(Step::Start).unwrap();
        for stage in ["editing", "nonexistent"] {
            let error = workflow
                .apply(Step::SendBack {
                    stage: stage.into(),
                })
                .unwrap_err();
            assert_eq!(error.field, "stage");
        }
        assert_eq!(workflow.iteration, 1);
    }

    #[test]
    fn assignees_and_metadata_change_at_any_time() {
        let mut workflow = writing();
        workflow
            .apply(Step::Assign {
                stage: "editing".into(),
                agent: "editor-1".into(),
            })
            .unwrap();
        assert_eq!(workflow.assignees["editing"], "editor-1");
        let error = workflow
            .apply(Step::Assign {
                stage: "nope".into(),
                agent: "x".into(),
            })
            .unwrap_err();
        assert_eq!(error.field, "stage");
        workflow
            .apply(Step::Annotate {
                patch: json!({"topic": null, "words": 3000}),
            })
            .unwrap();
        assert_eq!(workflow.metadata, json!({"words": 3000}));
        let error = workflow
            .apply(Step::Annotate { patch: json!(1) })
            .unwrap_err();
        assert_eq!(error.field, "patch");
    }
}
