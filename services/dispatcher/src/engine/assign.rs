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

use concord_wire::v1::RoutingStrategy;

use super::Engine;
use crate::lifecycle::{Input, NoAgent, without_agent};
use crate::routing::{NoAgentReason, RouteDecision};

/// Most capable agents one routing decision considers (see `Engine::route`).
pub const ROUTING_WINDOW: usize = 64;

impl Engine {
    /// Puts a held task (its lifecycle queued it) in its queue.
    pub(super) fn enqueue(&mut self, task_id: &str) {
        let Some(held) = self.tasks.get(task_id) else {
            return;
        };
        let capability = &held.spec.capability;
        if held.spec.targets.is_empty() {
            self.queues
                .entry(capability.clone())
                .or_default()
                .push(held.spec.priority, task_id.to_string());
            self.dirty.insert(capability.clone());
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
            let Some(queued_at) = self.queued_since(&task_id) else {
                // Cancelled or already started through a second entry.
                self.pop(capability);
                continue;
            };
            match self.route(&task_id) {
                RouteDecision::Assign(agents) => {
                    self.pop(capability);
                    self.no_agent_since.remove(capability);
                    self.start_attempt(&task_id, agents).await;
                }
                RouteDecision::NoEligibleAgent { reason } => {
                    let now = self.clock.instant();
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
                    let verdict =
                        without_agent(only_busy, since, queued_at, self.config.no_agent_wait, now);
                    if verdict == NoAgent::GiveUp {
                        self.pop(capability);
                        let reason = reason.to_string();
                        self.step(&task_id, Input::NoAgent { reason }).await;
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
        let now = self.clock.instant();
        for (key, task_id) in entries {
            let Some(queued_at) = self.queued_since(&task_id) else {
                self.targeted.remove(&key);
                continue;
            };
            match self.route(&task_id) {
                RouteDecision::Assign(agents) => {
                    self.targeted.remove(&key);
                    self.start_attempt(&task_id, agents).await;
                }
                RouteDecision::NoEligibleAgent { reason } => {
                    // A targeted task's agents are its own: the wait counts
                    // from when it was queued.
                    let only_busy = waits_for_capacity(&reason);
                    let wait = self.config.no_agent_wait;
                    if without_agent(only_busy, queued_at, queued_at, wait, now) == NoAgent::GiveUp
                    {
                        self.targeted.remove(&key);
                        let reason = reason.to_string();
                        self.step(&task_id, Input::NoAgent { reason }).await;
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
        let avoid = held.life.avoid();
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
                router.route_avoiding(spec, &candidates, avoid)
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

    /// Whether the task waits in a queue, and since when.
    fn queued_since(&self, task_id: &str) -> Option<std::time::Instant> {
        self.tasks.get(task_id)?.life.queued_since()
    }

    /// Starts the next attempt on the agents routing picked, those whose
    /// breaker still admits one (a half-open breaker's probe may have gone
    /// meanwhile).
    async fn start_attempt(&mut self, task_id: &str, agents: Vec<String>) {
        let now_ms = self.now_ms();
        let agents: Vec<String> = agents
            .into_iter()
            .filter(|agent| !self.breakers.is_open(agent, now_ms))
            .collect();
        self.step(task_id, Input::Routed { agents }).await;
    }
}

/// The W3C `traceparent` of an attempt of a task submitted without one:
/// the trace id is the first 16 bytes of SHA-256(`concord-task:` + task
/// id), the same for every attempt and replica; the parent span id is the
/// first 8 bytes of SHA-256(`concord-attempt:` + task id + `/` + attempt).
pub(super) fn task_traceparent(task_id: &str, attempt: u32) -> String {
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
