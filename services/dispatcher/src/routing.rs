//! Which agent(s) get a task: routing strategies as pure functions over a snapshot of candidates.
//!
//! The caller gathers [`Candidate`]s (registry records plus its own in-flight
//! counts, performance figures and breaker states), calls [`Router::route`],
//! and either sends the task to the returned agents or, on
//! [`RouteDecision::NoEligibleAgent`], waits for one to appear and
//! eventually dead-letters the task with the reason's message. No I/O, no
//! clock, no randomness: the same snapshot gives the same answer.
//!
//! # Eligibility (every strategy)
//!
//! An agent may take a task when it has the task's capability (exact name),
//! its liveness is ALIVE, its health is not UNHEALTHY, its breaker admits an
//! attempt, and it has a free slot (`in_flight < capacity`). When the task
//! names `targets`, only those agents are considered, whatever the strategy.
//! DEGRADED agents get work only when no eligible agent is healthy (for
//! MULTICAST, they fill the places healthy agents cannot; BROADCAST sends to
//! every eligible agent, degraded or not).
//!
//! # Strategies
//!
//! | strategy | picks | ties broken by |
//! | --- | --- | --- |
//! | ROUND_ROBIN | the next eligible agent by id after the last one picked for the capability, wrapping around | — |
//! | CAPABILITY | highest level for the capability | fewest in flight, then id |
//! | LEAST_LOADED | lowest `in_flight / capacity` | higher level, then id |
//! | WEIGHTED | highest [`RoutingWeights::score`] | id |
//! | PRIORITY | like WEIGHTED; the priority is the backlog's job ([`PriorityQueue`], [`priority_order`]) | id |
//! | DIRECT | the one target, if eligible | — |
//! | BROADCAST | every eligible agent, by id | — |
//! | MULTICAST | the `fanout` best by score (all eligible targets when `fanout` is 0) | id |
//!
//! Ids break ties in ascending byte order. ROUND_ROBIN remembers the last
//! agent id per capability rather than a position, so agents joining or
//! leaving never make it skip or repeat the others. An unspecified strategy
//! means the router's default.
//!
//! # Cost
//!
//! Routing is one pass over the candidates (MULTICAST and BROADCAST also
//! sort the chosen ones) and allocates only the returned ids, so callers
//! should pass the candidates for the task's capability, not the whole fleet.

mod candidate;
mod priority;
mod reason;
mod weights;

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};

use concord_wire::v1::RoutingStrategy;

use crate::task_spec::TaskSpec;

pub use candidate::{Candidate, Ineligible};
pub use priority::PriorityQueue;
#[cfg(test)]
pub use priority::priority_order;
pub use reason::{NoAgentReason, Tally};
pub use weights::RoutingWeights;
#[cfg(test)]
pub use weights::WeightsError;

use candidate::Fit;

/// The router's answer for one task.
#[derive(Debug, Clone, PartialEq)]
pub enum RouteDecision {
    /// Send the task to these agents (one for single-agent strategies;
    /// BROADCAST and MULTICAST may give several, possibly fewer than the
    /// fanout asked for).
    Assign(Vec<String>),
    /// Nobody can take it now.
    NoEligibleAgent {
        /// Why.
        reason: NoAgentReason,
    },
}

impl RouteDecision {
    /// The chosen agent ids; empty when none.
    #[cfg(test)]
    pub fn agents(&self) -> &[String] {
        match self {
            Self::Assign(agents) => agents,
            Self::NoEligibleAgent { .. } => &[],
        }
    }
}

/// Why a [`Router`] cannot be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RouterError {
    /// The default must work for a task that says nothing more than its
    /// capability: DIRECT needs a target and MULTICAST a fanout, and
    /// UNSPECIFIED would mean nothing.
    #[error("{} cannot be the default routing strategy", .0.as_str_name())]
    UnusableDefault(RoutingStrategy),
}

/// Picks agents for tasks; keeps the round-robin positions between calls.
#[derive(Debug, Clone)]
pub struct Router {
    default_strategy: RoutingStrategy,
    weights: RoutingWeights,
    /// Capability → id of the agent ROUND_ROBIN picked last.
    cursors: HashMap<String, String>,
}

impl Default for Router {
    /// WEIGHTED with the default weights.
    fn default() -> Self {
        Self {
            default_strategy: RoutingStrategy::Weighted,
            weights: RoutingWeights::default(),
            cursors: HashMap::new(),
        }
    }
}

