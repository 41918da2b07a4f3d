//! One voting round of a proposal, without I/O: who may vote, until when,
//! what a vote must prove, duplicates and equivocation, and the decision
//! once the outcome cannot change or the deadline came.
//!
//! - Only invited voters vote, only before the deadline and the decision.
//! - When the proposal requires signatures, a vote must carry a valid one
//!   (the shell verifies it against the voter's registered key and says
//!   which, see [`Proof`]); a missing or bad signature is refused and
//!   recorded as a fault of that voter.
//! - The same vote again is a duplicate (a redelivery): accepted, counted
//!   once. A different second vote is refused when unsigned; when both are
//!   validly signed the voter has equivocated: both are kept as evidence,
//!   its vote is void, and the decision names it.
//! - The decision comes as soon as no vote to come can change the outcome
//!   ([`crate::tally::tally`]), or at the deadline, when missing voters
//!   abstain; a deadline with no counted vote at all is a time-out.
//! - Times are milliseconds on the caller's clock.

use std::collections::{BTreeMap, BTreeSet};

use crate::tally::{Choice, Outcome, Rules, Tally, Vote, tally};

/// What the shell found of a vote's signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proof {
    /// No signature headers.
    Unsigned,
    /// Verified against the voter's registered key.
    Valid,
    /// Present but it does not verify (the reason, for the fault).
    Invalid(String),
}

/// A vote as it arrives.
#[derive(Debug, Clone, PartialEq)]
pub struct Ballot {
    pub voter: String,
    pub choice: Choice,
    pub confidence: f64,
    pub reason: String,
    pub proof: Proof,
}

/// Why a vote is refused, naming the field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoteError {
    pub field: &'static str,
    pub kind: VoteErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoteErrorKind {
    NotInvited,
    Closed,
    Invalid,
    /// A signature problem: also a fault of the voter.
    Signature,
    AlreadyVoted,
}

fn refuse(field: &'static str, kind: VoteErrorKind, message: impl Into<String>) -> VoteError {
    VoteError {
        field,
        kind,
        message: message.into(),
    }
}

/// A fault of a voter, kept as evidence.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    MissingSignature {
        voter: String,
    },
    BadSignature {
        voter: String,
        reason: String,
    },
    /// Two different validly signed votes in one round.
    Equivocation {
        voter: String,
        first: Ballot,
        second: Ballot,
    },
}

/// What an accepted vote did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cast {
    Counted,
    /// The same vote again; counted once.
    Duplicate,
    /// A second, different signed vote: the voter's vote is void.
    Equivocated,
}

/// How a round ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The tally's outcome, or `None` for a time-out with no counted vote.
    pub outcome: Option<Outcome>,
    pub tally: Tally,
    /// Voters whose vote is void (equivocation).
    pub void: Vec<String>,
    pub decided_ms: u64,
    /// Whether the deadline decided it (rather than an early close).
    pub at_deadline: bool,
}

/// One round's state.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub rules: Rules,
    /// Invited voter → weight.
    pub weights: BTreeMap<String, f64>,
    pub deadline_ms: u64,
    pub require_signatures: bool,
    pub ballots: BTreeMap<String, Ballot>,
    pub void: BTreeSet<String>,
    pub faults: Vec<Fault>,
    pub decision: Option<Decision>,
}

impl Session {
    /// A round with valid `rules` over `weights`.
    pub fn new(
        rules: Rules,
        weights: BTreeMap<String, f64>,
        deadline_ms: u64,
        require_signatures: bool,
    ) -> Result<Self, crate::tally::RulesError> {
        rules.validate(&weights)?;
        Ok(Self {
            rules,
            weights,
            deadline_ms,
            require_signatures,
            ballots: BTreeMap::new(),
            void: BTreeSet::new(),
            faults: Vec::new(),
            decision: None,
        })
    }

