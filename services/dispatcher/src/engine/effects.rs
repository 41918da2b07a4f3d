//! Carrying out what the lifecycle decides: [`Engine::step`] hands one input
//! to a held task's state machine (`crate::lifecycle::Task`) at the engine
//! clock's moment, then performs the effects it answers, in order. This is
//! the only place the engine changes a held task's phase.

use std::cmp::Reverse;

use async_nats::HeaderMap;
use concord_bus::headers;
use concord_store::NewDeadLetter;
use concord_wire::codec::{self, ContentType};
use concord_wire::v1::{CancelTask, TaskAssignment};

use super::Engine;
use super::assign::task_traceparent;
use super::intake::headers_of;
use crate::lifecycle::{Effect, GiveUp, Input, Moment, Verdict, dead_letter_error};
use crate::metrics::Stage;
use crate::performance::Sample;
use crate::projection::TaskEvent;

/// Namespace of dead-letter ids of tasks (task id + event sequence).
const TASK_DEAD_LETTER_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x8d3e_11a9_6b2f_4c71_b0d4_52e7_9f16_a3c8);

impl Engine {
    /// The current moment on the engine's clock.
    pub(super) fn moment(&mut self) -> Moment {
        Moment {
            now: self.clock.instant(),
            jitter: self.sample(),
        }
    }

    /// Hands `input` to the task's lifecycle and carries out the effects.
    pub(super) async fn step(&mut self, task_id: &str, input: Input) {
        let at = self.moment();
        let Some(held) = self.tasks.get_mut(task_id) else {
            return;
        };
        // The wall clock is read only for tasks with a deadline.
        let deadline_passed =
            held.spec.deadline.is_some() && held.spec.deadline_passed(self.clock.unix_ms());
        // One buffer for every step: carrying out effects never steps again.
        let mut effects = std::mem::take(&mut self.effects);
        held.life.step_into(
            input,
            &at,
            deadline_passed,
            &self.config.backoff,
            &mut effects,
        );
        for effect in effects.drain(..) {
            // Only these four do I/O; the rest are applied synchronously, so
            // a step does not build (and move) an I/O future per effect.
            match effect {
                Effect::Send {
                    attempt,
                    agents,
                    first,
                } => self.send(task_id, attempt, &agents, first, &at).await,
                Effect::Stop { agent, reason } => {
                    self.cancel_on_agent(&agent, task_id, &reason).await
                }
                Effect::Publish => self.publish(task_id, &at).await,
                Effect::Disown => self.disown(task_id).await,
                effect => self.apply(task_id, effect, &at),
            }
        }
        self.effects = effects;
    }

    /// Carries out an effect that needs no I/O.
    fn apply(&mut self, task_id: &str, effect: Effect, at: &Moment) {
        match effect {
            Effect::Queue => self.enqueue(task_id),
            Effect::Record(event) => {
                let event = *event;
                match &event {
                    TaskEvent::Completed { .. } => {
                        self.metrics.completed.inc();
                        if let Some(held) = self.tasks.get(task_id) {
                            self.metrics
                                .observe_latency(at.now.saturating_duration_since(held.received));
                        }
                    }
                    TaskEvent::Retried { .. } => {
                        self.metrics.retried.inc();
                    }
                    TaskEvent::Cancelled { .. } => {
                        self.metrics.cancelled.inc();
                    }
                    _ => {}
                }
                self.carry_record(task_id, event, at);
            }
            Effect::Wake { at: when, wake } => {
                self.timers.push(Reverse((when, task_id.to_string(), wake)))
            }
            Effect::Release { agent, verdict } => self.release(task_id, &agent, verdict),
            Effect::AttemptOver => {
                if let Some(held) = self.tasks.get_mut(task_id)
                    && let Some(since) = held.stage_since.replace(at.now)
                {
                    self.metrics
                        .observe_stage(Stage::Agent, at.now.saturating_duration_since(since));
                }
            }
            Effect::LeaseExpired => {
                self.metrics.lease_expired.inc();
            }
            Effect::DeadLetter(give_up) => {
                let GiveUp {
                    code,
                    message,
                    last,
                    history,
                } = *give_up;
                self.dead_letter(task_id, code, message, last, history, at)
            }
            Effect::Write => self.send_write(task_id),
            Effect::WriteLater => self.deferred.push_back((at.now, task_id.to_string())),
            Effect::Send { .. } | Effect::Stop { .. } | Effect::Publish | Effect::Disown => {
                unreachable!("I/O effects are carried out by step")
            }
        }
    }