impl Router {
    /// A router applying `default_strategy` to tasks that name none. Any
    /// strategy but UNSPECIFIED, DIRECT and MULTICAST may be the default.
    pub fn new(
        default_strategy: RoutingStrategy,
        weights: RoutingWeights,
    ) -> Result<Self, RouterError> {
        match default_strategy {
            RoutingStrategy::Unspecified | RoutingStrategy::Direct | RoutingStrategy::Multicast => {
                Err(RouterError::UnusableDefault(default_strategy))
            }
            _ => Ok(Self {
                default_strategy,
                weights,
                cursors: HashMap::new(),
            }),
        }
    }

    /// The strategy used for tasks that name none.
    #[cfg(test)]
    pub fn default_strategy(&self) -> RoutingStrategy {
        self.default_strategy
    }

    /// The strategy `task` is routed with: its own, or the default.
    pub fn strategy_for(&self, task: &TaskSpec) -> RoutingStrategy {
        match task.strategy {
            RoutingStrategy::Unspecified => self.default_strategy,
            strategy => strategy,
        }
    }

    /// Routes `task` like [`Router::route`], avoiding the agents in `avoid`
    /// (they failed it) when another candidate can take it: a retry goes to
    /// another agent even with a strategy that would pick the same one,
    /// and comes back to a failed agent only when nobody else can take it.
    pub fn route_avoiding(
        &mut self,
        task: &TaskSpec,
        candidates: &[Candidate<'_>],
        avoid: &[String],
    ) -> RouteDecision {
        if !avoid.is_empty() {
            let fresh: Vec<Candidate<'_>> = candidates
                .iter()
                .filter(|c| !avoid.iter().any(|a| a == c.id()))
                .copied()
                .collect();
            if let decision @ RouteDecision::Assign(_) = self.route(task, &fresh) {
                return decision;
            }
        }
        self.route(task, candidates)
    }

    /// Chooses the agent(s) for `task` among `candidates` (ids unique).
    ///
    /// Only ROUND_ROBIN changes the router: it advances the capability's
    /// position when it assigns.
    pub fn route(&mut self, task: &TaskSpec, candidates: &[Candidate<'_>]) -> RouteDecision {
        let strategy = self.strategy_for(task);
        if strategy == RoutingStrategy::Direct {
            return direct(task, candidates);
        }
        let targets: Option<HashSet<&str>> =
            (!task.targets.is_empty()).then(|| task.targets.iter().map(String::as_str).collect());
        let weights = self.weights;
        let eligible = candidates.iter().filter_map(|candidate| {
            if targets
                .as_ref()
                .is_some_and(|targets| !targets.contains(candidate.id()))
            {
                return None;
            }
            let fit = candidate.assess(&task.capability).ok()?;
            Some(Eligible {
                candidate,
                fit,
                score: weights.score(candidate, fit.level),
            })
        });

        let chosen: Vec<String> = match strategy {
            RoutingStrategy::Broadcast => {
                let mut ids: Vec<&str> = eligible.map(|e| e.candidate.id()).collect();
                ids.sort_unstable();
                ids.into_iter().map(str::to_string).collect()
            }
            RoutingStrategy::Multicast => best_n(eligible, task.fanout),
            RoutingStrategy::RoundRobin => self.round_robin(&task.capability, eligible),
            RoutingStrategy::Capability => pick(eligible, by_level),
            RoutingStrategy::LeastLoaded => pick(eligible, by_load),
            // WEIGHTED and PRIORITY; UNSPECIFIED and DIRECT were resolved above.
            _ => pick(eligible, by_score),
        };

        if !chosen.is_empty() {
            return RouteDecision::Assign(chosen);
        }
        let reason = if task.targets.is_empty() {
            Tally::count(candidates, &task.capability).into_reason(&task.capability)
        } else {
            NoAgentReason::NoTargetEligible {
                capability: task.capability.clone(),
                targets: task
                    .targets
                    .iter()
                    .filter_map(|target| {
                        check_target(target, &task.capability, candidates)
                            .err()
                            .map(|cause| (target.clone(), cause))
                    })
                    .collect(),
            }
        };
        RouteDecision::NoEligibleAgent { reason }
    }
    /// The first eligible agent by id after the one picked last for
    /// `capability` (wrapping around), healthy agents first; remembers it.
    fn round_robin<'c, 'a: 'c>(
        &mut self,
        capability: &str,
        eligible: impl Iterator<Item = Eligible<'c, 'a>>,
    ) -> Vec<String> {
        let last = self.cursors.get(capability).map(String::as_str);
        let after = |e: &Eligible<'_, '_>| last.is_none_or(|last| e.candidate.id() > last);
        let Some(best) = eligible.max_by(|a, b| {
            a.fit
                .preferred
                .cmp(&b.fit.preferred)
                .then(after(a).cmp(&after(b)))
                .then(b.candidate.id().cmp(a.candidate.id()))
        }) else {
            return Vec::new();
        };
        let id = best.candidate.id();
        match self.cursors.get_mut(capability) {
            Some(cursor) => id.clone_into(cursor),
            None => {
                self.cursors.insert(capability.to_string(), id.to_string());
            }
        }
        vec![id.to_string()]
    }
}

/// An eligible candidate with what ranking needs.
#[derive(Debug, Clone, Copy)]
struct Eligible<'c, 'a> {
    candidate: &'c Candidate<'a>,
    fit: Fit,
    score: f64,
}

/// The id of the best of `eligible` by `better` (`Greater` = better), as a
/// one-element list; empty if none.
fn pick<'c, 'a: 'c>(
    eligible: impl Iterator<Item = Eligible<'c, 'a>>,
    better: fn(&Eligible<'c, 'a>, &Eligible<'c, 'a>) -> Ordering,
) -> Vec<String> {
    eligible
        .max_by(better)
        .map(|e| e.candidate.id().to_string())
        .into_iter()
        .collect()
}

