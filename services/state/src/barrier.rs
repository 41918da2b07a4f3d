//! The rules of a barrier, without I/O: who may arrive, when it releases
//! (ALL, MAJORITY, MIN_COUNT n of its participants), when it times out, and
//! the shared data the release carries.
//!
//! A barrier decides once: released or timed out, never both, never twice.
//! Arrivals are idempotent per participant. Times are milliseconds on the
//! caller's clock.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::merge_patch;

/// Who is expected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Participants {
    /// These ids, and only these, may arrive.
    Named(BTreeSet<String>),
    /// Any ids, up to this many.
    Count(u32),
}

impl Participants {
    pub fn count(&self) -> u32 {
        match self {
            Participants::Named(ids) => ids.len() as u32,
            Participants::Count(n) => *n,
        }
    }
}

/// When it releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Condition {
    /// Every participant.
    All,
    /// More than half of them.
    Majority,
    /// At least this many.
    MinCount(u32),
}

/// A barrier as created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    pub participants: Participants,
    pub condition: Condition,
    pub timeout_ms: u64,
    /// Shared data every participant receives on release (an object);
    /// arrivals' contributions are merged into it in arrival order.
    pub data: Value,
}

/// A refused barrier or arrival, naming the field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BarrierError {
    pub field: &'static str,
    pub message: String,
}

fn refuse(field: &'static str, message: impl Into<String>) -> BarrierError {
    BarrierError {
        field,
        message: message.into(),
    }
}

/// Longest timeout a barrier may have (a day).
pub const MAX_TIMEOUT_MS: u64 = 86_400_000;

impl Spec {
    /// Checks a new barrier.
    pub fn validate(&self) -> Result<(), BarrierError> {
        let count = self.participants.count();
        if count == 0 {
            return Err(refuse(
                "participants",
                "a barrier needs at least one participant (ids or a count)",
            ));
        }
        if let Participants::Named(ids) = &self.participants
            && let Some(empty) = ids.iter().find(|id| id.is_empty())
        {
            return Err(refuse(
                "participants",
                format!("participant id {empty:?} is empty"),
            ));
        }
        if let Condition::MinCount(n) = self.condition {
            if n == 0 {
                return Err(refuse("minCount", "MIN_COUNT must be at least 1"));
            }
            if n > count {
                return Err(refuse(
                    "minCount",
                    format!("MIN_COUNT {n} is more than the barrier's {count} participants"),
                ));
            }
        }
        if self.timeout_ms == 0 || self.timeout_ms > MAX_TIMEOUT_MS {
            return Err(refuse(
                "timeoutMs",
                format!(
                    "timeoutMs must be 1..={MAX_TIMEOUT_MS}, not {}",
                    self.timeout_ms
                ),
            ));
        }
        if !(self.data.is_object() || self.data.is_null()) {
            return Err(refuse("data", "shared data must be a JSON object"));
        }
        Ok(())
    }

    /// Arrivals needed for a release.
    pub fn needed(&self) -> u32 {
        let count = self.participants.count();
        match self.condition {
            Condition::All => count,
            Condition::Majority => count / 2 + 1,
            Condition::MinCount(n) => n,
        }
    }
}

/// One participant's arrival.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Arrival {
    pub participant: String,
    pub at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

/// How a barrier ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Waiting,
    Released,
    Timeout,
}

/// A barrier's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Barrier {
    pub spec: Spec,
    pub created_ms: u64,
    pub deadline_ms: u64,
    pub arrivals: Vec<Arrival>,
    pub status: Status,
    /// When it released or timed out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_ms: Option<u64>,
}

/// What an arrival did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrived {
    /// Counted; still waiting for `needed` arrivals in all.
    Waiting,
    /// This arrival released the barrier.
    Released,
    /// Already counted before (a retried arrival); the barrier's status is
    /// unchanged.
    Again,
    /// The barrier had already decided (released or timed out); the
    /// arrival is not counted.
    Over,
}

impl Barrier {
    /// A barrier from a valid `spec`, created at `now`.
    pub fn new(spec: Spec, now: u64) -> Result<Self, BarrierError> {
        spec.validate()?;
        let deadline_ms = now.saturating_add(spec.timeout_ms);
        Ok(Self {
            spec,
            created_ms: now,
            deadline_ms,
            arrivals: Vec::new(),
            status: Status::Waiting,
            decided_ms: None,
        })
    }

