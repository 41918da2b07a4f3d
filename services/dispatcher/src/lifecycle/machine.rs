//! A held task as a state machine: [`Task::step_into`] takes one input (routed,
//! an agent's reply, progress, a timer, a cancellation, a write landed) at a
//! given moment and answers the effects the engine must carry out, in order.
//! Nothing here sends, writes or reads a clock.

use std::time::{Duration, Instant};

use concord_wire::v1::TaskError;

use super::attempt::{Attempt, Finished, LeaseCheck, lease_expired_error};
use super::rules::{AfterFailure, after_failure};
use crate::backoff::BackoffPolicy;
use crate::projection::{TaskEvent, reason};
use crate::task_spec::TaskSpec;

/// Where a held task is in its life.
#[derive(Debug)]
pub enum Phase {
    /// Waiting for its stored state (lookup in flight).
    Looking,
    /// In its capability's queue since then, waiting for an agent.
    Queued { since: Instant },
    /// Waiting out a retry delay.
    Backoff,
    /// An attempt is out with agents.
    Running(Attempt),
    /// Final; waiting for the outcome to be committed.
    Final,
}

/// The moment an input happens, on the engine's clock (the task's
/// deadline, on the wall clock, is judged by the caller: `deadline_passed`).
#[derive(Debug, Clone, Copy)]
pub struct Moment {
    /// Monotonic time, for leases and delays.
    pub now: Instant,
    /// A uniform sample in `0..=1` for the retry delay's jitter.
    pub jitter: f64,
}

/// What happens to a held task.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Put it in line for an agent (admitted, or resumed).
    Queue,
    /// Routing picked these agents for it (their breakers admit an attempt).
    /// None: a half-open breaker's single probe was taken meanwhile.
    Routed { agents: Vec<String> },
    /// Nobody can take it and it has waited long enough (see
    /// [`super::without_agent`]).
    NoAgent { reason: String },
    /// The agent at `index` of attempt `attempt` answered.
    Reply {
        attempt: u32,
        index: usize,
        outcome: Result<serde_json::Value, TaskError>,
    },
    /// An agent reported progress on attempt `attempt`.
    Progress {
        attempt: u32,
        agent_id: String,
        fraction: f64,
        message: String,
    },
    /// A timer set by [`Effect::Wake`] went off.
    Woke(Wake),
    /// Someone asked to cancel it.
    Cancel { reason: String },
    /// Its write landed: `owned` false when another replica owns the task's
    /// row; `more_pending` when events were made since that write was sent.
    Written { owned: bool, more_pending: bool },
}

/// A timer of one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Wake {
    /// Check the lease of attempt `attempt`.
    Lease { attempt: u32 },
    /// The retry delay before attempt `attempt` is over.
    Backoff { attempt: u32 },
}

/// How an agent's part in an attempt ended, for its load, its breaker and
/// its performance figures.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// It answered with an output after `took`.
    Succeeded { took: Duration },
    /// It failed (an error, or a lease that ran out); a non-retryable error
    /// is the task's fault, not the agent's.
    Failed { retryable: bool },
    /// It was stopped without an outcome (cancelled, handed on): no verdict
    /// for its breaker, and a half-open probe is given back.
    Abandoned,
}

/// What the engine must do, in the order given.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Put the task in its capability's (or its targets') queue.
    Queue,
    /// Send attempt `attempt` to `agents` (each takes one unit of its
    /// capacity, and a half-open breaker's probe). `first`: the first
    /// attempt made by this holder.
    Send {
        attempt: u32,
        agents: Vec<String>,
        first: bool,
    },
    /// Append this event to the task's history (boxed: events are the
    /// largest values here, and effects move through a buffer).
    Record(Box<TaskEvent>),
    /// Set a timer for the task.
    Wake { at: Instant, wake: Wake },
    /// An agent is done with the task: give back its capacity and record
    /// the verdict.
    Release { agent: String, verdict: Verdict },
    /// Tell an agent to stop working on the task.
    Stop { agent: String, reason: String },
    /// The attempt out with agents is over (every agent answered, or the
    /// lease ran out).
    AttemptOver,
    /// The lease of the running attempt ran out.
    LeaseExpired,
    /// Keep the task in the dead-letter store (its event, `DeadLettered`,
    /// names the stored letter, so the engine records it).
    DeadLetter(Box<GiveUp>),
    /// Write the pending events now (the task is final).
    Write,
    /// Write the pending events with the next batch.
    WriteLater,
    /// The outcome is committed: publish the result, acknowledge the
    /// submission after it, answer whoever waits, forget the task.
    Publish,
    /// Another replica owns the task: acknowledge this copy, answer
    /// whoever waits with nothing, forget the task.
    Disown,
}

