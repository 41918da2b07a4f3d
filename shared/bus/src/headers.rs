//! NATS headers Concord reads and writes, and W3C trace context carried in them.

use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector};
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub use concord_wire::headers::{
    CONTENT_TYPE, ERROR_CODE, MSG_ID, REPLAY_OF, REPLAYED, TRACEPARENT, TRACESTATE,
};
/// Set on error replies: a short human-readable description (NATS service API).
pub const SERVICE_ERROR: &str = async_nats::service::NATS_SERVICE_ERROR;
/// Set on error replies: the numeric status (NATS service API).
pub const SERVICE_ERROR_CODE: &str = async_nats::service::NATS_SERVICE_ERROR_CODE;

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|value| value.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_ref()).collect()
    }
}

/// Writes the current span's trace context into `headers`.
pub fn inject_trace_context(headers: &mut HeaderMap) {
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HeaderInjector(headers));
    });
}

/// Makes `span` a child of the trace context found in `headers`, if any.
pub fn continue_trace(span: &tracing::Span, headers: Option<&HeaderMap>) {
    let Some(headers) = headers else { return };
    if headers.get(TRACEPARENT).is_none() {
        return;
    }
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(headers))
    });
    // Fails only when the span is disabled by the filter; nothing to continue then.
    let _ = span.set_parent(parent);
}

/// Headers for an outgoing message: content type plus the current trace context.
pub fn outgoing(content_type: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, content_type);
    inject_trace_context(&mut headers);
    headers
}

/// The value of a header as a string, if present.
pub fn get<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    headers.and_then(|h| h.get(name)).map(|v| v.as_str())
}
