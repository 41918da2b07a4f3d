//! Outcomes: agent replies, progress, lease expiry, retries, dead letters,
//! cancellation, and what happens once an outcome is committed.

use std::cmp::Reverse;
use std::time::{Duration, Instant};

use async_nats::{Message, StatusCode};
use concord_bus::headers;
use concord_store::NewDeadLetter;
use concord_wire::codec::{self, ContentType};
use concord_wire::v1::{
    AgentResult, CancelTask, TaskError, TaskProgress, TaskResult, agent_result,
};
use tokio::sync::oneshot;

use super::intake::headers_of;
use super::{Engine, Phase, Timer};
use crate::lifecycle::{
    AfterFailure, Cancel, Finished, LeaseCheck, after_failure, dead_letter_error,
};
use crate::metrics::Stage;
use crate::performance::Sample;
use crate::projection::{Finality, TaskEvent, from_wire_value};
use crate::writer::Written;

/// Namespace of dead-letter ids of tasks (task id + attempts).
const TASK_DEAD_LETTER_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x8d3e_11a9_6b2f_4c71_b0d4_52e7_9f16_a3c8);

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
        let Some(agent_id) = self.running_agent(&task_id, attempt, index) else {
            // A late reply to an attempt already over (lease expired, cancelled).
            self.metrics.stale_replies.inc();
            return;
        };
        let outcome = read_reply(&message, &agent_id);
        self.agent_done(&task_id, index, outcome).await;
    }

    /// The agent at `index` of the running attempt, if it has not answered yet.
    fn running_agent(&self, task_id: &str, attempt: u32, index: usize) -> Option<String> {
        match &self.tasks.get(task_id)?.phase {
            Phase::Running(run) => run.awaiting(attempt, index).map(str::to_string),
            _ => None,
        }
    }

    /// Records one agent's outcome for the running attempt; ends the attempt
    /// when every agent has answered.
    async fn agent_done(
        &mut self,
        task_id: &str,
        index: usize,
        outcome: Result<serde_json::Value, TaskError>,
    ) {
        let now_ms = self.now_ms();
        let Some(held) = self.tasks.get_mut(task_id) else {
            return;
        };
        let Phase::Running(run) = &mut held.phase else {
            return;
        };
        let attempt = run.number();
        let answered = run.answer(index, &outcome, Instant::now());
        let agent_id = answered.agent_id;
        held.history.push(answered.history);
        self.loads.adjust_own(&agent_id, -1);
        self.dirty.insert(held.spec.capability.clone());
        self.targeted_dirty = true;
        let took = answered.took;
        match &outcome {
            Ok(_) => {
                self.breakers.record_success(&agent_id, now_ms);
                self.performance.record(&agent_id, Sample::Output(took));
            }
            Err(error) => {
                self.breakers.record_failure(&agent_id, now_ms);
                // A non-retryable error is the task's, not the agent's.
                if error.retryable {
                    self.performance.record(&agent_id, Sample::Failed);
                }
                self.record(
                    task_id,
                    TaskEvent::Failed {
                        attempt,
                        agent_id: agent_id.clone(),
                        error: error.clone(),
                    },
                );
            }
        }
        if answered.all_done {
            self.end_attempt(task_id).await;
        }
    }

    /// Every agent of the running attempt answered (or its lease expired).
    async fn end_attempt(&mut self, task_id: &str) {
        let Some(held) = self.tasks.get_mut(task_id) else {
            return;
        };
        let Phase::Running(run) = std::mem::replace(&mut held.phase, Phase::Backoff) else {
            return;
        };
        let now = Instant::now();
        if let Some(since) = held.stage_since.replace(now) {
            self.metrics.observe_stage(Stage::Agent, now - since);
        }
        let attempt = run.number();
        let fan_out = run.agent_count() > 1
            || matches!(
                self.router.strategy_for(&held.spec),
                concord_wire::v1::RoutingStrategy::Broadcast
                    | concord_wire::v1::RoutingStrategy::Multicast
            );
        let (failed_agents, last, retryable) = match run.finish(fan_out) {
            Finished::Completed(event) => {
                self.record(task_id, event);
                self.metrics.completed.inc();
                self.metrics.observe_latency(held_received(self, task_id));
                self.finalize(task_id);
                return;
            }
            Finished::Failed {
                agents,
                last,
                retryable,
            } => (agents, last, retryable),
        };
        let held = self.tasks.get_mut(task_id).expect("held above");
        for agent in failed_agents {
            if !held.avoid.contains(&agent) {
                held.avoid.push(agent);
            }
        }
        let attempts_run = held.attempts_run;
        let max_attempts = held.spec.max_attempts;
        let deadline_passed = held
            .spec
            .deadline_passed(chrono::Utc::now().timestamp_millis());
        let jitter = self.sample();
        match after_failure(
            attempt,
            attempts_run,
            max_attempts,
            &last,
            retryable,
            deadline_passed,
            &self.config.backoff,
            jitter,
        ) {
            AfterFailure::Retry {
                next_attempt,
                delay,
            } => {
                self.record(
                    task_id,
                    TaskEvent::Retried {
                        next_attempt,
                        delay_ms: delay.as_millis() as u64,
                    },
                );
                self.metrics.retried.inc();
                self.timers.push(Reverse((
                    Instant::now() + delay,
                    Timer::Backoff {
                        task_id: task_id.to_string(),
                        attempt: next_attempt,
                    },
                )));
            }
            AfterFailure::GiveUp { code, message } => {
                self.give_up(task_id, code, message, Some(last));
            }
        }
    }

    /// Ends a task in the dead-letter store.
    pub(super) fn give_up(
        &mut self,
        task_id: &str,
        code: &str,
        message: String,
        last: Option<TaskError>,
    ) {
        let Some(held) = self.tasks.get_mut(task_id) else {
            return;
        };
        let attempts = held.view.attempts;
        let id = uuid::Uuid::new_v5(
            &TASK_DEAD_LETTER_NAMESPACE,
            format!("{task_id}:{}", held.view.last_sequence).as_bytes(),
        );
        held.dead_letter = Some(NewDeadLetter {
            id,
            subject: held.message.subject.to_string(),
            headers: headers_of(&held.message),
            payload: held.message.payload.to_vec(),
            reason: code.to_string(),
            error: message.clone(),
            attempts: attempts as i32,
            source: self.events.source().to_string(),
            history: serde_json::Value::Array(std::mem::take(&mut held.history)),
        });
        let error = dead_letter_error(code, message, last);
        tracing::info!(%task_id, reason = code, error = %error.message, "task dead-lettered");
        self.record(
            task_id,
            TaskEvent::DeadLettered {
                reason: code.to_string(),
                error,
                dead_letter_id: id.to_string(),
            },
        );
        self.metrics.dead_lettered.inc();
        self.finalize(task_id);
    }

    /// The task is final: write now; the result and the ack follow the commit.
    fn finalize(&mut self, task_id: &str) {
        if let Some(held) = self.tasks.get_mut(task_id) {
            held.phase = Phase::Final;
            held.stage_since = Some(Instant::now());
        }
        self.send_write(task_id);
    }

    pub(super) fn on_progress(&mut self, message: Message) {
        let content_type = ContentType::from_header(headers::get(
            message.headers.as_ref(),
            headers::CONTENT_TYPE,
        ))
        .unwrap_or(ContentType::Json);
        let Ok(progress) = codec::decode::<TaskProgress>(content_type, &message.payload) else {
            return;
        };
        let Some(held) = self.tasks.get_mut(&progress.task_id) else {
            return;
        };
        let Phase::Running(run) = &mut held.phase else {
            return;
        };
        if !run.progress(progress.attempt, &progress.agent_id, Instant::now()) {
            return;
        }
        let attempt = progress.attempt;
        self.record(
            &progress.task_id,
            TaskEvent::Progress {
                attempt,
                agent_id: progress.agent_id,
                fraction: progress.fraction.clamp(0.0, 1.0),
                message: progress.message,
            },
        );
    }

    pub(super) async fn on_lease_timer(&mut self, task_id: &str, attempt: u32) {
        let Some(held) = self.tasks.get(task_id) else {
            return;
        };
        let Phase::Running(run) = &held.phase else {
            return;
        };
        let silent = match run.lease_check(attempt, Instant::now()) {
            LeaseCheck::Stale => return,
            LeaseCheck::Extended(deadline) => {
                self.timers.push(Reverse((
                    deadline,
                    Timer::Lease {
                        task_id: task_id.to_string(),
                        attempt,
                    },
                )));
                return;
            }
            LeaseCheck::Expired(silent) => silent,
        };
        let errors: Vec<TaskError> = silent
            .iter()
            .map(|(_, agent)| run.lease_expired_error(agent))
            .collect();
        self.metrics.lease_expired.inc();
        for ((index, agent), error) in silent.into_iter().zip(errors) {
            self.cancel_on_agent(&agent, task_id, "lease expired").await;
            self.agent_done(task_id, index, Err(error)).await;
        }
    }

    /// Tells an agent to stop working on a task (fire and forget).
    async fn cancel_on_agent(&self, agent: &str, task_id: &str, reason: &str) {
        let request = CancelTask {
            task_id: task_id.to_string(),
            reason: reason.to_string(),
        };
        let payload = codec::encode(ContentType::Json, &request).expect("encodes");
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(headers::CONTENT_TYPE, ContentType::Json.as_str());
        let subject = self.bus.subjects.join(&format!("agent.{agent}.cancel"));
        let _ = self
            .bus
            .client
            .publish_with_headers(subject, headers, payload.into())
            .await;
    }

    /// Cancels a held task (answers `None` if not held here).
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
        let already_final = held.view.status.is_final();
        let Cancel::Cancelled { stop } = held.phase.cancel(already_final) else {
            // Finishing already: answered with the outcome once committed.
            return;
        };
        for agent in stop {
            self.loads.adjust_own(&agent, -1);
            // A half-open breaker's probe ends without a verdict.
            self.breakers.release_probe(&agent);
            self.cancel_on_agent(&agent, task_id, why).await;
        }
        self.record(
            task_id,
            TaskEvent::Cancelled {
                reason: why.to_string(),
            },
        );
        self.metrics.cancelled.inc();
        self.finalize(task_id);
    }

    /// The writer committed (or lost) some tasks' writes.
    pub(super) async fn on_written(&mut self, report: Vec<Written>) {
        for Written { task_id, owned } in report {
            let Some(held) = self.tasks.get_mut(&task_id) else {
                continue;
            };
            held.writing = false;
            if !owned {
                // Another replica records this task (a second submission of
                // the same id): ours is a duplicate.
                self.metrics.duplicates.inc();
                tracing::info!(%task_id, "task owned by another writer; dropping this copy");
                let held = self.tasks.remove(&task_id).expect("held");
                for agent in held.phase.working_agents() {
                    self.loads.adjust_own(&agent, -1);
                    self.breakers.release_probe(&agent);
                    self.cancel_on_agent(&agent, &task_id, "task owned by another dispatcher")
                        .await;
                }
                for waiter in held.waiters {
                    let _ = waiter.send(None);
                }
                concord_bus::jetstream::ack(&held.message).await;
                continue;
            }
            held.persisted = held.view.last_sequence - held.pending.len() as i64;
            if !held.pending.is_empty() {
                if matches!(held.phase, Phase::Final) {
                    self.send_write(&task_id);
                } else {
                    self.deferred.push_back((Instant::now(), task_id.clone()));
                }
                continue;
            }
            if matches!(held.phase, Phase::Final) {
                let held = self.tasks.remove(&task_id).expect("held");
                if let Some(since) = held.stage_since {
                    self.metrics.observe_stage(Stage::Commit, since.elapsed());
                }
                match held.result_json {
                    Some(json) => {
                        crate::results::publish_json(&self.feed, &task_id, json, false).await
                    }
                    None => crate::results::publish(&self.feed, &held.view.result(), false).await,
                }
                self.ack_after_result(&held.message).await;
                if !held.waiters.is_empty() {
                    let result = held.view.result();
                    for waiter in held.waiters {
                        let _ = waiter.send(Some(result.clone()));
                    }
                }
            }
        }
    }
}

fn held_received(engine: &Engine, task_id: &str) -> Duration {
    engine
        .tasks
        .get(task_id)
        .map(|held| held.received.elapsed())
        .unwrap_or_default()
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
