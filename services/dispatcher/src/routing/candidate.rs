//! One agent as the router sees it at one instant, and whether it may take a task.

use std::fmt;

use concord_wire::v1::{AgentHealth, AgentRecord, Liveness};

/// An agent offered to the router: its registry record plus the load and
/// history the dispatcher knows about.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// The agent as the registry last described it.
    pub agent: &'a AgentRecord,
    /// Tasks running on it: the larger of its last heartbeat's count and the
    /// dispatcher's own count of attempts it has in flight there (heartbeats
    /// lag behind assignments).
    pub in_flight: u32,
    /// Tasks it may run at once (its `max_concurrency`, or less if its
    /// heartbeat says so). Zero means it takes nothing.
    pub capacity: u32,
    /// Recent performance from 0 to 1 (the dispatcher's blend of answers,
    /// failures and speed, see `crate::performance`);
    /// [`Candidate::DEFAULT_PERFORMANCE`] when unknown.
    pub performance: f64,
    /// Its circuit breaker forbids new attempts now (see `Breakers::is_open`).
    pub breaker_open: bool,
    /// Its own view of its health: the registry record's, or a fresher
    /// heartbeat's.
    pub health: AgentHealth,
}

impl<'a> Candidate<'a> {
    /// Performance assumed for an agent with no history: the best, so that
    /// a new agent is tried before agents known to be slower or failing.
    pub const DEFAULT_PERFORMANCE: f64 = 1.0;

    /// A candidate from its record alone: heartbeat load and health,
    /// `max_concurrency` as capacity (0 read as 1, as the schema says),
    /// default performance, breaker closed. Adjust the public fields with
    /// what the dispatcher knows. Unknown health values (a newer schema)
    /// read as "not reported".
    pub fn new(agent: &'a AgentRecord) -> Self {
        Self {
            agent,
            in_flight: agent.in_flight,
            capacity: agent.max_concurrency.max(1),
            performance: Self::DEFAULT_PERFORMANCE,
            breaker_open: false,
            health: AgentHealth::try_from(agent.health).unwrap_or(AgentHealth::Unspecified),
        }
    }

    /// The agent's id.
    pub fn id(&self) -> &'a str {
        &self.agent.id
    }

    /// The agent's level for `capability` (exact name match), if it has it.
    pub fn level(&self, capability: &str) -> Option<f64> {
        self.agent
            .capabilities
            .iter()
            .find(|c| c.name == capability)
            .map(|c| c.level)
    }

    /// Whether the agent may take a task needing `capability` now, or the
    /// first reason it may not, checked in this order: capability, liveness
    /// (ALIVE only), health (not UNHEALTHY), breaker, free capacity.
    pub fn check(&self, capability: &str) -> Result<(), Ineligible> {
        self.assess(capability).map(|_| ())
    }

    /// Like [`Candidate::check`], returning what ranking needs when eligible.
    pub(crate) fn assess(&self, capability: &str) -> Result<Fit, Ineligible> {
        let level = self.level(capability).ok_or(Ineligible::LacksCapability)?;
        let liveness = Liveness::try_from(self.agent.liveness).unwrap_or(Liveness::Unspecified);
        if liveness != Liveness::Alive {
            return Err(Ineligible::NotAlive(liveness));
        }
        let health = self.health;
        if health == AgentHealth::Unhealthy {
            return Err(Ineligible::Unhealthy);
        }
        if self.breaker_open {
            return Err(Ineligible::BreakerOpen);
        }
        if self.in_flight >= self.capacity {
            return Err(Ineligible::AtCapacity {
                in_flight: self.in_flight,
                capacity: self.capacity,
            });
        }
        Ok(Fit {
            level,
            preferred: health != AgentHealth::Degraded,
        })
    }
}

/// What the router knows about an eligible candidate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Fit {
    /// Level for the task's capability.
    pub level: f64,
    /// Not DEGRADED: degraded agents get work only when no other fits.
    pub preferred: bool,
}

/// Why one agent cannot take a task now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ineligible {
    /// Not among the candidates (for a named target: not registered, or not
    /// known to the dispatcher yet).
    Unknown,
    /// It does not have the task's capability.
    LacksCapability,
    /// Its liveness is not ALIVE.
    NotAlive(Liveness),
    /// It reports itself UNHEALTHY.
    Unhealthy,
    /// Its circuit breaker is open.
    BreakerOpen,
    /// It runs as many tasks as it can.
    AtCapacity {
        /// Tasks running.
        in_flight: u32,
        /// Tasks it can run at once.
        capacity: u32,
    },
}

impl fmt::Display for Ineligible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unknown => f.write_str("is unknown"),
            Self::LacksCapability => f.write_str("lacks the capability"),
            Self::NotAlive(liveness) => write!(f, "is not alive ({})", liveness.as_str_name()),
            Self::Unhealthy => f.write_str("is unhealthy"),
            Self::BreakerOpen => f.write_str("has its circuit breaker open"),
            Self::AtCapacity {
                in_flight,
                capacity,
            } => write!(f, "is at capacity ({in_flight}/{capacity} tasks)"),
        }
    }
}
