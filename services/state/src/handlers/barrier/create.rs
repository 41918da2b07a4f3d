//! `<root>.state.barrier.create`: a barrier with its participants, release
//! condition, timeout and shared data (the same id and settings again
//! answer the existing barrier).

use std::collections::BTreeSet;

use concord_bus::{Reply, Request, ServiceError};
use concord_wire::v1::{BarrierCondition, CreateBarrier};

use crate::app::State;
use crate::barrier::{Condition, Participants, Spec};
use crate::barrier_table::view;

/// Most named participants.
const MAX_PARTICIPANTS: usize = 10_000;

pub async fn handle(state: State, request: Request) -> Result<Reply, ServiceError> {
    let message: CreateBarrier = request.decode()?;
    let id = if message.id.is_empty() {
        uuid::Uuid::now_v7().to_string()
    } else {
        super::id(&message.id)?;
        message.id.clone()
    };
    let spec = spec(&message)?;
    let actor = super::super::actor(&message.actor)?;
    let barrier = state.barriers().create(&id, spec, &actor).await?;
    Reply::to(&request, &view(&id, &barrier))
}

/// The barrier the request describes; the rules check the rest.
fn spec(message: &CreateBarrier) -> Result<Spec, ServiceError> {
    let participants = match (message.participants.is_empty(), message.count) {
        (false, 0) => {
            if message.participants.len() > MAX_PARTICIPANTS {
                return Err(ServiceError::invalid(
                    "participants",
                    format!(
                        "{} participants; at most {MAX_PARTICIPANTS}",
                        message.participants.len()
                    ),
                ));
            }
            let mut ids = BTreeSet::new();
            for participant in &message.participants {
                super::participant("participants", participant)?;
                if !ids.insert(participant.clone()) {
                    return Err(ServiceError::invalid(
                        "participants",
                        format!("{participant} is listed twice"),
                    ));
                }
            }
            Participants::Named(ids)
        }
        (true, count) => Participants::Count(count),
        (false, _) => {
            return Err(ServiceError::invalid(
                "count",
                "give either participants or a count, not both",
            ));
        }
    };
    let condition = match BarrierCondition::try_from(message.condition) {
        Ok(BarrierCondition::Unspecified | BarrierCondition::All) => Condition::All,
        Ok(BarrierCondition::Majority) => Condition::Majority,
        Ok(BarrierCondition::MinCount) => Condition::MinCount(message.min_count),
        Err(_) => {
            return Err(ServiceError::invalid(
                "condition",
                format!("{} is not ALL, MAJORITY or MIN_COUNT", message.condition),
            ));
        }
    };
    if message.min_count != 0 && !matches!(condition, Condition::MinCount(_)) {
        return Err(ServiceError::invalid(
            "minCount",
            "minCount applies only to the MIN_COUNT condition",
        ));
    }
    let spec = Spec {
        participants,
        condition,
        timeout_ms: message.timeout_ms,
        data: message
            .data
            .as_ref()
            .map(concord_wire::json::from_wire_value)
            .unwrap_or(serde_json::Value::Null),
    };
    spec.validate()
        .map_err(|e| ServiceError::invalid(e.field, e.message))?;
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> CreateBarrier {
        CreateBarrier {
            participants: vec!["a".into(), "b".into(), "c".into()],
            condition: BarrierCondition::MinCount as i32,
            min_count: 2,
            timeout_ms: 1_000,
            ..Default::default()
        }
    }

    fn field(change: impl FnOnce(&mut CreateBarrier)) -> Option<String> {
        let mut message = request();
        change(&mut message);
        spec(&message).unwrap_err().field
    }

    #[test]
    fn a_good_request_becomes_the_spec() {
        let spec = spec(&request()).unwrap();
        assert_eq!(spec.condition, Condition::MinCount(2));
        assert_eq!(spec.needed(), 2);
    }

    #[test]
    fn bad_requests_name_the_field() {
        assert_eq!(
            field(|m| m.min_count = 4).as_deref(),
            Some("minCount"),
            "MIN_COUNT above the participants"
        );
        assert_eq!(field(|m| m.count = 3).as_deref(), Some("count"));
        assert_eq!(
            field(|m| m.participants.push("a".into())).as_deref(),
            Some("participants")
        );
        assert_eq!(
            field(|m| m.participants[0] = "not ok".into()).as_deref(),
            Some("participants")
        );
        assert_eq!(field(|m| m.condition = 9).as_deref(), Some("condition"));
        assert_eq!(
            field(|m| {
                m.condition = BarrierCondition::All as i32;
            })
            .as_deref(),
            Some("minCount")
        );
        assert_eq!(field(|m| m.timeout_ms = 0).as_deref(), Some("timeoutMs"));
        assert_eq!(
            field(|m| m.data = Some(concord_wire::json::to_wire_value(serde_json::json!([1]))))
                .as_deref(),
            Some("data")
        );
        assert_eq!(
            field(|m| m.participants.clear()).as_deref(),
            Some("participants")
        );
    }
}
