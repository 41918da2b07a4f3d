//! The [`Agent`] trait: what an agent can do and how it does it.

use std::collections::BTreeMap;
use std::future::Future;

use concord_wire::v1::{AgentHealth, Capability};
use serde_json::Value;

use crate::{Task, TaskContext, TaskFailure};

/// An agent: its capabilities and its task handler, plus optional hooks.
///
/// Implement [`capabilities`](Agent::capabilities) and
/// [`handle`](Agent::handle), then pass the agent to [`run`](crate::run).
/// `handle` may be written as an `async fn`; its future must be `Send`
/// because tasks run on the multi-threaded runtime, up to
/// [`AgentConfig::max_concurrency`](crate::AgentConfig::max_concurrency) at once.
///
/// ```
/// use concord_sdk::{Agent, Capability, Task, TaskContext, TaskFailure, capability};
/// use serde_json::{Value, json};
///
/// struct Upper;
///
/// impl Agent for Upper {
///     fn capabilities(&self) -> Vec<Capability> {
///         vec![capability("uppercase", 0.9)]
///     }
///
///     async fn handle(&self, task: Task, ctx: TaskContext) -> Result<Value, TaskFailure> {
///         let text = task.payload["text"]
///             .as_str()
///             .ok_or_else(|| TaskFailure::permanent("payload.text must be a string"))?;
///         ctx.progress(0.5, "half way").await.ok();
///         Ok(json!({ "text": text.to_uppercase() }))
///     }
/// }
/// ```
pub trait Agent: Send + Sync + 'static {
    /// What the agent can do; sent with every registration.
    fn capabilities(&self) -> Vec<Capability>;

    /// Runs one attempt of a task. `Ok` is the task's output; `Err` says why
    /// it failed and whether another attempt may succeed.
    ///
    /// Long tasks should call [`TaskContext::progress`] within the
    /// assignment's lease ([`Task::lease`]), or the dispatcher re-routes the
    /// task, and should stop early when [`TaskContext::cancelled`] resolves.
    fn handle(
        &self,
        task: Task,
        ctx: TaskContext,
    ) -> impl Future<Output = Result<Value, TaskFailure>> + Send;

    /// The agent's own view of its health, sent with every heartbeat.
    /// Default: [`AgentHealth::Healthy`].
    fn health(&self) -> AgentHealth {
        AgentHealth::Healthy
    }

    /// Free-form performance figures sent with every heartbeat (names of
    /// ASCII letters, digits, `_`, `.`, `-`; non-finite values are left out).
    /// Default: none.
    fn performance(&self) -> BTreeMap<String, f64> {
        BTreeMap::new()
    }

    /// Answers an auction's call for proposals with a bid, or `None` to
    /// decline. Default: decline. (Called by the auction service once it exists.)
    fn bid(&self, _call: &Value) -> impl Future<Output = Option<Value>> + Send {
        async { None }
    }

    /// Votes on a consensus proposal, or `None` to abstain. Default: abstain.
    /// (Called by the consensus service once it exists.)
    fn vote(&self, _proposal: &Value) -> impl Future<Output = Option<Value>> + Send {
        async { None }
    }
}

/// A capability with a proficiency `level` from 0 to 1 (0 means "not
/// stated", which the registry stores as 1).
///
/// ```
/// let echo = concord_sdk::capability("echo", 1.0);
/// assert_eq!(echo.name, "echo");
/// ```
pub fn capability(name: impl Into<String>, level: f64) -> Capability {
    Capability {
        name: name.into(),
        level,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Minimal;

    impl Agent for Minimal {
        fn capabilities(&self) -> Vec<Capability> {
            vec![capability("x", 1.0)]
        }

        async fn handle(&self, task: Task, _ctx: TaskContext) -> Result<Value, TaskFailure> {
            Ok(task.payload)
        }
    }

    #[tokio::test]
    async fn hooks_default_to_declining_and_healthy() {
        let agent = Minimal;
        assert_eq!(agent.bid(&json!({"item": "gpu-hour"})).await, None);
        assert_eq!(agent.vote(&json!({"proposal": "p1"})).await, None);
        assert_eq!(agent.health(), AgentHealth::Healthy);
        assert!(agent.performance().is_empty());
    }

    #[tokio::test]
    async fn a_detached_context_runs_a_handler_without_a_server() {
        let task = Task::new("t-1", "x", json!({"a": 1}));
        let ctx = TaskContext::detached(&task);
        assert_eq!(Minimal.handle(task, ctx).await, Ok(json!({"a": 1})));
    }
}
