//! Queues and assignment: which held task goes to which agent, and when;
//! sending the assignment. The choice among candidates is `crate::routing`'s
//! (scoring); this module only queues, asks it, and sends.
//!
//! Untargeted tasks wait in one priority queue per capability; the head of
//! a queue blocks the rest only for the reason that would block them too
//! (every agent busy, or none eligible). Tasks naming their agents are tried
//! one by one. A capability without an eligible agent (busy does not count)
//! for `no_agent_wait` dead-letters the tasks that waited that long.

use std::cmp::Reverse;
use std::time::Instant;

use async_nats::HeaderMap;
use concord_bus::headers;
use concord_wire::codec::{self, ContentType};
use concord_wire::v1::TaskAssignment;

use super::{Engine, Phase, Timer};

/// Most capable agents one routing decision considers (see `Engine::route`).
pub const ROUTING_WINDOW: usize = 64;
use crate::lifecycle::{Attempt, NoAgent, without_agent};
use crate::metrics::Stage;
use crate::projection::{TaskEvent, reason};
use concord_wire::v1::RoutingStrategy;

use crate::routing::{Candidate, NoAgentReason, RouteDecision};

impl Engine {
    /// Puts a held task in line for an agent.
    pub(super) fn enqueue(&mut self, task_id: &str) {
        let Some(held) = self.tasks.get_mut(task_id) else {
            return;
        };
        held.phase = Phase::Queued;
        held.queued_at = Instant::now();
        let capability = held.spec.capability.clone();
        if held.spec.targets.is_empty() {
            self.queues
                .entry(capability.clone())
                .or_default()
                .push(held.spec.priority, task_id.to_string());
            self.dirty.insert(capability);
        } else {
            self.targeted.insert(
                (Reverse(held.spec.priority), held.spec.sequence),
                task_id.to_string(),
            );
            self.targeted_dirty = true;
        }
    }

    /// Starts every attempt that can start now.
    pub(super) async fn pump(&mut self) {
        let capabilities: Vec<String> = self.dirty.drain().collect();
        for capability in capabilities {
            self.pump_capability(&capability).await;
        }
        if std::mem::take(&mut self.targeted_dirty) {
            self.pump_targeted().await;
        }
    }

    async fn pump_capability(&mut self, capability: &str) {
        loop {
            let Some(task_id) = self
                .queues
                .get(capability)
                .and_then(|queue| queue.peek())
                .cloned()
            else {
                return;
            };
            let queued = self
                .tasks
                .get(&task_id)
                .is_some_and(|held| matches!(held.phase, Phase::Queued));
            if !queued {
                // Cancelled or already started through a second entry.
                self.pop(capability);
                continue;
            }
            match self.route(&task_id) {
                RouteDecision::Assign(agents) => {
                    self.pop(capability);
                    self.no_agent_since.remove(capability);
                    self.start_attempt(&task_id, agents).await;
                }
                RouteDecision::NoEligibleAgent { reason } => {
                    let now = Instant::now();
                    let only_busy = waits_for_capacity(&reason);
                    let since = if only_busy {
                        self.no_agent_since.remove(capability);
                        now
                    } else {
                        *self
                            .no_agent_since
                            .entry(capability.to_string())
                            .or_insert(now)
                    };
                    let queued_at = self.tasks[&task_id].queued_at;
                    let verdict =
                        without_agent(only_busy, since, queued_at, self.config.no_agent_wait, now);
                    if verdict == NoAgent::GiveUp {
                        self.pop(capability);
                        self.give_up(
                            &task_id,
                            reason::NO_ELIGIBLE_AGENT,
                            reason.to_string(),
                            None,
                        );
                        continue;
                    }
                    return;
                }
            }
        }
    }

    fn pop(&mut self, capability: &str) {
        if let Some(queue) = self.queues.get_mut(capability) {
            queue.pop();
            if queue.is_empty() {
                self.queues.remove(capability);
            }
        }
    }

    async fn pump_targeted(&mut self) {
        let entries: Vec<((Reverse<u32>, u64), String)> = self
            .targeted
            .iter()
            .map(|(key, id)| (*key, id.clone()))
            .collect();
        let now = Instant::now();
        for (key, task_id) in entries {
            let queued = self
                .tasks
                .get(&task_id)
                .is_some_and(|held| matches!(held.phase, Phase::Queued));
            if !queued {
                self.targeted.remove(&key);
                continue;
            }
            match self.route(&task_id) {
                RouteDecision::Assign(agents) => {
                    self.targeted.remove(&key);
                    self.start_attempt(&task_id, agents).await;
                }
                RouteDecision::NoEligibleAgent { reason } => {
                    // A targeted task's agents are its own: the wait counts
                    // from when it was queued.
                    let queued_at = self.tasks[&task_id].queued_at;
                    let only_busy = waits_for_capacity(&reason);
                    let wait = self.config.no_agent_wait;
                    if without_agent(only_busy, queued_at, queued_at, wait, now) == NoAgent::GiveUp
                    {
                        self.targeted.remove(&key);
                        self.give_up(
                            &task_id,
                            reason::NO_ELIGIBLE_AGENT,
                            reason.to_string(),
                            None,
                        );
                    }
                }
            }
        }
    }

