//! Hierarchical coordination (seed 004), without I/O: agents partitioned
//! into about √n clusters by k-means on their capability vectors
//! (deterministic for a given seed), and the second level of a two-level
//! decision, where each cluster's leader votes with its cluster's size as
//! weight.
//!
//! - A capability vector has one dimension per capability name any agent
//!   has (sorted), the agent's level (0..=1) there, 0 elsewhere.
//! - k = round(√n), at least 1 and at most n. Centres start k-means++ style
//!   from a seeded generator; Lloyd iterations run until no agent moves (at
//!   most [`MAX_ITERATIONS`]); distance ties go to the lower cluster; a
//!   cluster left empty takes the agent farthest from its centre.
//! - Clusters are numbered by their smallest agent id, members sorted.

use std::collections::{BTreeMap, BTreeSet};

use crate::tally::{Choice, Outcome, Vote};

/// Most Lloyd iterations.
pub const MAX_ITERATIONS: usize = 100;

/// An agent's capabilities: name → level, 0..=1.
pub type Capabilities = BTreeMap<String, f64>;

/// SplitMix64: a small deterministic generator for the seeding.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in 0..1.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn distance(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Partitions `agents` (id → capabilities) into clusters: each a sorted
/// list of agent ids, clusters ordered by their first id.
pub fn partition(agents: &BTreeMap<String, Capabilities>, seed: u64) -> Vec<Vec<String>> {
    let n = agents.len();
    if n == 0 {
        return Vec::new();
    }
    let dimensions: Vec<&String> = agents
        .values()
        .flat_map(|c| c.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let ids: Vec<&String> = agents.keys().collect();
    let points: Vec<Vec<f64>> = agents
        .values()
        .map(|c| {
            dimensions
                .iter()
                .map(|d| {
                    c.get(*d)
                        .copied()
                        .filter(|x| x.is_finite())
                        .unwrap_or(0.0)
                        .clamp(0.0, 1.0)
                })
                .collect()
        })
        .collect();
    let k = ((n as f64).sqrt().round() as usize).clamp(1, n);

    // k-means++ seeding.
    let mut rng = Rng(seed);
    let mut centres: Vec<Vec<f64>> = vec![points[(rng.next() % n as u64) as usize].clone()];
    while centres.len() < k {
        let nearest: Vec<f64> = points
            .iter()
            .map(|p| {
                centres
                    .iter()
                    .map(|c| distance(p, c))
                    .fold(f64::INFINITY, f64::min)
            })
            .collect();
        let total: f64 = nearest.iter().sum();
        let chosen = if total <= 0.0 {
            // Every point sits on a centre: take the next unused point.
            (0..n).find(|i| !centres.contains(&points[*i])).unwrap_or(0)
        } else {
            let mut target = rng.unit() * total;
            let mut chosen = n - 1;
            for (i, d) in nearest.iter().enumerate() {
                if target < *d {
                    chosen = i;
                    break;
                }
                target -= d;
            }
            chosen
        };
        centres.push(points[chosen].clone());
    }

    // Lloyd iterations.
    let nearest_centre = |p: &[f64], centres: &[Vec<f64>]| {
        let mut best = 0;
        for (j, c) in centres.iter().enumerate() {
            if distance(p, c) < distance(p, &centres[best]) {
                best = j;
            }
        }
        best
    };
    let mut assignment: Vec<usize> = points.iter().map(|p| nearest_centre(p, &centres)).collect();
    for _ in 0..MAX_ITERATIONS {
        for (j, centre) in centres.iter_mut().enumerate() {
            let members: Vec<&Vec<f64>> = points
                .iter()
                .zip(&assignment)
                .filter(|(_, a)| **a == j)
                .map(|(p, _)| p)
                .collect();
            if members.is_empty() {
                continue;
            }
            for (d, value) in centre.iter_mut().enumerate() {
                *value = members.iter().map(|m| m[d]).sum::<f64>() / members.len() as f64;
            }
        }
        let mut next: Vec<usize> = points.iter().map(|p| nearest_centre(p, &centres)).collect();
        // An empty cluster takes the point farthest from its own centre.
        for j in 0..k {
            if !next.contains(&j) {
                let far = (0..n)
                    .filter(|i| next.iter().filter(|a| **a == next[*i]).count() > 1)
                    .max_by(|a, b| {
                        distance(&points[*a], &centres[next[*a]])
                            .total_cmp(&distance(&points[*b], &centres[next[*b]]))
                            .then_with(|| b.cmp(a))
                    });
                if let Some(far) = far {
                    next[far] = j;
                    centres[j] = points[far].clone();
                }
            }
        }
        let moved = next != assignment;
        assignment = next;
        if !moved {
            break;
        }
    }

    let mut clusters: Vec<Vec<String>> = vec![Vec::new(); k];
    for (i, a) in assignment.iter().enumerate() {
        clusters[*a].push(ids[i].clone());
    }
    clusters.retain(|c| !c.is_empty());
    for cluster in &mut clusters {
        cluster.sort();
    }
    clusters.sort();
    clusters
}

/// The second level of a two-level decision: each cluster's leader votes
/// its cluster's outcome (approved → approve, rejected → reject, anything
/// else → abstain; a chosen option → that option) with the cluster's size
/// as weight. `clusters`: (leader, size, outcome). Returns the weights and
/// votes to count with [`crate::tally::tally`].
pub fn second_level(
    clusters: &[(String, usize, Outcome)],
) -> (BTreeMap<String, f64>, BTreeMap<String, Vote>) {
    let mut weights = BTreeMap::new();
    let mut votes = BTreeMap::new();
    for (leader, size, outcome) in clusters {
        weights.insert(leader.clone(), *size as f64);
        let choice = match outcome {
            Outcome::Approved => Choice::Approve,
            Outcome::Rejected => Choice::Reject,
            Outcome::Chosen(i) => Choice::Option(*i),
            Outcome::NoQuorum | Outcome::Open => Choice::Abstain,
        };
        votes.insert(
            leader.clone(),
            Vote {
                choice,
                confidence: 1.0,
            },
        );
    }
    (weights, votes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tally::{Mode, Rules, tally};

    fn agent(caps: &[(&str, f64)]) -> Capabilities {
        caps.iter().map(|(c, l)| (c.to_string(), *l)).collect()
    }

    /// Three well separated groups: translators, coders, analysts.
    fn fleet() -> BTreeMap<String, Capabilities> {
        let mut agents = BTreeMap::new();
        for i in 0..3 {
            agents.insert(
                format!("t{i}"),
                agent(&[("translate", 0.9), ("summarize", 0.1 * i as f64)]),
            );
            agents.insert(format!("c{i}"), agent(&[("code", 0.95), ("review", 0.8)]));
            agents.insert(
                format!("a{i}"),
                agent(&[("analyze", 0.85 + 0.05 * i as f64)]),
            );
        }
        agents
    }

    #[test]
    fn about_the_square_root_of_n_clusters_grouping_alike_agents() {
        let clusters = partition(&fleet(), 7);
        assert_eq!(clusters.len(), 3, "√9 = 3: {clusters:?}");
        assert_eq!(
            clusters,
            [
                vec!["a0", "a1", "a2"],
                vec!["c0", "c1", "c2"],
                vec!["t0", "t1", "t2"]
            ]
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_clusters_and_every_agent_is_in_one() {
        let mut agents = BTreeMap::new();
        for i in 0..40u32 {
            let x = f64::from(i % 7) / 7.0;
            let y = f64::from(i % 5) / 5.0;
            agents.insert(
                format!("agent-{i:02}"),
                agent(&[("x", x), ("y", y), ("z", f64::from(i % 2))]),
            );
        }
        let once = partition(&agents, 42);
        assert_eq!(once, partition(&agents, 42));
        assert_eq!(once.len(), 6, "round(√40) = 6");
        let members: Vec<&String> = once.iter().flatten().collect();
        assert_eq!(members.len(), 40);
        assert_eq!(members.iter().collect::<BTreeSet<_>>().len(), 40);
    }

    #[test]
    fn identical_agents_still_fill_every_cluster() {
        let agents: BTreeMap<String, Capabilities> = (0..9)
            .map(|i| (format!("same-{i}"), agent(&[("echo", 1.0)])))
            .collect();
        let clusters = partition(&agents, 1);
        assert_eq!(clusters.len(), 3);
        assert!(clusters.iter().all(|c| !c.is_empty()));
    }

    #[test]
    fn small_fleets() {
        assert!(partition(&BTreeMap::new(), 1).is_empty());
        let one: BTreeMap<String, Capabilities> =
            [("solo".to_string(), agent(&[("x", 1.0)]))].into();
        assert_eq!(partition(&one, 1), [vec!["solo"]]);
    }

    #[test]
    fn cluster_leaders_vote_their_outcome_weighted_by_cluster_size() {
        let (weights, votes) = second_level(&[
            ("lead-a".into(), 5, Outcome::Approved),
            ("lead-b".into(), 2, Outcome::Rejected),
            ("lead-c".into(), 2, Outcome::Rejected),
            ("lead-d".into(), 3, Outcome::NoQuorum),
        ]);
        let rules = Rules {
            mode: Mode::Majority,
            quorum: 0.0,
            min_confidence: 0.0,
            options: Vec::new(),
        };
        let top = tally(&rules, &weights, &votes, true);
        assert_eq!(
            top.outcome,
            Outcome::Approved,
            "5 against 4, the abstaining 3 aside"
        );
        assert_eq!((top.approve, top.reject, top.abstain), (1, 2, 1));
    }
}
