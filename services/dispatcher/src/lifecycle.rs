//! The rules of a held task's life, without I/O and without reading a clock:
//! where it is ([`Phase`]), what an attempt is waiting for ([`Attempt`]), and
//! what an agent's answer, progress, a lease timer, a failed attempt or a
//! cancellation do to it. Every function takes the time it needs (`now`), so
//! the engine passes the clock and the tests pass whatever moment they need.
//!
//! The engine carries out what these decide (events, timers, messages to
//! agents, writes); these only decide.

use std::time::{Duration, Instant};

use concord_wire::v1::{AgentOutput, TaskError};
use serde_json::json;

use concord_wire::v1::TaskStatus;

use crate::backoff::{BackoffPolicy, retry_delay, should_retry};
use crate::projection::{
    Finality, TaskEvent, TaskView, from_wire_value, reason, to_wire_value, wire_json,
};

/// Where a held task is in its life.
#[derive(Debug)]
pub enum Phase {
    /// Waiting for its stored state (lookup in flight).
    Looking,
    /// In its capability's queue, waiting for an agent.
    Queued,
    /// Waiting out a retry delay.
    Backoff,
    /// An attempt is out with agents.
    Running(Attempt),
    /// Final; waiting for the outcome to be committed.
    Final,
}

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

/// What follows a failed attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum AfterFailure {
    /// Try again after `delay`, as attempt `next_attempt`.
    Retry { next_attempt: u32, delay: Duration },
    /// End in the dead-letter store with this reason and message.
    GiveUp { code: &'static str, message: String },
}

/// What cancelling a held task does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancel {
    /// It is finishing already (final, or its stored state not read yet):
    /// the canceller gets the outcome once committed.
    AnswerWhenFinal,
    /// It is cancelled now and becomes final; these agents were still
    /// working on it and must be told to stop.
    Cancelled { stop: Vec<String> },
}

/// What a valid submission becomes, given what the store holds for its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// A task never seen: recorded as submitted and queued.
    New,
    /// Cancelled while it waited in the intake stream (`tasks.cancel` queued
    /// it): recorded as submitted, then cancelled, never run.
    CancelledWhileWaiting { reason: String },
    /// An unfinished task another holder left (a crash, a redelivery):
    /// taken over with the attempts it has made.
    Resume { attempts_run: u32 },
    /// A dead-lettered task replayed by an operator (`Concord-Replay-Of`):
    /// reopened with a fresh count of attempts.
    Reopen,
    /// Finished before: a duplicate submission, or this one redelivered
    /// after a crash between commit and acknowledgement. Its result is
    /// published again and the submission acknowledged.
    AlreadyFinal,
}

/// The admission of a submission: `stored` is the task's stored view (none
/// when the store has no row), `replay` whether it carries
/// `Concord-Replay-Of`, `queued_cancellation` the reason of a cancellation
/// queued for an id without a row.
pub fn admission(
    stored: Option<&TaskView>,
    replay: bool,
    queued_cancellation: Option<String>,
) -> Admission {
    match stored {
        None => match queued_cancellation {
            Some(reason) => Admission::CancelledWhileWaiting { reason },
            None => Admission::New,
        },
        Some(view) if view.status.is_final() => {
            if replay && view.status == TaskStatus::DeadLettered {
                Admission::Reopen
            } else {
                Admission::AlreadyFinal
            }
        }
        Some(view) => Admission::Resume {
            attempts_run: view.attempts,
        },
    }
}

/// What a queued task that found no agent to take it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoAgent {
    /// Stay queued (an agent may free up or appear).
    Wait,
    /// End in the dead-letter store, reason `no_eligible_agent`.
    GiveUp,
}

/// A queued task found no agent at `now`. `only_busy`: capable agents exist
/// but are all at capacity, which is worth waiting for however long it
/// takes. Otherwise (none capable, healthy, or with a closed breaker) it
/// waits `wait` counted both from `none_since` (since when its capability,
/// or its targets, had no eligible agent) and from `queued_at`, so neither a
/// task that just arrived nor one whose agents just left is given up at once.
pub fn without_agent(
    only_busy: bool,
    none_since: Instant,
    queued_at: Instant,
    wait: Duration,
    now: Instant,
) -> NoAgent {
    let waited = |since: Instant| now.saturating_duration_since(since) >= wait;
    if only_busy || !waited(none_since) || !waited(queued_at) {
        NoAgent::Wait
    } else {
        NoAgent::GiveUp
    }
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

    /// The error an agent that let the lease run out counts as.
    pub fn lease_expired_error(&self, agent: &str) -> TaskError {
        TaskError {
            message: format!(
                "agent {agent} sent no result or progress within the {} ms lease",
                self.lease.as_millis()
            ),
            retryable: true,
            code: "lease_expired".into(),
        }
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

/// After attempt `attempt` failed with `last`: another attempt when the
/// error allows one, attempts remain and the deadline has not passed; the
/// dead-letter store otherwise, with the reason that applies first
/// (permanent error, deadline, attempts used up). `attempts_run` counts the
/// attempts made against `max_attempts`; `jitter` is a sample in `0..=1`
/// for the retry delay.
#[allow(clippy::too_many_arguments)]
pub fn after_failure(
    attempt: u32,
    attempts_run: u32,
    max_attempts: u32,
    last: &TaskError,
    retryable: bool,
    deadline_passed: bool,
    backoff: &BackoffPolicy,
    jitter: f64,
) -> AfterFailure {
    if should_retry(attempts_run, max_attempts, retryable) && !deadline_passed {
        return AfterFailure::Retry {
            next_attempt: attempt + 1,
            delay: retry_delay(attempts_run, backoff, jitter),
        };
    }
    let (code, message) = if !retryable {
        (
            reason::TASK_FAILED,
            format!("the agent reported a permanent error: {}", last.message),
        )
    } else if deadline_passed {
        (
            reason::DEADLINE_EXCEEDED,
            format!(
                "the deadline passed after {attempts_run} attempts; last error: {}",
                last.message
            ),
        )
    } else {
        (
            reason::MAX_ATTEMPTS,
            format!(
                "all {attempts_run} attempts failed; last error: {}",
                last.message
            ),
        )
    };
    AfterFailure::GiveUp { code, message }
}

/// The error a dead-lettered task reports: the dead-letter `message`, the
/// last agent error's code when it has one (else the reason `code`), and
/// whether that error was retryable.
pub fn dead_letter_error(code: &str, message: String, last: Option<TaskError>) -> TaskError {
    TaskError {
        message,
        retryable: last.as_ref().is_some_and(|e| e.retryable),
        code: last
            .map(|e| e.code)
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| code.to_string()),
    }
}

impl Phase {
    /// Cancels the task in this phase (`already_final`: its view is final,
    /// e.g. a replayed submission of a finished task). A cancelled task is
    /// [`Phase::Final`] afterwards.
    pub fn cancel(&mut self, already_final: bool) -> Cancel {
        if already_final || matches!(self, Phase::Final | Phase::Looking) {
            return Cancel::AnswerWhenFinal;
        }
        let stop = match std::mem::replace(self, Phase::Final) {
            Phase::Running(attempt) => attempt.working().map(str::to_string).collect(),
            _ => Vec::new(),
        };
        Cancel::Cancelled { stop }
    }

    /// The agents still working on the task: the ones whose load and breaker
    /// probe it holds.
    pub fn working_agents(&self) -> Vec<String> {
        match self {
            Phase::Running(attempt) => attempt.working().map(str::to_string).collect(),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests;
