//! Task events and the task projection they fold into. Pure: no I/O, no clock.
//!
//! Every transition of a task is a [`TaskEvent`], stored in the event store
//! as `task.<kind>` with a JSON `data` object, and folded into a [`TaskView`]
//! (the row of the dispatcher's `tasks` table). The live dispatcher and
//! `concord-dispatcher --rebuild-projection` use the same [`TaskView::apply`],
//! so a projection rebuilt from the events equals the live one; anyone
//! following `<root>.events.task.*` can fold the same view.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use crate::event_data::EventData;
use crate::v1::{AgentOutput, Task, TaskError, TaskResult, TaskStatus};

/// Aggregate type of task events.
pub const AGGREGATE: &str = "task";

/// Type of the first event of every task.
pub const SUBMITTED: &str = "task.submitted";

/// Why a task went to the dead-letter store (the contract's codes).
pub mod reason {
    pub use crate::codes::{DEADLINE_EXCEEDED, MAX_ATTEMPTS, NO_ELIGIBLE_AGENT, TASK_FAILED};
}

/// One transition of a task.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskEvent {
    /// Accepted; `task` is the normalised submission.
    Submitted { task: Task },
    /// Attempt `attempt` sent to `agents`.
    Assigned { attempt: u32, agents: Vec<String> },
    /// An agent reported progress on an attempt.
    Progress {
        attempt: u32,
        agent_id: String,
        fraction: f64,
        message: String,
    },
    /// One agent's attempt failed (error reply, lease expiry, unreachable).
    Failed {
        attempt: u32,
        agent_id: String,
        error: TaskError,
    },
    /// Another attempt is scheduled after `delay_ms`.
    Retried { next_attempt: u32, delay_ms: u64 },
    /// Finished with an output (single agent) or outputs (fan-out).
    Completed {
        attempt: u32,
        agent_id: String,
        output: Option<Value>,
        outputs: Vec<AgentOutput>,
    },
    /// Given up; kept as dead letter `dead_letter_id`.
    DeadLettered {
        reason: String,
        error: TaskError,
        dead_letter_id: String,
    },
    /// Cancelled on request.
    Cancelled { reason: String },
    /// Replayed from the dead-letter store: pending again.
    Resubmitted { dead_letter_id: String },
}

/// A stored task event could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("task event {event_type}: {message}")]
pub struct EventDataError {
    pub event_type: String,
    pub message: String,
}

