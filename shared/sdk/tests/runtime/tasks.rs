//! Task assignments: results, failures, bad input, encodings, tracing,
//! bounded concurrency, duplicates, progress and cancellation.

use std::time::Duration;

use async_nats::HeaderMap;
use concord_bus::headers;
use concord_wire::codec::ContentType;
use concord_wire::v1::{CancelTask, ErrorCode, TaskAssignment, TaskProgress};
use futures::StreamExt;
use serde_json::json;

use crate::support::{
    Event, Harness, Running, WAIT, assign_raw, assignment, content_type, encode, error, output,
    read_result, test_agent,
};

#[tokio::test]
async fn an_assignment_is_answered_with_the_handlers_output() {
    let mut h = Harness::start().await;
    let (agent, mut probe) = test_agent();
    let running = Running::spawn(agent, h.config("agent-out"));
    h.registry.next_registration(WAIT).await.unwrap();

    let payload = json!({"op": "echo", "text": "hi", "n": [1, 2.5, null]});
    let result = h
        .assign("agent-out", &assignment("t-1", payload.clone()))
        .await
        .unwrap();
    assert_eq!(result.task_id, "t-1");
    assert_eq!(result.attempt, 1);
    assert_eq!(result.agent_id, "agent-out");
    assert_eq!(output(&result), payload);
    assert_eq!(probe.next().await, Event::Started("t-1".into()));
    running.stop().await.unwrap();
}

#[tokio::test]
async fn a_failing_handler_is_answered_with_its_retryable_flag_and_code() {
    let mut h = Harness::start().await;
    let (agent, _probe) = test_agent();
    let running = Running::spawn(agent, h.config("agent-fail"));
    h.registry.next_registration(WAIT).await.unwrap();

    for retryable in [true, false] {
        let task = assignment(
            &format!("t-{retryable}"),
            json!({"op": "fail", "retryable": retryable, "code": "scripted"}),
        );
        let result = h.assign("agent-fail", &task).await.unwrap();
        let failure = error(&result);
        assert_eq!(failure.retryable, retryable);
        assert_eq!(failure.code, "scripted");
        assert_eq!(failure.message, "scripted failure");
    }
    running.stop().await.unwrap();
}

#[tokio::test]
async fn malformed_assignments_get_an_error_reply_naming_the_field() {
    let mut h = Harness::start().await;
    let (agent, mut probe) = test_agent();
    let running = Running::spawn(agent, h.config("agent-bad"));
    h.registry.next_registration(WAIT).await.unwrap();

    let json_headers = || {
        let mut headers = HeaderMap::new();
        headers.insert(headers::CONTENT_TYPE, ContentType::JSON);
        headers
    };
    let cases: [(HeaderMap, &[u8], ErrorCode, Option<&str>); 4] = [
        (
            json_headers(),
            br#"{"taskId": 5}"#,
            ErrorCode::InvalidArgument,
            Some("taskId"),
        ),
        (
            json_headers(),
            br#"{"taskId": "a.b"}"#,
            ErrorCode::InvalidArgument,
            Some("taskId"),
        ),
        (
            json_headers(),
            b"not json",
            ErrorCode::InvalidArgument,
            None,
        ),
        (
            {
                let mut headers = HeaderMap::new();
                headers.insert(headers::CONTENT_TYPE, "text/plain");
                headers
            },
            b"{}",
            ErrorCode::UnsupportedContentType,
            None,
        ),
    ];
    for (headers, body, code, field) in cases {
        let reply = assign_raw(&h.bus, "agent-bad", headers, body.to_vec()).await;
        let refused = read_result(&reply).unwrap_err();
        assert_eq!(
            refused.code,
            code,
            "{}: {refused}",
            String::from_utf8_lossy(body)
        );
        assert_eq!(refused.field.as_deref(), field, "{refused}");
    }
    // None of them reached the handler.
    assert_eq!(probe.next_within(Duration::from_millis(100)).await, None);
    running.stop().await.unwrap();
}

