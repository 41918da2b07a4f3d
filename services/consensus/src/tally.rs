//! Vote counting, without I/O: who may vote with what weight, the modes
//! (simple majority, threshold, unanimous, Byzantine), quorum, minimum
//! confidence, option choices, and whether the outcome can still change
//! (a session closes early once it cannot).
//!
//! - Abstentions, votes below the minimum confidence and voters that have
//!   not voted count for nothing; at the close a missing voter is an
//!   abstention.
//! - Quorum is participation: the share of the eligible weight that voted
//!   at all (an abstention participates, a missing voter does not).
//! - Majority: approvals are more than half of the weight cast (approve +
//!   reject). Threshold: approvals over the basis ([`Basis::Cast`] or
//!   [`Basis::Eligible`]) reach the threshold. Unanimous: every eligible
//!   voter approves. Byzantine: with n voters tolerating f = ⌊(n-1)/3⌋
//!   faults, 2f+1 matching counted votes decide (weights are not used).
//! - Options: the option with the most weight wins if its share of the
//!   weight cast meets the mode (more than half, or the threshold); ties go
//!   to the option listed first.

use std::collections::BTreeMap;

/// What a voter answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Choice {
    Approve,
    Reject,
    Abstain,
    /// One of the proposal's options, by its index.
    Option(usize),
}

/// A counted vote: its choice and the voter's confidence, 0..=1.
#[derive(Debug, Clone, PartialEq)]
pub struct Vote {
    pub choice: Choice,
    pub confidence: f64,
}

/// What support is measured against in [`Mode::Threshold`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// The weight of the approvals and rejections cast.
    Cast,
    /// The weight of every eligible voter.
    Eligible,
}

/// How a proposal is decided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    Majority,
    Threshold { threshold: f64, basis: Basis },
    Unanimous,
    Byzantine,
}

/// The rules of one proposal.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    pub mode: Mode,
    /// Share of the eligible weight that must vote, 0..=1 (0: none needed).
    pub quorum: f64,
    /// Votes with a lower confidence are not counted.
    pub min_confidence: f64,
    /// The options, for a choice among them; empty for approve/reject.
    pub options: Vec<String>,
}

/// A refused proposal, naming the field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulesError {
    pub field: &'static str,
    pub message: String,
}

fn refuse(field: &'static str, message: impl Into<String>) -> RulesError {
    RulesError {
        field,
        message: message.into(),
    }
}

/// Fewest voters of a Byzantine proposal (f = 1).
pub const MIN_BYZANTINE_VOTERS: usize = 4;

