//! Telemetry for every Concord binary: logs, traces (OTLP) and Prometheus metrics.
//!
//! [`init`] installs one `tracing` subscriber that writes human-readable or
//! JSON logs and, through `tracing-opentelemetry`, gives every span a W3C trace
//! context (exported over OTLP/HTTP, or HTTPS, when an endpoint is configured).
//! The [`metrics`] module serves a Prometheus `/metrics` endpoint.

pub mod metrics;
mod tracing_setup;

pub use metrics::{MetricsRegistry, MetricsServer};
pub use tracing_setup::{TelemetryConfig, TelemetryError, TelemetryGuard, current_trace_id, init};
