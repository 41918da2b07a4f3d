//! Canonical JSON form of the wire messages, JSON error reporting, and `Content-Type` parsing.

mod fixtures;

use concord_wire::{
    CodecError, ContentType, decode, encode,
    v1::{ErrorCode, GetAgent, RegisterAgent, RoutingStrategy, Task, TaskResult},
};
use serde_json::json;

fn to_json<M: concord_wire::WireMessage>(msg: &M) -> serde_json::Value {
    let bytes = encode(ContentType::Json, msg).expect("encodes as JSON");
    serde_json::from_slice(&bytes).expect("encoder writes valid JSON")
}

fn json_err<M: concord_wire::WireMessage + std::fmt::Debug>(body: &str) -> (String, String) {
    match decode::<M>(ContentType::Json, body.as_bytes()) {
        Err(CodecError::Json { field, message }) => (field, message),
        other => panic!("expected a JSON error for {body}, got {other:?}"),
    }
}

// ---- golden output ----

#[test]
fn task_json_is_canonical() {
    let task = Task {
        payload: Some(fixtures::value(json!({"text": "hi"}))),
        ..fixtures::task()
    };
    let bytes = encode(ContentType::Json, &task).unwrap();
    let text = String::from_utf8(bytes).unwrap();
    assert!(text.contains(r#""strategy":"LEAST_LOADED""#), "{text}");
    assert!(text.contains(r#""payload":{"text":"hi"}"#), "{text}");

    assert_eq!(
        to_json(&task),
        json!({
            "id": "task-1",
            "capability": "summarize",
            "payload": {"text": "hi"},
            "priority": 5,
            "strategy": "LEAST_LOADED",
            "targets": ["agent-1", "agent-2"],
            "timeoutMs": "30000",
            "maxAttempts": 3,
            "deadline": "2023-11-14T23:13:20.123+00:00",
            "correlationId": "run-9",
            "labels": {"region": "eu", "tier": "gold"},
            "fanout": 2
        })
    );
}

#[test]
fn default_fields_are_omitted() {
    let task = Task {
        capability: "summarize".into(),
        strategy: RoutingStrategy::Unspecified.into(),
        ..Task::default()
    };
    assert_eq!(
        encode(ContentType::Json, &task).unwrap(),
        br#"{"capability":"summarize"}"#
    );
}

#[test]
fn agent_record_json_uses_camel_case_enum_names_and_rfc3339() {
    assert_eq!(
        to_json(&fixtures::agent_record()),
        json!({
            "id": "agent-1",
            "name": "Summarizer",
            "capabilities": [{"name": "summarize", "level": 0.75}],
            "maxConcurrency": 4,
            "version": "1.2.3",
            "labels": {"region": "eu", "tier": "gold"},
            "publicKey": "MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=",
            "liveness": "SUSPECT",
            "health": "DEGRADED",
            "inFlight": 2,
            "reputation": 0.9,
            "registeredAt": "2023-11-14T22:13:20.123+00:00",
            "updatedAt": "2023-11-14T22:14:20.123+00:00",
            "lastHeartbeatAt": "2023-11-14T22:14:15.123+00:00",
            "revision": "7"
        })
    );
}

#[test]
fn task_result_json() {
    let result = TaskResult {
        error: None,
        outputs: vec![],
        ..fixtures::task_result()
    };
    assert_eq!(
        to_json(&result),
        json!({
            "taskId": "task-1",
            "status": "COMPLETED",
            "output": {"summary": "hello"},
            "agentId": "agent-1",
            "attempts": 2,
            "completedAt": "2023-11-14T22:15:20.123+00:00"
        })
    );
}

#[test]
fn agent_result_oneof_is_a_plain_field() {
    assert_eq!(
        to_json(&fixtures::agent_result_error()),
        json!({
            "taskId": "task-1",
            "attempt": 2,
            "agentId": "agent-1",
            "error": {"message": "model overloaded", "retryable": true, "code": "overloaded"}
        })
    );
    assert_eq!(
        to_json(&fixtures::agent_result_output())["output"],
        json!({"summary": "hello"})
    );
}

#[test]
fn event_json_has_struct_data_and_int64_as_string() {
    assert_eq!(
        to_json(&fixtures::event()),
        json!({
            "id": "0190a4c2-0000-7000-8000-000000000001",
            "aggregateType": "task",
            "aggregateId": "task-1",
            "sequence": "42",
            "type": "task.completed",
            "data": {"attempts": 2, "agent": "agent-1"},
            "traceId": "4bf92f3577b34da6a3ce929d0e0e4736",
            "time": "2023-11-14T22:15:20.123+00:00",
            "source": "dispatcher"
        })
    );
}

#[test]
fn dead_letter_payload_is_base64() {
    let json = to_json(&fixtures::dead_letter());
    assert_eq!(json["payload"], "eyJjYXBhYmlsaXR5Ijo1ff8=");
    assert_eq!(json["headers"], json!({"Nats-Msg-Id": "abc"}));
    assert_eq!(json["firstSeen"], "2023-11-14T22:13:20.123+00:00");
}

#[test]
fn error_reply_json() {
    assert_eq!(
        to_json(&fixtures::error_reply()),
        json!({
            "code": "ERROR_CODE_UNAVAILABLE",
            "message": "postgres is restarting",
            "field": "store",
            "status": 503,
            "details": {"retryAfterMs": 500}
        })
    );
}

// ---- accepted input ----

#[test]
fn design_example_decodes_into_task() {
    let task: Task = decode(
        ContentType::Json,
        br#"{"capability":"summarize","payload":{"text":"hi"}}"#,
    )
    .unwrap();
    assert_eq!(
        task,
        Task {
            capability: "summarize".into(),
            payload: Some(fixtures::value(json!({"text": "hi"}))),
            ..Task::default()
        }
    );
}

#[test]
fn snake_case_and_camel_case_names_are_both_accepted() {
    let snake: Task = decode(
        ContentType::Json,
        br#"{"capability":"x","timeout_ms":"1500","max_attempts":3,"correlation_id":"c","strategy":"DIRECT"}"#,
    )
    .unwrap();
    let camel: Task = decode(
        ContentType::Json,
        br#"{"capability":"x","timeoutMs":"1500","maxAttempts":3,"correlationId":"c","strategy":"DIRECT"}"#,
    )
    .unwrap();
    assert_eq!(snake, camel);
    assert_eq!(snake.timeout_ms, 1500);
    assert_eq!(snake.strategy(), RoutingStrategy::Direct);
}

#[test]
fn lenient_forms_of_the_json_mapping_are_accepted() {
    // int64 as a number, enum as its number, timestamp with an offset.
    let task: Task = decode(
        ContentType::Json,
        br#"{"capability":"x","timeoutMs":1500,"strategy":3,"deadline":"2023-11-14T23:13:20.123+01:00"}"#,
    )
    .unwrap();
    assert_eq!(task.timeout_ms, 1500);
    assert_eq!(task.strategy(), RoutingStrategy::LeastLoaded);
    assert_eq!(task.deadline, Some(fixtures::ts(0)));
}

#[test]
fn empty_object_and_surrounding_whitespace_are_fine() {
    let task: Task = decode(ContentType::Json, b"  \n{}\r\n ").unwrap();
    assert_eq!(task, Task::default());
}

#[test]
fn null_payload_is_absent() {
    let task: Task = decode(ContentType::Json, br#"{"capability":"x","payload":null}"#).unwrap();
    assert_eq!(task.payload, None);
}

// ---- rejected input names the field ----

#[test]
fn wrong_type_names_the_field() {
    let (field, message) = json_err::<Task>(r#"{"capability": 5}"#);
    assert_eq!(field, "capability");
    assert_eq!(message, "invalid type: integer `5`, expected a string");

    let err = decode::<Task>(ContentType::Json, br#"{"capability": 5}"#).unwrap_err();
    assert_eq!(err.field(), Some("capability"));
    assert_eq!(
        err.to_string(),
        "invalid JSON at `capability`: invalid type: integer `5`, expected a string"
    );
}

#[test]
fn nested_wrong_type_names_the_path() {
    let (field, message) = json_err::<RegisterAgent>(
        r#"{"id":"a","capabilities":[{"name":"x"},{"name":"y","level":"high"}]}"#,
    );
    assert_eq!(field, "capabilities[1].level");
    // pbjson accepts numbers as strings ("0.5", "NaN"), so this is a parse failure.
    assert_eq!(message, "invalid number: invalid float literal");
}

#[test]
fn unknown_enum_value_names_the_field() {
    let (field, message) = json_err::<Task>(r#"{"capability":"x","strategy":"FASTEST"}"#);
    assert_eq!(field, "strategy");
    assert!(
        message.starts_with("unknown variant `FASTEST`"),
        "{message}"
    );
}

#[test]
fn unknown_field_is_rejected_and_named() {
    let (field, message) = json_err::<Task>(r#"{"capability":"x","priorty":3}"#);
    assert_eq!(field, "priorty");
    assert!(message.starts_with("unknown field `priorty`"), "{message}");

    let (field, _) = json_err::<RegisterAgent>(r#"{"capabilities":[{"name":"x","lvl":1}]}"#);
    assert_eq!(field, "capabilities[0].lvl");
}

#[test]
fn bad_number_names_the_field() {
    for body in [r#"{"priority":-1}"#, r#"{"priority":2.5}"#] {
        let (field, message) = json_err::<Task>(body);
        assert_eq!(field, "priority", "{body}");
        assert_eq!(
            message,
            "invalid value: expected a number in the field's range, or the same as a string"
        );
    }
    let (field, message) = json_err::<Task>(r#"{"priority":"high"}"#);
    assert_eq!(field, "priority");
    assert_eq!(message, "invalid number: invalid digit found in string");
}

#[test]
fn null_is_rejected_for_scalar_fields() {
    // The proto3 JSON mapping reads null as "default"; pbjson does so only
    // for message fields, so senders must omit a scalar instead.
    let (field, message) = json_err::<Task>(r#"{"capability":null}"#);
    assert_eq!(
        (field.as_str(), message.as_str()),
        ("capability", "invalid type: null, expected a string")
    );
    let (field, _) = json_err::<Task>(r#"{"priority":null}"#);
    assert_eq!(field, "priority");
    let (field, message) = json_err::<Task>(r#"{"strategy":null}"#);
    assert_eq!(field, "strategy");
    assert!(
        message.starts_with("invalid type: null, expected one of: ["),
        "{message}"
    );

    let task: Task = decode(ContentType::Json, br#"{"deadline":null}"#).unwrap();
    assert_eq!(task.deadline, None);
}

#[test]
fn duplicate_field_is_rejected() {
    let (_, message) = json_err::<Task>(r#"{"timeout_ms":"1","timeoutMs":"2"}"#);
    assert!(message.contains("duplicate field"), "{message}");
}

#[test]
fn bad_timestamp_names_the_field() {
    let (field, _) = json_err::<Task>(r#"{"deadline":"tomorrow"}"#);
    assert_eq!(field, "deadline");
}

// ---- bodies that are not a JSON object ----

#[test]
fn syntax_error_gives_position_and_no_field() {
    let err = decode::<Task>(ContentType::Json, b"{\"capability\": }").unwrap_err();
    assert_eq!(err.field(), None);
    let CodecError::Json { field, message } = err else {
        panic!("{err:?}")
    };
    assert_eq!(field, "");
    assert!(message.contains("line 1 column 16"), "{message}");

    let (field, message) = json_err::<Task>("hello");
    assert_eq!(field, "");
    assert!(message.contains("line 1 column 1"), "{message}");
}

#[test]
fn truncated_and_trailing_input_is_rejected() {
    let (_, message) = json_err::<Task>(r#"{"capability":"x""#);
    assert!(message.contains("EOF"), "{message}");
    let (field, message) = json_err::<Task>(r#"{"capability":"x"} {}"#);
    assert_eq!(field, "");
    assert!(message.contains("trailing characters"), "{message}");
}

#[test]
fn empty_body() {
    for body in ["", "  \n"] {
        let (field, message) = json_err::<Task>(body);
        assert_eq!(
            (field.as_str(), message.as_str()),
            ("", "empty body, expected a JSON object")
        );
    }
    // Protobuf has no other way to write a default message.
    let task: Task = decode(ContentType::Protobuf, b"").unwrap();
    assert_eq!(task, Task::default());
}

#[test]
fn non_object_top_level_is_rejected_clearly() {
    for (body, found) in [
        ("[1]", "an array"),
        (r#""summarize""#, "a string"),
        ("42", "a number"),
        ("-1", "a number"),
        ("true", "a boolean"),
        ("null", "null"),
    ] {
        let (field, message) = json_err::<Task>(body);
        assert_eq!(field, "");
        assert_eq!(message, format!("expected a JSON object, found {found}"));
    }
}

#[test]
fn bad_protobuf_is_an_error() {
    let err = decode::<Task>(ContentType::Protobuf, b"\x12\x05ab").unwrap_err();
    assert!(matches!(err, CodecError::Protobuf(_)), "{err:?}");
    assert_eq!(err.field(), None);
}

// ---- encode failures ----

#[test]
fn json_encoding_fails_for_values_json_cannot_express() {
    // A protobuf body can carry these; JSON has no spelling for them.
    let nan = Task {
        payload: Some(pbjson_types::Value {
            kind: Some(pbjson_types::value::Kind::NumberValue(f64::NAN)),
        }),
        ..Task::default()
    };
    let err = encode(ContentType::Json, &nan).unwrap_err();
    assert_eq!(err.field, "payload");
    assert!(encode(ContentType::Protobuf, &nan).is_ok());

    let far = Task {
        deadline: Some(pbjson_types::Timestamp {
            seconds: i64::MAX,
            nanos: 0,
        }),
        ..Task::default()
    };
    let err = encode(ContentType::Json, &far).unwrap_err();
    assert_eq!(err.field, "deadline");
    assert!(
        err.to_string()
            .starts_with("cannot encode as JSON at `deadline`: "),
        "{err}"
    );
}

// ---- error replies ----

#[test]
fn codec_errors_become_error_replies() {
    let err = decode::<Task>(ContentType::Json, br#"{"capability": 5}"#).unwrap_err();
    let reply = err.to_reply();
    assert_eq!(reply.code(), ErrorCode::InvalidArgument);
    assert_eq!(reply.status, 400);
    assert_eq!(reply.field, "capability");
    assert_eq!(reply.message, err.to_string());

    let err = ContentType::from_header(Some("text/plain")).unwrap_err();
    let reply = concord_wire::v1::ErrorReply::from(&err);
    assert_eq!(reply.code(), ErrorCode::UnsupportedContentType);
    assert_eq!(reply.status, 415);
    assert_eq!(reply.field, "");
}

// ---- Content-Type ----

#[test]
fn content_type_parsing() {
    for (header, expected) in [
        (None, ContentType::Json),
        (Some(""), ContentType::Json),
        (Some("  "), ContentType::Json),
        (Some("application/json"), ContentType::Json),
        (Some("Application/JSON; charset=utf-8"), ContentType::Json),
        (Some(" application/json ;charset=UTF-8"), ContentType::Json),
        (Some("application/protobuf"), ContentType::Protobuf),
        (Some("APPLICATION/PROTOBUF"), ContentType::Protobuf),
        (Some("application/x-protobuf"), ContentType::Protobuf),
        (
            Some("application/x-protobuf; messageType=concord.v1.Task"),
            ContentType::Protobuf,
        ),
    ] {
        assert_eq!(
            ContentType::from_header(header).unwrap(),
            expected,
            "{header:?}"
        );
    }
    for header in [
        "text/plain",
        "application/xml",
        "application/jsonx",
        "json",
        ";charset=utf-8x/",
    ] {
        let err = ContentType::from_header(Some(header)).unwrap_err();
        assert_eq!(err, CodecError::UnsupportedContentType(header.to_owned()));
    }
}

#[test]
fn content_type_names() {
    assert_eq!(ContentType::HEADER, "Content-Type");
    assert_eq!(ContentType::Json.as_str(), "application/json");
    assert_eq!(ContentType::Protobuf.as_str(), "application/protobuf");
    assert_eq!(ContentType::Protobuf.to_string(), ContentType::PROTOBUF);
    assert_eq!(ContentType::default(), ContentType::Json);
    for ct in [ContentType::Json, ContentType::Protobuf] {
        assert_eq!(ContentType::from_header(Some(ct.as_str())).unwrap(), ct);
    }
}

#[test]
fn json_and_protobuf_decode_to_the_same_message() {
    let msg: GetAgent = decode(ContentType::Json, br#"{"id":"agent-1"}"#).unwrap();
    let bytes = encode(ContentType::Protobuf, &msg).unwrap();
    assert_eq!(
        decode::<GetAgent>(ContentType::Protobuf, &bytes).unwrap(),
        msg
    );
}

#[test]
fn whole_numbers_in_payloads_are_written_without_a_fraction() {
    let body = br#"{"capability":"echo","payload":{"n":3,"big":12345678901,"x":2.5,"neg":-7,"list":[1,2.25]}}"#;
    let task: concord_wire::v1::Task =
        concord_wire::decode(concord_wire::ContentType::Json, body).unwrap();
    let json = concord_wire::encode(concord_wire::ContentType::Json, &task).unwrap();
    let text = String::from_utf8(json).unwrap();
    assert!(
        text.contains(r#""n":3,"#) || text.contains(r#""n":3}"#),
        "{text}"
    );
    assert!(text.contains(r#""big":12345678901"#), "{text}");
    assert!(text.contains(r#""x":2.5"#), "{text}");
    assert!(text.contains(r#""neg":-7"#), "{text}");
    assert!(text.contains(r#"[1,2.25]"#), "{text}");
    // -0.0 and huge values stay valid JSON numbers.
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(value["payload"]["n"], 3);
}

#[test]
fn pretty_json_is_the_compact_json_indented() {
    let body = br#"{"capability":"echo","payload":{"n":3,"x":2.5,"big":1e300,"list":[1,[],{},{"s":"a b\n\"c\""}]},"labels":{"k":"v w"}}"#;
    let task: Task = decode(ContentType::Json, body).unwrap();
    let compact = String::from_utf8(encode(ContentType::Json, &task).unwrap()).unwrap();
    let pretty =
        String::from_utf8(concord_wire::codec::encode_json_pretty(&task).unwrap()).unwrap();
    assert!(
        pretty.starts_with("{\n  \"capability\": \"echo\",\n"),
        "{pretty}"
    );
    assert!(pretty.contains("\"n\": 3"), "{pretty}");
    assert_eq!(without_layout(&pretty), compact);
}

#[test]
fn pretty_json_fails_as_compact_json_does() {
    let nan = Task {
        payload: Some(pbjson_types::Value {
            kind: Some(pbjson_types::value::Kind::NumberValue(f64::NAN)),
        }),
        ..Task::default()
    };
    let err = concord_wire::codec::encode_json_pretty(&nan).unwrap_err();
    assert_eq!(err, encode(ContentType::Json, &nan).unwrap_err());
    assert_eq!(err.field, "payload");
}

/// `json` without the whitespace between its tokens.
fn without_layout(json: &str) -> String {
    let (mut out, mut in_string, mut escaped) = (String::new(), false, false);
    for c in json.chars() {
        if in_string {
            in_string = escaped || c != '"';
            escaped = !escaped && c == '\\';
        } else if c.is_ascii_whitespace() {
            continue;
        } else {
            in_string = c == '"';
        }
        out.push(c);
    }
    out
}
