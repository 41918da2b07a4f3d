//! The subjects of the agent protocol, in one place (see docs/PROTOCOL.md).
//!
//! ```
//! use concord_sdk::bus::Subjects;
//! use concord_sdk::protocol;
//!
//! let s = Subjects::new("concord").unwrap();
//! assert_eq!(protocol::register(&s), "concord.registry.register");
//! assert_eq!(protocol::heartbeat(&s), "concord.registry.heartbeat");
//! assert_eq!(protocol::deregister(&s), "concord.registry.deregister");
//! assert_eq!(protocol::agent_tasks(&s, "a-1"), "concord.agent.a-1.tasks");
//! assert_eq!(protocol::agent_cancel(&s, "a-1"), "concord.agent.a-1.cancel");
//! assert_eq!(protocol::task_progress(&s, "t-1"), "concord.tasks.progress.t-1");
//! ```

use concord_bus::Subjects;

/// `<root>.registry.register`: `RegisterAgent` → `RegisterAgentReply`.
pub fn register(subjects: &Subjects) -> String {
    subjects.endpoint("registry", "register")
}

/// `<root>.registry.heartbeat`: `Heartbeat` → `HeartbeatAck`.
pub fn heartbeat(subjects: &Subjects) -> String {
    subjects.endpoint("registry", "heartbeat")
}

/// `<root>.registry.deregister`: `DeregisterAgent` → `DeregisterAgentReply`.
pub fn deregister(subjects: &Subjects) -> String {
    subjects.endpoint("registry", "deregister")
}

/// `<root>.agent.<id>.tasks`: `TaskAssignment` requests → `AgentResult` replies.
pub fn agent_tasks(subjects: &Subjects, agent_id: &str) -> String {
    subjects.agent_tasks(agent_id)
}

/// `<root>.agent.<id>.cancel`: `CancelTask` → `{}`.
pub fn agent_cancel(subjects: &Subjects, agent_id: &str) -> String {
    subjects.join(&format!("agent.{agent_id}.cancel"))
}

/// `<root>.tasks.progress.<task id>`: `TaskProgress`, published by the agent.
pub fn task_progress(subjects: &Subjects, task_id: &str) -> String {
    subjects.join(&format!("tasks.progress.{task_id}"))
}
