//! How well each agent has been doing, as this replica saw it: the
//! `performance` part of the weighted routing score.
//!
//! Every finished attempt on an agent gives one sample in 0..=1:
//!
//! | outcome | sample |
//! | --- | --- |
//! | output | `0.5 + 0.5 × R / (R + duration)`, R = [`REFERENCE`] (1 s): 1.0 for an instant answer, 0.75 after 1 s, 0.55 after 9 s |
//! | retryable error, lease expired | 0 |
//! | non-retryable error | none: the task cannot be done, which says nothing about the agent |
//! | cancelled, handed back | none |
//!
//! An agent's performance is the exponentially weighted moving average of
//! its samples (the newest weighs [`WEIGHT`]), starting from
//! [`Candidate::DEFAULT_PERFORMANCE`](crate::routing::Candidate::DEFAULT_PERFORMANCE)
//! (1, the best) for an agent without history. So a new agent is tried
//! before agents known to be slower or failing (and keeps its place if it
//! is fast), one failure costs an agent a fifth of its score, ten in a row
//! take it near 0.1, and good answers after a bad streak count at once.
//!
//! Each replica keeps its own figures; they are not stored. No I/O, no
//! clock: the caller passes the duration.

use std::time::Duration;

use crate::IdMap;
use crate::routing::Candidate;

/// The attempt duration at which a successful sample is 0.75.
pub const REFERENCE: Duration = Duration::from_secs(1);

/// Weight of the newest sample in the moving average.
pub const WEIGHT: f64 = 0.2;

/// How an attempt on an agent ended, as far as its performance goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sample {
    /// It answered with an output after this long.
    Output(Duration),
    /// It failed in a way another try might not (retryable error, lease expired).
    Failed,
}

impl Sample {
    /// The sample's value in 0..=1.
    pub fn value(self) -> f64 {
        match self {
            Self::Output(duration) => {
                let reference = REFERENCE.as_secs_f64();
                0.5 + 0.5 * reference / (reference + duration.as_secs_f64())
            }
            Self::Failed => 0.0,
        }
    }
}

/// Performance by agent id.
#[derive(Debug, Clone, Default)]
pub struct Performance {
    scores: IdMap<f64>,
}

impl Performance {
    /// Adds one attempt's outcome on `agent`.
    pub fn record(&mut self, agent: &str, sample: Sample) {
        let value = sample.value();
        match self.scores.get_mut(agent) {
            Some(score) => *score += WEIGHT * (value - *score),
            None => {
                let start = Candidate::DEFAULT_PERFORMANCE;
                self.scores
                    .insert(agent.to_string(), start + WEIGHT * (value - start));
            }
        }
    }

    /// `agent`'s performance in 0..=1; the default for one without history.
    pub fn score(&self, agent: &str) -> f64 {
        self.scores
            .get(agent)
            .copied()
            .unwrap_or(Candidate::DEFAULT_PERFORMANCE)
    }

    /// Forgets agents for which `keep` is false (agents that left the directory).
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.scores.retain(|agent, _| keep(agent));
    }

    /// Agents with history.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.scores.len()
    }

    /// Whether no agent has history.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.scores.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLOSE: f64 = 1e-9;

    #[test]
    fn samples_reward_answers_and_speed() {
        assert!((Sample::Output(Duration::ZERO).value() - 1.0).abs() < CLOSE);
        assert!((Sample::Output(REFERENCE).value() - 0.75).abs() < CLOSE);
        assert!((Sample::Output(Duration::from_secs(9)).value() - 0.55).abs() < CLOSE);
        assert_eq!(Sample::Failed.value(), 0.0);
        // Even a very slow answer is worth more than a failure.
        assert!(Sample::Output(Duration::from_secs(3600)).value() > 0.5);
    }

    #[test]
    fn an_agent_without_history_has_the_default() {
        let performance = Performance::default();
        assert_eq!(performance.score("new"), Candidate::DEFAULT_PERFORMANCE);
        assert!(performance.is_empty());
    }

    #[test]
    fn the_average_moves_a_fifth_of_the_way_to_each_sample() {
        let mut performance = Performance::default();
        performance.record("a", Sample::Failed);
        assert!((performance.score("a") - 0.8).abs() < CLOSE);
        performance.record("a", Sample::Failed);
        assert!((performance.score("a") - 0.64).abs() < CLOSE);
        performance.record("a", Sample::Output(Duration::ZERO));
        assert!((performance.score("a") - 0.712).abs() < CLOSE);
        assert_eq!(performance.len(), 1);
    }

    #[test]
    fn a_new_agent_ranks_above_known_slow_or_failing_ones() {
        let mut performance = Performance::default();
        performance.record("slow", Sample::Output(Duration::from_millis(300)));
        performance.record("failed-once", Sample::Failed);
        assert!(performance.score("new") > performance.score("slow"));
        assert!(performance.score("slow") > performance.score("failed-once"));
    }

    #[test]
    fn failing_agents_sink_and_answering_agents_rise() {
        let mut performance = Performance::default();
        for _ in 0..10 {
            performance.record("failing", Sample::Failed);
            performance.record("fast", Sample::Output(Duration::from_millis(5)));
            performance.record("slow", Sample::Output(Duration::from_secs(5)));
        }
        let failing = performance.score("failing");
        let fast = performance.score("fast");
        let slow = performance.score("slow");
        assert!(failing < 0.11, "{failing}");
        assert!(fast > 0.99, "{fast}");
        assert!(slow > 0.5 && slow < fast, "{slow}");
    }

    #[test]
    fn scores_stay_within_bounds() {
        let mut performance = Performance::default();
        for i in 0..1000 {
            let sample = if i % 3 == 0 {
                Sample::Failed
            } else {
                Sample::Output(Duration::from_millis(i))
            };
            performance.record("a", sample);
            let score = performance.score("a");
            assert!((0.0..=1.0).contains(&score), "{score}");
        }
    }

    #[test]
    fn retain_forgets_agents() {
        let mut performance = Performance::default();
        performance.record("gone", Sample::Failed);
        performance.record("here", Sample::Failed);
        performance.retain(|agent| agent == "here");
        assert_eq!(performance.score("gone"), Candidate::DEFAULT_PERFORMANCE);
        assert!(performance.score("here") < Candidate::DEFAULT_PERFORMANCE);
    }
}
