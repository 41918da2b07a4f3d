use std::collections::BTreeMap;

use concord_wire::v1::{
    AgentHealth, AgentRecord, Capability, ErrorCode, Liveness, RoutingStrategy as S,
};

use super::*;

const CAP: &str = "summarize";

/// Name, record, adjustment of the candidate, expected check.
type EligibilityCase = (
    &'static str,
    AgentRecord,
    fn(&mut Candidate<'_>),
    Result<(), Ineligible>,
);
/// Agents as (id, level, in flight), and the expected pick.
type LevelCase = (&'static [(&'static str, f64, u32)], &'static str);
/// Agents as (id, in flight, capacity, level), and the expected pick.
type LoadCase = (&'static [(&'static str, u32, u32, f64)], &'static str);

fn agent(id: &str) -> AgentRecord {
    AgentRecord {
        id: id.into(),
        capabilities: vec![Capability {
            name: CAP.into(),
            level: 1.0,
        }],
        max_concurrency: 4,
        liveness: Liveness::Alive as i32,
        health: AgentHealth::Healthy as i32,
        reputation: 0.5,
        ..Default::default()
    }
}

fn agent_with(id: &str, change: impl FnOnce(&mut AgentRecord)) -> AgentRecord {
    let mut record = agent(id);
    change(&mut record);
    record
}

fn agents(ids: &[&str]) -> Vec<AgentRecord> {
    ids.iter().map(|id| agent(id)).collect()
}

fn candidates(records: &[AgentRecord]) -> Vec<Candidate<'_>> {
    records.iter().map(Candidate::new).collect()
}

fn task(strategy: S) -> TaskSpec {
    TaskSpec {
        id: "task-1".into(),
        id_generated: false,
        capability: CAP.into(),
        payload: None,
        priority: 0,
        strategy,
        targets: vec![],
        fanout: 0,
        timeout_ms: 30_000,
        max_attempts: 3,
        deadline: None,
        correlation_id: String::new(),
        labels: BTreeMap::new(),
        sequence: 0,
    }
}

fn targeted(strategy: S, targets: &[&str]) -> TaskSpec {
    TaskSpec {
        targets: targets.iter().map(|t| t.to_string()).collect(),
        ..task(strategy)
    }
}

fn multicast(fanout: u32, targets: &[&str]) -> TaskSpec {
    TaskSpec {
        fanout,
        ..targeted(S::Multicast, targets)
    }
}

fn router(default: S) -> Router {
    Router::new(default, RoutingWeights::default()).unwrap()
}

