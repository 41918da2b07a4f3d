//! The subject tree. Every subject Concord uses is built here, under one root,
//! so a deployment (or a test) can isolate itself by choosing another root.

/// Builds subjects under a root such as `concord`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    root: String,
}

impl Subjects {
    /// The root used when none is configured.
    pub const DEFAULT_ROOT: &'static str = "concord";

    /// Validates `root` (dot-separated tokens, no wildcards or spaces).
    pub fn new(root: &str) -> Result<Self, &'static str> {
        if root.is_empty() {
            return Err("must not be empty");
        }
        if root.split('.').any(|token| !valid_token(token)) {
            return Err("tokens must be non-empty and contain no spaces, '*' or '>'");
        }
        Ok(Self {
            root: root.to_string(),
        })
    }

    /// The root itself.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// `<root>.<suffix>`.
    pub fn join(&self, suffix: &str) -> String {
        self.tokens(&[suffix])
    }

    /// `<root>.<part>.<part>...`, in one allocation: some of these subjects
    /// are built for every task (results, agent deliveries, events), where
    /// `format!` twice over was a measurable share of the dispatcher's CPU.
    fn tokens(&self, parts: &[&str]) -> String {
        let len = self.root.len() + parts.iter().map(|part| part.len() + 1).sum::<usize>();
        let mut subject = String::with_capacity(len);
        subject.push_str(&self.root);
        for part in parts {
            subject.push('.');
            subject.push_str(part);
        }
        subject
    }

    /// Fire-and-forget task intake, captured by JetStream.
    pub fn tasks_submit(&self) -> String {
        self.join("tasks.submit")
    }

    /// Synchronous task execution; replies with the result.
    pub fn tasks_run(&self) -> String {
        self.join("tasks.run")
    }

    /// Where the result of a task is published.
    pub fn task_result(&self, task_id: &str) -> String {
        self.tokens(&["tasks.result", task_id])
    }

    /// Event subject: `<root>.events.<aggregate>.<event type>`.
    pub fn event(&self, aggregate_type: &str, event_type: &str) -> String {
        self.tokens(&["events", aggregate_type, event_type])
    }

    /// Wildcard matching every event.
    pub fn all_events(&self) -> String {
        self.join("events.>")
    }

    /// A request/reply endpoint of a service: `<root>.<service>.<operation>`.
    pub fn endpoint(&self, service: &str, operation: &str) -> String {
        self.tokens(&[service, operation])
    }

    /// Where an agent receives its work: `<root>.agent.<agent id>.tasks`.
    pub fn agent_tasks(&self, agent_id: &str) -> String {
        self.tokens(&["agent", agent_id, "tasks"])
    }

    /// A JetStream stream or KV name derived from the root, so that roots
    /// isolate streams too (stream names allow no dots).
    pub fn stream_name(&self, name: &str) -> String {
        format!("{}_{}", self.root.replace('.', "_"), name).to_uppercase()
    }
}

/// Whether `token` can be one token of a subject (no wildcards, no whitespace).
pub fn valid_token(token: &str) -> bool {
    !token.is_empty()
        && !token
            .chars()
            .any(|c| c.is_whitespace() || c == '*' || c == '>' || c == '.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_subjects_under_the_root() {
        let s = Subjects::new("concord").unwrap();
        assert_eq!(s.tasks_submit(), "concord.tasks.submit");
        assert_eq!(s.tasks_run(), "concord.tasks.run");
        assert_eq!(s.task_result("t1"), "concord.tasks.result.t1");
        assert_eq!(
            s.event("task", "completed"),
            "concord.events.task.completed"
        );
        assert_eq!(s.all_events(), "concord.events.>");
        assert_eq!(
            s.endpoint("registry", "register"),
            "concord.registry.register"
        );
        assert_eq!(s.agent_tasks("a-1"), "concord.agent.a-1.tasks");
        assert_eq!(s.stream_name("tasks"), "CONCORD_TASKS");
    }

    #[test]
    fn nested_roots_isolate_tests() {
        let s = Subjects::new("test.abc123").unwrap();
        assert_eq!(s.tasks_submit(), "test.abc123.tasks.submit");
        assert_eq!(s.stream_name("tasks"), "TEST_ABC123_TASKS");
    }

    #[test]
    fn rejects_bad_roots() {
        for bad in ["", "a..b", "a.*", "a.>", "a b", ".a", "a."] {
            assert!(Subjects::new(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn token_validation() {
        assert!(valid_token("agent-1_x"));
        assert!(!valid_token("a.b"));
        assert!(!valid_token(""));
        assert!(!valid_token("a*"));
    }
}