    /// Sends attempt `attempt` to `agents`: each takes a unit of its
    /// capacity and, when half-open, its breaker's probe.
    async fn send(
        &mut self,
        task_id: &str,
        attempt: u32,
        agents: &[String],
        first: bool,
        at: &Moment,
    ) {
        let now_ms = self.now_ms();
        let Some(held) = self.tasks.get_mut(task_id) else {
            return;
        };
        if first && let Some(since) = held.stage_since {
            self.metrics
                .observe_stage(Stage::Intake, at.now.saturating_duration_since(since));
        }
        held.stage_since = Some(at.now);
        self.metrics.assigned.inc();
        let held = &self.tasks[task_id];
        let assignment = TaskAssignment {
            task_id: task_id.to_string(),
            attempt,
            capability: held.spec.capability.clone(),
            payload: held.spec.payload.clone(),
            lease_ms: held.spec.timeout_ms,
            deadline: held.spec.deadline,
            labels: held.spec.labels.clone(),
        };
        let payload: bytes::Bytes = codec::encode(ContentType::Json, &assignment)
            .expect("assignments encode")
            .into();
        // The submitter's trace goes on to the agent: one task, one trace.
        // A submission without one (a plain `nats pub`) gets a trace of its
        // own, derived from the task id, so every attempt on every replica
        // continues the same one.
        let mut trace: Vec<(&str, String)> = [headers::TRACEPARENT, headers::TRACESTATE]
            .into_iter()
            .filter_map(|name| {
                headers::get(held.message.headers.as_ref(), name).map(|v| (name, v.to_string()))
            })
            .collect();
        if trace.is_empty() {
            trace.push((headers::TRACEPARENT, task_traceparent(task_id, attempt)));
        }
        for (index, agent) in agents.iter().enumerate() {
            // Routing offered only agents whose breaker admits an attempt;
            // this takes a half-open breaker's probe.
            self.breakers.allow(agent, now_ms);
            self.loads.adjust_own(agent, 1);
            let mut headers = HeaderMap::new();
            headers.insert(headers::CONTENT_TYPE, ContentType::Json.as_str());
            for (name, value) in &trace {
                headers.insert(*name, value.as_str());
            }
            let reply = format!("{}.{task_id}.{attempt}.{index}", self.inbox);
            if let Err(error) = self
                .bus
                .client
                .publish_with_reply_and_headers(
                    self.bus.subjects.agent_tasks(agent),
                    reply,
                    headers,
                    payload.clone(),
                )
                .await
            {
                // The lease expiry retries it.
                tracing::warn!(%error, %task_id, agent_id = %agent, "cannot send assignment");
            }
        }
    }

    /// An agent is done with the task: its capacity is free again (so the
    /// queues are worth another look), and its breaker and performance
    /// figures take the verdict.
    fn release(&mut self, task_id: &str, agent: &str, verdict: Verdict) {
        let now_ms = self.now_ms();
        self.loads.adjust_own(agent, -1);
        if let Some(held) = self.tasks.get(task_id) {
            self.dirty.insert(held.spec.capability.clone());
        }
        self.targeted_dirty = true;
        match verdict {
            Verdict::Succeeded { took } => {
                self.breakers.record_success(agent, now_ms);
                self.performance.record(agent, Sample::Output(took));
            }
            Verdict::Failed { retryable } => {
                self.breakers.record_failure(agent, now_ms);
                // A non-retryable error is the task's, not the agent's.
                if retryable {
                    self.performance.record(agent, Sample::Failed);
                }
            }
            // A half-open breaker's probe ends without a verdict.
            Verdict::Abandoned => self.breakers.release_probe(agent),
        }
    }

    /// Keeps the task's dead letter for its last write and records the
    /// event naming it.
    fn dead_letter(
        &mut self,
        task_id: &str,
        code: &'static str,
        message: String,
        last: Option<concord_wire::v1::TaskError>,
        history: Vec<serde_json::Value>,
        at: &Moment,
    ) {
        let Some(held) = self.tasks.get_mut(task_id) else {
            return;
        };
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
            attempts: held.view.attempts as i32,
            source: self.events.source().to_string(),
            history: serde_json::Value::Array(history),
        });
        let error = dead_letter_error(code, message, last);
        tracing::info!(%task_id, reason = code, error = %error.message, "task dead-lettered");
        self.metrics.dead_lettered.inc();
        self.carry_record(
            task_id,
            TaskEvent::DeadLettered {
                reason: code.to_string(),
                error,
                dead_letter_id: id.to_string(),
            },
            at,
        );
    }

    /// Records `event`; a final one starts the commit stage.
    fn carry_record(&mut self, task_id: &str, event: TaskEvent, at: &Moment) {
        let finished = matches!(
            event,
            TaskEvent::Completed { .. }
                | TaskEvent::DeadLettered { .. }
                | TaskEvent::Cancelled { .. }
        );
        self.record(task_id, event);
        if finished && let Some(held) = self.tasks.get_mut(task_id) {
            held.stage_since = Some(at.now);
        }
    }

    /// The outcome is committed: the result goes out, then the ack.
    async fn publish(&mut self, task_id: &str, at: &Moment) {
        let Some(held) = self.tasks.remove(task_id) else {
            return;
        };
        if let Some(since) = held.stage_since {
            self.metrics
                .observe_stage(Stage::Commit, at.now.saturating_duration_since(since));
        }
        match held.result_json {
            Some(json) => crate::results::publish_json(&self.feed, task_id, json, false).await,
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

    /// Another replica records this task (a second submission of the same
    /// id): this copy is a duplicate.
    async fn disown(&mut self, task_id: &str) {
        let Some(held) = self.tasks.remove(task_id) else {
            return;
        };
        self.metrics.duplicates.inc();
        tracing::info!(%task_id, "task owned by another writer; dropping this copy");
        for waiter in held.waiters {
            let _ = waiter.send(None);
        }
        concord_bus::jetstream::ack(&held.message).await;
    }

    /// Tells an agent to stop working on a task (fire and forget).
    pub(super) async fn cancel_on_agent(&self, agent: &str, task_id: &str, reason: &str) {
        let request = CancelTask {
            task_id: task_id.to_string(),
            reason: reason.to_string(),
        };
        let payload = codec::encode(ContentType::Json, &request).expect("encodes");
        let mut headers = HeaderMap::new();
        headers.insert(headers::CONTENT_TYPE, ContentType::Json.as_str());
        let subject = self.bus.subjects.join(&format!("agent.{agent}.cancel"));
        let _ = self
            .bus
            .client
            .publish_with_headers(subject, headers, payload.into())
            .await;
    }
}