    /// Takes `ballot` at `now`, then decides if it can.
    pub fn cast(&mut self, ballot: Ballot, now: u64) -> Result<Cast, VoteError> {
        if !self.weights.contains_key(&ballot.voter) {
            return Err(refuse(
                "voter",
                VoteErrorKind::NotInvited,
                format!("{} is not a voter of this proposal", ballot.voter),
            ));
        }
        self.decide(now);
        if self.decision.is_some() {
            return Err(refuse(
                "proposal",
                VoteErrorKind::Closed,
                "the proposal is decided; the vote was not counted",
            ));
        }
        if !(0.0..=1.0).contains(&ballot.confidence) {
            return Err(refuse(
                "confidence",
                VoteErrorKind::Invalid,
                format!("confidence {} is outside 0..1", ballot.confidence),
            ));
        }
        if let Choice::Option(i) = ballot.choice
            && i >= self.rules.options.len()
        {
            return Err(refuse(
                "choice",
                VoteErrorKind::Invalid,
                format!(
                    "option {i} is not one of the proposal's {} options",
                    self.rules.options.len()
                ),
            ));
        }
        let approve_reject = self.rules.options.is_empty();
        let fits = match ballot.choice {
            Choice::Abstain => true,
            Choice::Option(_) => !approve_reject,
            Choice::Approve | Choice::Reject => approve_reject,
        };
        if !fits {
            return Err(refuse(
                "choice",
                VoteErrorKind::Invalid,
                if approve_reject {
                    "this proposal is approve/reject, not a choice among options"
                } else {
                    "this proposal is a choice among options: vote for one, or abstain"
                },
            ));
        }
        match (&ballot.proof, self.require_signatures) {
            (Proof::Invalid(reason), _) => {
                self.faults.push(Fault::BadSignature {
                    voter: ballot.voter.clone(),
                    reason: reason.clone(),
                });
                return Err(refuse(
                    "Concord-Signature",
                    VoteErrorKind::Signature,
                    format!("the vote's signature does not verify: {reason}"),
                ));
            }
            (Proof::Unsigned, true) => {
                self.faults.push(Fault::MissingSignature {
                    voter: ballot.voter.clone(),
                });
                return Err(refuse(
                    "Concord-Signature",
                    VoteErrorKind::Signature,
                    "this proposal requires signed votes",
                ));
            }
            _ => {}
        }
        if self.void.contains(&ballot.voter) {
            return Ok(Cast::Equivocated);
        }
        let cast = match self.ballots.get(&ballot.voter) {
            None => {
                self.ballots.insert(ballot.voter.clone(), ballot);
                Cast::Counted
            }
            Some(first) if same_vote(first, &ballot) => Cast::Duplicate,
            Some(first) if first.proof == Proof::Valid && ballot.proof == Proof::Valid => {
                let first = self.ballots.remove(&ballot.voter).expect("just seen");
                self.void.insert(ballot.voter.clone());
                self.faults.push(Fault::Equivocation {
                    voter: ballot.voter.clone(),
                    first,
                    second: ballot,
                });
                Cast::Equivocated
            }
            Some(_) => {
                return Err(refuse(
                    "voter",
                    VoteErrorKind::AlreadyVoted,
                    format!("{} already voted otherwise in this round", ballot.voter),
                ));
            }
        };
        self.decide(now);
        Ok(cast)
    }

    /// The counted votes: every ballot of a voter whose vote is not void.
    fn counted(&self) -> BTreeMap<String, Vote> {
        self.ballots
            .iter()
            .filter(|(voter, _)| !self.void.contains(*voter))
            .map(|(voter, b)| {
                (
                    voter.clone(),
                    Vote {
                        choice: b.choice.clone(),
                        confidence: b.confidence,
                    },
                )
            })
            .collect()
    }

    /// Decides at `now` if the outcome can no longer change or the deadline
    /// came; the decision, once made, stays.
    pub fn decide(&mut self, now: u64) -> Option<&Decision> {
        if self.decision.is_none() {
            let at_deadline = now >= self.deadline_ms;
            // A void voter's weight stays in the electorate: it can no
            // longer vote, so it counts as missing.
            let count = tally(&self.rules, &self.weights, &self.counted(), at_deadline);
            let counted = count.approve + count.reject + count.options.iter().sum::<usize>();
            let outcome = match count.outcome.clone() {
                _ if at_deadline && counted == 0 && count.abstain == 0 => Some(None),
                Outcome::Open if !at_deadline => None,
                outcome => Some(Some(outcome)),
            };
            if let Some(outcome) = outcome {
                self.decision = Some(Decision {
                    outcome,
                    tally: count,
                    void: self.void.iter().cloned().collect(),
                    decided_ms: if at_deadline { self.deadline_ms } else { now },
                    at_deadline,
                });
            }
        }
        self.decision.as_ref()
    }
}