    /// Routes one task over the current candidates, avoiding agents that
    /// failed it when another can take it.
    ///
    /// A task naming its agents considers those. Otherwise, with more than
    /// [`ROUTING_WINDOW`] capable agents, each decision considers a window
    /// of that many (a decision costs the same with 10 or 10,000 agents).
    /// ROUND_ROBIN moves the window on after every pick, so every agent gets
    /// its turn; the other strategies keep a window while someone in it can
    /// take work. When a window has nobody eligible, the next ones are tried.
    fn route(&mut self, task_id: &str) -> RouteDecision {
        // With windows, look at every window before concluding nobody can.
        let mut tries = 1;
        loop {
            let (decision, windows) = self.route_window(task_id);
            if matches!(decision, RouteDecision::Assign(_)) || tries >= windows {
                return decision;
            }
            tries += 1;
        }
    }

    /// One routing decision over one window; also returns how many windows
    /// the capability has.
    fn route_window(&mut self, task_id: &str) -> (RouteDecision, usize) {
        let held = &self.tasks[task_id];
        let spec = &held.spec;
        let avoid = &held.avoid;
        let now_ms = self.now_ms();
        let breakers = &self.breakers;
        let performance = &self.performance;
        let router = &mut self.router;
        let window_start = self.windows.get(&spec.capability).cloned();
        let mut window_end: Option<String> = None;
        let mut windows = 1;
        let decision = self.loads.with_candidates(
            &self.directory,
            |directory| {
                if spec.targets.is_empty() {
                    let window = directory.capability_window(
                        &spec.capability,
                        window_start.as_deref(),
                        ROUTING_WINDOW,
                    );
                    let count = directory.capability_count(&spec.capability);
                    if count > ROUTING_WINDOW {
                        window_end = window.last().map(|agent| agent.id.clone());
                        windows = count.div_ceil(ROUTING_WINDOW);
                    }
                    window
                } else {
                    spec.targets
                        .iter()
                        .filter_map(|id| directory.get(id))
                        .collect()
                }
            },
            |mut candidates| {
                for candidate in &mut candidates {
                    candidate.breaker_open = breakers.is_open(candidate.id(), now_ms);
                    candidate.performance = performance.score(candidate.id());
                }
                if !avoid.is_empty() {
                    let fresh: Vec<Candidate<'_>> = candidates
                        .iter()
                        .filter(|c| !avoid.iter().any(|a| a == c.id()))
                        .copied()
                        .collect();
                    if let decision @ RouteDecision::Assign(_) = router.route(spec, &fresh) {
                        return decision;
                    }
                }
                router.route(spec, &candidates)
            },
        );
        if let Some(end) = window_end {
            // The next window starts after the agent just picked (so equal
            // agents take turns), or after this window if nobody was.
            let spec = &self.tasks[task_id].spec;
            let round_robin = self.router.strategy_for(spec) == RoutingStrategy::RoundRobin;
            let next = match &decision {
                // ROUND_ROBIN: the next window starts after the agent just
                // picked, so every agent gets its turn.
                RouteDecision::Assign(agents) if round_robin => agents.last().cloned(),
                // Other strategies keep their window while it has someone
                // eligible: fewer distinct agent subjects per second is
                // cheaper for nats-server than spreading over the fleet.
                RouteDecision::Assign(_) => None,
                RouteDecision::NoEligibleAgent { .. } => Some(end),
            };
            if let Some(next) = next {
                let capability = spec.capability.clone();
                self.windows.insert(capability, next);
            }
        }
        (decision, windows)
    }