/// Why and how a task ends in the dead-letter store.
#[derive(Debug, Clone, PartialEq)]
pub struct GiveUp {
    pub code: &'static str,
    pub message: String,
    /// The last agent error, if an agent failed it.
    pub last: Option<TaskError>,
    /// What every attempt did.
    pub history: Vec<serde_json::Value>,
}

impl Effect {
    /// [`Effect::Record`] of `event`.
    pub fn record(event: TaskEvent) -> Self {
        Effect::Record(Box::new(event))
    }
}

/// A held task's lifecycle.
#[derive(Debug)]
pub struct Task {
    phase: Phase,
    /// The number of the last attempt started (the stored view's count).
    attempt: u32,
    /// Attempts counted against `max_attempts` (reset by a dead-letter replay).
    attempts_run: u32,
    max_attempts: u32,
    lease: Duration,
    /// Every output is kept on success (broadcast, multicast).
    fan_out: bool,
    /// Agents that failed it (later attempts avoid them when they can).
    avoid: Vec<String>,
    /// What every attempt did, for the dead letter.
    history: Vec<serde_json::Value>,
}

impl Task {
    /// A task in `phase` whose stored history has `attempts` attempts, of
    /// which `attempts_run` count against its limit. `fan_out`: its strategy
    /// keeps every agent's output.
    pub fn new(
        spec: &TaskSpec,
        phase: Phase,
        attempts: u32,
        attempts_run: u32,
        fan_out: bool,
    ) -> Self {
        Self {
            phase,
            attempt: attempts,
            attempts_run,
            max_attempts: spec.max_attempts,
            lease: Duration::from_millis(spec.timeout_ms),
            fan_out,
            avoid: Vec::new(),
            history: Vec::new(),
        }
    }

    #[cfg(test)]
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// Waiting in a queue, and since when.
    pub fn queued_since(&self) -> Option<Instant> {
        match self.phase {
            Phase::Queued { since } => Some(since),
            _ => None,
        }
    }

    pub fn is_final(&self) -> bool {
        matches!(self.phase, Phase::Final)
    }

    /// Agents that failed it.
    pub fn avoid(&self) -> &[String] {
        &self.avoid
    }

    /// The agent at `index` of attempt `attempt`, if the attempt is running
    /// and that agent has not answered (anything else is a stale reply).
    pub fn awaiting(&self, attempt: u32, index: usize) -> Option<&str> {
        match &self.phase {
            Phase::Running(run) => run.awaiting(attempt, index),
            _ => None,
        }
    }

    /// The agents still working on it: the ones whose capacity and breaker
    /// probe it holds.
    pub fn working_agents(&self) -> Vec<String> {
        match &self.phase {
            Phase::Running(attempt) => attempt.working().map(str::to_string).collect(),
            _ => Vec::new(),
        }
    }

    /// Carries out `input` at `at`; `deadline_passed` tells whether the
    /// task's deadline has passed by then. Inputs that do not apply in the
    /// current phase (a stale reply, a timer of an attempt that is over)
    /// change nothing and answer no effects.
    #[cfg(test)]
    pub fn step(
        &mut self,
        input: Input,
        at: &Moment,
        deadline_passed: bool,
        backoff: &BackoffPolicy,
    ) -> Vec<Effect> {
        let mut effects = Vec::new();
        self.step_into(input, at, deadline_passed, backoff, &mut effects);
        effects
    }

