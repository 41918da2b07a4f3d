//! One attempt of a task: the agents it went to, their answers, its lease.

use std::time::{Duration, Instant};

use concord_wire::v1::{AgentOutput, TaskError};
use serde_json::json;

use crate::projection::{TaskEvent, from_wire_value, to_wire_value, wire_json};

/// One attempt in progress: the agents it went to, with their outcome once
/// known, and its lease.
#[derive(Debug)]
pub struct Attempt {
    number: u32,
    agents: Vec<(String, Option<AgentOutput>)>,
    lease: Duration,
    lease_deadline: Instant,
    sent_at: Instant,
}

/// What recording an agent's answer did.
#[derive(Debug, Clone, PartialEq)]
pub struct Answered {
    pub agent_id: String,
    /// Every agent of the attempt has answered: the attempt is over.
    pub all_done: bool,
    /// The entry for the task's history (kept in its dead letter).
    pub history: serde_json::Value,
    /// How long the agent took.
    pub took: Duration,
}

/// What a lease timer of an attempt finds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseCheck {
    /// Not the running attempt (it ended, or another started): nothing to do.
    Stale,
    /// Progress moved the lease: check again then.
    Extended(Instant),
    /// The lease ran out: these agents (index, id) never answered; each
    /// counts as failed with [`lease_expired_error`].
    Expired(Vec<(usize, String)>),
}

/// How an attempt ended, once every agent answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Finished {
    /// At least one agent succeeded: the task completes with this event.
    Completed(TaskEvent),
    /// Every agent failed.
    Failed {
        /// The agents that failed it (later attempts avoid them).
        agents: Vec<String>,
        /// The last error reported.
        last: TaskError,
        /// Whether another attempt could succeed (no agent reported a
        /// permanent error).
        retryable: bool,
    },
}

impl Attempt {
    /// Attempt `number` sent to `agents` at `now`, with `lease` to answer.
    pub fn start(number: u32, agents: &[String], lease: Duration, now: Instant) -> Self {
        Self {
            number,
            agents: agents.iter().map(|agent| (agent.clone(), None)).collect(),
            lease,
            lease_deadline: now + lease,
            sent_at: now,
        }
    }

    pub fn number(&self) -> u32 {
        self.number
    }

    /// How many agents it went to.
    pub fn agent_count(&self) -> usize {
        self.agents.len()
    }

    /// When the lease runs out unless progress extends it.
    pub fn lease_deadline(&self) -> Instant {
        self.lease_deadline
    }

    /// The agents that have not answered yet.
    pub fn working(&self) -> impl Iterator<Item = &str> {
        self.agents
            .iter()
            .filter(|(_, outcome)| outcome.is_none())
            .map(|(agent, _)| agent.as_str())
    }

    /// The agent at `index` of attempt `number`, if it has not answered yet
    /// (a reply for another attempt, or a second one, is stale).
    pub fn awaiting(&self, number: u32, index: usize) -> Option<&str> {
        if self.number != number {
            return None;
        }
        match self.agents.get(index)? {
            (agent, None) => Some(agent),
            _ => None,
        }
    }

    /// Records the answer of the agent at `index` (see [`Attempt::awaiting`]).
    pub fn answer(
        &mut self,
        index: usize,
        outcome: &Result<serde_json::Value, TaskError>,
        now: Instant,
    ) -> Answered {
        let agent_id = self.agents[index].0.clone();
        let output = match outcome {
            Ok(value) => AgentOutput {
                agent_id: agent_id.clone(),
                output: Some(to_wire_value(value.clone())),
                error: None,
            },
            Err(error) => AgentOutput {
                agent_id: agent_id.clone(),
                output: None,
                error: Some(error.clone()),
            },
        };
        self.agents[index].1 = Some(output);
        Answered {
            history: json!({
                "attempt": self.number,
                "agentId": agent_id,
                "outcome": match outcome { Ok(_) => json!("ok"), Err(e) => wire_json(e) },
            }),
            agent_id,
            all_done: self.agents.iter().all(|(_, o)| o.is_some()),
            took: now.saturating_duration_since(self.sent_at),
        }
    }

    /// Progress from `agent_id` on attempt `number` at `now`: counts (and
    /// gives the attempt a full lease from now) only from one of its agents
    /// that is still working.
    pub fn progress(&mut self, number: u32, agent_id: &str, now: Instant) -> bool {
        let working = self.number == number && self.working().any(|agent| agent == agent_id);
        if working {
            self.lease_deadline = now + self.lease;
        }
        working
    }

    /// What the lease timer of attempt `number` finds at `now`.
    pub fn lease_check(&self, number: u32, now: Instant) -> LeaseCheck {
        if self.number != number {
            return LeaseCheck::Stale;
        }
        if self.lease_deadline > now {
            return LeaseCheck::Extended(self.lease_deadline);
        }
        LeaseCheck::Expired(
            self.agents
                .iter()
                .enumerate()
                .filter(|(_, (_, outcome))| outcome.is_none())
                .map(|(index, (agent, _))| (index, agent.clone()))
                .collect(),
        )
    }

    /// How the attempt ended (every agent has answered). With `fan_out`
    /// (broadcast, multicast, or several agents) a success keeps every
    /// agent's output; otherwise the first success's output.
    pub fn finish(self, fan_out: bool) -> Finished {
        let number = self.number;
        let outputs: Vec<AgentOutput> = self.agents.into_iter().filter_map(|(_, o)| o).collect();
        if let Some(success) = outputs.iter().find(|o| o.error.is_none()).cloned() {
            return Finished::Completed(if fan_out {
                TaskEvent::Completed {
                    attempt: number,
                    agent_id: success.agent_id,
                    output: None,
                    outputs,
                }
            } else {
                TaskEvent::Completed {
                    attempt: number,
                    agent_id: success.agent_id,
                    output: success.output.as_ref().map(from_wire_value),
                    outputs: Vec::new(),
                }
            });
        }
        let last = outputs
            .last()
            .and_then(|o| o.error.clone())
            .unwrap_or_else(|| TaskError {
                message: "no agent answered".into(),
                retryable: true,
                code: String::new(),
            });
        let retryable = outputs
            .iter()
            .all(|o| o.error.as_ref().is_none_or(|e| e.retryable));
        Finished::Failed {
            agents: outputs.into_iter().map(|o| o.agent_id).collect(),
            last,
            retryable,
        }
    }
}

/// The error an agent that let a `lease` run out counts as.
pub fn lease_expired_error(lease: Duration, agent: &str) -> TaskError {
    TaskError {
        message: format!(
            "agent {agent} sent no result or progress within the {} ms lease",
            lease.as_millis()
        ),
        retryable: true,
        code: "lease_expired".into(),
    }
}
