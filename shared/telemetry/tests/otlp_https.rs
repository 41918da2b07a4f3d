//! An `https://` OTLP endpoint is accepted and spoken to over TLS: the
//! collector's port receives a TLS handshake, not a plaintext HTTP request.
//! (Its own test binary: `init` installs the process's global subscriber.)

use std::time::Duration;

use concord_telemetry::{TelemetryConfig, init};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// First byte of a TLS record carrying a handshake message (the ClientHello).
const TLS_HANDSHAKE: u8 = 0x16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_endpoints_get_a_tls_handshake() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("https://{}", listener.local_addr().unwrap());
    let received = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        // A TLS record header: content type, protocol version (3, x), length.
        let mut header = [0u8; 5];
        stream.read_exact(&mut header).await.unwrap();
        header
        // Dropping the stream fails the handshake, and with it this export.
    });

    let guard = init(&TelemetryConfig {
        service_name: "concord-otlp-https-test".into(),
        json_logs: true,
        log_filter: "warn".into(),
        otlp_endpoint: Some(endpoint),
    })
    .expect("an https endpoint is accepted");
    tracing::info_span!("exported").in_scope(|| {});
    guard.shutdown(Duration::from_secs(5));

    let header = tokio::time::timeout(Duration::from_secs(10), received)
        .await
        .expect("the exporter connects to the collector")
        .unwrap();
    assert_eq!(
        (header[0], header[1]),
        (TLS_HANDSHAKE, 3),
        "expected a TLS handshake record, got {:?}",
        String::from_utf8_lossy(&header)
    );
}
