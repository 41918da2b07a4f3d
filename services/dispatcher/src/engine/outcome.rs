//! Inputs from agents and requesters: replies, progress, cancellation, and
//! the writer's reports. Each becomes one input to the task's lifecycle
//! (`super::effects`).

use async_nats::{Message, StatusCode};
use concord_bus::headers;
use concord_wire::codec::{self, ContentType};
use concord_wire::v1::{AgentResult, TaskError, TaskProgress, TaskResult, agent_result};
use tokio::sync::oneshot;

use super::Engine;
use crate::lifecycle::Input;
use crate::projection::from_wire_value;
use crate::writer::Written;

impl Engine {
    /// An agent's reply on `<inbox>.<task>.<attempt>.<index>`.
    pub(super) async fn on_reply(&mut self, message: Message) {
        let Some(rest) = message.subject.strip_prefix(self.inbox.as_str()) else {
            return;
        };
        let mut tokens = rest.trim_start_matches('.').rsplitn(3, '.');
        let (Some(index), Some(attempt), Some(task_id)) =
            (tokens.next(), tokens.next(), tokens.next())
        else {
            return;
        };
        let (Ok(index), Ok(attempt)) = (index.parse::<usize>(), attempt.parse::<u32>()) else {
            return;
        };
        let task_id = task_id.to_string();
        let awaiting = self
            .tasks
            .get(&task_id)
            .and_then(|held| held.life.awaiting(attempt, index));
        let Some(agent_id) = awaiting else {
            // A late reply to an attempt already over (lease expired, cancelled).
            self.metrics.stale_replies.inc();
            return;
        };
        let outcome = read_reply(&message, agent_id);
        let input = Input::Reply {
            attempt,
            index,
            outcome,
        };
        self.step(&task_id, input).await;
    }

    pub(super) async fn on_progress(&mut self, message: Message) {
        let content_type = ContentType::from_header(headers::get(
            message.headers.as_ref(),
            headers::CONTENT_TYPE,
        ))
        .unwrap_or(ContentType::Json);
        let Ok(progress) = codec::decode::<TaskProgress>(content_type, &message.payload) else {
            return;
        };
        let input = Input::Progress {
            attempt: progress.attempt,
            agent_id: progress.agent_id,
            fraction: progress.fraction,
            message: progress.message,
        };
        self.step(&progress.task_id, input).await;
    }

    /// Cancels a held task (answers `None` if not held here); whoever asked
    /// is answered with the outcome once it is committed.
    pub(super) async fn cancel(
        &mut self,
        task_id: &str,
        why: &str,
        reply: oneshot::Sender<Option<TaskResult>>,
    ) {
        let Some(held) = self.tasks.get_mut(task_id) else {
            let _ = reply.send(None);
            return;
        };
        held.waiters.push(reply);
        let input = Input::Cancel {
            reason: why.to_string(),
        };
        self.step(task_id, input).await;
    }

    /// The writer committed (or lost) some tasks' writes.
    pub(super) async fn on_written(&mut self, report: Vec<Written>) {
        for Written { task_id, owned } in report {
            let Some(held) = self.tasks.get_mut(&task_id) else {
                continue;
            };
            held.writing = false;
            if owned {
                held.persisted = held.view.last_sequence - held.pending.len() as i64;
            }
            let more_pending = !held.pending.is_empty();
            let input = Input::Written {
                owned,
                more_pending,
            };
            self.step(&task_id, input).await;
        }
    }
}

/// An agent's reply as an outcome.
fn read_reply(message: &Message, agent_id: &str) -> Result<serde_json::Value, TaskError> {
    if message.status == Some(StatusCode::NO_RESPONDERS) {
        return Err(TaskError {
            message: format!("agent {agent_id} is not listening on its task subject"),
            retryable: true,
            code: "agent_unreachable".into(),
        });
    }
    if let Some(code) = headers::get(message.headers.as_ref(), headers::ERROR_CODE) {
        let text = String::from_utf8_lossy(&message.payload);
        return Err(TaskError {
            message: format!("agent {agent_id} refused the assignment ({code}): {text}"),
            retryable: true,
            code: "assignment_refused".into(),
        });
    }
    let content_type = ContentType::from_header(headers::get(
        message.headers.as_ref(),
        headers::CONTENT_TYPE,
    ))
    .unwrap_or(ContentType::Json);
    match codec::decode::<AgentResult>(content_type, &message.payload) {
        Ok(result) => match result.outcome {
            Some(agent_result::Outcome::Output(value)) => Ok(from_wire_value(&value)),
            Some(agent_result::Outcome::Error(error)) => Err(error),
            None => Ok(serde_json::Value::Null),
        },
        Err(error) => Err(TaskError {
            message: format!("agent {agent_id} sent an unreadable result: {error}"),
            retryable: true,
            code: "invalid_result".into(),
        }),
    }
}
