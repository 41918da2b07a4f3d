//! Task intake: bounded concurrency, one span and one reply per attempt,
//! duplicate suppression, and handing work back on shutdown.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use async_nats::{HeaderMap, Message, Subject, Subscriber};
use concord_bus::service::error_reply;
use concord_bus::{ServiceError, Shutdown, headers};
use concord_wire::codec::{self, ContentType};
use concord_wire::v1::{AgentResult, TaskAssignment, agent_result};
use futures::{FutureExt, StreamExt};
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::AbortHandle;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, Span};

use super::Shared;
use crate::metrics::Outcome;
use crate::task::to_wire_value;
use crate::{Agent, Task, TaskContext, TaskFailure, protocol};

/// An attempt: (task id, attempt number).
pub(crate) type TaskKey = (String, u32);

/// A running attempt, as the rest of the runtime sees it.
pub(crate) struct Running {
    ctx: TaskContext,
    responder: Arc<Responder>,
    span: Span,
    abort: Option<AbortHandle>,
}

impl Running {
    /// Cancels the attempt's context (the handler decides what to do about it).
    pub(crate) fn cancel(&self, reason: &str) {
        self.span
            .in_scope(|| tracing::info!(%reason, "task cancelled"));
        self.ctx.cancel(reason);
    }
}

/// Where and how an attempt is answered; answers at most once.
struct Responder {
    reply_to: Option<Subject>,
    content_type: ContentType,
    task_id: String,
    attempt: u32,
    answered: AtomicBool,
}

impl Responder {
    /// True for the first caller only: the handler's completion and the
    /// shutdown hand-back race for the one reply.
    fn claim(&self) -> bool {
        !self.answered.swap(true, Ordering::AcqRel)
    }
}

