//! A task attempt as the handler sees it ([`Task`]) and how it can fail ([`TaskFailure`]).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use concord_bus::ServiceError;
use concord_wire::pbjson_types;
use concord_wire::v1::{TaskAssignment, TaskError};
use serde_json::Value;

/// One attempt at a task, decoded from the dispatcher's `TaskAssignment`.
///
/// ```
/// use concord_sdk::Task;
/// use serde_json::json;
///
/// // Handlers are plain async functions of a Task: unit-test them with Task::new.
/// let task = Task::new("t-1", "echo", json!({"text": "hi"}));
/// assert_eq!(task.attempt, 1);
/// assert_eq!(task.payload["text"], "hi");
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Task {
    /// Task id (one NATS subject token).
    pub id: String,
    /// Attempt number, from 1; a retry of the same task has a higher one.
    pub attempt: u32,
    /// The capability the task asks for (one of the agent's).
    pub capability: String,
    /// Task input, any JSON value (`Null` when the task has none).
    pub payload: Value,
    /// The task's labels.
    pub labels: BTreeMap<String, String>,
    /// Absolute deadline of the task, if it has one.
    pub deadline: Option<DateTime<Utc>>,
    /// Lease on this attempt: without a progress report or a result within
    /// it, the dispatcher re-routes the task. `None` when the assignment
    /// states none.
    pub lease: Option<Duration>,
}

impl Task {
    /// A first attempt with no labels, deadline or lease (for tests of handlers).
    pub fn new(id: impl Into<String>, capability: impl Into<String>, payload: Value) -> Self {
        Self {
            id: id.into(),
            attempt: 1,
            capability: capability.into(),
            payload,
            labels: BTreeMap::new(),
            deadline: None,
            lease: None,
        }
    }

    /// Decodes and checks an assignment; errors name the offending field.
    pub(crate) fn from_assignment(assignment: TaskAssignment) -> Result<Self, ServiceError> {
        if !is_subject_token(&assignment.task_id) {
            return Err(ServiceError::invalid(
                "taskId",
                format!(
                    "must be a non-empty NATS subject token (no whitespace, '.', '*' or '>'), got {:?}",
                    assignment.task_id
                ),
            ));
        }
        let payload = match assignment.payload {
            None => Value::Null,
            Some(value) => {
                from_wire_value(value).map_err(|reason| ServiceError::invalid("payload", reason))?
            }
        };
        let deadline = assignment
            .deadline
            .map(DateTime::<Utc>::try_from)
            .transpose()
            .map_err(|error| ServiceError::invalid("deadline", error))?;
        Ok(Self {
            id: assignment.task_id,
            attempt: assignment.attempt,
            capability: assignment.capability,
            payload,
            labels: assignment.labels,
            deadline,
            lease: (assignment.lease_ms > 0).then(|| Duration::from_millis(assignment.lease_ms)),
        })
    }
}

/// Whether `s` can be one token of a subject such as `<root>.tasks.progress.<task id>`.
pub(crate) fn is_subject_token(s: &str) -> bool {
    !s.is_empty()
        && !s
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>'))
}

/// Largest integer a double holds exactly (2^53).
const MAX_EXACT_INTEGER: f64 = 9_007_199_254_740_992.0;