    /// `participant` arrives at `now`, contributing `data` (an object).
    pub fn arrive(
        &mut self,
        participant: &str,
        data: Option<Value>,
        now: u64,
    ) -> Result<Arrived, BarrierError> {
        if participant.is_empty() {
            return Err(refuse("participant", "participant id is empty"));
        }
        if data.as_ref().is_some_and(|d| !d.is_object()) {
            return Err(refuse("data", "an arrival's data must be a JSON object"));
        }
        if self.arrivals.iter().any(|a| a.participant == participant) {
            return Ok(Arrived::Again);
        }
        if self.status == Status::Waiting && now >= self.deadline_ms {
            self.decide(Status::Timeout, self.deadline_ms);
        }
        if self.status != Status::Waiting {
            return Ok(Arrived::Over);
        }
        match &self.spec.participants {
            Participants::Named(ids) if !ids.contains(participant) => {
                return Err(refuse(
                    "participant",
                    format!("{participant} is not a participant of this barrier"),
                ));
            }
            Participants::Count(n) if self.arrivals.len() as u32 >= *n => {
                return Err(refuse(
                    "participant",
                    format!("the barrier's {n} participants have all arrived"),
                ));
            }
            _ => {}
        }
        self.arrivals.push(Arrival {
            participant: participant.to_string(),
            at_ms: now,
            data,
        });
        if self.arrivals.len() as u32 >= self.spec.needed() {
            self.decide(Status::Released, now);
            return Ok(Arrived::Released);
        }
        Ok(Arrived::Waiting)
    }

    /// Times the barrier out if its deadline has come and it still waits;
    /// true when this call decided it.
    pub fn check_timeout(&mut self, now: u64) -> bool {
        if self.status == Status::Waiting && now >= self.deadline_ms {
            self.decide(Status::Timeout, self.deadline_ms);
            return true;
        }
        false
    }

    fn decide(&mut self, status: Status, at: u64) {
        self.status = status;
        self.decided_ms = Some(at);
    }

    /// The participants that arrived, in arrival order.
    pub fn arrived(&self) -> Vec<String> {
        self.arrivals
            .iter()
            .map(|a| a.participant.clone())
            .collect()
    }

    /// Named participants that have not arrived (none for a count barrier).
    pub fn missing(&self) -> Vec<String> {
        match &self.spec.participants {
            Participants::Named(ids) => ids
                .iter()
                .filter(|id| !self.arrivals.iter().any(|a| &a.participant == *id))
                .cloned()
                .collect(),
            Participants::Count(_) => Vec::new(),
        }
    }