#[tokio::test]
async fn a_protobuf_assignment_gets_a_protobuf_reply() {
    let mut h = Harness::start().await;
    let (agent, _probe) = test_agent();
    let running = Running::spawn(agent, h.config("agent-proto"));
    h.registry.next_registration(WAIT).await.unwrap();

    let mut headers = HeaderMap::new();
    headers.insert(headers::CONTENT_TYPE, ContentType::PROTOBUF);
    let task = assignment("t-proto", json!({"op": "echo", "k": "v"}));
    let reply = assign_raw(
        &h.bus,
        "agent-proto",
        headers,
        encode(ContentType::Protobuf, &task),
    )
    .await;
    assert_eq!(content_type(&reply), ContentType::Protobuf);
    let result = read_result(&reply).unwrap();
    assert_eq!(output(&result), json!({"op": "echo", "k": "v"}));
    running.stop().await.unwrap();
}

#[tokio::test]
async fn the_handler_runs_in_the_callers_trace() {
    let mut h = Harness::start().await;
    let (agent, _probe) = test_agent();
    let running = Running::spawn(agent, h.config("agent-trace"));
    h.registry.next_registration(WAIT).await.unwrap();

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut headers = HeaderMap::new();
    headers.insert(headers::CONTENT_TYPE, ContentType::JSON);
    headers.insert(
        headers::TRACEPARENT,
        format!("00-{trace_id}-00f067aa0ba902b7-01").as_str(),
    );
    let task = assignment("t-trace", json!({"op": "trace"}));
    let reply = assign_raw(
        &h.bus,
        "agent-trace",
        headers,
        encode(ContentType::Json, &task),
    )
    .await;
    let result = read_result(&reply).unwrap();
    assert_eq!(output(&result), json!({"traceId": trace_id}));
    // The reply carries the trace on, too.
    let traceparent = headers::get(reply.headers.as_ref(), headers::TRACEPARENT)
        .expect("traceparent on the reply");
    assert!(traceparent.contains(trace_id), "{traceparent}");
    running.stop().await.unwrap();
}

#[tokio::test]
async fn a_capability_the_agent_lacks_is_handed_back_retryable() {
    let mut h = Harness::start().await;
    let (agent, mut probe) = test_agent();
    let running = Running::spawn(agent, h.config("agent-cap"));
    h.registry.next_registration(WAIT).await.unwrap();

    let task = TaskAssignment {
        capability: "translate".into(),
        ..assignment("t-cap", json!({}))
    };
    let failure = error(&h.assign("agent-cap", &task).await.unwrap());
    assert!(failure.retryable);
    assert_eq!(failure.code, "unsupported_capability");
    assert_eq!(probe.next_within(Duration::from_millis(100)).await, None);
    running.stop().await.unwrap();
}

#[tokio::test]
async fn a_panicking_handler_is_answered_retryable_and_frees_its_slot() {
    let mut h = Harness::start().await;
    let (agent, _probe) = test_agent();
    let running = Running::spawn(agent, h.config("agent-panic").with_max_concurrency(1));
    h.registry.next_registration(WAIT).await.unwrap();

    let failure = error(
        &h.assign("agent-panic", &assignment("t-p", json!({"op": "panic"})))
            .await
            .unwrap(),
    );
    assert!(failure.retryable);
    assert_eq!(failure.code, "agent_panic");
    assert!(
        failure.message.contains("scripted panic"),
        "{}",
        failure.message
    );
    // The only slot is free again.
    let result = h
        .assign("agent-panic", &assignment("t-after", json!({"op": "echo"})))
        .await
        .unwrap();
    assert_eq!(output(&result), json!({"op": "echo"}));
    h.registry.clear();
    let heartbeat = h.registry.next_heartbeat(WAIT).await.unwrap();
    assert_eq!(heartbeat.in_flight, 0);
    running.stop().await.unwrap();
}