/// The ids of the `n` best of `eligible` by score, best first; all of them
/// when `n` is 0 or above their number.
fn best_n<'c, 'a: 'c>(eligible: impl Iterator<Item = Eligible<'c, 'a>>, n: u32) -> Vec<String> {
    let worse = |a: &Eligible<'c, 'a>, b: &Eligible<'c, 'a>| by_score(b, a);
    let mut ranked: Vec<Eligible<'c, 'a>> = eligible.collect();
    let n = usize::try_from(n).unwrap_or(usize::MAX);
    if n > 0 && n < ranked.len() {
        // Partition first, so a small fanout over many agents sorts only n.
        ranked.select_nth_unstable_by(n, worse);
        ranked.truncate(n);
    }
    ranked.sort_unstable_by(worse);
    ranked
        .iter()
        .map(|e| e.candidate.id().to_string())
        .collect()
}

/// Healthy before degraded, then higher level, fewer in flight, lower id.
fn by_level(a: &Eligible<'_, '_>, b: &Eligible<'_, '_>) -> Ordering {
    a.fit
        .preferred
        .cmp(&b.fit.preferred)
        .then(a.fit.level.total_cmp(&b.fit.level))
        .then(b.candidate.in_flight.cmp(&a.candidate.in_flight))
        .then(b.candidate.id().cmp(a.candidate.id()))
}

/// Healthy before degraded, then lower load ratio, higher level, lower id.
fn by_load(a: &Eligible<'_, '_>, b: &Eligible<'_, '_>) -> Ordering {
    // in_flight_a / capacity_a against in_flight_b / capacity_b, exactly:
    // cross-multiplied in u64, which cannot overflow for u32 inputs.
    let load = |x: &Eligible<'_, '_>, y: &Eligible<'_, '_>| {
        u64::from(x.candidate.in_flight) * u64::from(y.candidate.capacity)
    };
    a.fit
        .preferred
        .cmp(&b.fit.preferred)
        .then(load(b, a).cmp(&load(a, b)))
        .then(a.fit.level.total_cmp(&b.fit.level))
        .then(b.candidate.id().cmp(a.candidate.id()))
}

/// Healthy before degraded, then higher score, lower id.
fn by_score(a: &Eligible<'_, '_>, b: &Eligible<'_, '_>) -> Ordering {
    a.fit
        .preferred
        .cmp(&b.fit.preferred)
        .then(a.score.total_cmp(&b.score))
        .then(b.candidate.id().cmp(a.candidate.id()))
}

fn direct(task: &TaskSpec, candidates: &[Candidate<'_>]) -> RouteDecision {
    // Validated tasks name exactly one target; an empty id is unknown.
    let agent_id = task.targets.first().cloned().unwrap_or_default();
    match check_target(&agent_id, &task.capability, candidates) {
        Ok(()) => RouteDecision::Assign(vec![agent_id]),
        Err(cause) => RouteDecision::NoEligibleAgent {
            reason: NoAgentReason::TargetUnavailable {
                capability: task.capability.clone(),
                agent_id,
                cause,
            },
        },
    }
}

/// Whether the candidate with id `agent_id` may take a `capability` task.
fn check_target(
    agent_id: &str,
    capability: &str,
    candidates: &[Candidate<'_>],
) -> Result<(), Ineligible> {
    candidates
        .iter()
        .find(|candidate| candidate.id() == agent_id)
        .map_or(Err(Ineligible::Unknown), |candidate| {
            candidate.check(capability)
        })
}

#[cfg(test)]
mod tests;
