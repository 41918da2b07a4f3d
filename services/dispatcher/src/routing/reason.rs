//! Why no agent could take a task: a value for dead letters, error replies and metrics.

use std::fmt;

#[cfg(test)]
use concord_bus::ServiceError;
#[cfg(test)]
use concord_wire::v1::ErrorCode;

use super::{Candidate, Ineligible};

/// Targets listed one by one in a message before the rest are only counted.
const MAX_TARGETS_SHOWN: usize = 10;

/// How the agents with the task's capability fell out, for
/// [`NoAgentReason`]. Each agent counts once, for the first check it failed
/// (liveness, then health, then breaker, then capacity).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Agents with the capability.
    pub capable: usize,
    /// Of those, not ALIVE.
    pub not_alive: usize,
    /// Alive but UNHEALTHY.
    pub unhealthy: usize,
    /// Alive and healthy, breaker open.
    pub breaker_open: usize,
    /// Otherwise available, at capacity.
    pub at_capacity: usize,
}

impl Tally {
    /// Counts `candidates` for `capability`.
    pub(crate) fn count(candidates: &[Candidate<'_>], capability: &str) -> Self {
        let mut tally = Self::default();
        for candidate in candidates {
            let counter = match candidate.check(capability) {
                Err(Ineligible::LacksCapability | Ineligible::Unknown) => continue,
                Ok(()) => None,
                Err(Ineligible::NotAlive(_)) => Some(&mut tally.not_alive),
                Err(Ineligible::Unhealthy) => Some(&mut tally.unhealthy),
                Err(Ineligible::BreakerOpen) => Some(&mut tally.breaker_open),
                Err(Ineligible::AtCapacity { .. }) => Some(&mut tally.at_capacity),
            };
            if let Some(counter) = counter {
                *counter += 1;
            }
            tally.capable += 1;
        }
        tally
    }

    /// The reason for this tally when no agent was eligible: named after the
    /// furthest check any capable agent got to, so AllBusy means some agent
    /// was otherwise fine but full.
    pub(crate) fn into_reason(self, capability: &str) -> NoAgentReason {
        let capability = capability.to_string();
        let tally = self;
        if self.capable == 0 {
            NoAgentReason::NoCapableAgent { capability }
        } else if self.at_capacity > 0 {
            NoAgentReason::AllBusy { capability, tally }
        } else if self.breaker_open > 0 {
            NoAgentReason::BreakersOpen { capability, tally }
        } else if self.unhealthy > 0 {
            NoAgentReason::NoneHealthy { capability, tally }
        } else {
            NoAgentReason::NoneAlive { capability, tally }
        }
    }
}

impl fmt::Display for Tally {
    /// `3 capable: 1 not alive, 2 at capacity`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} capable", self.capable)?;
        let parts = [
            (self.not_alive, "not alive"),
            (self.unhealthy, "unhealthy"),
            (self.breaker_open, "circuit open"),
            (self.at_capacity, "at capacity"),
        ];
        let mut separator = ": ";
        for (count, what) in parts {
            if count > 0 {
                write!(f, "{separator}{count} {what}")?;
                separator = ", ";
            }
        }
        Ok(())
    }
}

/// Why a task got no agent. Its [`Display`](fmt::Display) form is the
/// human message for dead letters and error replies, starting with
/// `no eligible agent: `.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoAgentReason {
    /// No candidate has the capability.
    NoCapableAgent {
        /// The task's capability.
        capability: String,
    },
    /// Agents have the capability, but none is ALIVE.
    NoneAlive {
        /// The task's capability.
        capability: String,
        /// How the capable agents fell out.
        tally: Tally,
    },
    /// No capable agent is both alive and healthy.
    NoneHealthy {
        /// The task's capability.
        capability: String,
        /// How the capable agents fell out.
        tally: Tally,
    },
    /// Every capable agent that is alive and healthy has its breaker open.
    BreakersOpen {
        /// The task's capability.
        capability: String,
        /// How the capable agents fell out.
        tally: Tally,
    },
    /// Every capable agent that could otherwise take work is at capacity
    /// (some may also be down or have their breaker open: see the tally).
    AllBusy {
        /// The task's capability.
        capability: String,
        /// How the capable agents fell out.
        tally: Tally,
    },
    /// DIRECT: the named agent cannot take the task.
    TargetUnavailable {
        /// The task's capability.
        capability: String,
        /// The named agent.
        agent_id: String,
        /// Why not (`Unknown` when it is not among the candidates).
        cause: Ineligible,
    },
    /// Targets given (any strategy but DIRECT): none of them can take the task.
    NoTargetEligible {
        /// The task's capability.
        capability: String,
        /// Each target, in the task's order, with why it cannot.
        targets: Vec<(String, Ineligible)>,
    },
}

impl NoAgentReason {
    /// A short stable name for metrics labels and event fields:
    /// `no_capable_agent`, `none_alive`, `none_healthy`, `breakers_open`,
    /// `all_busy`, `target_unavailable`, `no_target_eligible`.
    #[cfg(test)]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NoCapableAgent { .. } => "no_capable_agent",
            Self::NoneAlive { .. } => "none_alive",
            Self::NoneHealthy { .. } => "none_healthy",
            Self::BreakersOpen { .. } => "breakers_open",
            Self::AllBusy { .. } => "all_busy",
            Self::TargetUnavailable { .. } => "target_unavailable",
            Self::NoTargetEligible { .. } => "no_target_eligible",
        }
    }

    /// The error reply for `concord.tasks.run`: `NO_ELIGIBLE_AGENT` with this message.
    #[cfg(test)]
    pub fn to_error(&self) -> ServiceError {
        ServiceError::new(ErrorCode::NoEligibleAgent, self.to_string())
    }
}

impl fmt::Display for NoAgentReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no eligible agent: ")?;
        match self {
            Self::NoCapableAgent { capability } => {
                write!(f, "no agent has capability {capability:?}")
            }
            Self::NoneAlive { capability, tally } => write!(
                f,
                "none of the agents with capability {capability:?} is alive ({tally})"
            ),
            Self::NoneHealthy { capability, tally } => write!(
                f,
                "none of the agents with capability {capability:?} is alive and healthy ({tally})"
            ),
            Self::BreakersOpen { capability, tally } => write!(
                f,
                "every live, healthy agent with capability {capability:?} has its circuit breaker open ({tally})"
            ),
            Self::AllBusy { capability, tally } => write!(
                f,
                "every available agent with capability {capability:?} is at capacity ({tally})"
            ),
            Self::TargetUnavailable {
                capability,
                agent_id,
                cause,
            } => {
                write!(f, "target agent {agent_id:?} ")?;
                match cause {
                    Ineligible::LacksCapability => write!(f, "lacks capability {capability:?}"),
                    cause => write!(f, "{cause}"),
                }
            }
            Self::NoTargetEligible {
                capability,
                targets,
            } => {
                write!(
                    f,
                    "none of the {} target agents can take a {capability:?} task: ",
                    targets.len()
                )?;
                for (i, (agent_id, cause)) in targets.iter().take(MAX_TARGETS_SHOWN).enumerate() {
                    let separator = if i == 0 { "" } else { ", " };
                    write!(f, "{separator}{agent_id:?} {cause}")?;
                }
                if targets.len() > MAX_TARGETS_SHOWN {
                    write!(f, " and {} more", targets.len() - MAX_TARGETS_SHOWN)?;
                }
                Ok(())
            }
        }
    }
}