    /// Like `step` (the tests' form, answering a `Vec`), appending the
    /// effects to `effects`: the engine reuses one buffer.
    pub fn step_into(
        &mut self,
        input: Input,
        at: &Moment,
        deadline_passed: bool,
        backoff: &BackoffPolicy,
        effects: &mut Vec<Effect>,
    ) {
        match input {
            Input::Queue => self.queue(at, effects),
            Input::Routed { agents } => self.start(agents, at, deadline_passed, effects),
            Input::NoAgent { reason } => {
                if matches!(self.phase, Phase::Queued { .. }) {
                    self.give_up(reason::NO_ELIGIBLE_AGENT, reason, None, effects);
                }
            }
            Input::Reply {
                attempt,
                index,
                outcome,
            } => {
                if self.awaiting(attempt, index).is_some() {
                    self.answer(index, outcome, at, deadline_passed, backoff, effects);
                }
            }
            Input::Progress {
                attempt,
                agent_id,
                fraction,
                message,
            } => {
                if let Phase::Running(run) = &mut self.phase
                    && run.progress(attempt, &agent_id, at.now)
                {
                    effects.push(Effect::record(TaskEvent::Progress {
                        attempt,
                        agent_id,
                        fraction: fraction.clamp(0.0, 1.0),
                        message,
                    }));
                }
            }
            Input::Woke(Wake::Lease { attempt }) => {
                self.lease_timer(attempt, at, deadline_passed, backoff, effects)
            }
            Input::Woke(Wake::Backoff { attempt }) => {
                if matches!(self.phase, Phase::Backoff) && self.attempt + 1 == attempt {
                    self.queue(at, effects);
                }
            }
            Input::Cancel { reason } => self.cancel(reason, effects),
            Input::Written {
                owned,
                more_pending,
            } => self.written(owned, more_pending, effects),
        }
    }

    fn queue(&mut self, at: &Moment, effects: &mut Vec<Effect>) {
        if matches!(self.phase, Phase::Running(_) | Phase::Final) {
            return;
        }
        self.phase = Phase::Queued { since: at.now };
        effects.push(Effect::Queue);
    }

    fn start(
        &mut self,
        agents: Vec<String>,
        at: &Moment,
        deadline_passed: bool,
        effects: &mut Vec<Effect>,
    ) {
        if !matches!(self.phase, Phase::Queued { .. }) {
            return;
        }
        if deadline_passed {
            let message = "the task's deadline passed before it could be started".to_string();
            self.give_up(reason::DEADLINE_EXCEEDED, message, None, effects);
            return;
        }
        if agents.is_empty() {
            // A half-open breaker's probe was taken: back in line.
            self.queue(at, effects);
            return;
        }
        let first = self.attempts_run == 0;
        self.attempt += 1;
        self.attempts_run += 1;
        let attempt = self.attempt;
        let run = Attempt::start(attempt, &agents, self.lease, at.now);
        let lease_deadline = run.lease_deadline();
        self.phase = Phase::Running(run);
        effects.push(Effect::record(TaskEvent::Assigned {
            attempt,
            agents: agents.clone(),
        }));
        effects.push(Effect::Send {
            attempt,
            agents,
            first,
        });
        effects.push(Effect::Wake {
            at: lease_deadline,
            wake: Wake::Lease { attempt },
        });
    }

    /// Records the answer of the agent at `index` of the running attempt;
    /// ends the attempt once every agent has answered.
    fn answer(
        &mut self,
        index: usize,
        outcome: Result<serde_json::Value, TaskError>,
        at: &Moment,
        deadline_passed: bool,
        backoff: &BackoffPolicy,
        effects: &mut Vec<Effect>,
    ) {
        let Phase::Running(run) = &mut self.phase else {
            return;
        };
        let attempt = run.number();
        let answered = run.answer(index, &outcome, at.now);
        self.history.push(answered.history);
        let agent = answered.agent_id;
        match outcome {
            Ok(_) => effects.push(Effect::Release {
                agent,
                verdict: Verdict::Succeeded {
                    took: answered.took,
                },
            }),
            Err(error) => {
                effects.push(Effect::Release {
                    agent: agent.clone(),
                    verdict: Verdict::Failed {
                        retryable: error.retryable,
                    },
                });
                effects.push(Effect::record(TaskEvent::Failed {
                    attempt,
                    agent_id: agent,
                    error,
                }));
            }
        }
        if answered.all_done {
            self.end_attempt(at, deadline_passed, backoff, effects);
        }
    }