impl Rules {
    /// Checks the rules against the electorate (`weights`: voter → weight).
    pub fn validate(&self, weights: &BTreeMap<String, f64>) -> Result<(), RulesError> {
        if weights.is_empty() {
            return Err(refuse("voters", "a proposal needs at least one voter"));
        }
        if let Some((voter, weight)) = weights.iter().find(|(_, w)| !(w.is_finite() && **w > 0.0)) {
            return Err(refuse(
                "weights",
                format!("{voter}'s weight {weight} is not a positive number"),
            ));
        }
        if let Mode::Threshold { threshold, .. } = self.mode
            && !(threshold > 0.0 && threshold <= 1.0)
        {
            return Err(refuse(
                "threshold",
                format!("threshold {threshold} is outside (0, 1]"),
            ));
        }
        if self.mode == Mode::Byzantine && weights.len() < MIN_BYZANTINE_VOTERS {
            return Err(refuse(
                "voters",
                format!(
                    "Byzantine mode needs at least {MIN_BYZANTINE_VOTERS} voters (f = 1), not {}",
                    weights.len()
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.quorum) {
            return Err(refuse(
                "quorum",
                format!("quorum {} is outside 0..1", self.quorum),
            ));
        }
        if !(0.0..=1.0).contains(&self.min_confidence) {
            return Err(refuse(
                "minConfidence",
                format!("minConfidence {} is outside 0..1", self.min_confidence),
            ));
        }
        if self.options.len() == 1 {
            return Err(refuse("options", "a choice needs at least two options"));
        }
        if self.mode == Mode::Unanimous && !self.options.is_empty() {
            return Err(refuse(
                "mode",
                "UNANIMOUS decides approve/reject proposals only",
            ));
        }
        Ok(())
    }
}

/// How a proposal came out (or stands).
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Approved,
    Rejected,
    /// The option at this index.
    Chosen(usize),
    /// Too few voted.
    NoQuorum,
    /// Still open and the outcome can change.
    Open,
}

/// The count of one proposal.
#[derive(Debug, Clone, PartialEq)]
pub struct Tally {
    pub outcome: Outcome,
    /// Approvals (or the leading option) over the mode's basis.
    pub support: f64,
    /// Weight of the approvals (or the leading option).
    pub weighted_support: f64,
    /// Weighted mean confidence of the counted votes (0 when none).
    pub confidence: f64,
    pub approve: usize,
    pub reject: usize,
    pub abstain: usize,
    /// Votes below the minimum confidence (not counted).
    pub low_confidence: usize,
    pub missing: usize,
    /// Counted votes per option.
    pub options: Vec<usize>,
}

/// Counts `votes` (voter → vote; voters not in `weights` are ignored) under
/// `rules`. With `closed`, missing voters are abstentions and the outcome
/// is final; otherwise it is [`Outcome::Open`] unless no vote still to
/// come could change it.
pub fn tally(
    rules: &Rules,
    weights: &BTreeMap<String, f64>,
    votes: &BTreeMap<String, Vote>,
    closed: bool,
) -> Tally {
    let now = count(rules, weights, votes);
    let outcome = if closed {
        now.decide(rules)
    } else {
        settled(rules, weights, votes, &now)
    };
    let (support, weighted_support) = now.support(rules);
    Tally {
        outcome,
        support,
        weighted_support,
        ..now.tally()
    }
}

/// The outcome once every voter still to vote has voted the same way, for
/// every way they could vote: decided when all agree.
fn settled(
    rules: &Rules,
    weights: &BTreeMap<String, f64>,
    votes: &BTreeMap<String, Vote>,
    now: &Counted,
) -> Outcome {
    if now.missing == 0 {
        return now.decide(rules);
    }
    let mut futures = vec![Choice::Approve, Choice::Reject, Choice::Abstain];
    futures.extend((0..rules.options.len()).map(Choice::Option));
    let mut first: Option<Outcome> = None;
    for future in futures {
        let mut all = votes.clone();
        for voter in weights.keys().filter(|v| !votes.contains_key(*v)) {
            all.insert(
                voter.clone(),
                Vote {
                    choice: future.clone(),
                    confidence: 1.0,
                },
            );
        }
        let outcome = count(rules, weights, &all).decide(rules);
        match &first {
            None => first = Some(outcome),
            Some(seen) if *seen != outcome => return Outcome::Open,
            Some(_) => {}
        }
    }
    first.unwrap_or(Outcome::Open)
}

/// Weights and counts of the votes so far.
#[derive(Debug, Clone, Default)]
struct Counted {
    eligible: f64,
    participated: f64,
    approve_w: f64,
    reject_w: f64,
    option_w: Vec<f64>,
    confidence_w: f64,
    counted_w: f64,
    approve: usize,
    reject: usize,
    abstain: usize,
    low_confidence: usize,
    missing: usize,
    options: Vec<usize>,
    voters: usize,
}

fn count(
    rules: &Rules,
    weights: &BTreeMap<String, f64>,
    votes: &BTreeMap<String, Vote>,
) -> Counted {
    let mut c = Counted {
        option_w: vec![0.0; rules.options.len()],
        options: vec![0; rules.options.len()],
        voters: weights.len(),
        ..Counted::default()
    };
    for (voter, weight) in weights {
        c.eligible += weight;
        let Some(vote) = votes.get(voter) else {
            c.missing += 1;
            continue;
        };
        c.participated += weight;
        if vote.choice != Choice::Abstain && vote.confidence < rules.min_confidence {
            c.low_confidence += 1;
            continue;
        }
        let counted = match vote.choice {
            Choice::Approve if rules.options.is_empty() => {
                c.approve += 1;
                c.approve_w += weight;
                true
            }
            Choice::Reject if rules.options.is_empty() => {
                c.reject += 1;
                c.reject_w += weight;
                true
            }
            Choice::Option(i) if i < rules.options.len() => {
                c.options[i] += 1;
                c.option_w[i] += weight;
                true
            }
            _ => {
                c.abstain += 1;
                false
            }
        };
        if counted {
            c.confidence_w += weight * vote.confidence;
            c.counted_w += weight;
        }
    }
    c
}

impl Counted {
    /// The leading option and its weight (ties: the one listed first).
    fn leader(&self) -> Option<(usize, f64)> {
        let mut best: Option<(usize, f64)> = None;
        for (i, w) in self.option_w.iter().copied().enumerate() {
            if best.is_none_or(|(_, b)| w > b) {
                best = Some((i, w));
            }
        }
        best
    }

    fn cast_weight(&self) -> f64 {
        self.approve_w + self.reject_w + self.option_w.iter().sum::<f64>()
    }

    /// Support: approvals (or the leading option) over the mode's basis.
    fn support(&self, rules: &Rules) -> (f64, f64) {
        let for_w = if rules.options.is_empty() {
            self.approve_w
        } else {
            self.leader().map_or(0.0, |(_, w)| w)
        };
        let basis = match rules.mode {
            Mode::Threshold {
                basis: Basis::Eligible,
                ..
            }
            | Mode::Unanimous => self.eligible,
            _ => self.cast_weight(),
        };
        let ratio = if basis > 0.0 { for_w / basis } else { 0.0 };
        (ratio, for_w)
    }

    /// The outcome of these votes as final.
    fn decide(&self, rules: &Rules) -> Outcome {
        if self.eligible > 0.0 && self.participated / self.eligible + 1e-12 < rules.quorum {
            return Outcome::NoQuorum;
        }
        let (support, _) = self.support(rules);
        let passes = |support: f64| match rules.mode {
            Mode::Majority => support > 0.5,
            Mode::Threshold { threshold, .. } => support + 1e-12 >= threshold,
            Mode::Unanimous => support + 1e-12 >= 1.0,
            Mode::Byzantine => false,
        };
        if rules.mode == Mode::Byzantine {
            let f = (self.voters.saturating_sub(1)) / 3;
            let needed = 2 * f + 1;
            if rules.options.is_empty() {
                return if self.approve >= needed {
                    Outcome::Approved
                } else if self.reject >= needed {
                    Outcome::Rejected
                } else {
                    Outcome::NoQuorum
                };
            }
            return match self.options.iter().position(|n| *n >= needed) {
                Some(i) => Outcome::Chosen(i),
                None => Outcome::NoQuorum,
            };
        }
        if rules.options.is_empty() {
            return if passes(support) {
                Outcome::Approved
            } else {
                Outcome::Rejected
            };
        }
        match self.leader() {
            Some((i, w)) if w > 0.0 && passes(support) => Outcome::Chosen(i),
            _ => Outcome::Rejected,
        }
    }

    fn tally(&self) -> Tally {
        Tally {
            outcome: Outcome::Open,
            support: 0.0,
            weighted_support: 0.0,
            confidence: if self.counted_w > 0.0 {
                self.confidence_w / self.counted_w
            } else {
                0.0
            },
            approve: self.approve,
            reject: self.reject,
            abstain: self.abstain,
            low_confidence: self.low_confidence,
            missing: self.missing,
            options: self.options.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voters(n: usize) -> BTreeMap<String, f64> {
        (0..n).map(|i| (format!("v{i}"), 1.0)).collect()
    }

    fn rules(mode: Mode) -> Rules {
        Rules {
            mode,
            quorum: 0.0,
            min_confidence: 0.0,
            options: Vec::new(),
        }
    }

    fn threshold(t: f64, basis: Basis) -> Rules {
        rules(Mode::Threshold {
            threshold: t,
            basis,
        })
    }

    fn votes(choices: &[(usize, Choice)]) -> BTreeMap<String, Vote> {
        choices
            .iter()
            .map(|(i, c)| {
                (
                    format!("v{i}"),
                    Vote {
                        choice: c.clone(),
                        confidence: 0.9,
                    },
                )
            })
            .collect()
    }

    use Choice::{Abstain, Approve, Reject};

    #[test]
    fn a_majority_needs_more_than_half_of_what_was_cast() {
        let r = rules(Mode::Majority);
        let w = voters(5);
        let two_one = votes(&[(0, Approve), (1, Approve), (2, Reject), (3, Abstain)]);
        let t = tally(&r, &w, &two_one, true);
        assert_eq!(t.outcome, Outcome::Approved);
        assert!((t.support - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!((t.approve, t.reject, t.abstain, t.missing), (2, 1, 1, 1));
        let tie = votes(&[(0, Approve), (1, Reject)]);
        assert_eq!(tally(&r, &w, &tie, true).outcome, Outcome::Rejected);
    }

    #[test]
    fn a_threshold_is_measured_against_the_chosen_basis() {
        let w = voters(6);
        let four_of_five = votes(&[
            (0, Approve),
            (1, Approve),
            (2, Approve),
            (3, Approve),
            (4, Reject),
        ]);
        let cast = tally(&threshold(0.67, Basis::Cast), &w, &four_of_five, true);
        assert_eq!(cast.outcome, Outcome::Approved, "4/5 = 0.8 of those cast");
        let eligible = tally(&threshold(0.67, Basis::Eligible), &w, &four_of_five, true);
        assert_eq!(
            eligible.outcome,
            Outcome::Rejected,
            "4/6 = 0.667 < 0.67 of the eligible"
        );
        let exactly = tally(&threshold(0.8, Basis::Cast), &w, &four_of_five, true);
        assert_eq!(
            exactly.outcome,
            Outcome::Approved,
            "the threshold itself passes"
        );
    }

    #[test]
    fn weights_count_instead_of_heads() {
        let w: BTreeMap<String, f64> = [
            ("v0".to_string(), 5.0),
            ("v1".to_string(), 1.0),
            ("v2".to_string(), 1.0),
        ]
        .into();
        let heavy_yes = votes(&[(0, Approve), (1, Reject), (2, Reject)]);
        let t = tally(&rules(Mode::Majority), &w, &heavy_yes, true);
        assert_eq!(t.outcome, Outcome::Approved);
        assert!((t.weighted_support - 5.0).abs() < 1e-9);
        assert!((t.support - 5.0 / 7.0).abs() < 1e-9);
    }

    #[test]
    fn unanimity_needs_every_eligible_voter() {
        let r = rules(Mode::Unanimous);
        let w = voters(3);
        let all = votes(&[(0, Approve), (1, Approve), (2, Approve)]);
        assert_eq!(tally(&r, &w, &all, true).outcome, Outcome::Approved);
        let one_missing = votes(&[(0, Approve), (1, Approve)]);
        assert_eq!(tally(&r, &w, &one_missing, true).outcome, Outcome::Rejected);
        let one_abstains = votes(&[(0, Approve), (1, Approve), (2, Abstain)]);
        assert_eq!(
            tally(&r, &w, &one_abstains, true).outcome,
            Outcome::Rejected
        );
        // One rejection settles it before the others vote.
        let early = votes(&[(0, Reject)]);
        assert_eq!(tally(&r, &w, &early, false).outcome, Outcome::Rejected);
    }

    #[test]
    fn byzantine_mode_needs_two_f_plus_one_matching_votes() {
        let r = rules(Mode::Byzantine);
        let w = voters(7); // f = 2, 5 needed
        let four = votes(&[
            (0, Approve),
            (1, Approve),
            (2, Approve),
            (3, Approve),
            (4, Reject),
        ]);
        assert_eq!(tally(&r, &w, &four, true).outcome, Outcome::NoQuorum);
        let five = votes(&[
            (0, Approve),
            (1, Approve),
            (2, Approve),
            (3, Approve),
            (4, Approve),
        ]);
        assert_eq!(
            tally(&r, &w, &five, false).outcome,
            Outcome::Approved,
            "decided without the last two"
        );
        let rejected = votes(&[
            (0, Reject),
            (1, Reject),
            (2, Reject),
            (3, Reject),
            (4, Reject),
            (5, Approve),
        ]);
        assert_eq!(tally(&r, &w, &rejected, true).outcome, Outcome::Rejected);
        assert_eq!(
            r.validate(&voters(3)).unwrap_err().field,
            "voters",
            "fewer than four voters cannot tolerate a fault"
        );
        assert!(r.validate(&voters(4)).is_ok());
    }

    #[test]
    fn a_session_closes_early_only_when_no_vote_to_come_can_change_it() {
        let r = rules(Mode::Majority);
        let w = voters(5);
        let two = votes(&[(0, Approve), (1, Approve)]);
        assert_eq!(
            tally(&r, &w, &two, false).outcome,
            Outcome::Open,
            "three rejections would win"
        );
        let three = votes(&[(0, Approve), (1, Approve), (2, Approve)]);
        assert_eq!(tally(&r, &w, &three, false).outcome, Outcome::Approved);
        let t = threshold(0.67, Basis::Eligible);
        let two_rejects = votes(&[(0, Reject), (1, Reject)]);
        assert_eq!(
            tally(&t, &w, &two_rejects, false).outcome,
            Outcome::Rejected,
            "3/5 = 0.6 at best"
        );
    }

    #[test]
    fn quorum_is_participation_and_missing_voters_abstain_at_the_close() {
        let mut r = rules(Mode::Majority);
        r.quorum = 0.6;
        let w = voters(5);
        let two = votes(&[(0, Approve), (1, Abstain)]);
        assert_eq!(tally(&r, &w, &two, true).outcome, Outcome::NoQuorum);
        let three = votes(&[(0, Approve), (1, Abstain), (2, Abstain)]);
        assert_eq!(tally(&r, &w, &three, true).outcome, Outcome::Approved);
        assert_eq!(tally(&r, &w, &two, false).outcome, Outcome::Open);
    }

    #[test]
    fn votes_below_the_minimum_confidence_do_not_count() {
        let mut r = rules(Mode::Majority);
        r.min_confidence = 0.5;
        let w = voters(3);
        let mut v = votes(&[(0, Approve), (1, Reject), (2, Reject)]);
        v.get_mut("v1").unwrap().confidence = 0.2;
        v.get_mut("v2").unwrap().confidence = 0.3;
        let t = tally(&r, &w, &v, true);
        assert_eq!(t.outcome, Outcome::Approved);
        assert_eq!((t.low_confidence, t.reject), (2, 0));
        assert!((t.confidence - 0.9).abs() < 1e-9, "only counted votes");
    }

    #[test]
    fn the_option_with_the_most_weight_wins_ties_to_the_first_listed() {
        let mut r = rules(Mode::Majority);
        r.options = vec!["a".into(), "b".into(), "c".into()];
        let w = voters(5);
        let v = votes(&[
            (0, Choice::Option(1)),
            (1, Choice::Option(1)),
            (2, Choice::Option(1)),
            (3, Choice::Option(0)),
        ]);
        assert_eq!(tally(&r, &w, &v, true).outcome, Outcome::Chosen(1));
        let split = votes(&[(0, Choice::Option(2)), (1, Choice::Option(0))]);
        assert_eq!(
            tally(&r, &w, &split, true).outcome,
            Outcome::Rejected,
            "1/2 is no majority"
        );
        let mut plurality = threshold(0.5, Basis::Cast);
        plurality.options = r.options.clone();
        assert_eq!(
            tally(&plurality, &w, &split, true).outcome,
            Outcome::Chosen(0),
            "tie: first listed"
        );
    }

    #[test]
    fn bad_rules_name_the_field() {
        let w = voters(3);
        assert_eq!(
            threshold(0.0, Basis::Cast).validate(&w).unwrap_err().field,
            "threshold"
        );
        assert_eq!(
            threshold(1.5, Basis::Cast).validate(&w).unwrap_err().field,
            "threshold"
        );
        assert!(threshold(1.0, Basis::Cast).validate(&w).is_ok());
        assert_eq!(
            rules(Mode::Majority)
                .validate(&BTreeMap::new())
                .unwrap_err()
                .field,
            "voters"
        );
        let mut bad_weight = w.clone();
        bad_weight.insert("v9".into(), 0.0);
        assert_eq!(
            rules(Mode::Majority)
                .validate(&bad_weight)
                .unwrap_err()
                .field,
            "weights"
        );
        let mut q = rules(Mode::Majority);
        q.quorum = 1.2;
        assert_eq!(q.validate(&w).unwrap_err().field, "quorum");
        let mut one = rules(Mode::Majority);
        one.options = vec!["only".into()];
        assert_eq!(one.validate(&w).unwrap_err().field, "options");
    }
}
