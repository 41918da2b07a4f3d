//! [`TaskContext`]: what a running handler can do besides computing its
//! result: report progress, notice cancellation.

use std::future::Future;
use std::sync::{Arc, OnceLock};

use concord_bus::headers;
use concord_wire::codec::{self, ContentType};
use concord_wire::v1::TaskProgress;
use tokio_util::sync::CancellationToken;

use crate::Task;

/// Handed to [`Agent::handle`](crate::Agent::handle) with each task; cheap to clone.
///
/// ```
/// use concord_sdk::{Task, TaskContext, TaskFailure};
/// use serde_json::{Value, json};
///
/// async fn crunch(task: Task, ctx: TaskContext) -> Result<Value, TaskFailure> {
///     for step in 1..=4 {
///         tokio::select! {
///             _ = ctx.cancelled() => {
///                 let reason = ctx.cancel_reason().unwrap_or_default();
///                 return Err(TaskFailure::cancelled(reason));
///             }
///             _ = tokio::time::sleep(std::time::Duration::from_millis(1)) => {}
///         }
///         // Renews the lease of this attempt; errors only if NATS is gone.
///         ctx.progress(step as f64 / 4.0, format!("step {step}/4")).await.ok();
///     }
///     Ok(json!({"task": task.id}))
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let task = Task::new("t-1", "crunch", Value::Null);
/// let ctx = TaskContext::detached(&task);
/// assert_eq!(crunch(task.clone(), ctx.clone()).await, Ok(json!({"task": "t-1"})));
///
/// ctx.cancel("operator said so");
/// let failure = crunch(task, ctx).await.unwrap_err();
/// assert_eq!(failure.code, "cancelled");
/// assert_eq!(failure.message, "operator said so");
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct TaskContext {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    task_id: String,
    attempt: u32,
    agent_id: String,
    cancel: CancellationToken,
    reason: OnceLock<String>,
    progress: Option<ProgressSink>,
}

#[derive(Debug)]
struct ProgressSink {
    client: async_nats::Client,
    subject: String,
}

/// A progress report could not be sent.
#[derive(Debug, thiserror::Error)]
#[error("cannot publish progress on {subject}: {reason}")]
pub struct ProgressError {
    subject: String,
    reason: String,
}

impl TaskContext {
    pub(crate) fn new(
        task: &Task,
        agent_id: &str,
        client: async_nats::Client,
        progress_subject: String,
    ) -> Self {
        Self::build(
            task,
            agent_id,
            Some(ProgressSink {
                client,
                subject: progress_subject,
            }),
        )
    }

    /// A context connected to nothing, for unit tests of handlers:
    /// [`progress`](Self::progress) does nothing and only
    /// [`cancel`](Self::cancel) cancels it.
    pub fn detached(task: &Task) -> Self {
        Self::build(task, "", None)
    }

    fn build(task: &Task, agent_id: &str, progress: Option<ProgressSink>) -> Self {
        Self {
            inner: Arc::new(Inner {
                task_id: task.id.clone(),
                attempt: task.attempt,
                agent_id: agent_id.to_string(),
                cancel: CancellationToken::new(),
                reason: OnceLock::new(),
                progress,
            }),
        }
    }

    /// Id of the task.
    pub fn task_id(&self) -> &str {
        &self.inner.task_id
    }

    /// Attempt number of this run of the task.
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }

    /// Id of the agent running the task (empty in a detached context).
    pub fn agent_id(&self) -> &str {
        &self.inner.agent_id
    }

    /// Publishes a `TaskProgress` on `<root>.tasks.progress.<task id>`: a
    /// share of the work done (clamped to 0..=1; NaN counts as 0) and a
    /// status line. It also renews the attempt's lease at the dispatcher.
    ///
    /// Core NATS publish: at most once, no reply awaited. Fails only when the
    /// connection is closed (during a reconnect it is queued in the client).
    pub async fn progress(
        &self,
        fraction: f64,
        message: impl Into<String>,
    ) -> Result<(), ProgressError> {
        let Some(sink) = &self.inner.progress else {
            return Ok(());
        };
        let fraction = if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 1.0)
        };
        let report = TaskProgress {
            task_id: self.inner.task_id.clone(),
            attempt: self.inner.attempt,
            agent_id: self.inner.agent_id.clone(),
            fraction,
            message: message.into(),
        };
        let body = codec::encode(ContentType::Json, &report)
            .expect("TaskProgress holds only strings and finite numbers");
        sink.client
            .publish_with_headers(
                sink.subject.clone(),
                headers::outgoing(ContentType::Json.as_str()),
                body.into(),
            )
            .await
            .map_err(|error| ProgressError {
                subject: sink.subject.clone(),
                reason: error.to_string(),
            })
    }

    /// Resolves once the task is cancelled: by a `CancelTask` on
    /// `<root>.agent.<id>.cancel`, or because the agent's shutdown grace
    /// period ran out.
    pub fn cancelled(&self) -> impl Future<Output = ()> + Send + 'static {
        self.inner.cancel.clone().cancelled_owned()
    }

    /// Whether the task has been cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancel.is_cancelled()
    }

    /// Why the task was cancelled, once it has been.
    pub fn cancel_reason(&self) -> Option<String> {
        self.inner.reason.get().cloned()
    }

    /// A token cancelled with the task, for libraries that take one (a child:
    /// cancelling it does not cancel the task).
    pub fn cancellation_token(&self) -> tokio_util::sync::CancellationToken {
        self.inner.cancel.child_token()
    }

    /// Cancels the task with a reason, as a `CancelTask` does. The first
    /// reason is kept. Useful in tests with a [`detached`](Self::detached) context.
    pub fn cancel(&self, reason: impl Into<String>) {
        let _ = self.inner.reason.set(reason.into());
        self.inner.cancel.cancel();
    }
}
