//! Reputation from task outcomes: the registry listens to the dispatcher's
//! `task.completed` and `task.failed` events (queue group, so replicas count
//! each event once) and folds them into each agent's score.
//!
//! Live events are core NATS messages (at most once), so the score is an
//! estimate that can miss an event during a restart; it only steers routing.

use concord_runtime::Service;

use crate::app::Registry;

/// Subscribes to task outcome events and counts them until shutdown.
///
/// Only the two outcome subjects: a wildcard over `events.task.*` would have
/// nats-server deliver every task's other events here too.
pub async fn listen(service: &Service, registry: Registry) -> anyhow::Result<()> {
    let subjects = &service.context().bus.subjects;
    let outcomes = ["completed", "failed"].map(|outcome| subjects.event("task", outcome));
    service
        .listen(outcomes, Some(crate::INFO.name), move |message| {
            if let Some((agent_id, success)) = outcome(&message.subject, &message.payload) {
                registry.record_outcome(&agent_id, success);
            }
            std::future::ready(())
        })
        .await
}

/// The agent and success of a task event, if it is an outcome with an agent.
pub fn outcome(subject: &str, payload: &[u8]) -> Option<(String, bool)> {
    let success = match subject.rsplit('.').next()? {
        "completed" => true,
        "failed" => false,
        _ => return None,
    };
    // Only the agent id is read (the rest of the event, its output
    // included, is skipped, not built).
    #[derive(serde::Deserialize)]
    struct Event {
        data: Data,
    }
    #[derive(serde::Deserialize)]
    struct Data {
        #[serde(rename = "agentId", default)]
        agent_id: String,
    }
    let event: Event = serde_json::from_slice(payload).ok()?;
    let agent_id = event.data.agent_id;
    (!agent_id.is_empty()).then_some((agent_id, success))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_agent_and_outcome_of_task_events() {
        let body = br#"{"type":"task.completed","data":{"taskId":"t1","agentId":"a1"}}"#;
        assert_eq!(
            outcome("concord.events.task.completed", body),
            Some(("a1".into(), true))
        );
        let body = br#"{"type":"task.failed","data":{"agentId":"a2"}}"#;
        assert_eq!(
            outcome("concord.events.task.failed", body),
            Some(("a2".into(), false))
        );
    }

    #[test]
    fn ignores_other_events_and_bad_bodies() {
        let body = br#"{"data":{"agentId":"a1"}}"#;
        assert_eq!(outcome("concord.events.task.assigned", body), None);
        assert_eq!(outcome("concord.events.task.completed", b"not json"), None);
        assert_eq!(
            outcome("concord.events.task.completed", br#"{"data":{}}"#),
            None
        );
    }
}