    /// The shared data: the barrier's, with every arrival's contribution
    /// merged in arrival order (JSON merge patch).
    pub fn shared_data(&self) -> Value {
        let mut data = match &self.spec.data {
            Value::Null => Value::Object(Default::default()),
            data => data.clone(),
        };
        for arrival in &self.arrivals {
            if let Some(contribution) = &arrival.data {
                merge_patch::apply(&mut data, contribution);
            }
        }
        data
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn named(ids: &[&str], condition: Condition) -> Spec {
        Spec {
            participants: Participants::Named(ids.iter().map(|s| s.to_string()).collect()),
            condition,
            timeout_ms: 1_000,
            data: json!({"round": 1}),
        }
    }

    fn counted(n: u32, condition: Condition) -> Spec {
        Spec {
            participants: Participants::Count(n),
            ..named(&[], condition)
        }
    }

    #[test]
    fn each_condition_needs_its_count() {
        assert_eq!(named(&["a", "b", "c"], Condition::All).needed(), 3);
        assert_eq!(named(&["a", "b", "c"], Condition::Majority).needed(), 2);
        assert_eq!(
            counted(4, Condition::Majority).needed(),
            3,
            "more than half"
        );
        assert_eq!(counted(1, Condition::Majority).needed(), 1);
        assert_eq!(counted(10, Condition::MinCount(7)).needed(), 7);
    }

    #[test]
    fn bad_barriers_are_refused_naming_the_field() {
        let field = |spec: Spec| spec.validate().unwrap_err().field;
        assert_eq!(field(counted(0, Condition::All)), "participants");
        assert_eq!(field(named(&[], Condition::All)), "participants");
        assert_eq!(field(named(&["a", ""], Condition::All)), "participants");
        let too_many = counted(3, Condition::MinCount(4));
        assert_eq!(
            too_many.validate().unwrap_err().message,
            "MIN_COUNT 4 is more than the barrier's 3 participants"
        );
        assert_eq!(field(counted(3, Condition::MinCount(0))), "minCount");
        for timeout_ms in [0, MAX_TIMEOUT_MS + 1] {
            let spec = Spec {
                timeout_ms,
                ..counted(2, Condition::All)
            };
            assert_eq!(field(spec), "timeoutMs");
        }
        let spec = Spec {
            data: json!([1]),
            ..counted(2, Condition::All)
        };
        assert_eq!(field(spec), "data");
        assert!(counted(3, Condition::MinCount(3)).validate().is_ok());
    }

    #[test]
    fn all_releases_on_the_last_arrival_once() {
        let mut barrier = Barrier::new(named(&["a", "b", "c"], Condition::All), 0).unwrap();
        assert_eq!(barrier.arrive("b", None, 10), Ok(Arrived::Waiting));
        assert_eq!(barrier.arrive("a", None, 20), Ok(Arrived::Waiting));
        assert_eq!(barrier.missing(), ["c"]);
        assert_eq!(barrier.arrive("c", None, 30), Ok(Arrived::Released));
        assert_eq!(
            (barrier.status, barrier.decided_ms),
            (Status::Released, Some(30))
        );
        assert_eq!(barrier.arrived(), ["b", "a", "c"]);
        assert!(barrier.missing().is_empty());
        assert!(!barrier.check_timeout(5_000), "decided once");
        assert_eq!(barrier.status, Status::Released);
    }

    #[test]
    fn arrivals_are_idempotent_per_participant() {
        let mut barrier = Barrier::new(counted(2, Condition::All), 0).unwrap();
        assert_eq!(
            barrier.arrive("a", Some(json!({"x": 1})), 1),
            Ok(Arrived::Waiting)
        );
        assert_eq!(
            barrier.arrive("a", Some(json!({"x": 2})), 2),
            Ok(Arrived::Again)
        );
        assert_eq!(barrier.arrivals.len(), 1, "counted once, first data kept");
        assert_eq!(barrier.arrive("b", None, 3), Ok(Arrived::Released));
        assert_eq!(barrier.arrive("b", None, 4), Ok(Arrived::Again));
    }

    #[test]
    fn majority_and_min_count_release_early_and_later_arrivals_are_over() {
        let mut barrier = Barrier::new(counted(5, Condition::Majority), 0).unwrap();
        for (i, who) in ["a", "b"].iter().enumerate() {
            assert_eq!(barrier.arrive(who, None, i as u64), Ok(Arrived::Waiting));
        }
        assert_eq!(barrier.arrive("c", None, 5), Ok(Arrived::Released));
        assert_eq!(barrier.arrive("d", None, 6), Ok(Arrived::Over));
        assert_eq!(barrier.arrivals.len(), 3);

        let mut barrier = Barrier::new(named(&["a", "b", "c"], Condition::MinCount(1)), 0).unwrap();
        assert_eq!(barrier.arrive("c", None, 1), Ok(Arrived::Released));
    }

    #[test]
    fn only_named_participants_and_no_more_than_the_count_arrive() {
        let mut barrier = Barrier::new(named(&["a", "b"], Condition::All), 0).unwrap();
        let error = barrier.arrive("mallory", None, 1).unwrap_err();
        assert_eq!(error.field, "participant");
        assert!(error.message.contains("mallory is not a participant"));
        assert_eq!(
            barrier.arrive("", None, 1).unwrap_err().field,
            "participant"
        );

        let mut barrier = Barrier::new(counted(3, Condition::MinCount(1)), 0).unwrap();
        barrier.arrive("a", None, 1).unwrap();
        // Released at one; a fourth id finds it over rather than full.
        assert_eq!(barrier.arrive("d", None, 2), Ok(Arrived::Over));
    }

    #[test]
    fn the_deadline_times_it_out_naming_who_did_not_come() {
        let mut barrier = Barrier::new(named(&["a", "b", "c"], Condition::All), 100).unwrap();
        assert_eq!(barrier.deadline_ms, 1_100);
        barrier.arrive("a", None, 200).unwrap();
        assert!(!barrier.check_timeout(1_099));
        assert!(barrier.check_timeout(1_100));
        assert_eq!(
            (barrier.status, barrier.decided_ms),
            (Status::Timeout, Some(1_100))
        );
        assert_eq!(barrier.missing(), ["b", "c"]);
        assert!(!barrier.check_timeout(2_000), "decided once");
        assert_eq!(barrier.arrive("b", None, 1_200), Ok(Arrived::Over));
    }

    #[test]
    fn an_arrival_after_the_deadline_finds_it_timed_out_even_before_the_timer() {
        let mut barrier = Barrier::new(counted(1, Condition::All), 0).unwrap();
        assert_eq!(barrier.arrive("a", None, 1_000), Ok(Arrived::Over));
        assert_eq!(barrier.status, Status::Timeout);
        assert_eq!(
            barrier.decided_ms,
            Some(1_000),
            "at its deadline, not later"
        );
    }

    #[test]
    fn the_release_carries_the_shared_data_merged_in_arrival_order() {
        let mut barrier = Barrier::new(named(&["a", "b"], Condition::All), 0).unwrap();
        barrier
            .arrive("b", Some(json!({"votes": {"b": 1}, "last": "b"})), 1)
            .unwrap();
        barrier
            .arrive(
                "a",
                Some(json!({"votes": {"a": 2}, "last": "a", "round": null})),
                2,
            )
            .unwrap();
        assert_eq!(
            barrier.shared_data(),
            json!({"votes": {"a": 2, "b": 1}, "last": "a"})
        );
        let error = barrier.arrive("a", Some(json!(3)), 3).unwrap_err();
        assert_eq!(error.field, "data");
    }

    #[test]
    fn a_barrier_round_trips_through_its_stored_json() {
        let mut barrier = Barrier::new(named(&["a", "b"], Condition::MinCount(2)), 7).unwrap();
        barrier.arrive("a", Some(json!({"k": 1})), 8).unwrap();
        let json = serde_json::to_value(&barrier).unwrap();
        assert_eq!(json["spec"]["condition"], json!({"MIN_COUNT": 2}));
        let back: Barrier = serde_json::from_value(json).unwrap();
        assert_eq!(back, barrier);
    }
}