    /// Every agent of the running attempt has answered.
    fn end_attempt(
        &mut self,
        at: &Moment,
        deadline_passed: bool,
        backoff: &BackoffPolicy,
        effects: &mut Vec<Effect>,
    ) {
        let Phase::Running(run) = std::mem::replace(&mut self.phase, Phase::Backoff) else {
            return;
        };
        effects.push(Effect::AttemptOver);
        let attempt = run.number();
        let fan_out = self.fan_out || run.agent_count() > 1;
        let (failed, last, retryable) = match run.finish(fan_out) {
            Finished::Completed(event) => {
                effects.push(Effect::Record(Box::new(event)));
                self.finalize(effects);
                return;
            }
            Finished::Failed {
                agents,
                last,
                retryable,
            } => (agents, last, retryable),
        };
        for agent in failed {
            if !self.avoid.contains(&agent) {
                self.avoid.push(agent);
            }
        }
        match after_failure(
            attempt,
            self.attempts_run,
            self.max_attempts,
            &last,
            retryable,
            deadline_passed,
            backoff,
            at.jitter,
        ) {
            AfterFailure::Retry {
                next_attempt,
                delay,
            } => {
                effects.push(Effect::record(TaskEvent::Retried {
                    next_attempt,
                    delay_ms: delay.as_millis() as u64,
                }));
                effects.push(Effect::Wake {
                    at: at.now + delay,
                    wake: Wake::Backoff {
                        attempt: next_attempt,
                    },
                });
            }
            AfterFailure::GiveUp { code, message } => {
                self.give_up(code, message, Some(last), effects)
            }
        }
    }

    fn lease_timer(
        &mut self,
        attempt: u32,
        at: &Moment,
        deadline_passed: bool,
        backoff: &BackoffPolicy,
        effects: &mut Vec<Effect>,
    ) {
        let Phase::Running(run) = &self.phase else {
            return;
        };
        let silent = match run.lease_check(attempt, at.now) {
            LeaseCheck::Stale => return,
            LeaseCheck::Extended(deadline) => {
                effects.push(Effect::Wake {
                    at: deadline,
                    wake: Wake::Lease { attempt },
                });
                return;
            }
            LeaseCheck::Expired(silent) => silent,
        };
        effects.push(Effect::LeaseExpired);
        for (index, agent) in silent {
            let error = lease_expired_error(self.lease, &agent);
            effects.push(Effect::Stop {
                agent,
                reason: "lease expired".into(),
            });
            self.answer(index, Err(error), at, deadline_passed, backoff, effects);
        }
    }

    fn cancel(&mut self, why: String, effects: &mut Vec<Effect>) {
        if matches!(self.phase, Phase::Final | Phase::Looking) {
            // Finishing already, or its stored state decides first: whoever
            // cancelled gets the outcome once committed.
            return;
        }
        if let Phase::Running(run) = &self.phase {
            for agent in run.working() {
                effects.push(Effect::Release {
                    agent: agent.to_string(),
                    verdict: Verdict::Abandoned,
                });
                effects.push(Effect::Stop {
                    agent: agent.to_string(),
                    reason: why.clone(),
                });
            }
        }
        effects.push(Effect::record(TaskEvent::Cancelled { reason: why }));
        self.finalize(effects);
    }

    fn written(&mut self, owned: bool, more_pending: bool, effects: &mut Vec<Effect>) {
        if !owned {
            for agent in self.working_agents() {
                effects.push(Effect::Release {
                    agent: agent.clone(),
                    verdict: Verdict::Abandoned,
                });
                effects.push(Effect::Stop {
                    agent,
                    reason: "task owned by another dispatcher".into(),
                });
            }
            effects.push(Effect::Disown);
            return;
        }
        effects.push(match (self.is_final(), more_pending) {
            (true, true) => Effect::Write,
            (false, true) => Effect::WriteLater,
            (true, false) => Effect::Publish,
            (false, false) => return,
        });
    }

    fn give_up(
        &mut self,
        code: &'static str,
        message: String,
        last: Option<TaskError>,
        effects: &mut Vec<Effect>,
    ) {
        effects.push(Effect::DeadLetter(Box::new(GiveUp {
            code,
            message,
            last,
            history: std::mem::take(&mut self.history),
        })));
        self.finalize(effects);
    }

    fn finalize(&mut self, effects: &mut Vec<Effect>) {
        self.phase = Phase::Final;
        effects.push(Effect::Write);
    }
}
