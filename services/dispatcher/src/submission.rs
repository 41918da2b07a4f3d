//! Turning a received submission (bytes, headers, stream position) into a
//! validated [`TaskSpec`]: content type, priority names, the task id, limits.
//!
//! Pure: the caller passes the time and the message's stream identity. The
//! task id is, in order: the body's `id`; the `Nats-Msg-Id` header (hashed
//! into a token when it is not one); otherwise derived from the stream's
//! identity and the message's stream sequence, so a redelivered message
//! (after a crash) gets the same id and is recognised as the same task.

use concord_bus::ServiceError;
use concord_wire::codec::{self, CodecError, ContentType};
use concord_wire::v1::Task;

use crate::task_spec::{Intake, TaskLimits, TaskSpec, normalize_priority_names, validate_task};

/// Where a submission came from.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// `Content-Type` header, if any.
    pub content_type: Option<&'a str>,
    /// `Nats-Msg-Id` header, if any.
    pub msg_id: Option<&'a str>,
    /// Identity of the stream instance (e.g. its creation time), so ids
    /// derived from sequences differ if the stream is ever recreated.
    pub stream_identity: &'a str,
    /// The message's stream sequence.
    pub stream_sequence: u64,
    /// Current time, Unix milliseconds.
    pub now_unix_ms: i64,
}

/// Decodes and validates a submission.
pub fn parse(
    body: &[u8],
    origin: &Origin<'_>,
    limits: &TaskLimits,
) -> Result<TaskSpec, ServiceError> {
    let content_type = ContentType::from_header(origin.content_type)?;
    let task = decode(content_type, body)?;
    let intake = Intake {
        encoded_len: body.len(),
        now_unix_ms: origin.now_unix_ms,
        sequence: origin.stream_sequence,
    };
    validate_task(task, &intake, limits, || derived_id(origin))
}

/// Decodes a task; priority names (`"priority":"HIGH"`) are rewritten only
/// when the direct decode fails on that field, so numeric priorities cost
/// one parse.
fn decode(content_type: ContentType, body: &[u8]) -> Result<Task, ServiceError> {
    match codec::decode::<Task>(content_type, body) {
        Ok(task) => Ok(task),
        Err(CodecError::Json { field, .. }) if field == "priority" => {
            let mut json: serde_json::Value = serde_json::from_slice(body)
                .map_err(|e| ServiceError::invalid("", format!("invalid JSON: {e}")))?;
            normalize_priority_names(&mut json)?;
            let bytes = serde_json::to_vec(&json).expect("a parsed JSON value serializes");
            Ok(codec::decode::<Task>(content_type, &bytes)?)
        }
        Err(error) => Err(error.into()),
    }
}

/// The id of a task whose body has none (see [`concord_wire::ids`]).
pub fn derived_id(origin: &Origin<'_>) -> String {
    origin
        .msg_id
        .and_then(concord_wire::ids::task_id_from_msg_id)
        .unwrap_or_else(|| {
            concord_wire::ids::task_id_from_position(origin.stream_identity, origin.stream_sequence)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_bus::validate::is_token;
    use concord_wire::v1::ErrorCode;

    fn origin<'a>(msg_id: Option<&'a str>, sequence: u64) -> Origin<'a> {
        Origin {
            content_type: None,
            msg_id,
            stream_identity: "2026-11-21T00:00:00Z",
            stream_sequence: sequence,
            now_unix_ms: 1_800_000_000_000,
        }
    }

    #[test]
    fn the_design_example_parses() {
        let body = br#"{"capability":"summarize","payload":{"text":"hi"}}"#;
        let spec = parse(body, &origin(None, 7), &TaskLimits::default()).unwrap();
        assert_eq!(spec.capability, "summarize");
        assert_eq!(spec.sequence, 7);
        assert_eq!(spec.id.len(), 32);
    }

    #[test]
    fn the_body_id_wins_then_the_msg_id_then_the_stream_position() {
        let limits = TaskLimits::default();
        let with_id = br#"{"id":"job-1","capability":"x"}"#;
        assert_eq!(
            parse(with_id, &origin(Some("m-1"), 1), &limits).unwrap().id,
            "job-1"
        );
        let without = br#"{"capability":"x"}"#;
        assert_eq!(
            parse(without, &origin(Some("m-1"), 1), &limits).unwrap().id,
            "m-1"
        );
        // A msg id that is not a subject token is hashed, stably.
        let a = parse(without, &origin(Some("order.42"), 1), &limits)
            .unwrap()
            .id;
        let b = parse(without, &origin(Some("order.42"), 2), &limits)
            .unwrap()
            .id;
        assert_eq!(a, b);
        assert!(is_token(&a));
        // No ids at all: the same stream position gives the same id (a
        // redelivery), another position another id.
        let first = parse(without, &origin(None, 5), &limits).unwrap().id;
        assert_eq!(first, parse(without, &origin(None, 5), &limits).unwrap().id);
        assert_ne!(first, parse(without, &origin(None, 6), &limits).unwrap().id);
    }

    #[test]
    fn priority_names_are_accepted() {
        let body = br#"{"capability":"x","priority":"critical"}"#;
        assert_eq!(
            parse(body, &origin(None, 1), &TaskLimits::default())
                .unwrap()
                .priority,
            10
        );
        let body = br#"{"capability":"x","priority":4}"#;
        assert_eq!(
            parse(body, &origin(None, 1), &TaskLimits::default())
                .unwrap()
                .priority,
            4
        );
        let body = br#"{"capability":"x","priority":"URGENT"}"#;
        let error = parse(body, &origin(None, 1), &TaskLimits::default()).unwrap_err();
        assert_eq!(error.field.as_deref(), Some("priority"));
    }

    #[test]
    fn bad_submissions_name_the_field() {
        let limits = TaskLimits::default();
        let cases: [(&[u8], &str); 4] = [
            (br#"{"payload":{}}"#, "capability"),
            (br#"{"capability":"x","maxAttempts":"lots"}"#, "maxAttempts"),
            (br#"{"capability":"x","strategy":"FASTEST"}"#, "strategy"),
            (br#"{"capability":"x","bogus":1}"#, "bogus"),
        ];
        for (body, field) in cases {
            let error = parse(body, &origin(None, 1), &limits).unwrap_err();
            assert_eq!(error.code, ErrorCode::InvalidArgument, "{error}");
            assert_eq!(error.field.as_deref(), Some(field), "{error}");
        }
        let error = parse(b"not json", &origin(None, 1), &limits).unwrap_err();
        assert_eq!(error.code, ErrorCode::InvalidArgument);
    }

    #[test]
    fn protobuf_submissions_are_accepted() {
        let task = Task {
            capability: "x".into(),
            ..Default::default()
        };
        let bytes = codec::encode(ContentType::Protobuf, &task).unwrap();
        let mut from = origin(None, 1);
        from.content_type = Some("application/protobuf");
        assert_eq!(
            parse(&bytes, &from, &TaskLimits::default())
                .unwrap()
                .capability,
            "x"
        );
        from.content_type = Some("text/plain");
        assert_eq!(
            parse(&bytes, &from, &TaskLimits::default())
                .unwrap_err()
                .code,
            ErrorCode::UnsupportedContentType
        );
    }
}