impl TaskEvent {
    /// The stored event type, `task.<kind>`.
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::Submitted { .. } => SUBMITTED,
            Self::Assigned { .. } => "task.assigned",
            Self::Progress { .. } => "task.progress",
            Self::Failed { .. } => "task.failed",
            Self::Retried { .. } => "task.retried",
            Self::Completed { .. } => "task.completed",
            Self::DeadLettered { .. } => "task.dead_lettered",
            Self::Cancelled { .. } => "task.cancelled",
            Self::Resubmitted { .. } => "task.resubmitted",
        }
    }

    /// The event's `data` (camelCase JSON; wire messages in canonical JSON).
    ///
    /// Written straight to text: the submitted task is the codec's own
    /// JSON of it, and the other frequent events serialize without a
    /// `serde_json::Value` in between.
    pub fn data(&self) -> EventData {
        match self {
            Self::Submitted { task } => {
                let task = wire_text(task);
                let mut text = String::with_capacity(SUBMITTED_PREFIX.len() + task.len() + 1);
                text.push_str(SUBMITTED_PREFIX);
                text.push_str(&task);
                text.push('}');
                EventData::from_text(text).expect("the codec writes valid JSON")
            }
            Self::Assigned { attempt, agents } => {
                #[derive(serde::Serialize)]
                #[serde(rename_all = "camelCase")]
                struct Assigned<'a> {
                    #[serde(skip_serializing_if = "Option::is_none")]
                    agent_id: Option<&'a String>,
                    agent_ids: &'a [String],
                    attempt: u32,
                }
                serialized(&Assigned {
                    agent_id: agents.first(),
                    agent_ids: agents,
                    attempt: *attempt,
                })
            }
            Self::Progress {
                attempt,
                agent_id,
                fraction,
                message,
            } => json!({
                "attempt": attempt, "agentId": agent_id, "fraction": fraction, "message": message,
            })
            .into(),
            Self::Failed {
                attempt,
                agent_id,
                error,
            } => {
                json!({ "attempt": attempt, "agentId": agent_id, "error": wire_json(error) }).into()
            }
            Self::Retried {
                next_attempt,
                delay_ms,
            } => json!({ "nextAttempt": next_attempt, "delayMs": delay_ms }).into(),
            Self::Completed {
                attempt,
                agent_id,
                output,
                outputs,
            } => {
                #[derive(serde::Serialize)]
                #[serde(rename_all = "camelCase")]
                struct Completed<'a> {
                    agent_id: &'a str,
                    attempt: u32,
                    #[serde(skip_serializing_if = "Option::is_none")]
                    output: Option<&'a Value>,
                    #[serde(skip_serializing_if = "Vec::is_empty")]
                    outputs: Vec<EventData>,
                }
                let outputs = outputs
                    .iter()
                    .map(|output| {
                        EventData::from_text(wire_text(output)).expect("the codec writes JSON")
                    })
                    .collect();
                serialized(&Completed {
                    agent_id,
                    attempt: *attempt,
                    output: output.as_ref(),
                    outputs,
                })
            }
            Self::DeadLettered {
                reason,
                error,
                dead_letter_id,
            } => json!({
                "reason": reason, "error": wire_json(error), "deadLetterId": dead_letter_id,
            })
            .into(),
            Self::Cancelled { reason } => json!({ "reason": reason }).into(),
            Self::Resubmitted { dead_letter_id } => {
                json!({ "deadLetterId": dead_letter_id }).into()
            }
        }
    }

    /// Reads a stored event back.
    pub fn parse(event_type: &str, data: &Value) -> Result<Self, EventDataError> {
        let fail = |message: String| EventDataError {
            event_type: event_type.to_string(),
            message,
        };
        let str_field = |name: &str| -> Result<String, EventDataError> {
            data.get(name)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| fail(format!("missing string field {name}")))
        };
        let u64_field = |name: &str| -> Result<u64, EventDataError> {
            data.get(name)
                .and_then(Value::as_u64)
                .ok_or_else(|| fail(format!("missing integer field {name}")))
        };
        let attempt = || -> Result<u32, EventDataError> {
            u32::try_from(u64_field("attempt")?).map_err(|e| fail(e.to_string()))
        };
        let error = || -> Result<TaskError, EventDataError> {
            from_wire_json(data.get("error").unwrap_or(&Value::Null)).map_err(fail)
        };
        Ok(match event_type {
            SUBMITTED => Self::Submitted {
                task: from_wire_json(data.get("task").unwrap_or(&Value::Null)).map_err(fail)?,
            },
            "task.assigned" => Self::Assigned {
                attempt: attempt()?,
                agents: data
                    .get("agentIds")
                    .and_then(Value::as_array)
                    .map(|ids| {
                        ids.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            },
            "task.progress" => Self::Progress {
                attempt: attempt()?,
                agent_id: str_field("agentId")?,
                fraction: data.get("fraction").and_then(Value::as_f64).unwrap_or(0.0),
                message: str_field("message").unwrap_or_default(),
            },
            "task.failed" => Self::Failed {
                attempt: attempt()?,
                agent_id: str_field("agentId")?,
                error: error()?,
            },
            "task.retried" => Self::Retried {
                next_attempt: u32::try_from(u64_field("nextAttempt")?)
                    .map_err(|e| fail(e.to_string()))?,
                delay_ms: u64_field("delayMs")?,
            },
            "task.completed" => Self::Completed {
                attempt: attempt()?,
                agent_id: str_field("agentId")?,
                output: data.get("output").cloned(),
                outputs: match data.get("outputs").and_then(Value::as_array) {
                    Some(items) => items
                        .iter()
                        .map(from_wire_json)
                        .collect::<Result<_, _>>()
                        .map_err(fail)?,
                    None => Vec::new(),
                },
            },
            "task.dead_lettered" => Self::DeadLettered {
                reason: str_field("reason")?,
                error: error()?,
                dead_letter_id: str_field("deadLetterId")?,
            },
            "task.cancelled" => Self::Cancelled {
                reason: str_field("reason")?,
            },
            "task.resubmitted" => Self::Resubmitted {
                dead_letter_id: str_field("deadLetterId")?,
            },
            other => return Err(fail(format!("unknown task event type {other}"))),
        })
    }
}

