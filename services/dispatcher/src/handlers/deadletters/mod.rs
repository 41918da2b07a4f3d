//! Dead letters over NATS (`<root>.deadletters.*`): every service keeps what
//! it could not process in the shared `dead_letters` table; the dispatcher
//! serves them to operators and tools, so nobody needs database access.
//!
//! - `list`: `ListDeadLetters` → `DeadLetterList` ([`list`]);
//! - `get`: `GetDeadLetter` → `DeadLetter` ([`get`]);
//! - `replay`: `ReplayDeadLetter` → `ReplayedDeadLetter` ([`replay`]);
//! - `purge`: `PurgeDeadLetters` → `PurgedDeadLetters` ([`purge`]).

pub mod get;
pub mod list;
pub mod purge;
pub mod replay;

use concord_bus::ServiceError;
use concord_store::{DeadLetter, DeadLetterCursor};
use concord_wire::v1;

use crate::projection::{timestamp, to_wire_value};

/// A dead-letter id from a request field.
fn parse_id(field: &str, id: &str) -> Result<uuid::Uuid, ServiceError> {
    uuid::Uuid::parse_str(id.trim()).map_err(|_| {
        ServiceError::invalid(
            field,
            format!("must be a dead-letter id (a UUID), got {id:?}"),
        )
    })
}

fn not_found(id: uuid::Uuid) -> ServiceError {
    ServiceError::not_found(format!("no dead letter with id {id}"))
}

fn unavailable(error: impl std::fmt::Display) -> ServiceError {
    ServiceError::unavailable(format!("cannot read the dead letters: {error}"))
}

/// A stored dead letter on the wire.
fn to_wire(letter: DeadLetter) -> v1::DeadLetter {
    v1::DeadLetter {
        id: letter.id.to_string(),
        subject: letter.subject,
        headers: letter.headers,
        payload: letter.payload.into(),
        reason: letter.reason,
        error: letter.error,
        attempts: letter.attempts.max(0) as u32,
        first_seen: Some(timestamp(letter.first_seen)),
        last_seen: Some(timestamp(letter.last_seen)),
        source: letter.source,
        history: Some(to_wire_value(letter.history)),
        replayed_at: letter.replayed_at.map(timestamp),
        replay_count: letter.replay_count.max(0) as u32,
    }
}

/// The `next` token of a page ending with `cursor`: the time in
/// microseconds and the id (opaque to clients).
fn page_token(cursor: DeadLetterCursor) -> String {
    format!("{}_{}", cursor.last_seen.timestamp_micros(), cursor.id)
}

/// The cursor a `next` token stands for.
fn parse_page_token(token: &str) -> Result<DeadLetterCursor, ServiceError> {
    let bad = || ServiceError::invalid("after", "must be the `next` of a previous page");
    let (micros, id) = token.split_once('_').ok_or_else(bad)?;
    let micros: i64 = micros.parse().map_err(|_| bad())?;
    Ok(DeadLetterCursor {
        last_seen: chrono::DateTime::from_timestamp_micros(micros).ok_or_else(bad)?,
        id: uuid::Uuid::parse_str(id).map_err(|_| bad())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_token_reads_back_as_its_cursor() {
        let cursor = DeadLetterCursor {
            last_seen: chrono::DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            id: uuid::Uuid::now_v7(),
        };
        assert_eq!(parse_page_token(&page_token(cursor)).unwrap(), cursor);
        for bad in [
            "",
            "x",
            "12_not-a-uuid",
            "_0190c0de-0000-7000-8000-000000000000",
        ] {
            let error = parse_page_token(bad).unwrap_err();
            assert_eq!(error.field.as_deref(), Some("after"), "{bad}");
        }
    }

    #[test]
    fn ids_must_be_uuids() {
        assert!(parse_id("id", " 0190c0de-0000-7000-8000-000000000000 ").is_ok());
        let error = parse_id("id", "dl-1").unwrap_err();
        assert_eq!(error.field.as_deref(), Some("id"));
        assert!(error.message.contains("dl-1"), "{}", error.message);
    }

    #[test]
    fn the_wire_form_keeps_every_field() {
        let at = chrono::DateTime::from_timestamp_micros(1_700_000_000_000_000).unwrap();
        let letter = DeadLetter {
            id: uuid::Uuid::nil(),
            subject: "concord.tasks.submit".into(),
            headers: [("Nats-Msg-Id".to_string(), "t-1".to_string())].into(),
            payload: b"{}".to_vec(),
            reason: "max_attempts".into(),
            error: "boom".into(),
            attempts: 3,
            source: "concord-dispatcher".into(),
            history: serde_json::json!([{"attempt": 1}]),
            first_seen: at,
            last_seen: at,
            replayed_at: None,
            replay_count: 0,
        };
        let wire = to_wire(letter);
        assert_eq!(wire.attempts, 3);
        assert_eq!(wire.headers["Nats-Msg-Id"], "t-1");
        assert_eq!(&wire.payload[..], b"{}");
        assert!(wire.replayed_at.is_none());
        let json = crate::projection::wire_json(&wire);
        assert_eq!(json["history"], serde_json::json!([{"attempt": 1}]));
        assert_eq!(json["reason"], "max_attempts");
    }
}
