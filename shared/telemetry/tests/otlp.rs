//! With an OTLP endpoint configured, spans are exported over OTLP/HTTP to
//! `<endpoint>/v1/traces` (checked against a local HTTP receiver).

use std::time::Duration;

use concord_telemetry::{TelemetryConfig, current_trace_id, init};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_to_the_configured_endpoint() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let received = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut buffer = [0u8; 8192];
        // Read the head; the body length does not matter for this check.
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buffer).await.unwrap();
            if n == 0 {
                break;
            }
            request.extend_from_slice(&buffer[..n]);
        }
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        String::from_utf8_lossy(&request).to_string()
    });

    let guard = init(&TelemetryConfig {
        service_name: "concord-otlp-test".into(),
        json_logs: true,
        log_filter: "warn".into(),
        otlp_endpoint: Some(endpoint),
    })
    .unwrap();
    let trace_id = {
        let span = tracing::info_span!("exported");
        let _entered = span.enter();
        current_trace_id()
    };
    assert!(
        trace_id.is_some_and(|id| id.len() == 32),
        "spans get a trace id even with logs at warn"
    );
    guard.shutdown(Duration::from_secs(5));

    let head = tokio::time::timeout(Duration::from_secs(10), received)
        .await
        .unwrap()
        .unwrap();
    assert!(head.starts_with("POST /v1/traces"), "{head}");
    assert!(
        head.to_lowercase()
            .contains("content-type: application/x-protobuf"),
        "{head}"
    );
}
