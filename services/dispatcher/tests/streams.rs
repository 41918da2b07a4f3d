//! The intake stream against a real nats-server: it captures
//! `<root>.tasks.submit` durably, drops a second publish with the same
//! `Nats-Msg-Id`, survives a server restart, and `ensure` is idempotent.

use async_nats::HeaderMap;
use async_nats::jetstream;
use concord_bus::Subjects;
use concord_dispatcher::streams;
use concord_testkit::NatsServer;

#[tokio::test]
async fn intake_captures_submissions_once_and_durably() -> anyhow::Result<()> {
    let mut nats = NatsServer::start().await?;
    let client = nats.client().await;
    let js = jetstream::new(client.clone());
    let subjects = Subjects::new("t1").expect("valid root");
    let (mut stream, _consumer) = streams::ensure(&js, &subjects, streams::ACK_WAIT).await?;
    // A second replica starting up finds the same resources.
    streams::ensure(&js, &subjects, streams::ACK_WAIT).await?;

    let body = br#"{"capability":"summarize","payload":{"text":"hi"}}"#;
    // A plain publish without an id (what `nats pub` does) is captured too. It goes
    // first: the acknowledged publishes below are stored after it.
    client
        .publish(subjects.tasks_submit(), bytes::Bytes::from_static(body))
        .await?;
    client.flush().await?;
    for _ in 0..2 {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", "order-42");
        let ack = js
            .publish_with_headers(
                subjects.tasks_submit(),
                headers,
                bytes::Bytes::from_static(body),
            )
            .await?
            .await?;
        assert_eq!(ack.stream, streams::stream_name(&subjects));
    }

    let info = stream.info().await?;
    assert_eq!(
        info.state.messages, 2,
        "the duplicate publish must be dropped"
    );
    let identity = streams::stream_identity(&stream);

    nats.restart().await?;
    let js = jetstream::new(nats.client().await);
    let (mut stream, _) = streams::ensure(&js, &subjects, streams::ACK_WAIT).await?;
    assert_eq!(
        stream.info().await?.state.messages,
        2,
        "submissions survive a restart"
    );
    assert_eq!(
        streams::stream_identity(&stream),
        identity,
        "same stream, same identity"
    );
    Ok(())
}