/// Converts the wire's `google.protobuf.Value` to JSON. Numbers are doubles
/// on the wire; whole ones within ±2^53 become JSON integers, so a payload
/// sent as `{"n": 3}` reads back with `as_u64()`/`as_i64()` as it was written.
pub(crate) fn from_wire_value(value: pbjson_types::Value) -> Result<Value, String> {
    use pbjson_types::value::Kind;
    Ok(match value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(b),
        Some(Kind::StringValue(s)) => Value::String(s),
        Some(Kind::NumberValue(n)) => {
            if n.fract() == 0.0 && n.abs() <= MAX_EXACT_INTEGER {
                Value::from(n as i64)
            } else {
                serde_json::Number::from_f64(n)
                    .map(Value::Number)
                    .ok_or_else(|| format!("{n} is not a JSON number"))?
            }
        }
        Some(Kind::ListValue(list)) => Value::Array(
            list.values
                .into_iter()
                .map(from_wire_value)
                .collect::<Result<_, _>>()?,
        ),
        Some(Kind::StructValue(fields)) => Value::Object(
            fields
                .fields
                .into_iter()
                .map(|(key, value)| from_wire_value(value).map(|value| (key, value)))
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// Converts a handler's output to the wire's `google.protobuf.Value`.
pub(crate) fn to_wire_value(value: Value) -> Result<pbjson_types::Value, serde_json::Error> {
    serde_json::from_value(value)
}

/// Why a task attempt failed, and whether another attempt may succeed.
///
/// Sent to the dispatcher as the `TaskError` of the `AgentResult`: a
/// retryable failure is retried (possibly on another agent) until the task's
/// attempts run out; a permanent one fails the task at once.
///
/// ```
/// use concord_sdk::TaskFailure;
///
/// let busy = TaskFailure::retryable("upstream API rate-limited").with_code("rate_limited");
/// assert!(busy.retryable);
/// assert_eq!(busy.code, "rate_limited");
///
/// let bad = TaskFailure::permanent("payload.text is missing");
/// assert!(!bad.retryable);
/// assert_eq!(bad.to_string(), "payload.text is missing");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TaskFailure {
    /// Human-readable explanation.
    pub message: String,
    /// True if another attempt (possibly on another agent) may succeed.
    pub retryable: bool,
    /// Optional machine-readable code (empty for none), e.g. `rate_limited`.
    pub code: String,
}

impl TaskFailure {
    /// Code of the failure the SDK reports for tasks still running when the
    /// shutdown grace period ends (retryable: the dispatcher re-routes them).
    pub const AGENT_SHUTDOWN: &'static str = "agent_shutdown";
    /// Code the SDK reports when a handler panics (retryable, like an agent crash).
    pub const AGENT_PANIC: &'static str = "agent_panic";
    /// Code the SDK reports for an assignment whose capability the agent does
    /// not have (retryable: another agent may have it).
    pub const UNSUPPORTED_CAPABILITY: &'static str = "unsupported_capability";
    /// Code of [`TaskFailure::cancelled`].
    pub const CANCELLED: &'static str = "cancelled";

    /// A failure another attempt may not repeat (a timeout, an unavailable dependency).
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
            code: String::new(),
        }
    }

    /// A failure every attempt would repeat (bad input): the task fails at once.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
            code: String::new(),
        }
    }

    /// The conventional answer of a handler that stopped because the task was
    /// cancelled: permanent, code `cancelled`.
    ///
    /// ```
    /// let failure = concord_sdk::TaskFailure::cancelled("cancelled by operator");
    /// assert_eq!(failure.code, "cancelled");
    /// assert!(!failure.retryable);
    /// ```
    pub fn cancelled(message: impl Into<String>) -> Self {
        Self::permanent(message).with_code(Self::CANCELLED)
    }

    /// The same failure with a machine-readable code.
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = code.into();
        self
    }

    pub(crate) fn into_wire(self) -> TaskError {
        TaskError {
            message: self.message,
            retryable: self.retryable,
            code: self.code,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn assignment() -> TaskAssignment {
        TaskAssignment {
            task_id: "t-1".into(),
            attempt: 2,
            capability: "echo".into(),
            payload: Some(serde_json::from_value(json!({"a": [1, "x", null]})).unwrap()),
            lease_ms: 1500,
            deadline: Some(pbjson_types::Timestamp {
                seconds: 1_800_000_000,
                nanos: 0,
            }),
            labels: [("region".to_string(), "eu".to_string())].into(),
        }
    }

    #[test]
    fn assignment_fields_arrive_in_the_task() {
        let task = Task::from_assignment(assignment()).unwrap();
        assert_eq!(task.id, "t-1");
        assert_eq!(task.attempt, 2);
        assert_eq!(task.capability, "echo");
        assert_eq!(task.payload, json!({"a": [1, "x", null]}));
        assert_eq!(task.lease, Some(Duration::from_millis(1500)));
        assert_eq!(task.deadline.unwrap().timestamp(), 1_800_000_000);
        assert_eq!(task.labels["region"], "eu");
    }

    #[test]
    fn absent_payload_lease_and_deadline() {
        let task = Task::from_assignment(TaskAssignment {
            task_id: "t".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(task.payload, Value::Null);
        assert_eq!(task.lease, None);
        assert_eq!(task.deadline, None);
    }

    #[test]
    fn task_ids_must_be_subject_tokens() {
        for bad in ["", "a.b", "a b", "*", ">"] {
            let error = Task::from_assignment(TaskAssignment {
                task_id: bad.into(),
                ..assignment()
            })
            .unwrap_err();
            assert_eq!(error.field.as_deref(), Some("taskId"), "{bad:?}");
        }
    }

    #[test]
    fn outputs_convert_to_wire_values_and_back() {
        for value in [
            json!(null),
            json!(true),
            json!(1.5),
            json!("s"),
            json!([1, {"k": []}]),
            json!({"nested": {"x": null}}),
        ] {
            let wire = to_wire_value(value.clone()).unwrap();
            assert_eq!(from_wire_value(wire).unwrap(), value);
        }
    }

    #[test]
    fn whole_numbers_read_back_as_integers() {
        let wire = to_wire_value(json!({"n": 3, "neg": -7, "big": 1e300, "half": 0.5})).unwrap();
        let value = from_wire_value(wire).unwrap();
        assert_eq!(value["n"].as_u64(), Some(3));
        assert_eq!(value["neg"].as_i64(), Some(-7));
        assert_eq!(value["big"].as_f64(), Some(1e300));
        assert_eq!(value["half"].as_f64(), Some(0.5));
        let nan = pbjson_types::Value {
            kind: Some(pbjson_types::value::Kind::NumberValue(f64::NAN)),
        };
        assert!(from_wire_value(nan).is_err());
    }

    #[test]
    fn failures_become_wire_errors() {
        let error = TaskFailure::retryable("later")
            .with_code("busy")
            .into_wire();
        assert_eq!(
            error,
            TaskError {
                message: "later".into(),
                retryable: true,
                code: "busy".into()
            }
        );
    }
}