fn same_vote(a: &Ballot, b: &Ballot) -> bool {
    a.choice == b.choice && a.confidence == b.confidence && a.reason == b.reason
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tally::Mode;

    fn session(n: usize, mode: Mode, signed: bool) -> Session {
        let weights = (0..n).map(|i| (format!("v{i}"), 1.0)).collect();
        let rules = Rules {
            mode,
            quorum: 0.0,
            min_confidence: 0.0,
            options: Vec::new(),
        };
        Session::new(rules, weights, 10_000, signed).unwrap()
    }

    fn ballot(voter: &str, choice: Choice, proof: Proof) -> Ballot {
        Ballot {
            voter: voter.into(),
            choice,
            confidence: 0.8,
            reason: String::new(),
            proof,
        }
    }

    use Choice::{Abstain, Approve, Reject};

    #[test]
    fn the_decision_comes_when_the_outcome_cannot_change() {
        let mut s = session(5, Mode::Majority, false);
        assert_eq!(
            s.cast(ballot("v0", Approve, Proof::Unsigned), 1),
            Ok(Cast::Counted)
        );
        assert_eq!(
            s.cast(ballot("v1", Approve, Proof::Unsigned), 2),
            Ok(Cast::Counted)
        );
        assert!(s.decision.is_none());
        s.cast(ballot("v2", Approve, Proof::Unsigned), 3).unwrap();
        let decision = s.decision.clone().unwrap();
        assert_eq!(decision.outcome, Some(Outcome::Approved));
        assert_eq!((decision.decided_ms, decision.at_deadline), (3, false));
        let late = s
            .cast(ballot("v3", Reject, Proof::Unsigned), 4)
            .unwrap_err();
        assert_eq!(late.kind, VoteErrorKind::Closed);
        assert_eq!(s.decide(5).unwrap().decided_ms, 3, "decided once");
    }

    #[test]
    fn at_the_deadline_missing_voters_abstain_and_no_vote_at_all_is_a_time_out() {
        let mut s = session(5, Mode::Majority, false);
        s.cast(ballot("v0", Approve, Proof::Unsigned), 1).unwrap();
        s.cast(ballot("v1", Reject, Proof::Unsigned), 1).unwrap();
        s.cast(ballot("v2", Approve, Proof::Unsigned), 1).unwrap();
        assert!(s.decide(9_999).is_none());
        let decision = s.decide(10_000).unwrap();
        assert_eq!(decision.outcome, Some(Outcome::Approved));
        assert_eq!(
            (
                decision.tally.missing,
                decision.decided_ms,
                decision.at_deadline
            ),
            (2, 10_000, true)
        );

        let mut quiet = session(3, Mode::Majority, false);
        assert_eq!(quiet.decide(20_000).unwrap().outcome, None, "timed out");
        let after = quiet
            .cast(ballot("v0", Approve, Proof::Unsigned), 20_001)
            .unwrap_err();
        assert_eq!(after.kind, VoteErrorKind::Closed);
    }

    #[test]
    fn only_invited_voters_with_sane_votes() {
        let mut s = session(3, Mode::Majority, false);
        assert_eq!(
            s.cast(ballot("stranger", Approve, Proof::Unsigned), 1)
                .unwrap_err()
                .kind,
            VoteErrorKind::NotInvited
        );
        let mut shaky = ballot("v0", Approve, Proof::Unsigned);
        shaky.confidence = 1.5;
        assert_eq!(s.cast(shaky, 1).unwrap_err().field, "confidence");
        assert_eq!(
            s.cast(ballot("v0", Choice::Option(0), Proof::Unsigned), 1)
                .unwrap_err()
                .field,
            "choice"
        );
        assert_eq!(
            s.cast(ballot("v0", Abstain, Proof::Unsigned), 1),
            Ok(Cast::Counted)
        );
    }

    #[test]
    fn signed_proposals_refuse_unsigned_and_bad_votes_as_faults() {
        let mut s = session(4, Mode::Byzantine, true);
        let unsigned = s
            .cast(ballot("v0", Approve, Proof::Unsigned), 1)
            .unwrap_err();
        assert_eq!(
            (unsigned.kind, unsigned.field),
            (VoteErrorKind::Signature, "Concord-Signature")
        );
        let forged = s
            .cast(
                ballot("v1", Approve, Proof::Invalid("bad_signature".into())),
                1,
            )
            .unwrap_err();
        assert_eq!(forged.kind, VoteErrorKind::Signature);
        assert_eq!(
            s.faults,
            [
                Fault::MissingSignature { voter: "v0".into() },
                Fault::BadSignature {
                    voter: "v1".into(),
                    reason: "bad_signature".into()
                }
            ]
        );
        assert!(s.ballots.is_empty(), "neither counts");
        assert_eq!(
            s.cast(ballot("v0", Approve, Proof::Valid), 2),
            Ok(Cast::Counted)
        );
    }

    #[test]
    fn a_redelivered_vote_counts_once_and_a_changed_unsigned_one_is_refused() {
        let mut s = session(5, Mode::Majority, false);
        s.cast(ballot("v0", Approve, Proof::Unsigned), 1).unwrap();
        assert_eq!(
            s.cast(ballot("v0", Approve, Proof::Unsigned), 2),
            Ok(Cast::Duplicate)
        );
        assert_eq!(
            s.cast(ballot("v0", Reject, Proof::Unsigned), 3)
                .unwrap_err()
                .kind,
            VoteErrorKind::AlreadyVoted
        );
        assert_eq!(s.ballots.len(), 1);
    }

    #[test]
    fn two_different_signed_votes_void_the_voter_and_are_kept_as_evidence() {
        let mut s = session(4, Mode::Byzantine, true); // f = 1, 3 needed
        s.cast(ballot("v0", Approve, Proof::Valid), 1).unwrap();
        s.cast(ballot("v1", Approve, Proof::Valid), 1).unwrap();
        s.cast(ballot("v3", Reject, Proof::Valid), 1).unwrap();
        assert_eq!(
            s.cast(ballot("v3", Approve, Proof::Valid), 2),
            Ok(Cast::Equivocated)
        );
        assert!(matches!(&s.faults[0], Fault::Equivocation { voter, .. } if voter == "v3"));
        assert_eq!(
            s.cast(ballot("v3", Approve, Proof::Valid), 3),
            Ok(Cast::Equivocated),
            "stays void"
        );
        let decision = s.decide(10_000).unwrap();
        assert_eq!(decision.void, ["v3"]);
        assert_eq!(
            decision.outcome,
            Some(Outcome::NoQuorum),
            "2 approvals of the 3 needed"
        );
        assert_eq!((decision.tally.approve, decision.tally.reject), (2, 0));
    }
}