#[tokio::test]
async fn concurrency_is_bounded_and_heartbeats_report_the_tasks_in_flight() {
    let mut h = Harness::start().await;
    let (agent, mut probe) = test_agent();
    let running = Running::spawn(agent, h.config("agent-busy").with_max_concurrency(2));
    h.registry.next_registration(WAIT).await.unwrap();

    let mut replies = Vec::new();
    for i in 0..5 {
        let bus = h.bus.clone();
        replies.push(tokio::spawn(async move {
            crate::support::assign(
                &bus,
                "agent-busy",
                &assignment(&format!("t-{i}"), json!({"op": "block"})),
            )
            .await
        }));
    }
    for _ in 0..2 {
        assert!(matches!(probe.next().await, Event::Started(_)));
    }
    let heartbeat = h
        .registry
        .heartbeat_where(WAIT, |hb| hb.in_flight == 2)
        .await
        .expect("a heartbeat with 2 in flight");
    assert_eq!(heartbeat.capacity, 2);
    // Full: the other three wait in the subscription.
    assert_eq!(probe.next_within(Duration::from_millis(300)).await, None);

    for _ in 0..3 {
        probe.release(1);
        assert!(matches!(probe.next().await, Event::Started(_)));
    }
    probe.release(2);
    for reply in replies {
        let result = reply.await.unwrap().expect("every task is answered");
        assert_eq!(output(&result), json!({"done": result.task_id}));
    }
    assert_eq!(probe.max_running(), 2);
    h.registry
        .heartbeat_where(WAIT, |hb| hb.in_flight == 0)
        .await
        .expect("a heartbeat with nothing in flight");
    running.stop().await.unwrap();
}

#[tokio::test]
async fn a_duplicate_delivery_of_a_running_attempt_runs_and_replies_once() {
    let mut h = Harness::start().await;
    let (agent, mut probe) = test_agent();
    let running = Running::spawn(agent, h.config("agent-dup"));
    h.registry.next_registration(WAIT).await.unwrap();

    let task = assignment("t-dup", json!({"op": "block"}));
    let first = {
        let bus = h.bus.clone();
        let task = task.clone();
        tokio::spawn(async move { crate::support::assign(&bus, "agent-dup", &task).await })
    };
    assert_eq!(probe.next().await, Event::Started("t-dup".into()));

    // The same attempt again, as a redelivery: no second run, no second reply.
    let inbox = h.bus.client.new_inbox();
    let mut duplicate_inbox = h.bus.client.subscribe(inbox.clone()).await.unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(headers::CONTENT_TYPE, ContentType::JSON);
    h.bus
        .client
        .publish_with_reply_and_headers(
            h.bus.subjects.agent_tasks("agent-dup"),
            inbox,
            headers,
            encode(ContentType::Json, &task).into(),
        )
        .await
        .unwrap();
    // Assignments are taken in order: once a later one is answered, the
    // duplicate has been seen (and must not have started the handler).
    let marker = h
        .assign("agent-dup", &assignment("t-marker", json!({"op": "echo"})))
        .await
        .unwrap();
    assert_eq!(marker.task_id, "t-marker");
    assert_eq!(probe.next().await, Event::Started("t-marker".into()));

    probe.release(1);
    let result = first.await.unwrap().unwrap();
    assert_eq!(output(&result), json!({"done": "t-dup"}));
    assert_eq!(probe.next_within(Duration::from_millis(100)).await, None);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), duplicate_inbox.next())
            .await
            .is_err(),
        "the duplicate got a reply"
    );

    // A new attempt of the same task is not a duplicate.
    let retry = TaskAssignment {
        attempt: 2,
        ..assignment("t-dup", json!({"op": "echo"}))
    };
    let result = h.assign("agent-dup", &retry).await.unwrap();
    assert_eq!(result.attempt, 2);
    running.stop().await.unwrap();
}

