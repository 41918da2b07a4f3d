//! Iterative consensus building (seed 001), without I/O: a proposal may
//! run up to `max_rounds` rounds; after a round that misses the target
//! support, the reviser gets the objections (every rejection's and
//! abstention's reason) and submits a revised proposal for the next round.
//! Each round's support is kept; it ends at the target support, at an
//! approval, or when the rounds run out.

use crate::session::Session;
use crate::tally::{Choice, Outcome};

/// Most rounds a proposal may ask for.
pub const MAX_ROUNDS: u32 = 20;

/// One finished round.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundResult {
    pub round: u32,
    pub support: f64,
    /// `None`: the round timed out without a counted vote.
    pub outcome: Option<Outcome>,
}

/// An objection to take into the revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Objection {
    pub voter: String,
    /// `reject` or `abstain`.
    pub stance: &'static str,
    pub reason: String,
}

/// What comes after a round.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// The proposal is decided with this round's outcome.
    Done(Option<Outcome>),
    /// The reviser is asked for round `round`, with the objections.
    Revise {
        round: u32,
        objections: Vec<Objection>,
    },
}

/// The rounds of one proposal.
#[derive(Debug, Clone, PartialEq)]
pub struct Rounds {
    pub max_rounds: u32,
    /// Support that ends the rounds (0..=1).
    pub target_support: f64,
    pub history: Vec<RoundResult>,
}

impl Rounds {
    /// Up to `max_rounds` (1..=[`MAX_ROUNDS`]) rounds aiming at `target_support`.
    pub fn new(max_rounds: u32, target_support: f64) -> Result<Self, (&'static str, String)> {
        if !(1..=MAX_ROUNDS).contains(&max_rounds) {
            return Err((
                "maxRounds",
                format!("maxRounds must be 1..={MAX_ROUNDS}, not {max_rounds}"),
            ));
        }
        if !(target_support > 0.0 && target_support <= 1.0) {
            return Err((
                "targetSupport",
                format!("targetSupport {target_support} is outside (0, 1]"),
            ));
        }
        Ok(Self {
            max_rounds,
            target_support,
            history: Vec::new(),
        })
    }

    /// The round now running (1-based).
    pub fn current(&self) -> u32 {
        self.history.len() as u32 + 1
    }

    /// Records the decided `session` as the current round and says what
    /// comes next. A session not decided yet changes nothing (`None`).
    pub fn after(&mut self, session: &Session) -> Option<Next> {
        let decision = session.decision.as_ref()?;
        let round = self.current();
        self.history.push(RoundResult {
            round,
            support: decision.tally.support,
            outcome: decision.outcome.clone(),
        });
        let reached = decision.tally.support + 1e-12 >= self.target_support
            || matches!(
                decision.outcome,
                Some(Outcome::Approved | Outcome::Chosen(_))
            );
        if reached || round >= self.max_rounds {
            return Some(Next::Done(decision.outcome.clone()));
        }
        let objections = session
            .ballots
            .values()
            .filter_map(|b| {
                let stance = match b.choice {
                    Choice::Reject => "reject",
                    Choice::Abstain => "abstain",
                    _ => return None,
                };
                Some(Objection {
                    voter: b.voter.clone(),
                    stance,
                    reason: b.reason.clone(),
                })
            })
            .collect();
        Some(Next::Revise {
            round: round + 1,
            objections,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{Ballot, Proof};
    use crate::tally::{Basis, Mode, Rules};

    fn round(approvals: usize, of: usize) -> Session {
        let weights = (0..of).map(|i| (format!("v{i}"), 1.0)).collect();
        let rules = Rules {
            mode: Mode::Threshold {
                threshold: 0.75,
                basis: Basis::Cast,
            },
            quorum: 0.0,
            min_confidence: 0.0,
            options: Vec::new(),
        };
        let mut session = Session::new(rules, weights, 1_000, false).unwrap();
        for i in 0..of {
            let (choice, reason) = if i < approvals {
                (Choice::Approve, "")
            } else {
                (Choice::Reject, "the budget is too high")
            };
            session
                .cast(
                    Ballot {
                        voter: format!("v{i}"),
                        choice,
                        confidence: 0.9,
                        reason: reason.into(),
                        proof: Proof::Unsigned,
                    },
                    1,
                )
                // Votes after an early close are refused, as they would be.
                .ok();
        }
        session.decide(1_000);
        session
    }

    #[test]
    fn a_round_short_of_the_target_asks_for_a_revision_with_the_objections() {
        let mut rounds = Rounds::new(3, 0.75).unwrap();
        let first = round(2, 4);
        match rounds.after(&first).unwrap() {
            Next::Revise { round, objections } => {
                assert_eq!(round, 2);
                assert_eq!(objections.len(), 2);
                assert_eq!(objections[0].stance, "reject");
                assert_eq!(objections[0].reason, "the budget is too high");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            rounds.after(&round(3, 4)),
            Some(Next::Done(Some(Outcome::Approved)))
        );
        let supports: Vec<f64> = rounds.history.iter().map(|r| r.support).collect();
        // Round 2 closed early after three approvals (3/4 at worst): 3/3.
        assert_eq!(supports, [0.5, 1.0], "each round's support is kept");
    }

    #[test]
    fn the_rounds_end_when_they_run_out() {
        let mut rounds = Rounds::new(2, 0.9).unwrap();
        assert!(matches!(
            rounds.after(&round(1, 4)),
            Some(Next::Revise { round: 2, .. })
        ));
        assert_eq!(
            rounds.after(&round(2, 4)),
            Some(Next::Done(Some(Outcome::Rejected)))
        );
        assert_eq!(rounds.current(), 3);
    }

    #[test]
    fn an_undecided_session_changes_nothing_and_bad_settings_name_the_field() {
        let mut rounds = Rounds::new(2, 0.5).unwrap();
        let weights = [("v0".to_string(), 1.0)].into();
        let rules = Rules {
            mode: Mode::Majority,
            quorum: 0.0,
            min_confidence: 0.0,
            options: Vec::new(),
        };
        let open = Session::new(rules, weights, 1_000, false).unwrap();
        assert_eq!(rounds.after(&open), None);
        assert!(rounds.history.is_empty());
        assert_eq!(Rounds::new(0, 0.5).unwrap_err().0, "maxRounds");
        assert_eq!(Rounds::new(21, 0.5).unwrap_err().0, "maxRounds");
        assert_eq!(Rounds::new(3, 0.0).unwrap_err().0, "targetSupport");
    }
}