fn assigned(router: &mut Router, task: &TaskSpec, candidates: &[Candidate<'_>]) -> Vec<String> {
    match router.route(task, candidates) {
        RouteDecision::Assign(agents) => agents,
        RouteDecision::NoEligibleAgent { reason } => panic!("not assigned: {reason}"),
    }
}

fn one(router: &mut Router, task: &TaskSpec, candidates: &[Candidate<'_>]) -> String {
    let agents = assigned(router, task, candidates);
    assert_eq!(agents.len(), 1, "{agents:?}");
    agents.into_iter().next().unwrap()
}

fn refused(router: &mut Router, task: &TaskSpec, candidates: &[Candidate<'_>]) -> NoAgentReason {
    match router.route(task, candidates) {
        RouteDecision::Assign(agents) => panic!("assigned to {agents:?}"),
        RouteDecision::NoEligibleAgent { reason } => reason,
    }
}

const SINGLE: [S; 5] = [
    S::RoundRobin,
    S::Capability,
    S::LeastLoaded,
    S::Priority,
    S::Weighted,
];

const ALL: [S; 8] = [
    S::RoundRobin,
    S::Capability,
    S::LeastLoaded,
    S::Priority,
    S::Weighted,
    S::Direct,
    S::Broadcast,
    S::Multicast,
];

// ---- eligibility ----

#[test]
fn candidate_new_takes_the_record_and_defaults() {
    let record = agent_with("a", |a| {
        a.in_flight = 2;
        a.max_concurrency = 7;
    });
    let candidate = Candidate::new(&record);
    assert_eq!(candidate.id(), "a");
    assert_eq!((candidate.in_flight, candidate.capacity), (2, 7));
    assert_eq!(candidate.performance, Candidate::DEFAULT_PERFORMANCE);
    assert!(!candidate.breaker_open);

    let unstated = agent_with("b", |a| a.max_concurrency = 0);
    assert_eq!(Candidate::new(&unstated).capacity, 1);
}

#[test]
fn each_eligibility_rule() {
    let cases: Vec<EligibilityCase> = vec![
        ("fine", agent("a"), |_| {}, Ok(())),
        (
            "other capability",
            agent_with("a", |a| a.capabilities[0].name = "translate".into()),
            |_| {},
            Err(Ineligible::LacksCapability),
        ),
        (
            "no capabilities",
            agent_with("a", |a| a.capabilities.clear()),
            |_| {},
            Err(Ineligible::LacksCapability),
        ),
        (
            "suspect",
            agent_with("a", |a| a.liveness = Liveness::Suspect as i32),
            |_| {},
            Err(Ineligible::NotAlive(Liveness::Suspect)),
        ),
        (
            "unavailable",
            agent_with("a", |a| a.liveness = Liveness::Unavailable as i32),
            |_| {},
            Err(Ineligible::NotAlive(Liveness::Unavailable)),
        ),
        (
            "liveness unknown",
            agent_with("a", |a| a.liveness = Liveness::Unspecified as i32),
            |_| {},
            Err(Ineligible::NotAlive(Liveness::Unspecified)),
        ),
        (
            "liveness out of range",
            agent_with("a", |a| a.liveness = 42),
            |_| {},
            Err(Ineligible::NotAlive(Liveness::Unspecified)),
        ),
        (
            "unhealthy",
            agent_with("a", |a| a.health = AgentHealth::Unhealthy as i32),
            |_| {},
            Err(Ineligible::Unhealthy),
        ),
        (
            "degraded",
            agent_with("a", |a| a.health = AgentHealth::Degraded as i32),
            |_| {},
            Ok(()),
        ),
        (
            "health not reported",
            agent_with("a", |a| a.health = AgentHealth::Unspecified as i32),
            |_| {},
            Ok(()),
        ),
        (
            "health out of range",
            agent_with("a", |a| a.health = 42),
            |_| {},
            Ok(()),
        ),
        (
            "breaker open",
            agent("a"),
            |c| c.breaker_open = true,
            Err(Ineligible::BreakerOpen),
        ),
        ("one slot left", agent("a"), |c| c.in_flight = 3, Ok(())),
        (
            "full",
            agent("a"),
            |c| c.in_flight = 4,
            Err(Ineligible::AtCapacity {
                in_flight: 4,
                capacity: 4,
            }),
        ),
        (
            "over capacity",
            agent("a"),
            |c| c.in_flight = 9,
            Err(Ineligible::AtCapacity {
                in_flight: 9,
                capacity: 4,
            }),
        ),
        (
            "no capacity",
            agent("a"),
            |c| c.capacity = 0,
            Err(Ineligible::AtCapacity {
                in_flight: 0,
                capacity: 0,
            }),
        ),
    ];
    for (name, record, adjust, expected) in &cases {
        let mut candidate = Candidate::new(record);
        adjust(&mut candidate);
        assert_eq!(candidate.check(CAP), *expected, "{name}");
        // Every single-agent strategy agrees with `check`.
        for strategy in ALL {
            let task = match strategy {
                S::Direct => targeted(S::Direct, &["a"]),
                S::Multicast => multicast(1, &[]),
                other => task(other),
            };
            let decision = router(S::Weighted).route(&task, &[candidate]);
            assert_eq!(
                decision.agents().len(),
                usize::from(expected.is_ok()),
                "{name} {strategy:?}"
            );
        }
    }
}

#[test]
fn checks_run_in_a_fixed_order() {
    let record = agent_with("a", |a| {
        a.liveness = Liveness::Suspect as i32;
        a.health = AgentHealth::Unhealthy as i32;
    });
    let mut candidate = Candidate::new(&record);
    candidate.breaker_open = true;
    candidate.in_flight = 4;
    assert_eq!(candidate.check("other"), Err(Ineligible::LacksCapability));
    assert_eq!(
        candidate.check(CAP),
        Err(Ineligible::NotAlive(Liveness::Suspect))
    );
    let record = agent_with("a", |a| a.health = AgentHealth::Unhealthy as i32);
    let mut candidate = Candidate::new(&record);
    candidate.breaker_open = true;
    candidate.in_flight = 4;
    assert_eq!(candidate.check(CAP), Err(Ineligible::Unhealthy));
    let record = agent("a");
    let mut candidate = Candidate::new(&record);
    candidate.breaker_open = true;
    candidate.in_flight = 4;
    assert_eq!(candidate.check(CAP), Err(Ineligible::BreakerOpen));
}

#[test]
fn capability_names_match_exactly() {
    let record = agent_with("a", |a| {
        a.capabilities = vec![
            Capability {
                name: "Summarize".into(),
                level: 1.0,
            },
            Capability {
                name: "summarize-long".into(),
                level: 1.0,
            },
        ];
    });
    let candidate = Candidate::new(&record);
    for name in [CAP, "summariz", "SUMMARIZE"] {
        assert_eq!(candidate.check(name), Err(Ineligible::LacksCapability));
    }
    assert_eq!(candidate.check("Summarize"), Ok(()));
    assert_eq!(candidate.level("summarize-long"), Some(1.0));
}

#[test]
fn degraded_agents_get_work_only_when_nothing_healthy_fits() {
    let records = vec![
        agent_with("a", |a| a.health = AgentHealth::Degraded as i32),
        agent_with("b", |a| a.capabilities[0].level = 0.1),
    ];
    let mut all = candidates(&records);
    all[1].in_flight = 3;
    all[1].performance = 0.0;
    for strategy in SINGLE {
        let mut router = router(S::Weighted);
        for _ in 0..3 {
            assert_eq!(one(&mut router, &task(strategy), &all), "b", "{strategy:?}");
        }
        all[1].in_flight = 4;
        assert_eq!(one(&mut router, &task(strategy), &all), "a", "{strategy:?}");
        all[1].in_flight = 3;
    }
}

// ---- round robin ----

#[test]
fn round_robin_rotates_by_id_whatever_the_input_order() {
    let records = agents(&["c", "a", "b"]);
    let all = candidates(&records);
    let mut router = router(S::Weighted);
    let picks: Vec<String> = (0..7)
        .map(|_| one(&mut router, &task(S::RoundRobin), &all))
        .collect();
    assert_eq!(picks, ["a", "b", "c", "a", "b", "c", "a"]);
}

#[test]
fn round_robin_is_fair_over_many_picks() {
    let ids = ["e", "b", "d", "a", "c"];
    let records = agents(&ids);
    let mut all = candidates(&records);
    let mut router = router(S::Weighted);
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..1_000 {
        *counts
            .entry(one(&mut router, &task(S::RoundRobin), &all))
            .or_default() += 1;
    }
    assert!(counts.values().all(|&n| n == 200), "{counts:?}");

    // An ineligible agent is skipped; the others stay even.
    all[2].breaker_open = true;
    counts.clear();
    for _ in 0..1_000 {
        *counts
            .entry(one(&mut router, &task(S::RoundRobin), &all))
            .or_default() += 1;
    }
    assert_eq!(counts.get("d"), None);
    assert!(counts.values().all(|&n| n == 250), "{counts:?}");
}

#[test]
fn round_robin_is_stable_when_agents_come_and_go() {
    let mut router = router(S::Weighted);
    let mut pick = |ids: &[&str]| {
        let records = agents(ids);
        one(&mut router, &task(S::RoundRobin), &candidates(&records))
    };
    assert_eq!(pick(&["a", "b", "c", "d"]), "a");
    assert_eq!(pick(&["a", "b", "c", "d"]), "b");
    // c leaves: d is next, nobody is skipped or repeated.
    assert_eq!(pick(&["a", "b", "d"]), "d");
    // bb joins behind the cursor: it gets its turn in order.
    assert_eq!(pick(&["a", "b", "bb", "d"]), "a");
    assert_eq!(pick(&["a", "b", "bb", "d"]), "b");
    assert_eq!(pick(&["a", "b", "bb", "d"]), "bb");
    // The last-picked agent itself leaves: continue after its id.
    assert_eq!(pick(&["a", "b", "d"]), "d");
    assert_eq!(pick(&["a", "c", "e"]), "e");
    // Past the highest id: wrap around.
    assert_eq!(pick(&["a", "c", "e"]), "a");
}

#[test]
fn round_robin_keeps_one_position_per_capability() {
    let records: Vec<AgentRecord> = ["a", "b", "c"]
        .iter()
        .map(|id| {
            agent_with(id, |a| {
                a.capabilities.push(Capability {
                    name: "translate".into(),
                    level: 1.0,
                });
            })
        })
        .collect();
    let all = candidates(&records);
    let mut router = router(S::Weighted);
    let translate = TaskSpec {
        capability: "translate".into(),
        ..task(S::RoundRobin)
    };
    assert_eq!(one(&mut router, &task(S::RoundRobin), &all), "a");
    assert_eq!(one(&mut router, &task(S::RoundRobin), &all), "b");
    assert_eq!(one(&mut router, &translate, &all), "a");
    assert_eq!(one(&mut router, &task(S::RoundRobin), &all), "c");
    assert_eq!(one(&mut router, &translate, &all), "b");
}

#[test]
fn round_robin_does_not_move_when_nothing_is_assigned() {
    let records = agents(&["a", "b"]);
    let mut all = candidates(&records);
    let mut router = router(S::Weighted);
    assert_eq!(one(&mut router, &task(S::RoundRobin), &all), "a");
    all.iter_mut().for_each(|c| c.in_flight = 4);
    refused(&mut router, &task(S::RoundRobin), &all);
    all.iter_mut().for_each(|c| c.in_flight = 0);
    assert_eq!(one(&mut router, &task(S::RoundRobin), &all), "b");
}

// ---- capability ----

#[test]
fn capability_prefers_the_highest_level_then_fewest_in_flight_then_id() {
    let level = |id: &str, level: f64| agent_with(id, |a| a.capabilities[0].level = level);
    let cases: &[LevelCase] = &[
        (&[("a", 0.5, 0), ("b", 0.9, 3), ("c", 0.7, 0)], "b"),
        (&[("a", 0.9, 2), ("b", 0.9, 1), ("c", 0.9, 3)], "b"),
        (&[("c", 0.9, 1), ("b", 0.9, 1), ("a", 0.5, 0)], "b"),
        (&[("z", 1.0, 3), ("a", 0.99, 0)], "z"),
    ];
    for (fleet, expected) in cases {
        let records: Vec<AgentRecord> = fleet.iter().map(|(id, l, _)| level(id, *l)).collect();
        let mut all = candidates(&records);
        for (candidate, (_, _, in_flight)) in all.iter_mut().zip(fleet.iter()) {
            candidate.in_flight = *in_flight;
        }
        assert_eq!(
            one(&mut router(S::Weighted), &task(S::Capability), &all),
            *expected,
            "{fleet:?}"
        );
    }
}

// ---- least loaded ----

#[test]
fn least_loaded_compares_load_ratios_exactly() {
    let cases: &[LoadCase] = &[
        // id, in_flight, capacity, level
        (&[("a", 1, 4, 1.0), ("b", 1, 3, 1.0), ("c", 0, 2, 0.1)], "c"),
        (&[("a", 1, 4, 1.0), ("b", 1, 3, 1.0)], "a"),
        // 2/4 == 1/2: higher level wins, then id.
        (&[("a", 2, 4, 0.5), ("b", 1, 2, 0.8)], "b"),
        (&[("b", 2, 4, 0.8), ("a", 1, 2, 0.8)], "a"),
        // A big agent with many tasks can still be the least loaded.
        (&[("a", 1, 2, 1.0), ("b", 900, 10_000, 1.0)], "b"),
        (
            &[
                ("a", u32::MAX - 2, u32::MAX, 1.0),
                ("b", u32::MAX - 1, u32::MAX, 1.0),
            ],
            "a",
        ),
    ];
    for (fleet, expected) in cases {
        let records: Vec<AgentRecord> = fleet
            .iter()
            .map(|(id, _, _, level)| agent_with(id, |a| a.capabilities[0].level = *level))
            .collect();
        let mut all = candidates(&records);
        for (candidate, (_, in_flight, capacity, _)) in all.iter_mut().zip(fleet.iter()) {
            candidate.in_flight = *in_flight;
            candidate.capacity = *capacity;
        }
        assert_eq!(
            one(&mut router(S::Weighted), &task(S::LeastLoaded), &all),
            *expected,
            "{fleet:?}"
        );
    }
}

// ---- weighted and priority ----

/// a: level 0.9, idle, performance 0.5, reputation 0.5 → 0.72
/// b: level 0.5, idle, performance 0.9, reputation 0.5 → 0.76
/// c: level 1.0, 3 of 4 busy, performance 0.6, reputation 1.0 → 0.69
fn scored_fleet() -> Vec<AgentRecord> {
    vec![
        agent_with("a", |a| a.capabilities[0].level = 0.9),
        agent_with("b", |a| a.capabilities[0].level = 0.5),
        agent_with("c", |a| a.reputation = 1.0),
    ]
}

fn scored_candidates(records: &[AgentRecord]) -> Vec<Candidate<'_>> {
    let mut all = candidates(records);
    all[0].performance = 0.5;
    all[1].performance = 0.9;
    all[2].in_flight = 3;
    all[2].performance = 0.6;
    all
}

#[test]
fn weighted_score_follows_the_formula() {
    let records = scored_fleet();
    let all = scored_candidates(&records);
    let weights = RoutingWeights::default();
    for (candidate, expected) in all.iter().zip([0.72, 0.76, 0.69]) {
        let level = candidate.level(CAP).unwrap();
        let score = weights.score(candidate, level);
        assert!(
            (score - expected).abs() < 1e-9,
            "{} {score}",
            candidate.id()
        );
    }
}

#[test]
fn weighted_and_priority_pick_the_highest_score() {
    let records = scored_fleet();
    let all = scored_candidates(&records);
    for strategy in [S::Weighted, S::Priority] {
        assert_eq!(one(&mut router(S::RoundRobin), &task(strategy), &all), "b");
    }
}

#[test]
fn custom_weights_change_the_order() {
    let records = scored_fleet();
    let all = scored_candidates(&records);
    for ((p, c, a, r), expected) in [
        ((1.0, 0.0, 0.0, 0.0), "b"),
        ((0.0, 1.0, 0.0, 0.0), "c"),
        // a and b are both idle: tie on score, lower id wins.
        ((0.0, 0.0, 1.0, 0.0), "a"),
        ((0.0, 0.0, 0.0, 5.0), "c"),
        ((0.0, 3.0, 0.0, 1.0), "c"),
        ((0.0, 1.0, 1.0, 0.0), "a"),
    ] {
        let weights = RoutingWeights::new(p, c, a, r).unwrap();
        let mut router = Router::new(S::Weighted, weights).unwrap();
        assert_eq!(
            one(&mut router, &task(S::Weighted), &all),
            expected,
            "{p} {c} {a} {r}"
        );
    }
}

#[test]
fn weighted_ties_go_to_the_lowest_id() {
    let records = agents(&["m", "c", "x"]);
    let all = candidates(&records);
    for strategy in [S::Weighted, S::Priority, S::Capability, S::LeastLoaded] {
        assert_eq!(one(&mut router(S::Weighted), &task(strategy), &all), "c");
    }
}

#[test]
fn weights_are_validated_and_normalised() {
    let default = RoutingWeights::default();
    assert_eq!(
        (
            default.performance(),
            default.capability(),
            default.availability(),
            default.reputation()
        ),
        (0.4, 0.3, 0.2, 0.1)
    );
    let scaled = RoutingWeights::new(4.0, 3.0, 2.0, 1.0).unwrap();
    for (x, y) in [
        (scaled.performance(), 0.4),
        (scaled.capability(), 0.3),
        (scaled.availability(), 0.2),
        (scaled.reputation(), 0.1),
    ] {
        assert!((x - y).abs() < 1e-12);
    }
    let huge = RoutingWeights::new(f64::MAX, f64::MAX, 0.0, 0.0).unwrap();
    assert!((huge.performance() - 0.5).abs() < 1e-12);
    assert!((huge.capability() - 0.5).abs() < 1e-12);

    for (weights, text) in [
        ((-0.1, 1.0, 1.0, 1.0), "performance"),
        ((1.0, f64::NAN, 1.0, 1.0), "capability"),
        ((1.0, 1.0, f64::INFINITY, 1.0), "availability"),
        ((1.0, 1.0, 1.0, -f64::INFINITY), "reputation"),
    ] {
        let (p, c, a, r) = weights;
        let error = RoutingWeights::new(p, c, a, r).unwrap_err();
        assert!(error.to_string().contains(text), "{error}");
    }
    assert_eq!(
        RoutingWeights::new(0.0, 0.0, 0.0, 0.0),
        Err(WeightsError::AllZero)
    );
}

#[test]
fn score_inputs_are_clamped() {
    let record = agent_with("a", |a| a.reputation = f64::NAN);
    let mut candidate = Candidate::new(&record);
    candidate.performance = 7.0;
    let weights = RoutingWeights::default();
    // performance 1, level 1, idle, reputation 0.
    assert!((weights.score(&candidate, 1.0) - 0.9).abs() < 1e-12);
    candidate.performance = f64::NAN;
    assert!((weights.score(&candidate, -3.0) - 0.2).abs() < 1e-12);
    candidate.capacity = 0;
    assert!((weights.score(&candidate, 1.0) - 0.3).abs() < 1e-12);
    candidate.capacity = 2;
    candidate.in_flight = 9;
    assert!((weights.score(&candidate, 1.0) - 0.3).abs() < 1e-12);
}

// ---- default strategy ----

#[test]
fn unspecified_means_the_default_strategy() {
    let records = scored_fleet();
    let all = scored_candidates(&records);
    let mut round_robin = router(S::RoundRobin);
    assert_eq!(
        round_robin.strategy_for(&task(S::Unspecified)),
        S::RoundRobin
    );
    assert_eq!(
        round_robin.strategy_for(&task(S::LeastLoaded)),
        S::LeastLoaded
    );
    let picks: Vec<String> = (0..4)
        .map(|_| one(&mut round_robin, &task(S::Unspecified), &all))
        .collect();
    assert_eq!(picks, ["a", "b", "c", "a"]);

    assert_eq!(
        one(&mut router(S::Weighted), &task(S::Unspecified), &all),
        "b"
    );
    assert_eq!(
        one(&mut router(S::Capability), &task(S::Unspecified), &all),
        "c"
    );
    assert_eq!(
        one(&mut router(S::LeastLoaded), &task(S::Unspecified), &all),
        "a"
    );
    assert_eq!(
        assigned(&mut router(S::Broadcast), &task(S::Unspecified), &all),
        ["a", "b", "c"]
    );
    assert_eq!(Router::default().default_strategy(), S::Weighted);
    assert_eq!(
        one(&mut Router::default(), &task(S::Unspecified), &all),
        "b"
    );
}

#[test]
fn only_self_sufficient_strategies_can_be_the_default() {
    for bad in [S::Unspecified, S::Direct, S::Multicast] {
        let error = Router::new(bad, RoutingWeights::default()).unwrap_err();
        assert_eq!(error, RouterError::UnusableDefault(bad));
        assert!(error.to_string().contains(bad.as_str_name()), "{error}");
    }
    for good in [
        S::RoundRobin,
        S::Capability,
        S::LeastLoaded,
        S::Priority,
        S::Weighted,
        S::Broadcast,
    ] {
        assert_eq!(router(good).default_strategy(), good);
    }
}

// ---- direct ----

#[test]
fn direct_sends_to_the_named_agent_only() {
    let records = scored_fleet();
    let mut all = scored_candidates(&records);
    let mut router = router(S::Weighted);
    // c is not the best by any measure but is the one named.
    assert_eq!(one(&mut router, &targeted(S::Direct, &["c"]), &all), "c");
    // Degraded is fine when named.
    let degraded = agent_with("c", |a| a.health = AgentHealth::Degraded as i32);
    all[2].agent = &degraded;
    assert_eq!(one(&mut router, &targeted(S::Direct, &["c"]), &all), "c");
}

#[test]
fn direct_names_why_its_target_cannot_take_the_task() {
    let records = vec![
        agent("ok"),
        agent_with("down", |a| a.liveness = Liveness::Unavailable as i32),
        agent_with("sick", |a| a.health = AgentHealth::Unhealthy as i32),
        agent("tripped"),
        agent("full"),
        agent_with("other", |a| a.capabilities[0].name = "translate".into()),
    ];
    let mut all = candidates(&records);
    all[3].breaker_open = true;
    all[4].in_flight = 4;
    let mut router = router(S::Weighted);
    for (target, cause, message) in [
        (
            "ghost",
            Ineligible::Unknown,
            "target agent \"ghost\" is unknown",
        ),
        (
            "down",
            Ineligible::NotAlive(Liveness::Unavailable),
            "target agent \"down\" is not alive (UNAVAILABLE)",
        ),
        (
            "sick",
            Ineligible::Unhealthy,
            "target agent \"sick\" is unhealthy",
        ),
        (
            "tripped",
            Ineligible::BreakerOpen,
            "target agent \"tripped\" has its circuit breaker open",
        ),
        (
            "full",
            Ineligible::AtCapacity {
                in_flight: 4,
                capacity: 4,
            },
            "target agent \"full\" is at capacity (4/4 tasks)",
        ),
        (
            "other",
            Ineligible::LacksCapability,
            "target agent \"other\" lacks capability \"summarize\"",
        ),
    ] {
        let reason = refused(&mut router, &targeted(S::Direct, &[target]), &all);
        assert_eq!(
            reason,
            NoAgentReason::TargetUnavailable {
                capability: CAP.into(),
                agent_id: target.into(),
                cause,
            }
        );
        assert_eq!(reason.kind(), "target_unavailable");
        assert_eq!(reason.to_string(), format!("no eligible agent: {message}"));
    }
    // Without a target (a spec built by hand), nothing is unknown but the empty id.
    let reason = refused(&mut router, &task(S::Direct), &all);
    assert!(matches!(
        reason,
        NoAgentReason::TargetUnavailable { ref agent_id, cause: Ineligible::Unknown, .. } if agent_id.is_empty()
    ));
}

// ---- broadcast and multicast ----

#[test]
fn broadcast_sends_to_every_eligible_agent_by_id() {
    let records = vec![
        agent("d"),
        agent("b"),
        agent_with("a", |a| a.health = AgentHealth::Degraded as i32),
        agent_with("c", |a| a.liveness = Liveness::Suspect as i32),
        agent("e"),
    ];
    let mut all = candidates(&records);
    all[4].in_flight = 4;
    let mut router = router(S::Weighted);
    assert_eq!(
        assigned(&mut router, &task(S::Broadcast), &all),
        ["a", "b", "d"]
    );
    assert_eq!(
        assigned(
            &mut router,
            &targeted(S::Broadcast, &["d", "c", "a", "zz"]),
            &all
        ),
        ["a", "d"]
    );
}

#[test]
fn multicast_sends_to_the_fanout_best_by_score() {
    let records = scored_fleet();
    let all = scored_candidates(&records);
    let mut router = router(S::Weighted);
    assert_eq!(assigned(&mut router, &multicast(1, &[]), &all), ["b"]);
    assert_eq!(assigned(&mut router, &multicast(2, &[]), &all), ["b", "a"]);
    assert_eq!(
        assigned(&mut router, &multicast(3, &[]), &all),
        ["b", "a", "c"]
    );
}

#[test]
fn multicast_fanout_above_the_eligible_count_takes_all_eligible() {
    let records = scored_fleet();
    let mut all = scored_candidates(&records);
    all[0].breaker_open = true;
    let mut router = router(S::Weighted);
    assert_eq!(assigned(&mut router, &multicast(10, &[]), &all), ["b", "c"]);
    assert_eq!(
        assigned(&mut router, &multicast(u32::MAX, &[]), &all),
        ["b", "c"]
    );
}

#[test]
fn multicast_small_fanout_over_a_large_fleet() {
    // Levels scrambled so the best are spread through the input.
    let records: Vec<AgentRecord> = (0..200_u32)
        .map(|i| {
            agent_with(&format!("agent-{i:03}"), |a| {
                a.capabilities[0].level = f64::from((i * 37) % 200) / 200.0;
            })
        })
        .collect();
    let all = candidates(&records);
    let mut router = router(S::Weighted);
    // Everything else is equal, so the order is by level.
    let mut by_level: Vec<(f64, &str)> = all
        .iter()
        .map(|c| (c.level(CAP).unwrap(), c.id()))
        .collect();
    by_level.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
    let expected: Vec<&str> = by_level.iter().take(3).map(|(_, id)| *id).collect();
    assert_eq!(assigned(&mut router, &multicast(3, &[]), &all), expected);
    let expected: Vec<&str> = by_level.iter().map(|(_, id)| *id).collect();
    assert_eq!(assigned(&mut router, &multicast(200, &[]), &all), expected);
    assert_eq!(
        assigned(&mut router, &multicast(199, &[]), &all),
        expected[..199]
    );
}

#[test]
fn multicast_fills_with_degraded_agents_last() {
    let records = vec![
        agent_with("a", |a| a.health = AgentHealth::Degraded as i32),
        agent_with("b", |a| a.capabilities[0].level = 0.2),
        agent_with("c", |a| a.capabilities[0].level = 0.1),
    ];
    let all = candidates(&records);
    let mut router = router(S::Weighted);
    assert_eq!(assigned(&mut router, &multicast(2, &[]), &all), ["b", "c"]);
    assert_eq!(
        assigned(&mut router, &multicast(3, &[]), &all),
        ["b", "c", "a"]
    );
}

#[test]
fn multicast_with_targets_chooses_among_them() {
    let records = scored_fleet();
    let all = scored_candidates(&records);
    let mut router = router(S::Weighted);
    // Fanout 0 with targets: every eligible target, best first.
    assert_eq!(
        assigned(&mut router, &multicast(0, &["c", "a", "ghost"]), &all),
        ["a", "c"]
    );
    assert_eq!(
        assigned(&mut router, &multicast(1, &["c", "a"]), &all),
        ["a"]
    );
}

// ---- targets with other strategies ----

#[test]
fn targets_restrict_every_strategy() {
    let records = scored_fleet();
    let all = scored_candidates(&records);
    for strategy in SINGLE {
        let only = targeted(strategy, &["c"]);
        assert_eq!(
            one(&mut router(S::Weighted), &only, &all),
            "c",
            "{strategy:?}"
        );
    }
    let mut router = router(S::Weighted);
    let picks: Vec<String> = (0..4)
        .map(|_| one(&mut router, &targeted(S::RoundRobin, &["c", "a"]), &all))
        .collect();
    assert_eq!(picks, ["a", "c", "a", "c"]);
}

#[test]
fn no_eligible_target_lists_each_one() {
    let records = vec![agent("busy"), agent("other"), agent("free")];
    let mut all = candidates(&records);
    all[0].in_flight = 4;
    let other = agent_with("other", |a| a.capabilities.clear());
    all[1].agent = &other;
    for strategy in [S::Weighted, S::RoundRobin, S::Broadcast, S::Multicast] {
        let task = TaskSpec {
            fanout: 0,
            ..targeted(strategy, &["busy", "ghost", "other"])
        };
        let reason = refused(&mut router(S::Weighted), &task, &all);
        assert_eq!(
            reason,
            NoAgentReason::NoTargetEligible {
                capability: CAP.into(),
                targets: vec![
                    (
                        "busy".into(),
                        Ineligible::AtCapacity {
                            in_flight: 4,
                            capacity: 4
                        }
                    ),
                    ("ghost".into(), Ineligible::Unknown),
                    ("other".into(), Ineligible::LacksCapability),
                ],
            },
            "{strategy:?}"
        );
        assert_eq!(reason.kind(), "no_target_eligible");
        assert_eq!(
            reason.to_string(),
            "no eligible agent: none of the 3 target agents can take a \"summarize\" task: \
             \"busy\" is at capacity (4/4 tasks), \"ghost\" is unknown, \"other\" lacks the capability"
        );
    }
}

#[test]
fn long_target_lists_are_shortened_in_messages() {
    let targets: Vec<String> = (0..25).map(|i| format!("t{i:02}")).collect();
    let names: Vec<&str> = targets.iter().map(String::as_str).collect();
    let reason = refused(
        &mut router(S::Weighted),
        &targeted(S::Broadcast, &names),
        &[],
    );
    let message = reason.to_string();
    assert!(
        message.contains("none of the 25 target agents"),
        "{message}"
    );
    assert!(
        message.contains("\"t09\" is unknown and 15 more"),
        "{message}"
    );
    assert!(!message.contains("t10"), "{message}");
}

// ---- reasons without targets ----

fn fleet_reason(
    adjust: impl Fn(usize, &mut Candidate<'_>),
    records: &[AgentRecord],
) -> NoAgentReason {
    let mut all = candidates(records);
    for (i, candidate) in all.iter_mut().enumerate() {
        adjust(i, candidate);
    }
    let mut last = None;
    // Every strategy that does not name agents gives the same reason.
    for strategy in [
        S::RoundRobin,
        S::Capability,
        S::LeastLoaded,
        S::Priority,
        S::Weighted,
        S::Broadcast,
    ] {
        let reason = refused(&mut router(S::Weighted), &task(strategy), &all);
        if let Some(last) = &last {
            assert_eq!(&reason, last, "{strategy:?}");
        }
        last = Some(reason);
    }
    let reason = last.unwrap();
    assert_eq!(
        refused(&mut router(S::Weighted), &multicast(2, &[]), &all),
        reason
    );
    reason
}

#[test]
fn no_capable_agent() {
    let others = vec![agent_with("a", |a| {
        a.capabilities[0].name = "translate".into()
    })];
    for records in [vec![], others] {
        let reason = fleet_reason(|_, _| {}, &records);
        assert_eq!(
            reason,
            NoAgentReason::NoCapableAgent {
                capability: CAP.into()
            }
        );
        assert_eq!(reason.kind(), "no_capable_agent");
        assert_eq!(
            reason.to_string(),
            "no eligible agent: no agent has capability \"summarize\""
        );
    }
}

#[test]
fn none_alive() {
    let records = vec![
        agent_with("a", |a| a.liveness = Liveness::Suspect as i32),
        agent_with("b", |a| a.liveness = Liveness::Unavailable as i32),
        agent_with("x", |a| a.capabilities.clear()),
    ];
    let reason = fleet_reason(|_, _| {}, &records);
    let tally = Tally {
        capable: 2,
        not_alive: 2,
        ..Tally::default()
    };
    assert_eq!(
        reason,
        NoAgentReason::NoneAlive {
            capability: CAP.into(),
            tally
        }
    );
    assert_eq!(reason.kind(), "none_alive");
    assert_eq!(
        reason.to_string(),
        "no eligible agent: none of the agents with capability \"summarize\" is alive \
         (2 capable: 2 not alive)"
    );
}

#[test]
fn none_healthy() {
    let records = vec![
        agent_with("a", |a| a.liveness = Liveness::Suspect as i32),
        agent_with("b", |a| a.health = AgentHealth::Unhealthy as i32),
    ];
    let reason = fleet_reason(|_, _| {}, &records);
    assert_eq!(reason.kind(), "none_healthy");
    assert_eq!(
        reason.to_string(),
        "no eligible agent: none of the agents with capability \"summarize\" is alive and healthy \
         (2 capable: 1 not alive, 1 unhealthy)"
    );
}

#[test]
fn breakers_open() {
    let records = vec![
        agent("a"),
        agent("b"),
        agent_with("c", |a| a.health = AgentHealth::Unhealthy as i32),
    ];
    let reason = fleet_reason(|_, c| c.breaker_open = true, &records);
    assert_eq!(
        reason,
        NoAgentReason::BreakersOpen {
            capability: CAP.into(),
            tally: Tally {
                capable: 3,
                unhealthy: 1,
                breaker_open: 2,
                ..Tally::default()
            }
        }
    );
    assert_eq!(reason.kind(), "breakers_open");
    assert_eq!(
        reason.to_string(),
        "no eligible agent: every live, healthy agent with capability \"summarize\" has its \
         circuit breaker open (3 capable: 1 unhealthy, 2 circuit open)"
    );
}

#[test]
fn all_busy() {
    let records = agents(&["a", "b", "c"]);
    let reason = fleet_reason(|_, c| c.in_flight = c.capacity, &records);
    assert_eq!(
        reason,
        NoAgentReason::AllBusy {
            capability: CAP.into(),
            tally: Tally {
                capable: 3,
                at_capacity: 3,
                ..Tally::default()
            }
        }
    );
    assert_eq!(reason.kind(), "all_busy");
    assert_eq!(
        reason.to_string(),
        "no eligible agent: every available agent with capability \"summarize\" is at capacity \
         (3 capable: 3 at capacity)"
    );

    // Mixed: named after the furthest check reached, the tally tells the rest.
    let records = vec![
        agent_with("a", |a| a.liveness = Liveness::Suspect as i32),
        agent("b"),
        agent("c"),
    ];
    let reason = fleet_reason(
        |i, c| match i {
            1 => c.breaker_open = true,
            2 => c.in_flight = 4,
            _ => {}
        },
        &records,
    );
    assert_eq!(reason.kind(), "all_busy");
    assert!(
        reason
            .to_string()
            .ends_with("(3 capable: 1 not alive, 1 circuit open, 1 at capacity)"),
        "{reason}"
    );
}

#[test]
fn reasons_become_no_eligible_agent_errors() {
    let reason = NoAgentReason::NoCapableAgent {
        capability: CAP.into(),
    };
    let error = reason.to_error();
    assert_eq!(error.code, ErrorCode::NoEligibleAgent);
    assert_eq!(error.status(), 503);
    assert_eq!(error.field, None);
    assert_eq!(error.message, reason.to_string());
    assert!(error.message.starts_with("no eligible agent: "));
    assert!(!error.is_bad_input());
}

// ---- capacity over many assignments ----

#[test]
fn max_concurrency_is_never_exceeded() {
    for strategy in [
        S::RoundRobin,
        S::Capability,
        S::LeastLoaded,
        S::Priority,
        S::Weighted,
    ] {
        let records = vec![
            agent_with("a", |a| a.max_concurrency = 1),
            agent_with("b", |a| a.max_concurrency = 3),
            agent_with("c", |a| a.max_concurrency = 2),
        ];
        let mut all = candidates(&records);
        let mut router = router(S::Weighted);
        for _ in 0..6 {
            let id = one(&mut router, &task(strategy), &all);
            let chosen = all.iter_mut().find(|c| c.id() == id).unwrap();
            chosen.in_flight += 1;
            assert!(chosen.in_flight <= chosen.capacity, "{strategy:?}");
        }
        let reason = refused(&mut router, &task(strategy), &all);
        assert_eq!(reason.kind(), "all_busy", "{strategy:?}");
    }
}

#[test]
fn least_loaded_spreads_load_evenly() {
    let records = vec![
        agent_with("a", |a| a.max_concurrency = 2),
        agent_with("b", |a| a.max_concurrency = 4),
    ];
    let mut all = candidates(&records);
    let mut router = router(S::Weighted);
    let mut picks = String::new();
    for _ in 0..6 {
        let id = one(&mut router, &task(S::LeastLoaded), &all);
        all.iter_mut().find(|c| c.id() == id).unwrap().in_flight += 1;
        picks.push_str(&id);
    }
    // 0/2 = 0/4: a (id); 1/2 > 0/4: b; 1/2 > 1/4: b; 1/2 = 2/4: a (id);
    // then a is full: b, b.
    assert_eq!(picks, "abbabb");
}

#[test]
fn route_decision_agents() {
    assert_eq!(
        RouteDecision::Assign(vec!["a".into()]).agents(),
        ["a".to_string()]
    );
    let none = RouteDecision::NoEligibleAgent {
        reason: NoAgentReason::NoCapableAgent {
            capability: CAP.into(),
        },
    };
    assert!(none.agents().is_empty());
}

// ---- priority ----

fn queued(id: &str, priority: u32, sequence: u64) -> TaskSpec {
    TaskSpec {
        id: id.into(),
        priority,
        sequence,
        ..task(S::Unspecified)
    }
}

#[test]
fn priority_order_is_priority_then_arrival() {
    let mut tasks = [
        queued("low-1", 2, 1),
        queued("crit-2", 10, 5),
        queued("norm", 5, 2),
        queued("crit-1", 10, 4),
        queued("low-0", 2, 0),
        queued("zero", 0, 3),
        queued("b-same", 8, 9),
        queued("a-same", 8, 9),
    ];
    tasks.sort_by(priority_order);
    let order: Vec<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(
        order,
        [
            "crit-1", "crit-2", "a-same", "b-same", "norm", "low-0", "low-1", "zero"
        ]
    );
    assert_eq!(
        priority_order(&queued("x", 3, 1), &queued("x", 3, 1)),
        Ordering::Equal
    );
}

#[test]
fn priority_queue_pops_critical_before_anything_lower() {
    let mut queue = PriorityQueue::new();
    assert!(queue.is_empty());
    assert_eq!(queue.pop(), None);
    assert_eq!(queue.peek(), None);
    for (priority, item) in [
        (2, "low-1"),
        (2, "low-2"),
        (10, "crit-1"),
        (0, "zero"),
        (5, "norm-1"),
        (10, "crit-2"),
        (5, "norm-2"),
        (8, "high"),
    ] {
        queue.push(priority, item);
    }
    assert_eq!(queue.len(), 8);
    assert_eq!(
        (queue.len_at(10), queue.len_at(2), queue.len_at(7)),
        (2, 2, 0)
    );
    assert_eq!(queue.peek(), Some(&"crit-1"));
    assert_eq!(queue.pop_with_priority(), Some((10, "crit-1")));
    // A CRITICAL task arriving later still overtakes everything lower.
    queue.push(10, "crit-3");
    let mut order = vec![];
    while let Some(item) = queue.pop() {
        order.push(item);
    }
    assert_eq!(
        order,
        [
            "crit-2", "crit-3", "high", "norm-1", "norm-2", "low-1", "low-2", "zero"
        ]
    );
    assert!(queue.is_empty());
    assert_eq!(queue.len(), 0);
}

#[test]
fn priority_queue_matches_a_stable_sort_on_a_long_mixed_run() {
    let mut queue = PriorityQueue::new();
    let mut expected: Vec<(u32, usize)> = vec![];
    // A deterministic scramble of priorities 0..=10.
    let mut state = 12_345_u64;
    for n in 0..5_000 {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        let priority = ((state >> 33) % 11) as u32;
        queue.push(priority, n);
        expected.push((priority, n));
    }
    expected.sort_by_key(|&(priority, n)| (std::cmp::Reverse(priority), n));
    let mut popped = vec![];
    while let Some(item) = queue.pop_with_priority() {
        popped.push(item);
    }
    assert_eq!(popped, expected);
}

#[test]
fn priority_queue_push_front_and_retain() {
    let mut queue = PriorityQueue::default();
    queue.push(5, "a");
    queue.push(5, "b");
    queue.push(2, "low");
    let (priority, first) = queue.pop_with_priority().unwrap();
    assert_eq!(first, "a");
    // Could not be placed: it goes back to the head of its priority.
    queue.push_front(priority, first);
    assert_eq!(queue.peek(), Some(&"a"));
    queue.push(5, "c");
    queue.retain(|item| *item != "b");
    assert_eq!(queue.len(), 3);
    assert_eq!(queue.len_at(5), 2);
    queue.retain(|item| *item != "low");
    assert_eq!(queue.len_at(2), 0);
    let mut order = vec![];
    while let Some(item) = queue.pop() {
        order.push(item);
    }
    assert_eq!(order, ["a", "c"]);
}

#[test]
fn a_retry_avoids_the_agents_that_failed_it_when_anyone_else_can_take_it() {
    // "a" is the better agent: CAPABILITY picks it every time...
    let records = vec![
        agent_with("a", |r| r.capabilities[0].level = 1.0),
        agent_with("b", |r| r.capabilities[0].level = 0.4),
        agent_with("c", |r| r.capabilities[0].level = 0.6),
    ];
    let all = candidates(&records);
    let spec = task(S::Capability);
    let mut router = router(S::Capability);
    assert_eq!(one(&mut router, &spec, &all), "a");
    // ...but a retry after "a" failed goes to the best of the others.
    let avoid = vec!["a".to_string()];
    let decision = router.route_avoiding(&spec, &all, &avoid);
    assert_eq!(decision, RouteDecision::Assign(vec!["c".into()]));
    let avoid = vec!["a".to_string(), "c".to_string()];
    let decision = router.route_avoiding(&spec, &all, &avoid);
    assert_eq!(decision, RouteDecision::Assign(vec!["b".into()]));
}

#[test]
fn a_retry_comes_back_to_a_failed_agent_only_when_nobody_else_can_take_it() {
    let records = vec![
        agent("a"),
        agent_with("b", |r| r.liveness = Liveness::Unavailable as i32),
    ];
    let all = candidates(&records);
    let spec = task(S::LeastLoaded);
    let mut router = router(S::LeastLoaded);
    let avoid = vec!["a".to_string()];
    let decision = router.route_avoiding(&spec, &all, &avoid);
    assert_eq!(decision, RouteDecision::Assign(vec!["a".into()]));
    // Nobody at all: the reason is the one for every candidate.
    let records = vec![agent_with("a", |r| {
        r.liveness = Liveness::Unavailable as i32
    })];
    let decision = router.route_avoiding(&spec, &candidates(&records), &avoid);
    assert!(matches!(decision, RouteDecision::NoEligibleAgent { .. }));
}