/// One row of the task projection.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskView {
    pub task_id: String,
    /// The task as accepted.
    pub task: Task,
    pub status: TaskStatus,
    /// Attempts started.
    pub attempts: u32,
    /// Agent of the latest assignment, output or error.
    pub agent_id: String,
    /// Output of a completed single-agent task.
    pub output: Option<Value>,
    /// Per-agent outcomes of a completed fan-out task.
    pub outputs: Vec<AgentOutput>,
    /// The latest error (failed attempt, dead letter, cancellation).
    pub error: Option<TaskError>,
    /// Sequence of the newest event folded in.
    pub last_sequence: i64,
    pub submitted_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When the task reached a final status.
    pub completed_at: Option<DateTime<Utc>>,
}

impl TaskView {
    /// The view right after `task.submitted`.
    pub fn submitted(task: Task, sequence: i64, at: DateTime<Utc>) -> Self {
        Self {
            task_id: task.id.clone(),
            task,
            status: TaskStatus::Pending,
            attempts: 0,
            agent_id: String::new(),
            output: None,
            outputs: Vec::new(),
            error: None,
            last_sequence: sequence,
            submitted_at: at,
            updated_at: at,
            completed_at: None,
        }
    }

    /// Folds a whole history (in sequence order); `None` if it does not start
    /// with `task.submitted`.
    pub fn fold<'a>(
        events: impl IntoIterator<Item = (i64, &'a TaskEvent, DateTime<Utc>)>,
    ) -> Option<Self> {
        let mut view: Option<Self> = None;
        for (sequence, event, at) in events {
            match (&mut view, event) {
                (None, TaskEvent::Submitted { task }) => {
                    view = Some(Self::submitted(task.clone(), sequence, at));
                }
                (None, _) => return None,
                (Some(view), event) => view.apply(sequence, event, at),
            }
        }
        view
    }

    /// Folds one later event in.
    pub fn apply(&mut self, sequence: i64, event: &TaskEvent, at: DateTime<Utc>) {
        self.last_sequence = sequence;
        self.updated_at = at;
        match event {
            TaskEvent::Submitted { task } => {
                // A second submission of the same id changes nothing but the clock.
                let _ = task;
            }
            TaskEvent::Assigned { attempt, agents } => {
                self.status = TaskStatus::Assigned;
                self.attempts = self.attempts.max(*attempt);
                self.agent_id = agents.first().cloned().unwrap_or_default();
            }
            TaskEvent::Progress { agent_id, .. } => {
                if !self.status.is_final() {
                    self.status = TaskStatus::Running;
                }
                self.agent_id = agent_id.clone();
            }
            TaskEvent::Failed {
                agent_id, error, ..
            } => {
                self.agent_id = agent_id.clone();
                self.error = Some(error.clone());
            }
            TaskEvent::Retried { .. } => self.status = TaskStatus::Retrying,
            TaskEvent::Completed {
                agent_id,
                output,
                outputs,
                ..
            } => {
                self.status = TaskStatus::Completed;
                self.agent_id = agent_id.clone();
                // A JSON null output is no output: that is how the stored
                // `TaskResult` reads it back, so live and replayed agree.
                self.output = output.clone().filter(|value| !value.is_null());
                self.outputs = outputs.clone();
                self.error = None;
                self.completed_at = Some(at);
            }
            TaskEvent::DeadLettered { error, .. } => {
                self.status = TaskStatus::DeadLettered;
                self.error = Some(error.clone());
                self.completed_at = Some(at);
            }
            TaskEvent::Cancelled { reason } => {
                self.status = TaskStatus::Cancelled;
                self.error = Some(TaskError {
                    message: reason.clone(),
                    retryable: false,
                    code: "cancelled".to_string(),
                });
                self.completed_at = Some(at);
            }
            TaskEvent::Resubmitted { .. } => {
                self.status = TaskStatus::Pending;
                self.error = None;
                self.completed_at = None;
            }
        }
    }

    /// The task's outcome so far, as `GetTask` and `tasks.result.<id>` carry it.
    pub fn result(&self) -> TaskResult {
        TaskResult {
            task_id: self.task_id.clone(),
            status: self.status.into(),
            output: self.output.clone().map(to_wire_value),
            error: self.error.clone(),
            agent_id: self.agent_id.clone(),
            attempts: self.attempts,
            completed_at: self.completed_at.map(timestamp),
            outputs: self.outputs.clone(),
            history: Vec::new(),
        }
    }
}

