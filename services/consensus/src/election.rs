//! Leader election rules for one group, without I/O (seeds 001 and 004):
//! a leadership score picks among candidates, the leader holds a lease it
//! renews, and every new leader takes the next term. The term only grows,
//! so it is a fencing token: [`Leadership::check`] tells a deposed leader's
//! late action from a current one.
//!
//! - Score: 0.3 × capability level + 0.3 × health + 0.2 × free capacity +
//!   0.2 × reputation, each 0..=1 (health: healthy 1, degraded 0.5,
//!   unhealthy 0). Ties go to the smaller agent id.
//! - The lease lasts `renew_every_ms × missed_renewals` from the election
//!   or the last renewal (seed 004: 5 s × 3); once it ran out, the best
//!   remaining candidate becomes leader with term + 1.
//! - A leader that steps down is passed over by the election that follows.
//! - Times are milliseconds on the caller's clock.

/// How well an agent reports itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Healthy,
    Degraded,
    Unhealthy,
}

/// An agent that may lead the group.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub id: String,
    /// The capability's level, 0..=1.
    pub level: f64,
    /// In flight over capacity, 0..=1.
    pub load: f64,
    pub health: Health,
    /// 0..=1.
    pub reputation: f64,
}

/// The leadership score of `candidate`, 0..=1.
pub fn score(candidate: &Candidate) -> f64 {
    let clamp = |x: f64| {
        if x.is_finite() {
            x.clamp(0.0, 1.0)
        } else {
            0.0
        }
    };
    let health = match candidate.health {
        Health::Healthy => 1.0,
        Health::Degraded => 0.5,
        Health::Unhealthy => 0.0,
    };
    0.3 * clamp(candidate.level)
        + 0.3 * health
        + 0.2 * (1.0 - clamp(candidate.load))
        + 0.2 * clamp(candidate.reputation)
}

/// The best candidate not in `passed_over`: highest score, ties to the
/// smaller id. Unhealthy candidates are not picked.
pub fn pick<'a>(candidates: &'a [Candidate], passed_over: &[String]) -> Option<&'a Candidate> {
    candidates
        .iter()
        .filter(|c| c.health != Health::Unhealthy && !passed_over.contains(&c.id))
        .max_by(|a, b| score(a).total_cmp(&score(b)).then_with(|| b.id.cmp(&a.id)))
}

/// A group's leadership.
#[derive(Debug, Clone, PartialEq)]
pub struct Leadership {
    pub leader: Option<String>,
    /// Grows by one with every leader; 0 before the first.
    pub term: u64,
    /// When the lease runs out (meaningful while there is a leader).
    pub lease_until_ms: u64,
    pub renew_every_ms: u64,
    pub missed_renewals: u32,
    /// The leader that stepped down last, passed over by the next election.
    pub stepped_down: Option<String>,
}

/// What an election changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Elected {
    pub leader: String,
    pub term: u64,
    /// The leader it replaced, if its lease ran out.
    pub replaced: Option<String>,
}

/// Why a leader's request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElectionError {
    /// Not the current leader of that term; `term` is the current one.
    NotLeader { term: u64, leader: Option<String> },
}

/// What a term is worth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TermCheck {
    /// The current term, and its leader's lease holds.
    Current,
    /// A newer term began (or the lease of this one ran out).
    Stale { current: u64 },
    /// Never reached.
    Future { current: u64 },
}

impl Leadership {
    /// No leader yet; leases of `renew_every_ms × missed_renewals`.
    pub fn new(renew_every_ms: u64, missed_renewals: u32) -> Self {
        Self {
            leader: None,
            term: 0,
            lease_until_ms: 0,
            renew_every_ms,
            missed_renewals,
            stepped_down: None,
        }
    }

    fn lease_ms(&self) -> u64 {
        self.renew_every_ms
            .saturating_mul(u64::from(self.missed_renewals.max(1)))
    }

    /// Whether the leader's lease has run out (or there is none).
    pub fn vacant(&self, now: u64) -> bool {
        self.leader.is_none() || now >= self.lease_until_ms
    }

    /// Elects the best candidate when the group has no leader or its lease
    /// ran out; nothing when the leader holds or nobody can lead.
    pub fn elect(&mut self, candidates: &[Candidate], now: u64) -> Option<Elected> {
        if !self.vacant(now) {
            return None;
        }
        let mut passed_over: Vec<String> = self.stepped_down.iter().cloned().collect();
        // A leader whose lease ran out is not re-elected at once.
        if let Some(old) = &self.leader {
            passed_over.push(old.clone());
        }
        let next = pick(candidates, &passed_over)?.id.clone();
        let replaced = self.leader.take();
        self.term += 1;
        self.leader = Some(next.clone());
        self.lease_until_ms = now.saturating_add(self.lease_ms());
        self.stepped_down = None;
        Some(Elected {
            leader: next,
            term: self.term,
            replaced,
        })
    }

    fn check_leader(&self, leader: &str, term: u64, now: u64) -> Result<(), ElectionError> {
        if self.leader.as_deref() == Some(leader) && self.term == term && !self.vacant(now) {
            return Ok(());
        }
        Err(ElectionError::NotLeader {
            term: self.term,
            leader: self.leader.clone(),
        })
    }

    /// `leader` renews its lease of `term`.
    pub fn renew(&mut self, leader: &str, term: u64, now: u64) -> Result<u64, ElectionError> {
        self.check_leader(leader, term, now)?;
        self.lease_until_ms = now.saturating_add(self.lease_ms());
        Ok(self.lease_until_ms)
    }

    /// `leader` gives up `term`; the next election passes it over.
    pub fn step_down(&mut self, leader: &str, term: u64, now: u64) -> Result<(), ElectionError> {
        self.check_leader(leader, term, now)?;
        self.stepped_down = self.leader.take();
        Ok(())
    }

