//! Installs the global `tracing` subscriber and the OpenTelemetry tracer provider.

use std::time::Duration;

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// What [`init`] needs to know.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// `service.name` of exported spans, e.g. `concord-registry`.
    pub service_name: String,
    /// One JSON object per log line instead of human-readable text.
    pub json_logs: bool,
    /// `tracing` env-filter directives, e.g. `info,concord_bus=debug`.
    pub log_filter: String,
    /// OTLP/HTTP base endpoint (`http://host:4318`, or `https://` for TLS,
    /// verified against the system's CA certificates); export is off when `None`.
    pub otlp_endpoint: Option<String>,
}

impl TelemetryConfig {
    /// The config described by the shared command-line arguments.
    pub fn from_args(
        args: &concord_config::TelemetryArgs,
        service_name: impl Into<String>,
    ) -> Self {
        Self {
            service_name: service_name.into(),
            json_logs: args.log_format == concord_config::LogFormat::Json,
            log_filter: args.log_filter.clone(),
            otlp_endpoint: args.otlp_endpoint.clone(),
        }
    }
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log filter {filter:?}: {source}; check --log / CONCORD_LOG")]
    Filter {
        filter: String,
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("cannot set up OTLP export to {endpoint}: {source}; check OTEL_EXPORTER_OTLP_ENDPOINT")]
    Otlp {
        endpoint: String,
        source: opentelemetry_otlp::ExporterBuildError,
    },
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// Flushes and shuts down span export when dropped; keep it alive in `main`.
#[must_use = "dropping the guard stops trace export"]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl TelemetryGuard {
    /// Flushes buffered spans, waiting at most `timeout`.
    pub fn shutdown(self, timeout: Duration) {
        // Export failures at exit are not actionable; the guard is going away.
        let _ = self.provider.shutdown_with_timeout(timeout);
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        let _ = self.provider.force_flush();
    }
}

/// Installs the global subscriber, tracer provider and W3C propagator.
///
/// Spans always carry an OpenTelemetry context, even without an exporter, so
/// trace ids propagate across NATS hops and land in the event store.
pub fn init(config: &TelemetryConfig) -> Result<TelemetryGuard, TelemetryError> {
    let filter =
        EnvFilter::try_new(&config.log_filter).map_err(|source| TelemetryError::Filter {
            filter: config.log_filter.clone(),
            source,
        })?;

    let resource = Resource::builder()
        .with_service_name(config.service_name.clone())
        .build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if let Some(endpoint) = config.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) {
        use opentelemetry_otlp::WithExportConfig;
        install_crypto_provider();
        let traces = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(traces)
            .build()
            .map_err(|source| TelemetryError::Otlp {
                endpoint: endpoint.to_string(),
                source,
            })?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    let tracer = provider.tracer("concord");
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());

    let fmt_layer = if config.json_logs {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer().with_target(true).boxed()
    };
    // The log filter applies to log output only: spans of the trace must exist
    // (and carry the W3C context across NATS) even when logs are at `warn`.
    let trace_layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(tracing_subscriber::filter::LevelFilter::INFO);
    tracing_subscriber::registry()
        .with(fmt_layer.with_filter(filter))
        .with(trace_layer)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    Ok(TelemetryGuard { provider })
}

/// Makes ring the process's rustls crypto provider. The exporter's HTTP
/// client (reqwest) is built without one of its own, whose default would
/// bring aws-lc, and panics when none is installed, for `http://` endpoints too.
fn install_crypto_provider() {
    // An error means a provider is installed already, by an earlier init or
    // by the application: that one serves as well.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The W3C trace id of the current span, if it has a valid one.
pub fn current_trace_id() -> Option<String> {
    let context = tracing::Span::current().context();
    let span = context.span();
    let span_context = span.span_context();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}
