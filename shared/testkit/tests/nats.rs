//! Tests of the test nats-server: start, pub/sub, JetStream across restarts, parallel servers.

use std::time::Duration;

use async_nats::jetstream;
use concord_testkit::NatsServer;
use futures::StreamExt;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn starts_and_round_trips_a_message() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    assert!(server.url().ends_with(&format!(":{}", server.port())));

    let client = server.client().await;
    let mut sub = client.subscribe("testkit.ping").await?;
    client.flush().await?;
    client.publish("testkit.ping", "hello".into()).await?;
    let message = tokio::time::timeout(WAIT, sub.next())
        .await?
        .expect("subscription open");
    assert_eq!(&message.payload[..], b"hello");
    Ok(())
}

#[tokio::test]
async fn jetstream_stream_survives_restart() -> anyhow::Result<()> {
    let mut server = NatsServer::start().await?;
    let port = server.port();
    let js = jetstream::new(server.client().await);
    js.create_stream(jetstream::stream::Config {
        name: "TESTKIT".into(),
        subjects: vec!["testkit.js.>".into()],
        ..Default::default()
    })
    .await?;
    for i in 0..10 {
        js.publish("testkit.js.item", format!("{i}").into())
            .await?
            .await?;
    }

    server.restart().await?;
    assert_eq!(server.port(), port, "restart keeps the port");

    let js = jetstream::new(server.client().await);
    let mut stream = js.get_stream("TESTKIT").await?;
    assert_eq!(stream.info().await?.state.messages, 10);
    Ok(())
}

#[tokio::test]
async fn kill_then_start_again() -> anyhow::Result<()> {
    let mut server = NatsServer::start().await?;
    server.kill();
    assert!(!server.is_running());
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", server.port()))
            .await
            .is_err(),
        "nothing listens after kill"
    );
    server.start_again().await?;
    assert!(server.is_running());
    let client = server.client().await;
    client.publish("testkit.after", "x".into()).await?;
    client.flush().await?;
    Ok(())
}

#[tokio::test]
async fn parallel_servers_get_different_ports() -> anyhow::Result<()> {
    let (a, b) = tokio::try_join!(NatsServer::start(), NatsServer::start())?;
    assert_ne!(a.port(), b.port());
    assert_ne!(a.store_dir(), b.store_dir());

    // They are independent brokers: a message on one is not seen on the other.
    let (ca, cb) = (a.client().await, b.client().await);
    let mut sub_b = cb.subscribe("testkit.iso").await?;
    cb.flush().await?;
    ca.publish("testkit.iso", "a".into()).await?;
    ca.flush().await?;
    let got = tokio::time::timeout(Duration::from_millis(200), sub_b.next()).await;
    assert!(got.is_err(), "server b received a message published on a");
    Ok(())
}

#[tokio::test]
async fn drop_stops_the_process_and_removes_the_directory() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let port = server.port();
    let dir = server.store_dir();
    assert!(server.log().contains("Server is ready"));
    drop(server);
    assert!(!dir.exists(), "temporary directory removed");
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
    );
    Ok(())
}

#[tokio::test]
async fn the_proxy_relays_and_drops_only_what_it_is_told() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let proxy = concord_testkit::NatsProxy::start(server.port()).await?;
    let direct = server.client().await;
    let mut sub = direct.subscribe("testkit.proxy.>").await?;
    direct.flush().await?;

    let through = async_nats::connect(proxy.url()).await?;
    proxy.drop_publications("testkit.proxy.drop", 1);
    for subject in [
        "testkit.proxy.a",
        "testkit.proxy.drop",
        "testkit.proxy.drop",
    ] {
        through.publish(subject, subject.into()).await?;
    }
    // Headers too (HPUB), and a request-reply through the proxy.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("X-Test", "1");
    through
        .publish_with_headers("testkit.proxy.h", headers, "h".into())
        .await?;
    through.flush().await?;

    let mut got = Vec::new();
    for _ in 0..3 {
        let message = tokio::time::timeout(WAIT, sub.next())
            .await?
            .expect("subscription open");
        got.push(message.subject.to_string());
    }
    assert_eq!(
        got,
        ["testkit.proxy.a", "testkit.proxy.drop", "testkit.proxy.h"],
        "the first matching publication was dropped, the second and the rest relayed"
    );
    assert_eq!(proxy.dropped(), 1);
    Ok(())
}