/// Takes assignments until shutdown, never more at once than the configured maximum.
pub(crate) async fn take<A: Agent>(
    shared: &Arc<Shared<A>>,
    subscriber: &mut Subscriber,
    tracker: &TaskTracker,
    shutdown: &Shutdown,
) {
    let permits = Arc::new(Semaphore::new(shared.config.max_concurrency as usize));
    loop {
        // A slot first, then a message: while every slot is busy, assignments
        // wait in the subscription (backpressure), not in spawned tasks.
        let permit = tokio::select! {
            biased;
            _ = shutdown.triggered() => return,
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let message = tokio::select! {
            biased;
            _ = shutdown.triggered() => return,
            message = subscriber.next() => match message {
                Some(message) => message,
                None => {
                    tracing::warn!(agent_id = %shared.agent_id, "task subscription closed");
                    return;
                }
            },
        };
        accept(shared, message, permit, tracker).await;
    }
}

/// Decodes one assignment and starts its handler, or answers it at once.
async fn accept<A: Agent>(
    shared: &Arc<Shared<A>>,
    message: Message,
    permit: OwnedSemaphorePermit,
    tracker: &TaskTracker,
) {
    let (task, content_type) = match decode(&message) {
        Ok(decoded) => decoded,
        Err((error, content_type)) => {
            shared.metrics.task(Outcome::Rejected);
            tracing::info!(agent_id = %shared.agent_id, %error, "malformed task assignment refused");
            reply_error(shared, &message, &error, content_type).await;
            return;
        }
    };
    let span = tracing::info_span!(
        "task",
        otel.kind = "server",
        agent_id = %shared.agent_id,
        task_id = %task.id,
        attempt = task.attempt,
        capability = %task.capability,
        outcome = tracing::field::Empty,
    );
    headers::continue_trace(&span, message.headers.as_ref());
    let responder = Arc::new(Responder {
        reply_to: message.reply.clone(),
        content_type,
        task_id: task.id.clone(),
        attempt: task.attempt,
        answered: AtomicBool::new(false),
    });

    if !supports(shared, &task.capability) {
        shared.metrics.task(Outcome::Rejected);
        span.record("outcome", "unsupported_capability");
        span.in_scope(|| tracing::info!("assignment for a capability this agent lacks refused"));
        responder.claim();
        let failure = TaskFailure::retryable(format!(
            "agent {} does not have capability {:?}",
            shared.agent_id, task.capability
        ))
        .with_code(TaskFailure::UNSUPPORTED_CAPABILITY);
        send_result(shared, &responder, Err(failure), &span).await;
        return;
    }

    let key: TaskKey = (task.id.clone(), task.attempt);
    let progress_subject = protocol::task_progress(&shared.bus.subjects, &task.id);
    let ctx = TaskContext::new(
        &task,
        &shared.agent_id,
        shared.bus.client.clone(),
        progress_subject,
    );
    {
        let mut running = shared.running.lock().expect("running-set lock poisoned");
        if running.contains_key(&key) {
            drop(running);
            shared.metrics.task(Outcome::Duplicate);
            span.in_scope(|| {
                tracing::info!(
                    "duplicate delivery of a running attempt ignored; it is answered once"
                )
            });
            return;
        }
        running.insert(
            key.clone(),
            Running {
                ctx: ctx.clone(),
                responder: responder.clone(),
                span: span.clone(),
                abort: None,
            },
        );
    }
    shared.metrics.started();
    let guard = RunningGuard {
        shared: shared.clone(),
        key: key.clone(),
    };
    let handle = tracker
        .spawn(execute(shared.clone(), task, ctx, responder, guard, permit).instrument(span));
    // The attempt may already be over; then there is nothing left to abort.
    if let Some(entry) = shared
        .running
        .lock()
        .expect("running-set lock poisoned")
        .get_mut(&key)
    {
        entry.abort = Some(handle.abort_handle());
    }
}

/// Runs the handler and answers, unless the attempt was handed back meanwhile.
async fn execute<A: Agent>(
    shared: Arc<Shared<A>>,
    task: Task,
    ctx: TaskContext,
    responder: Arc<Responder>,
    guard: RunningGuard<A>,
    permit: OwnedSemaphorePermit,
) {
    let started = Instant::now();
    // A panicking handler must still free its slot and be answered, like a
    // crash would be: retryable, so another attempt can run elsewhere.
    let result = AssertUnwindSafe(shared.agent.handle(task, ctx))
        .catch_unwind()
        .await;
    shared.metrics.duration(started.elapsed().as_secs_f64());
    let (result, outcome) = match result {
        Ok(Ok(output)) => (Ok(output), Outcome::Ok),
        Ok(Err(failure)) => {
            let outcome = if failure.retryable {
                Outcome::Retryable
            } else {
                Outcome::Permanent
            };
            (Err(failure), outcome)
        }
        Err(panic) => {
            let what = panic_message(panic.as_ref());
            tracing::error!(panic = %what, "task handler panicked");
            let failure =
                TaskFailure::retryable(format!("the agent's task handler panicked: {what}"))
                    .with_code(TaskFailure::AGENT_PANIC);
            (Err(failure), Outcome::Panicked)
        }
    };
    if responder.claim() {
        let span = Span::current();
        span.record("outcome", outcome_label(&result));
        shared.metrics.task(outcome);
        send_result(&shared, &responder, result, &span).await;
    }
    drop(guard);
    drop(permit);
}

/// Removes an attempt from the running set however its runner ends
/// (returned, panicked or aborted).
struct RunningGuard<A> {
    shared: Arc<Shared<A>>,
    key: TaskKey,
}

impl<A> Drop for RunningGuard<A> {
    fn drop(&mut self) {
        if let Ok(mut running) = self.shared.running.lock() {
            running.remove(&self.key);
        }
        self.shared.metrics.finished();
    }
}

/// Answers assignments that were buffered when the subscription ended: they
/// never started, so they go straight back to the dispatcher.
pub(crate) async fn hand_back_buffered<A: Agent>(
    shared: &Arc<Shared<A>>,
    subscriber: &mut Subscriber,
) {
    // now_or_never: only what is already buffered, even if the unsubscribe
    // could not be sent and the stream never ends.
    while let Some(Some(message)) = subscriber.next().now_or_never() {
        match decode(&message) {
            Ok((task, content_type)) => {
                let responder = Responder {
                    reply_to: message.reply.clone(),
                    content_type,
                    task_id: task.id.clone(),
                    attempt: task.attempt,
                    answered: AtomicBool::new(true),
                };
                shared.metrics.task(Outcome::HandedBack);
                let failure = TaskFailure::retryable(format!(
                    "agent {} is shutting down and did not start the task",
                    shared.agent_id
                ))
                .with_code(TaskFailure::AGENT_SHUTDOWN);
                send_result(shared, &responder, Err(failure), &Span::none()).await;
            }
            Err((error, content_type)) => {
                shared.metrics.task(Outcome::Rejected);
                reply_error(shared, &message, &error, content_type).await;
            }
        }
    }
}

/// Cancels the attempts still running after the grace period, answers each
/// with a retryable `agent_shutdown` error and stops their handlers.
pub(crate) async fn hand_back_running<A: Agent>(shared: &Arc<Shared<A>>) {
    let entries: Vec<_> = shared
        .running
        .lock()
        .expect("running-set lock poisoned")
        .values()
        .map(|r| {
            (
                r.ctx.clone(),
                r.responder.clone(),
                r.span.clone(),
                r.abort.clone(),
            )
        })
        .collect();
    let grace = shared.config.shutdown_grace;
    for (ctx, responder, span, abort) in entries {
        ctx.cancel("agent shutdown");
        if responder.claim() {
            span.record("outcome", "handed_back");
            span.in_scope(|| {
                tracing::warn!(
                    ?grace,
                    "task still running after the shutdown grace period; handed back"
                )
            });
            shared.metrics.task(Outcome::HandedBack);
            let failure = TaskFailure::retryable(format!(
                "agent {} shut down before the task finished (grace period {grace:?})",
                shared.agent_id
            ))
            .with_code(TaskFailure::AGENT_SHUTDOWN);
            send_result(shared, &responder, Err(failure), &span).await;
        }
        if let Some(abort) = abort {
            abort.abort();
        }
    }
}

/// Which capabilities the last registration declared.
fn supports<A>(shared: &Shared<A>, capability: &str) -> bool {
    shared
        .capabilities
        .read()
        .expect("capabilities lock poisoned")
        .contains(capability)
}

/// The assignment in a message, or the error to answer it with (and the
/// encoding to answer in).
fn decode(message: &Message) -> Result<(Task, ContentType), (ServiceError, ContentType)> {
    let content_type = ContentType::from_header(headers::get(
        message.headers.as_ref(),
        headers::CONTENT_TYPE,
    ))
    .map_err(|error| (ServiceError::from(error), ContentType::Json))?;
    let assignment: TaskAssignment = codec::decode(content_type, &message.payload)
        .map_err(|error| (ServiceError::from(error), content_type))?;
    let task = Task::from_assignment(assignment).map_err(|error| (error, content_type))?;
    Ok((task, content_type))
}

async fn reply_error<A>(
    shared: &Shared<A>,
    message: &Message,
    error: &ServiceError,
    content_type: ContentType,
) {
    let Some(reply_to) = message.reply.clone() else {
        return;
    };
    let (body, reply_headers) = error_reply(error, content_type);
    publish(shared, reply_to, reply_headers, body).await;
}

/// Sends the `AgentResult` of an attempt (if the assignment asked for a reply).
async fn send_result<A>(
    shared: &Shared<A>,
    responder: &Responder,
    result: Result<Value, TaskFailure>,
    span: &Span,
) {
    let Some(reply_to) = responder.reply_to.clone() else {
        span.in_scope(|| tracing::debug!("assignment had no reply subject; result not sent"));
        return;
    };
    let outcome = match result.map(to_wire_value) {
        Ok(Ok(output)) => agent_result::Outcome::Output(output),
        Ok(Err(error)) => agent_result::Outcome::Error(
            TaskFailure::permanent(format!("the task's output cannot be encoded: {error}"))
                .with_code("invalid_output")
                .into_wire(),
        ),
        Err(failure) => agent_result::Outcome::Error(failure.into_wire()),
    };
    let result = AgentResult {
        task_id: responder.task_id.clone(),
        attempt: responder.attempt,
        agent_id: shared.agent_id.clone(),
        outcome: Some(outcome),
    };
    // A serde_json::Value holds no NaN, so encoding cannot fail; keep the
    // reply promise anyway if that ever changes.
    let body = codec::encode(responder.content_type, &result).unwrap_or_else(|error| {
        let fallback = AgentResult {
            outcome: Some(agent_result::Outcome::Error(
                TaskFailure::permanent(format!("the task's result cannot be encoded: {error}"))
                    .with_code("invalid_output")
                    .into_wire(),
            )),
            ..result
        };
        codec::encode(responder.content_type, &fallback).expect("an error result always encodes")
    });
    let reply_headers = span.in_scope(|| headers::outgoing(responder.content_type.as_str()));
    publish(shared, reply_to, reply_headers, body.into()).await;
}

async fn publish<A>(shared: &Shared<A>, subject: Subject, headers: HeaderMap, body: bytes::Bytes) {
    if let Err(error) = shared
        .bus
        .client
        .publish_with_headers(subject, headers, body)
        .await
    {
        tracing::warn!(%error, "could not send a task reply");
    }
}

fn outcome_label(result: &Result<Value, TaskFailure>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(failure) if failure.retryable => "failed_retryable",
        Err(_) => "failed_permanent",
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}