    /// What `term` is worth at `now`.
    pub fn check(&self, term: u64, now: u64) -> TermCheck {
        if term > self.term {
            TermCheck::Future { current: self.term }
        } else if term == self.term && !self.vacant(now) {
            TermCheck::Current
        } else {
            TermCheck::Stale { current: self.term }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(id: &str, level: f64, load: f64, health: Health, reputation: f64) -> Candidate {
        Candidate {
            id: id.into(),
            level,
            load,
            health,
            reputation,
        }
    }

    fn fleet() -> Vec<Candidate> {
        vec![
            candidate("a", 0.9, 0.8, Health::Healthy, 0.9),
            candidate("b", 0.9, 0.1, Health::Healthy, 0.9),
            candidate("c", 1.0, 0.0, Health::Unhealthy, 1.0),
            candidate("d", 0.5, 0.1, Health::Degraded, 0.5),
        ]
    }

    #[test]
    fn the_score_weighs_level_health_free_capacity_and_reputation() {
        let best = candidate("x", 1.0, 0.0, Health::Healthy, 1.0);
        assert!((score(&best) - 1.0).abs() < 1e-12);
        let worst = candidate("y", 0.0, 1.0, Health::Unhealthy, 0.0);
        assert_eq!(score(&worst), 0.0);
        let odd = candidate("z", f64::NAN, 7.0, Health::Degraded, -1.0);
        assert!(
            (score(&odd) - 0.15).abs() < 1e-12,
            "out-of-range inputs are clamped"
        );
    }

    #[test]
    fn the_best_healthy_candidate_leads_and_ties_go_to_the_smaller_id() {
        let fleet = fleet();
        assert_eq!(
            pick(&fleet, &[]).unwrap().id,
            "b",
            "c scores more but is unhealthy"
        );
        let twins = vec![
            candidate("m", 0.5, 0.5, Health::Healthy, 0.5),
            candidate("k", 0.5, 0.5, Health::Healthy, 0.5),
        ];
        assert_eq!(pick(&twins, &[]).unwrap().id, "k");
        assert_eq!(pick(&twins, &["k".into()]).unwrap().id, "m");
        assert!(pick(&[], &[]).is_none());
    }

    #[test]
    fn a_leader_holds_while_it_renews_and_fails_over_with_the_next_term() {
        let fleet = fleet();
        let mut group = Leadership::new(5_000, 3);
        let first = group.elect(&fleet, 0).unwrap();
        assert_eq!(
            (first.leader.as_str(), first.term, first.replaced),
            ("b", 1, None)
        );
        assert_eq!(group.elect(&fleet, 1_000), None, "the lease holds");
        assert_eq!(group.renew("b", 1, 10_000).unwrap(), 25_000);
        assert_eq!(group.elect(&fleet, 24_999), None);
        // Three renewals missed: the best remaining candidate takes over.
        let next = group.elect(&fleet, 25_000).unwrap();
        assert_eq!((next.leader.as_str(), next.term), ("a", 2));
        assert_eq!(next.replaced.as_deref(), Some("b"));
        assert_eq!(
            group.renew("b", 1, 25_001),
            Err(ElectionError::NotLeader {
                term: 2,
                leader: Some("a".into())
            }),
            "the deposed leader cannot renew"
        );
    }

    #[test]
    fn terms_fence_a_deposed_leader() {
        let fleet = fleet();
        let mut group = Leadership::new(1_000, 3);
        group.elect(&fleet, 0);
        assert_eq!(group.check(1, 100), TermCheck::Current);
        assert_eq!(group.check(2, 100), TermCheck::Future { current: 1 });
        assert_eq!(
            group.check(1, 3_000),
            TermCheck::Stale { current: 1 },
            "its lease ran out"
        );
        group.elect(&fleet, 3_000);
        assert_eq!(group.check(1, 3_001), TermCheck::Stale { current: 2 });
        assert_eq!(group.check(2, 3_001), TermCheck::Current);
    }

    #[test]
    fn a_leader_that_steps_down_is_passed_over_once() {
        let fleet = fleet();
        let mut group = Leadership::new(1_000, 3);
        group.elect(&fleet, 0);
        assert!(group.step_down("a", 1, 10).is_err(), "only the leader");
        group.step_down("b", 1, 10).unwrap();
        assert!(group.vacant(10));
        let next = group.elect(&fleet, 10).unwrap();
        assert_eq!((next.leader.as_str(), next.term), ("a", 2));
        group.step_down("a", 2, 20).unwrap();
        assert_eq!(
            group.elect(&fleet, 20).unwrap().leader,
            "b",
            "b may lead again"
        );
    }

    #[test]
    fn nobody_leads_when_no_candidate_can() {
        let sick = vec![candidate("c", 1.0, 0.0, Health::Unhealthy, 1.0)];
        let mut group = Leadership::new(1_000, 3);
        assert_eq!(group.elect(&sick, 0), None);
        assert_eq!(group.term, 0, "no term is spent without a leader");
    }

    #[test]
    fn terms_only_grow_over_any_sequence_of_failovers() {
        let fleet = fleet();
        let mut group = Leadership::new(100, 2);
        let mut last = 0;
        for step in 0..50u64 {
            let now = step * 150;
            if let Some(elected) = group.elect(&fleet, now) {
                assert!(elected.term > last, "term {} after {last}", elected.term);
                last = elected.term;
            }
            if step % 3 == 0
                && let Some(leader) = group.leader.clone()
            {
                let _ = group.renew(&leader, group.term, now);
            }
        }
        assert!(last > 10, "failovers happened: {last}");
    }
}
