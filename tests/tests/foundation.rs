//! End-to-end checks of the foundation against a real nats-server and Postgres:
//! every service answers the NATS service API, requests get error replies that
//! name the bad field and are kept as dead letters, trace context crosses NATS,
//! events are durable and published, shutdown drains in-flight work, and bad
//! configuration fails with a one-line error.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use concord_bus::service::read_reply;
use concord_bus::{Reply, Request, ServiceError, headers};
use concord_runtime::{Service, ServiceInfo};
use concord_store::{DeadLetterFilter, EventStore};
use concord_tests::{World, gather};
use concord_wire::codec::{self, ContentType};
use concord_wire::v1::{ErrorCode, ErrorReply, RegisterAgent, RegisterAgentReply};
use futures::StreamExt;
use tokio::sync::Notify;

const SERVICES: [ServiceInfo; 6] = [
    concord_registry::INFO,
    concord_dispatcher::INFO,
    concord_consensus::INFO,
    concord_auction::INFO,
    concord_state::INFO,
    concord_monitor::INFO,
];

const TEST_SERVICE: ServiceInfo = ServiceInfo {
    name: "concord-testsvc",
    description: "endpoint used by the foundation tests",
    default_metrics_port: 0,
    migrations: None,
};

#[tokio::test]
async fn all_six_services_answer_the_service_api_and_stop_cleanly() -> anyhow::Result<()> {
    let world = World::start().await?;
    let mut running = Vec::new();
    for info in SERVICES {
        let context = world.context(&info).await?;
        let shutdown = context.shutdown.clone();
        let service = match info.name {
            "concord-registry" => concord_registry::build(context).await?,
            "concord-dispatcher" => concord_dispatcher::build(context).await?,
            "concord-consensus" => concord_consensus::build(context).await?,
            "concord-auction" => concord_auction::build(context).await?,
            "concord-state" => concord_state::build(context).await?,
            "concord-monitor" => concord_monitor::build(context).await?,
            other => unreachable!("{other}"),
        };
        running.push((shutdown, tokio::spawn(service.run_until_stopped())));
    }

    let client = world.nats.client().await;
    for verb in ["PING", "INFO", "STATS"] {
        let replies = gather(&client, &format!("$SRV.{verb}"), Duration::from_millis(500)).await;
        let mut names: Vec<String> = replies
            .iter()
            .map(|m| {
                serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap()["name"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        names.sort();
        let mut expected: Vec<String> = SERVICES.iter().map(|s| s.name.to_string()).collect();
        expected.sort();
        assert_eq!(names, expected, "$SRV.{verb}");
    }
    // Each service can also be addressed by name.
    let registry = gather(
        &client,
        "$SRV.INFO.concord-registry",
        Duration::from_millis(300),
    )
    .await;
    assert_eq!(registry.len(), 1);

    for (shutdown, task) in running {
        shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(10), task).await???;
    }
    let replies = gather(&client, "$SRV.PING", Duration::from_millis(300)).await;
    let still: Vec<String> = replies
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).to_string())
        .collect();
    assert!(
        still.is_empty(),
        "services still answering after shutdown: {still:?}"
    );
    Ok(())
}

/// A test endpoint that validates a `RegisterAgent` like a real handler would.
async fn register_like(request: Request) -> Result<Reply, ServiceError> {
    let message: RegisterAgent = request.decode()?;
    if message.name.is_empty() {
        return Err(ServiceError::invalid("name", "must not be empty"));
    }
    let trace_id = concord_telemetry::current_trace_id().unwrap_or_default();
    Reply::to(
        &request,
        &RegisterAgentReply {
            agent: Some(concord_wire::v1::AgentRecord {
                id: message.id,
                name: message.name,
                version: trace_id,
                ..Default::default()
            }),
            created: true,
        },
    )
}

async fn start_test_service(
    world: &World,
) -> anyhow::Result<(concord_runtime::ServiceContext, Service, String)> {
    let context = world.context(&TEST_SERVICE).await?;
    let service = Service::start(context.clone()).await?;
    let subject = context.bus.subjects.endpoint("testsvc", "register");
    service
        .host()
        .endpoint("register", subject.clone(), register_like)
        .await?;
    Ok((context, service, subject))
}

