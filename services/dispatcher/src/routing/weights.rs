//! Weights of the weighted score that WEIGHTED, PRIORITY and MULTICAST rank agents by.

use super::Candidate;

/// Relative weights of the four parts of an agent's score, normalised to sum to 1.
///
/// ```text
/// score = performance  * candidate.performance
///       + capability   * level for the task's capability
///       + availability * (1 - in_flight / capacity)
///       + reputation   * agent.reputation
/// ```
///
/// Every input is taken within 0..=1 (NaN as 0), so scores are within 0..=1 too.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoutingWeights {
    performance: f64,
    capability: f64,
    availability: f64,
    reputation: f64,
}

/// Why weights are unusable.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum WeightsError {
    /// A weight is negative, infinite or NaN.
    #[error("routing weight {name} must be a finite number of at least 0, got {value}")]
    Invalid {
        /// Which weight.
        name: &'static str,
        /// Its value.
        value: f64,
    },
    /// All weights are zero, so every agent would score the same.
    #[error("routing weights must not all be zero")]
    AllZero,
}

impl Default for RoutingWeights {
    /// Performance 0.4, capability 0.3, availability 0.2, reputation 0.1.
    fn default() -> Self {
        Self {
            performance: 0.4,
            capability: 0.3,
            availability: 0.2,
            reputation: 0.1,
        }
    }
}

impl RoutingWeights {
    /// Weights in any proportion (`(4, 3, 2, 1)` equals the default); each
    /// finite and non-negative, not all zero.
    pub fn new(
        performance: f64,
        capability: f64,
        availability: f64,
        reputation: f64,
    ) -> Result<Self, WeightsError> {
        for (name, value) in [
            ("performance", performance),
            ("capability", capability),
            ("availability", availability),
            ("reputation", reputation),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(WeightsError::Invalid { name, value });
            }
        }
        let sum = performance + capability + availability + reputation;
        if sum <= 0.0 {
            return Err(WeightsError::AllZero);
        }
        if !sum.is_finite() {
            // Each is finite but the sum overflowed: scale down first.
            let quarter = |w: f64| w / 4.0;
            return Self::new(
                quarter(performance),
                quarter(capability),
                quarter(availability),
                quarter(reputation),
            );
        }
        Ok(Self {
            performance: performance / sum,
            capability: capability / sum,
            availability: availability / sum,
            reputation: reputation / sum,
        })
    }

    /// Normalised weight of the performance score.
    pub fn performance(&self) -> f64 {
        self.performance
    }

    /// Normalised weight of the capability level.
    pub fn capability(&self) -> f64 {
        self.capability
    }

    /// Normalised weight of free capacity.
    pub fn availability(&self) -> f64 {
        self.availability
    }

    /// Normalised weight of reputation.
    pub fn reputation(&self) -> f64 {
        self.reputation
    }

    /// The score of `candidate` whose level for the task's capability is
    /// `level`. An agent without capacity has availability 0.
    pub fn score(&self, candidate: &Candidate<'_>, level: f64) -> f64 {
        let availability = if candidate.capacity == 0 {
            0.0
        } else {
            1.0 - f64::from(candidate.in_flight.min(candidate.capacity))
                / f64::from(candidate.capacity)
        };
        self.performance * unit(candidate.performance)
            + self.capability * unit(level)
            + self.availability * availability
            + self.reputation * unit(candidate.agent.reputation)
    }
}

/// `x` within 0..=1; NaN as 0.
fn unit(x: f64) -> f64 {
    if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) }
}