/// Final statuses: nothing happens to the task any more (unless an operator
/// replays its dead letter).
pub trait Finality {
    fn is_final(&self) -> bool;
}

impl Finality for TaskStatus {
    fn is_final(&self) -> bool {
        matches!(
            self,
            TaskStatus::Completed
                | TaskStatus::Failed
                | TaskStatus::DeadLettered
                | TaskStatus::Cancelled
        )
    }
}

/// How the data of a `task.submitted` event starts: the task follows, then `}`.
const SUBMITTED_PREFIX: &str = r#"{"task":"#;

/// The task's canonical JSON inside a `task.submitted` event's data, as
/// [`TaskEvent::data`] writes it (`None` for any other text).
pub fn submitted_task_text(data: &EventData) -> Option<&str> {
    data.get().strip_prefix(SUBMITTED_PREFIX)?.strip_suffix('}')
}

fn serialized<T: serde::Serialize>(data: &T) -> EventData {
    EventData::of(data).expect("task event data always serializes")
}

pub use crate::json::{from_wire_json, from_wire_value, to_wire_value, wire_json, wire_text};

/// A protobuf timestamp for a time.
pub fn timestamp(at: DateTime<Utc>) -> crate::pbjson_types::Timestamp {
    crate::pbjson_types::Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    }
}