    /// Sends attempt `n + 1` to `agents`.
    async fn start_attempt(&mut self, task_id: &str, agents: Vec<String>) {
        let now_unix_ms = chrono::Utc::now().timestamp_millis();
        let Some(held) = self.tasks.get(task_id) else {
            return;
        };
        if held.spec.deadline_passed(now_unix_ms) {
            self.give_up(
                task_id,
                reason::DEADLINE_EXCEEDED,
                "the task's deadline passed before it could be started".to_string(),
                None,
            );
            return;
        }
        let now_ms = self.now_ms();
        let agents: Vec<String> = agents
            .into_iter()
            .filter(|agent| self.breakers.allow(agent, now_ms))
            .collect();
        if agents.is_empty() {
            // A half-open breaker's single probe is taken: try again later.
            self.enqueue(task_id);
            return;
        }
        let held = self.tasks.get_mut(task_id).expect("checked above");
        let now = Instant::now();
        if held.attempts_run == 0
            && let Some(since) = held.stage_since
        {
            self.metrics.observe_stage(Stage::Intake, now - since);
        }
        held.stage_since = Some(now);
        let attempt = held.view.attempts + 1;
        held.attempts_run += 1;
        let lease = std::time::Duration::from_millis(held.spec.timeout_ms);
        let assignment = TaskAssignment {
            task_id: task_id.to_string(),
            attempt,
            capability: held.spec.capability.clone(),
            payload: held.spec.payload.clone(),
            lease_ms: held.spec.timeout_ms,
            deadline: held.spec.deadline,
            labels: held.spec.labels.clone(),
        };
        let run = Attempt::start(attempt, &agents, lease, Instant::now());
        let deadline = run.lease_deadline();
        held.phase = Phase::Running(run);
        self.record(
            task_id,
            TaskEvent::Assigned {
                attempt,
                agents: agents.clone(),
            },
        );
        self.metrics.assigned.inc();
        let payload: bytes::Bytes = codec::encode(ContentType::Json, &assignment)
            .expect("assignments encode")
            .into();
        // The submitter's trace goes on to the agent: one task, one trace.
        // A submission without one (a plain `nats pub`) gets a trace of its
        // own, derived from the task id, so every attempt on every replica
        // continues the same one.
        let mut trace: Vec<(&str, String)> = [headers::TRACEPARENT, headers::TRACESTATE]
            .into_iter()
            .filter_map(|name| {
                let held = &self.tasks[task_id];
                headers::get(held.message.headers.as_ref(), name).map(|v| (name, v.to_string()))
            })
            .collect();
        if trace.is_empty() {
            trace.push((headers::TRACEPARENT, task_traceparent(task_id, attempt)));
        }
        for (index, agent) in agents.iter().enumerate() {
            self.loads.adjust_own(agent, 1);
            let mut headers = HeaderMap::new();
            headers.insert(headers::CONTENT_TYPE, ContentType::Json.as_str());
            for (name, value) in &trace {
                headers.insert(*name, value.as_str());
            }
            let reply = format!("{}.{task_id}.{attempt}.{index}", self.inbox);
            if let Err(error) = self
                .bus
                .client
                .publish_with_reply_and_headers(
                    self.bus.subjects.agent_tasks(agent),
                    reply,
                    headers,
                    payload.clone(),
                )
                .await
            {
                // The lease expiry retries it.
                tracing::warn!(%error, %task_id, agent_id = %agent, "cannot send assignment");
            }
        }
        self.timers.push(Reverse((
            deadline,
            Timer::Lease {
                task_id: task_id.to_string(),
                attempt,
            },
        )));
    }
}

/// The W3C `traceparent` of an attempt of a task submitted without one:
/// the trace id is the first 16 bytes of SHA-256(`concord-task:` + task
/// id), the same for every attempt and replica; the parent span id is the
/// first 8 bytes of SHA-256(`concord-attempt:` + task id + `/` + attempt).
pub(crate) fn task_traceparent(task_id: &str, attempt: u32) -> String {
    use sha2::{Digest, Sha256};
    let trace = Sha256::digest(format!("concord-task:{task_id}"));
    let span = Sha256::digest(format!("concord-attempt:{task_id}/{attempt}"));
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    format!("00-{}-{}-01", hex(&trace[..16]), hex(&span[..8]))
}

/// Busy agents free up: such tasks wait however long it takes.
fn waits_for_capacity(reason: &NoAgentReason) -> bool {
    use crate::routing::Ineligible;
    match reason {
        NoAgentReason::AllBusy { .. } => true,
        NoAgentReason::TargetUnavailable { cause, .. } => {
            matches!(cause, Ineligible::AtCapacity { .. })
        }
        NoAgentReason::NoTargetEligible { targets, .. } => targets
            .iter()
            .any(|(_, cause)| matches!(cause, Ineligible::AtCapacity { .. })),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::task_traceparent;

    #[test]
    fn a_derived_traceparent_is_w3c_and_shared_by_the_attempts_of_a_task() {
        let first = task_traceparent("t-1", 1);
        let parts: Vec<&str> = first.split('-').collect();
        assert_eq!(parts.len(), 4, "{first}");
        assert_eq!((parts[0], parts[3]), ("00", "01"));
        assert_eq!((parts[1].len(), parts[2].len()), (32, 16));
        assert!(first.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
        let second = task_traceparent("t-1", 2);
        assert_eq!(second.split('-').nth(1), Some(parts[1]), "same trace");
        assert_ne!(second.split('-').nth(2), Some(parts[2]), "another span");
        assert_eq!(task_traceparent("t-1", 1), first, "stable");
        assert_ne!(task_traceparent("t-2", 1).split('-').nth(1), Some(parts[1]));
    }
}
