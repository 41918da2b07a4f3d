//! The echo agent: capability `echo`, answers every task with its payload unchanged.

use concord_sdk::{Agent, Capability, Task, TaskContext, TaskFailure, capability};
use serde_json::Value;

/// Name of the one capability the echo agent has.
pub const CAPABILITY: &str = "echo";

/// Returns each task's payload unchanged.
///
/// ```
/// use concord_echo_agent::EchoAgent;
/// use concord_sdk::{Agent, Task, TaskContext};
/// use serde_json::json;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let task = Task::new("t-1", "echo", json!({"text": "hi"}));
/// let ctx = TaskContext::detached(&task);
/// assert_eq!(EchoAgent.handle(task, ctx).await, Ok(json!({"text": "hi"})));
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct EchoAgent;

impl Agent for EchoAgent {
    fn capabilities(&self) -> Vec<Capability> {
        vec![capability(CAPABILITY, 1.0)]
    }

    async fn handle(&self, task: Task, _ctx: TaskContext) -> Result<Value, TaskFailure> {
        Ok(task.payload)
    }
}
