//! Prometheus metrics: a registry shared by a service's components and the
//! HTTP server that exposes it on `/metrics` (plus `/healthz`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::{Metric, Registry};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A cheaply cloneable handle on one Prometheus registry.
#[derive(Clone, Default)]
pub struct MetricsRegistry {
    inner: Arc<RwLock<Registry>>,
}

impl MetricsRegistry {
    /// A registry whose metric names all start with `prefix_`.
    pub fn with_prefix(prefix: &str) -> Self {
        Self {
            inner: Arc::new(RwLock::new(Registry::with_prefix(prefix))),
        }
    }

    /// Registers `metric` and hands it back, so a service builds its
    /// metrics struct in one expression:
    /// `heartbeats: registry.add("registry_heartbeats", "Heartbeats received", Counter::default())`.
    pub fn add<M: Metric + Clone>(&self, name: &str, help: &str, metric: M) -> M {
        self.register(name, help, metric.clone());
        metric
    }

    /// Registers a metric; `name` without the prefix, `help` one sentence.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.inner
            .write()
            .expect("metrics registry lock poisoned")
            .register(name, help, metric);
    }

    /// The registry in Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(
            &mut out,
            &self.inner.read().expect("metrics registry lock poisoned"),
        )
        .expect("writing to a String cannot fail");
        out
    }
}

/// A running `/metrics` endpoint.
pub struct MetricsServer {
    local_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsServer {
    /// Binds `addr` and serves `registry` until `shutdown` is cancelled.
    pub async fn start(
        addr: SocketAddr,
        registry: MetricsRegistry,
        shutdown: CancellationToken,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot listen for metrics on {addr}: {e}; set --metrics-addr / CONCORD_METRICS_ADDR"),
            )
        })?;
        let local_addr = listener.local_addr()?;
        let task = tokio::spawn(accept_loop(listener, registry, shutdown));
        Ok(Self { local_addr, task })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Waits for the server to stop after its shutdown token was cancelled.
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    registry: MetricsRegistry,
    shutdown: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "metrics endpoint accept failed");
                    continue;
                }
            },
        };
        let registry = registry.clone();
        let service = hyper::service::service_fn(move |request| {
            let registry = registry.clone();
            async move { Ok::<_, Infallible>(respond(&registry, &request)) }
        });
        let connection_shutdown = shutdown.clone();
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                _ = connection_shutdown.cancelled() => {}
            }
        });
    }
}

fn respond(registry: &MetricsRegistry, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            registry.encode(),
        ),
        (&Method::GET, "/healthz") => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /metrics\n".to_string(),
        ),
    };
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn serves_registered_metrics_and_stops_on_shutdown() {
        let registry = MetricsRegistry::with_prefix("concord");
        let counter = Counter::<u64>::default();
        registry.register("things", "Things seen", counter.clone());
        counter.inc_by(3);

        let shutdown = CancellationToken::new();
        let server =
            MetricsServer::start("127.0.0.1:0".parse().unwrap(), registry, shutdown.clone())
                .await
                .unwrap();
        let addr = server.local_addr();

        let metrics = get(addr, "/metrics").await;
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        assert!(metrics.contains("concord_things_total 3"), "{metrics}");
        assert!(get(addr, "/healthz").await.contains("ok"));
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));

        shutdown.cancel();
        server.stopped().await;
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn a_taken_port_names_the_flag_to_change() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let error =
            MetricsServer::start(addr, MetricsRegistry::default(), CancellationToken::new())
                .await
                .err()
                .unwrap();
        assert!(error.to_string().contains("--metrics-addr"), "{error}");
    }
}