#[tokio::test]
async fn invalid_input_gets_an_error_naming_the_field_and_is_dead_lettered() -> anyhow::Result<()> {
    let world = World::start().await?;
    let (context, service, subject) = start_test_service(&world).await?;
    let client = world.nats.client().await;
    let mut events = client.subscribe(context.bus.subjects.all_events()).await?;

    // Wrong type: the codec names the field.
    let reply = client
        .request(
            subject.clone(),
            r#"{"name":"a","maxConcurrency":"many"}"#.into(),
        )
        .await?;
    let error = read_reply::<RegisterAgentReply>(&reply).unwrap_err();
    assert_eq!(error.code, ErrorCode::InvalidArgument);
    assert_eq!(error.field.as_deref(), Some("maxConcurrency"));
    let headers = reply.headers.as_ref().unwrap();
    assert_eq!(
        headers.get(headers::SERVICE_ERROR_CODE).unwrap().as_str(),
        "400"
    );
    assert_eq!(
        headers.get(headers::ERROR_CODE).unwrap().as_str(),
        "INVALID_ARGUMENT"
    );
    let body: ErrorReply = codec::decode(ContentType::Json, &reply.payload)?;
    assert_eq!(body.field, "maxConcurrency");
    assert_eq!(body.status, 400);

    // Handler validation: the handler names the field.
    let reply = client
        .request(subject.clone(), r#"{"id":"a1"}"#.into())
        .await?;
    let error = read_reply::<RegisterAgentReply>(&reply).unwrap_err();
    assert_eq!(error.field.as_deref(), Some("name"));
    assert!(
        error.message.contains("must not be empty"),
        "{}",
        error.message
    );

    // Not JSON at all.
    let reply = client.request(subject.clone(), "{oops".into()).await?;
    assert_eq!(
        read_reply::<RegisterAgentReply>(&reply).unwrap_err().code,
        ErrorCode::InvalidArgument
    );

    // Unsupported content type.
    let mut h = HeaderMap::new();
    h.insert(headers::CONTENT_TYPE, "text/xml");
    let reply = client
        .request_with_headers(subject.clone(), h, "<a/>".into())
        .await?;
    assert_eq!(
        read_reply::<RegisterAgentReply>(&reply).unwrap_err().code,
        ErrorCode::UnsupportedContentType
    );

    // Each is kept as a dead letter after its reply went out; the
    // dead_letter.created event follows the stored letter, so wait for those.
    for _ in 0..4 {
        let event = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await?
            .unwrap();
        assert!(
            event.subject.ends_with(".events.dead_letter.created"),
            "{}",
            event.subject
        );
    }
    // All four are kept with the raw bytes and the reason, and the events are
    // in the store too.
    let letters = context
        .dead_letters
        .list(&DeadLetterFilter {
            source: Some(TEST_SERVICE.name.to_string()),
            ..DeadLetterFilter::default()
        })
        .await?;
    assert_eq!(letters.len(), 4, "{letters:?}");
    assert!(
        letters
            .iter()
            .all(|l| l.reason == "invalid_input" && l.subject == subject)
    );
    assert!(letters.iter().any(|l| l.payload == b"{oops"));
    assert!(
        letters
            .iter()
            .any(|l| l.headers.get("Content-Type").map(String::as_str) == Some("text/xml"))
    );

    let stored = EventStore::new(context.pool.clone())
        .replay(&concord_store::ReplayFilter {
            aggregate_type: Some("dead_letter".into()),
            ..Default::default()
        })
        .await?;
    assert_eq!(stored.len(), 4);

    context.shutdown.trigger();
    service.run_until_stopped().await?;
    Ok(())
}

#[tokio::test]
async fn valid_requests_succeed_in_json_and_protobuf() -> anyhow::Result<()> {
    let world = World::start().await?;
    let (context, service, subject) = start_test_service(&world).await?;
    let bus = world.bus("tester").await?;

    let request = RegisterAgent {
        id: "a1".into(),
        name: "echo".into(),
        ..Default::default()
    };
    let reply: RegisterAgentReply = bus
        .request(subject.clone(), &request, Duration::from_secs(5))
        .await?;
    assert_eq!(reply.agent.unwrap().name, "echo");

    let mut h = HeaderMap::new();
    h.insert(headers::CONTENT_TYPE, ContentType::PROTOBUF);
    let bytes = codec::encode(ContentType::Protobuf, &request)?;
    let reply = bus
        .client
        .request_with_headers(subject.clone(), h, bytes.into())
        .await?;
    assert_eq!(
        reply
            .headers
            .as_ref()
            .unwrap()
            .get(headers::CONTENT_TYPE)
            .unwrap()
            .as_str(),
        ContentType::PROTOBUF
    );
    let decoded: RegisterAgentReply = codec::decode(ContentType::Protobuf, &reply.payload)?;
    assert_eq!(decoded.agent.unwrap().id, "a1");

    // Nothing was dead-lettered.
    assert_eq!(context.dead_letters.count().await?, 0);
    context.shutdown.trigger();
    service.run_until_stopped().await?;
    Ok(())
}

#[tokio::test]
async fn trace_context_in_headers_is_continued_by_the_handler() -> anyhow::Result<()> {
    let world = World::start().await?;
    let (context, service, subject) = start_test_service(&world).await?;
    let client = world.nats.client().await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut h = HeaderMap::new();
    h.insert(
        headers::TRACEPARENT,
        format!("00-{trace_id}-00f067aa0ba902b7-01").as_str(),
    );
    let reply = client
        .request_with_headers(subject, h, r#"{"id":"a","name":"n"}"#.into())
        .await?;
    let reply: RegisterAgentReply = read_reply(&reply).map_err(|e| anyhow::anyhow!("{e}"))?;
    // The handler echoes the trace id it ran under in `version`.
    assert_eq!(reply.agent.unwrap().version, trace_id);
    context.shutdown.trigger();
    service.run_until_stopped().await?;
    Ok(())
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests_before_stopping() -> anyhow::Result<()> {
    let world = World::start().await?;
    let context = world.context(&TEST_SERVICE).await?;
    let service = Service::start(context.clone()).await?;
    let started = Arc::new(Notify::new());
    let subject = context.bus.subjects.endpoint("testsvc", "slow");
    let notify = started.clone();
    service
        .host()
        .endpoint("slow", subject.clone(), move |request: Request| {
            let notify = notify.clone();
            async move {
                notify.notify_one();
                tokio::time::sleep(Duration::from_millis(300)).await;
                Reply::to(&request, &RegisterAgentReply::default())
            }
        })
        .await?;
    let client = world.nats.client().await;
    let pending = tokio::spawn({
        let client = client.clone();
        async move { client.request(subject, "{}".into()).await }
    });
    started.notified().await;
    context.shutdown.trigger();
    service.run_until_stopped().await?;
    let reply = pending.await??;
    assert!(
        read_reply::<RegisterAgentReply>(&reply).is_ok(),
        "in-flight request lost its reply"
    );
    Ok(())
}

#[tokio::test]
async fn events_are_durable_then_published() -> anyhow::Result<()> {
    let world = World::start().await?;
    let context = world.context(&TEST_SERVICE).await?;
    let client = world.nats.client().await;
    let mut live = client
        .subscribe(context.bus.subjects.event("widget", ">"))
        .await?;
    client.flush().await?;

    let events: Vec<_> = (1..=50)
        .map(|n| {
            context.events.event(
                "widget",
                "w1",
                n,
                "widget.changed",
                serde_json::json!({"n": n}),
            )
        })
        .collect();
    // Concurrent emitters share batches; each resolves once committed.
    let (a, b) = events.split_at(25);
    let (ra, rb) = tokio::join!(
        context.events.emit(a.to_vec()),
        context.events.emit(b.to_vec())
    );
    ra?;
    rb?;
    let stored = EventStore::new(context.pool.clone())
        .events_for("widget", "w1")
        .await?;
    assert_eq!(stored.len(), 50);
    assert_eq!(stored.last().unwrap().data["n"], 50);
    for n in 1..=50 {
        let message = tokio::time::timeout(Duration::from_secs(5), live.next())
            .await?
            .unwrap();
        let event: serde_json::Value = serde_json::from_slice(&message.payload)?;
        assert_eq!(event["data"]["n"], n);
        assert_eq!(
            message.subject.as_str(),
            format!("{}.events.widget.changed", world.root)
        );
    }
    // Emitting the same events again is idempotent.
    context.events.emit(events).await?;
    assert_eq!(
        EventStore::new(context.pool.clone())
            .events_for("widget", "w1")
            .await?
            .len(),
        50
    );

    context.clone().close().await;
    let closed = context
        .events
        .emit(vec![context.events.event(
            "widget",
            "w2",
            1,
            "widget.changed",
            serde_json::json!({}),
        )])
        .await;
    assert!(closed.is_err(), "emit after close must fail, not hang");
    Ok(())
}

#[tokio::test]
async fn bad_configuration_fails_with_one_line_saying_what_to_fix() -> anyhow::Result<()> {
    let world = World::start().await?;
    let shutdown = concord_bus::Shutdown::new();

    let mut args = world.args();
    args.nats.nats_url = "nats://127.0.0.1:1".into();
    let error = concord_runtime::ServiceContext::connect(&TEST_SERVICE, &args, shutdown.clone())
        .await
        .err()
        .expect("unreachable NATS must fail")
        .to_string();
    assert!(
        error.contains("--nats-url") && error.contains("127.0.0.1:1"),
        "{error}"
    );
    assert!(!error.contains('\n'), "{error}");

    let mut args = world.args();
    args.database.database_url = "postgres://concord:secret@127.0.0.1:1/nope".into();
    let error = concord_runtime::ServiceContext::connect(&TEST_SERVICE, &args, shutdown.clone())
        .await
        .err()
        .expect("unreachable Postgres must fail")
        .to_string();
    assert!(
        error.contains("--database-url") && error.contains("127.0.0.1:1"),
        "{error}"
    );
    assert!(!error.contains("secret"), "password leaked: {error}");
    assert!(!error.contains('\n'), "{error}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let mut args = world.args();
    args.telemetry.metrics_addr = Some(taken.local_addr()?);
    let error = concord_runtime::ServiceContext::connect(&TEST_SERVICE, &args, shutdown)
        .await
        .err()
        .expect("a taken metrics port must fail")
        .to_string();
    assert!(error.contains("--metrics-addr"), "{error}");
    Ok(())
}

#[tokio::test]
async fn a_sibling_without_echo_gets_only_other_connections_messages() -> anyhow::Result<()> {
    let world = World::start().await?;
    let context = world.context(&TEST_SERVICE).await?;
    let main = context.bus.client.clone();
    let subject = context.bus.subjects.event("widget", "changed");

    // Until `subscriber` hears from the main connection, its subscription
    // may not be in place at the server yet (a flush is not a round trip).
    async fn until_subscribed(
        main: &async_nats::Client,
        subject: &str,
        subscriber: &mut async_nats::Subscriber,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            main.publish(subject.to_string(), "ping".into()).await?;
            main.flush().await?;
            if let Ok(Some(_)) =
                tokio::time::timeout(Duration::from_millis(100), subscriber.next()).await
            {
                return Ok(());
            }
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "never subscribed");
        }
    }
    /// Payloads received until `last` (inclusive), pings left out.
    async fn until(
        subscriber: &mut async_nats::Subscriber,
        last: &str,
    ) -> anyhow::Result<Vec<String>> {
        let mut seen = Vec::new();
        loop {
            let message = tokio::time::timeout(Duration::from_secs(5), subscriber.next())
                .await?
                .unwrap();
            let payload = String::from_utf8(message.payload.to_vec())?;
            if payload != "ping" {
                seen.push(payload.clone());
            }
            if payload == last {
                return Ok(seen);
            }
        }
    }

    // Without echo: its own message never arrives, the main connection's do.
    let quiet = context.bus.sibling("events", false).await?;
    let mut heard = quiet.client.subscribe(subject.clone()).await?;
    until_subscribed(&main, &subject, &mut heard).await?;
    quiet.client.publish(subject.clone(), "own".into()).await?;
    quiet.client.flush().await?;
    main.publish(subject.clone(), "other".into()).await?;
    assert_eq!(until(&mut heard, "other").await?, ["other"]);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), heard.next())
            .await
            .is_err(),
        "its own message must not arrive later either"
    );

    // With echo: its own message arrives.
    let loud = context.bus.sibling("loud", true).await?;
    let mut both = loud.client.subscribe(subject.clone()).await?;
    until_subscribed(&main, &subject, &mut both).await?;
    loud.client.publish(subject.clone(), "own".into()).await?;
    assert_eq!(until(&mut both, "own").await?, ["own"]);
    context.close().await;
    Ok(())
}