/// RFC 3339 with microseconds (the event store's precision).
pub fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_800_000_000_000 + ms).unwrap()
    }

    fn task() -> Task {
        Task {
            id: "t1".into(),
            capability: "echo".into(),
            payload: Some(to_wire_value(json!({"n": 1}))),
            priority: 5,
            timeout_ms: 1000,
            max_attempts: 3,
            ..Default::default()
        }
    }

    fn every_event() -> Vec<TaskEvent> {
        let error = TaskError {
            message: "boom".into(),
            retryable: true,
            code: "x".into(),
        };
        vec![
            TaskEvent::Submitted { task: task() },
            TaskEvent::Assigned {
                attempt: 1,
                agents: vec!["a".into()],
            },
            TaskEvent::Progress {
                attempt: 1,
                agent_id: "a".into(),
                fraction: 0.5,
                message: "half".into(),
            },
            TaskEvent::Failed {
                attempt: 1,
                agent_id: "a".into(),
                error: error.clone(),
            },
            TaskEvent::Retried {
                next_attempt: 2,
                delay_ms: 40,
            },
            TaskEvent::Completed {
                attempt: 2,
                agent_id: "b".into(),
                output: Some(json!({"n": 1})),
                outputs: vec![],
            },
            TaskEvent::Completed {
                attempt: 3,
                agent_id: "a".into(),
                output: None,
                outputs: vec![
                    AgentOutput {
                        agent_id: "a".into(),
                        output: Some(to_wire_value(json!({"n": 2, "f": 0.5}))),
                        error: None,
                    },
                    AgentOutput {
                        agent_id: "b".into(),
                        output: None,
                        error: Some(error.clone()),
                    },
                ],
            },
            TaskEvent::DeadLettered {
                reason: reason::MAX_ATTEMPTS.into(),
                error,
                dead_letter_id: "d".into(),
            },
            TaskEvent::Cancelled {
                reason: "operator".into(),
            },
            TaskEvent::Resubmitted {
                dead_letter_id: "d".into(),
            },
        ]
    }

    #[test]
    fn every_event_round_trips_through_its_stored_form() {
        for event in every_event() {
            let parsed = TaskEvent::parse(event.event_type(), &event.data().to_value()).unwrap();
            assert_eq!(parsed, event);
        }
    }

    #[test]
    fn stored_data_is_the_documented_json() {
        let task = task();
        let submitted = TaskEvent::Submitted { task: task.clone() }.data();
        assert_eq!(submitted.to_value(), json!({ "task": wire_json(&task) }));
        let text = submitted_task_text(&submitted).unwrap();
        assert_eq!(text, wire_text(&task));
        let assigned = TaskEvent::Assigned {
            attempt: 2,
            agents: vec!["a".into(), "b".into()],
        };
        assert_eq!(
            assigned.data().to_value(),
            json!({ "attempt": 2, "agentId": "a", "agentIds": ["a", "b"] })
        );
        let completed = TaskEvent::Completed {
            attempt: 1,
            agent_id: "a".into(),
            output: Some(json!({"n": 1})),
            outputs: Vec::new(),
        };
        assert_eq!(
            completed.data().get(),
            r#"{"agentId":"a","attempt":1,"output":{"n":1}}"#
        );
        assert_eq!(submitted_task_text(&assigned.data()), None);
    }

    #[test]
    fn unknown_or_malformed_events_are_errors() {
        assert!(TaskEvent::parse("task.exploded", &json!({})).is_err());
        let error = TaskEvent::parse("task.assigned", &json!({})).unwrap_err();
        assert!(error.message.contains("attempt"), "{error}");
    }

    #[test]
    fn a_retried_then_completed_task_folds_to_completed() {
        let events = [
            TaskEvent::Submitted { task: task() },
            TaskEvent::Assigned {
                attempt: 1,
                agents: vec!["a".into()],
            },
            TaskEvent::Failed {
                attempt: 1,
                agent_id: "a".into(),
                error: TaskError::default(),
            },
            TaskEvent::Retried {
                next_attempt: 2,
                delay_ms: 10,
            },
            TaskEvent::Assigned {
                attempt: 2,
                agents: vec!["b".into()],
            },
            TaskEvent::Completed {
                attempt: 2,
                agent_id: "b".into(),
                output: Some(json!(7)),
                outputs: vec![],
            },
        ];
        let view = TaskView::fold(
            events
                .iter()
                .enumerate()
                .map(|(i, e)| (i as i64 + 1, e, at(i as i64))),
        )
        .unwrap();
        assert_eq!(view.status, TaskStatus::Completed);
        assert_eq!(view.attempts, 2);
        assert_eq!(view.agent_id, "b");
        assert_eq!(view.output, Some(json!(7)));
        assert_eq!(view.error, None);
        assert_eq!(view.last_sequence, 6);
        assert_eq!(view.completed_at, Some(at(5)));
        let result = view.result();
        assert_eq!(result.status, TaskStatus::Completed as i32);
        assert_eq!(wire_json(&result)["output"], json!(7));
    }

    #[test]
    fn statuses_follow_the_lifecycle() {
        let mut view = TaskView::submitted(task(), 1, at(0));
        assert_eq!(view.status, TaskStatus::Pending);
        let steps: [(TaskEvent, TaskStatus); 5] = [
            (
                TaskEvent::Assigned {
                    attempt: 1,
                    agents: vec!["a".into()],
                },
                TaskStatus::Assigned,
            ),
            (
                TaskEvent::Progress {
                    attempt: 1,
                    agent_id: "a".into(),
                    fraction: 0.1,
                    message: String::new(),
                },
                TaskStatus::Running,
            ),
            (
                TaskEvent::DeadLettered {
                    reason: reason::TASK_FAILED.into(),
                    error: TaskError::default(),
                    dead_letter_id: "d".into(),
                },
                TaskStatus::DeadLettered,
            ),
            (
                TaskEvent::Resubmitted {
                    dead_letter_id: "d".into(),
                },
                TaskStatus::Pending,
            ),
            (
                TaskEvent::Cancelled { reason: "r".into() },
                TaskStatus::Cancelled,
            ),
        ];
        for (i, (event, status)) in steps.iter().enumerate() {
            view.apply(i as i64 + 2, event, at(i as i64 + 1));
            assert_eq!(view.status, *status, "after {}", event.event_type());
        }
        assert!(view.status.is_final());
        assert_eq!(view.error.as_ref().unwrap().code, "cancelled");
    }

    #[test]
    fn a_history_must_start_with_the_submission() {
        let assigned = TaskEvent::Assigned {
            attempt: 1,
            agents: vec![],
        };
        assert!(TaskView::fold([(1, &assigned, at(0))]).is_none());
    }

    #[test]
    fn protobuf_values_come_back_with_whole_numbers() {
        let value = to_wire_value(json!({"a": [1, 2.5, {"b": 3}]}));
        assert_eq!(from_wire_value(&value), json!({"a": [1, 2.5, {"b": 3}]}));
    }
}