#[tokio::test]
async fn progress_reports_are_published_on_the_tasks_progress_subject() {
    let mut h = Harness::start().await;
    let (agent, mut probe) = test_agent();
    let running = Running::spawn(agent, h.config("agent-progress"));
    h.registry.next_registration(WAIT).await.unwrap();

    let progress_subject = concord_sdk::protocol::task_progress(&h.bus.subjects, "t-prog");
    let mut progress = h.bus.client.subscribe(progress_subject).await.unwrap();
    h.bus.client.flush().await.unwrap();
    let reply = {
        let bus = h.bus.clone();
        tokio::spawn(async move {
            crate::support::assign(
                &bus,
                "agent-progress",
                &assignment("t-prog", json!({"op": "progress"})),
            )
            .await
        })
    };
    let message = tokio::time::timeout(WAIT, progress.next())
        .await
        .unwrap()
        .unwrap();
    let report: TaskProgress = concord_wire::decode(ContentType::Json, &message.payload).unwrap();
    assert_eq!(report.task_id, "t-prog");
    assert_eq!(report.attempt, 1);
    assert_eq!(report.agent_id, "agent-progress");
    assert_eq!(report.fraction, 0.5);
    assert_eq!(report.message, "half way");
    assert_eq!(probe.next().await, Event::Started("t-prog".into()));

    probe.release(1);
    reply.await.unwrap().unwrap();
    running.stop().await.unwrap();
}

#[tokio::test]
async fn a_cancel_request_cancels_the_tasks_context() {
    let mut h = Harness::start().await;
    let (agent, mut probe) = test_agent();
    let running = Running::spawn(agent, h.config("agent-cancel"));
    h.registry.next_registration(WAIT).await.unwrap();

    let reply = {
        let bus = h.bus.clone();
        tokio::spawn(async move {
            crate::support::assign(
                &bus,
                "agent-cancel",
                &assignment("t-c", json!({"op": "block"})),
            )
            .await
        })
    };
    assert_eq!(probe.next().await, Event::Started("t-c".into()));

    let cancel_subject = concord_sdk::protocol::agent_cancel(&h.bus.subjects, "agent-cancel");
    let request = CancelTask {
        task_id: "t-c".into(),
        reason: "operator said so".into(),
    };
    let answer = tokio::time::timeout(
        WAIT,
        h.bus.client.request(
            cancel_subject.clone(),
            encode(ContentType::Json, &request).into(),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(&answer.payload[..], b"{}");
    assert_eq!(
        probe.next().await,
        Event::Cancelled {
            task_id: "t-c".into(),
            reason: "operator said so".into()
        }
    );
    let failure = error(&reply.await.unwrap().unwrap());
    assert_eq!(failure.code, "cancelled");
    assert!(!failure.retryable);

    // Unknown tasks: nothing to do, same answer. Malformed: INVALID_ARGUMENT.
    let unknown = CancelTask {
        task_id: "nope".into(),
        reason: String::new(),
    };
    let answer = h
        .bus
        .client
        .request(
            cancel_subject.clone(),
            encode(ContentType::Json, &unknown).into(),
        )
        .await
        .unwrap();
    assert_eq!(&answer.payload[..], b"{}");
    let answer = h
        .bus
        .client
        .request(cancel_subject, "{}".into())
        .await
        .unwrap();
    let refused = concord_bus::service::read_reply::<CancelTask>(&answer).unwrap_err();
    assert_eq!(refused.code, ErrorCode::InvalidArgument);
    assert_eq!(refused.field.as_deref(), Some("taskId"));
    running.stop().await.unwrap();
}

#[tokio::test]
async fn metrics_count_tasks_by_outcome() {
    let mut h = Harness::start().await;
    let (agent, _probe) = test_agent();
    let metrics = concord_telemetry::MetricsRegistry::with_prefix("concord");
    let running = Running::spawn(
        agent,
        h.config("agent-metrics").with_metrics(metrics.clone()),
    );
    h.registry.next_registration(WAIT).await.unwrap();

    h.assign("agent-metrics", &assignment("t-ok", json!({"op": "echo"})))
        .await
        .unwrap();
    h.assign(
        "agent-metrics",
        &assignment("t-bad", json!({"op": "fail", "retryable": true})),
    )
    .await
    .unwrap();
    running.stop().await.unwrap();

    let text = metrics.encode();
    for line in [
        r#"concord_agent_tasks_total{outcome="ok"} 1"#,
        r#"concord_agent_tasks_total{outcome="failed_retryable"} 1"#,
        "concord_agent_tasks_in_flight 0",
        "concord_agent_registrations_total 1",
        "concord_agent_task_duration_seconds_count 2",
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
}
