//! `<root>.deadletters.replay`: publishes a dead letter's original bytes and
//! headers to its original subject again.
//!
//! `Nats-Msg-Id` is left out (JetStream would drop the replay as a duplicate
//! inside its window) and `Concord-Replay-Of: <id>` is added: the dispatcher
//! reopens a dead-lettered task only for a submission with that header (its
//! history then shows `task.resubmitted`). A task submission goes through
//! JetStream and is confirmed by the intake stream; other subjects get a
//! plain publish.

use concord_bus::service::{Reply, Request};
use concord_bus::{ServiceError, headers};
use concord_store::DeadLetter;
use concord_wire::codec::ContentType;
use concord_wire::v1::{ReplayDeadLetter, ReplayedDeadLetter};

use super::{not_found, parse_id, unavailable};
use crate::app::Dispatcher;
use crate::submission::{Origin, derived_id};

pub async fn handle(dispatcher: Dispatcher, request: Request) -> Result<Reply, ServiceError> {
    let query: ReplayDeadLetter = request.decode()?;
    let id = parse_id("id", &query.id)?;
    let dead_letters = dispatcher.store.dead_letters();
    let letter = dead_letters
        .get(id)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| not_found(id))?;
    let mut replay_headers = async_nats::HeaderMap::new();
    for (name, value) in &letter.headers {
        if name.eq_ignore_ascii_case(headers::MSG_ID)
            || name.eq_ignore_ascii_case(headers::REPLAY_OF)
        {
            continue;
        }
        replay_headers.insert(name.as_str(), value.as_str());
    }
    replay_headers.insert(headers::REPLAY_OF, id.to_string().as_str());
    let mut replayed = ReplayedDeadLetter {
        id: id.to_string(),
        subject: letter.subject.clone(),
        ..ReplayedDeadLetter::default()
    };
    if letter.subject == dispatcher.bus.subjects.tasks_submit() {
        let (payload, task_id) = with_task_id(&letter);
        let ack = dispatcher
            .jetstream
            .publish_with_headers(letter.subject.clone(), replay_headers, payload.into())
            .await
            .map_err(|e| ServiceError::unavailable(format!("cannot publish the replay: {e}")))?
            .await
            .map_err(|e| {
                ServiceError::unavailable(format!(
                    "the intake stream did not confirm the replay: {e}"
                ))
            })?;
        replayed.stream = ack.stream;
        replayed.sequence = ack.sequence;
        replayed.task_id = task_id.unwrap_or_default();
    } else {
        let client = &dispatcher.bus.client;
        client
            .publish_with_headers(
                letter.subject.clone(),
                replay_headers,
                letter.payload.clone().into(),
            )
            .await
            .map_err(|e| ServiceError::unavailable(format!("cannot publish the replay: {e}")))?;
        client
            .flush()
            .await
            .map_err(|e| ServiceError::unavailable(format!("cannot publish the replay: {e}")))?;
    }
    dead_letters
        .mark_replayed(id)
        .await
        .map_err(|e| ServiceError::unavailable(format!("replayed, but cannot record it: {e}")))?;
    tracing::info!(dead_letter = %id, subject = %letter.subject, "dead letter replayed");
    Reply::to(&request, &replayed)
}

/// The payload to replay for a task submission, and the task id it runs
/// as. A JSON body without an `id` got its task id from the `Nats-Msg-Id`
/// header, which the replay leaves out: that id goes into the body so the
/// replay reopens the same task. A submission that named no id at all runs
/// as a new task (no id known before it is taken).
fn with_task_id(letter: &DeadLetter) -> (Vec<u8>, Option<String>) {
    let header = |name: &str| {
        letter
            .headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    };
    let json = ContentType::from_header(header(headers::CONTENT_TYPE))
        .is_ok_and(|ct| ct == ContentType::Json);
    let Ok(serde_json::Value::Object(mut body)) = serde_json::from_slice(&letter.payload) else {
        return (letter.payload.clone(), None);
    };
    if !json {
        return (letter.payload.clone(), None);
    }
    if let Some(id) = body
        .get("id")
        .and_then(|id| id.as_str())
        .filter(|id| !id.is_empty())
    {
        return (letter.payload.clone(), Some(id.to_string()));
    }
    let Some(msg_id) = header(headers::MSG_ID).filter(|m| !m.trim().is_empty()) else {
        return (letter.payload.clone(), None);
    };
    let id = derived_id(&Origin {
        content_type: None,
        msg_id: Some(msg_id),
        stream_identity: "",
        stream_sequence: 0,
        now_unix_ms: 0,
    });
    body.insert("id".into(), id.clone().into());
    match serde_json::to_vec(&body) {
        Ok(payload) => (payload, Some(id)),
        Err(_) => (letter.payload.clone(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(payload: &str, headers: &[(&str, &str)]) -> DeadLetter {
        let at = chrono::Utc::now();
        DeadLetter {
            id: uuid::Uuid::nil(),
            subject: "concord.tasks.submit".into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            payload: payload.as_bytes().to_vec(),
            reason: "max_attempts".into(),
            error: String::new(),
            attempts: 3,
            source: "concord-dispatcher".into(),
            history: serde_json::json!([]),
            first_seen: at,
            last_seen: at,
            replayed_at: None,
            replay_count: 0,
        }
    }

    #[test]
    fn a_body_with_an_id_is_replayed_as_it_is() {
        let letter = letter(r#"{"id":"t-1","capability":"echo"}"#, &[]);
        let (payload, id) = with_task_id(&letter);
        assert_eq!(payload, letter.payload);
        assert_eq!(id.as_deref(), Some("t-1"));
    }

    #[test]
    fn the_msg_id_becomes_the_body_id() {
        let letter = letter(r#"{"capability":"echo"}"#, &[("nats-msg-id", "order-7")]);
        let (payload, id) = with_task_id(&letter);
        let body: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(body["id"], "order-7");
        assert_eq!(id.as_deref(), Some("order-7"));
    }

    #[test]
    fn without_any_id_or_as_protobuf_the_bytes_are_kept() {
        let letter_without = letter(r#"{"capability":"echo"}"#, &[]);
        assert_eq!(
            with_task_id(&letter_without),
            (letter_without.payload.clone(), None)
        );
        let protobuf = letter(
            r#"{"capability":"echo"}"#,
            &[
                ("Content-Type", "application/protobuf"),
                ("Nats-Msg-Id", "x"),
            ],
        );
        assert_eq!(with_task_id(&protobuf).1, None);
    }
}
