//! The service scaffold: endpoints on the NATS service API (`$SRV.PING/INFO/STATS`
//! for free), one span and one bounded task per request, error replies with a
//! stable code, dead-lettering of bad input, and a drain on shutdown.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::service::{Service, ServiceExt};
use bytes::Bytes;
use concord_telemetry::MetricsRegistry;
use concord_wire::codec::{self, ContentType, WireMessage};
use futures::StreamExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::{Bus, ServiceError, Shutdown, headers};

/// Name, version and limits of a service.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// Service API name, e.g. `concord-registry` (letters, digits, `-`, `_`).
    pub name: String,
    /// Semantic version reported by `$SRV.INFO`.
    pub version: String,
    pub description: String,
    /// Requests handled concurrently per endpoint; more wait in the subscription.
    pub max_in_flight: usize,
}

impl ServiceSpec {
    pub fn new(name: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            description: description.into(),
            max_in_flight: 256,
        }
    }
}

/// One inbound request.
#[derive(Debug, Clone)]
pub struct Request {
    pub subject: String,
    pub headers: Option<HeaderMap>,
    pub payload: Bytes,
    /// Where the sender waits for the reply (`None`: a plain publish).
    pub reply: Option<String>,
}

impl Request {
    /// Whether the sender waits for a reply.
    pub fn expects_reply(&self) -> bool {
        self.reply.is_some()
    }

    /// Where and how to answer this request later, when its handler
    /// answers [`Reply::later`] (`None`: nobody waits for a reply).
    pub fn reply_to(&self) -> Option<ReplyTo> {
        Some(ReplyTo {
            subject: self.reply.clone()?,
            content_type: self.content_type().unwrap_or(ContentType::Json),
        })
    }

    /// The declared content type; JSON when absent.
    pub fn content_type(&self) -> Result<ContentType, ServiceError> {
        Ok(ContentType::from_header(
            self.header(headers::CONTENT_TYPE),
        )?)
    }

    /// Decodes the payload as `M` in the declared content type.
    pub fn decode<M: WireMessage>(&self) -> Result<M, ServiceError> {
        Ok(codec::decode(self.content_type()?, &self.payload)?)
    }

    /// A header value, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        headers::get(self.headers.as_ref(), name)
    }

    /// Headers as a plain map, for storage.
    pub fn header_map(&self) -> BTreeMap<String, String> {
        header_map(self.headers.as_ref())
    }
}

/// A successful reply.
#[derive(Debug, Clone)]
pub struct Reply {
    pub payload: Bytes,
    pub content_type: ContentType,
    /// The handler keeps the request's [`ReplyTo`] and answers later (see
    /// [`Reply::later`]); nothing is sent now.
    later: bool,
}

impl Reply {
    /// No reply now: the handler kept [`Request::reply_to`] and answers with
    /// [`send_reply`] when the outcome is known (a lock granted to a waiter,
    /// a barrier released), possibly from another replica.
    pub fn later() -> Self {
        Self {
            payload: Bytes::new(),
            content_type: ContentType::Json,
            later: true,
        }
    }

    /// Whether this is [`Reply::later`].
    pub fn is_later(&self) -> bool {
        self.later
    }

    /// `message` encoded in the content type the request used (JSON by default).
    pub fn to<M: WireMessage>(request: &Request, message: &M) -> Result<Self, ServiceError> {
        let content_type = request.content_type().unwrap_or(ContentType::Json);
        Self::encoded(content_type, message)
    }

    /// `message` encoded as `content_type`; fails only for values JSON cannot
    /// express (a NaN number in a payload), which is the handler's bug.
    pub fn encoded<M: WireMessage>(
        content_type: ContentType,
        message: &M,
    ) -> Result<Self, ServiceError> {
        let payload = codec::encode(content_type, message)
            .map_err(|error| ServiceError::internal(format!("cannot encode reply: {error}")))?;
        Ok(Self {
            payload: payload.into(),
            content_type,
            later: false,
        })
    }
}

/// Where a request waits for its reply, and the encoding it speaks: kept by
/// a handler that answers later. Its text form ([`ReplyTo::to_text`]) can
/// be stored, so any replica can answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyTo {
    pub subject: String,
    pub content_type: ContentType,
}

impl ReplyTo {
    /// `json <subject>` or `protobuf <subject>`.
    pub fn to_text(&self) -> String {
        let encoding = match self.content_type {
            ContentType::Json => "json",
            ContentType::Protobuf => "protobuf",
        };
        format!("{encoding} {}", self.subject)
    }

    /// Reads [`ReplyTo::to_text`]'s form back.
    pub fn from_text(text: &str) -> Option<Self> {
        let (encoding, subject) = text.split_once(' ')?;
        let content_type = match encoding {
            "json" => ContentType::Json,
            "protobuf" => ContentType::Protobuf,
            _ => return None,
        };
        (!subject.is_empty()).then(|| Self {
            subject: subject.to_string(),
            content_type,
        })
    }
}

/// Answers a request kept with [`Reply::later`]: `result` encoded in the
/// request's content type, with the same headers an immediate reply has.
pub async fn send_reply<M: WireMessage>(
    client: &async_nats::Client,
    to: &ReplyTo,
    result: Result<&M, &ServiceError>,
) -> Result<(), async_nats::PublishError> {
    let (payload, reply_headers) = match result {
        Ok(message) => match codec::encode(to.content_type, message) {
            Ok(payload) => {
                let mut reply_headers = HeaderMap::new();
                reply_headers.insert(headers::CONTENT_TYPE, to.content_type.as_str());
                (Bytes::from(payload), reply_headers)
            }
            Err(error) => error_reply(
                &ServiceError::internal(format!("cannot encode reply: {error}")),
                to.content_type,
            ),
        },
        Err(error) => error_reply(error, to.content_type),
    };
    client
        .publish_with_headers(to.subject.clone(), reply_headers, payload)
        .await
}

/// Handles the requests of one endpoint.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, request: Request) -> impl Future<Output = Result<Reply, ServiceError>> + Send;
}

impl<F, Fut> Handler for F
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Reply, ServiceError>> + Send,
{
    fn handle(&self, request: Request) -> impl Future<Output = Result<Reply, ServiceError>> + Send {
        self(request)
    }
}

/// A request refused as bad input, handed to the [`RejectSink`] to keep.
#[derive(Debug, Clone)]
pub struct Rejected {
    pub service: String,
    pub subject: String,
    pub headers: BTreeMap<String, String>,
    pub payload: Bytes,
    pub error: ServiceError,
}

/// Keeps rejected requests (the runtime stores them as dead letters).
pub trait RejectSink: Send + Sync + 'static {
    fn reject(&self, rejected: Rejected) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    endpoint: String,
}

#[derive(Clone)]
struct EndpointMetrics {
    requests: Family<EndpointLabels, Counter>,
    latency: Family<LatencyLabels, Histogram>,
}

impl EndpointMetrics {
    fn register(registry: &MetricsRegistry) -> Self {
        let metrics = Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
            }),
        };
        registry.register(
            "requests",
            "Requests handled, by endpoint and outcome (ok or an error code)",
            metrics.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from receipt to reply, by endpoint",
            metrics.latency.clone(),
        );
        metrics
    }
}

/// A service or endpoint could not be registered on NATS.
#[derive(Debug, thiserror::Error)]
#[error("cannot register {what} on NATS: {reason}")]
pub struct HostError {
    what: String,
    reason: String,
}

/// A running service: its endpoints, their in-flight requests, and its metrics.
pub struct ServiceHost {
    client: async_nats::Client,
    spec: ServiceSpec,
    service: Service,
    tracker: TaskTracker,
    stop: Shutdown,
    metrics: EndpointMetrics,
    reject_sink: Option<Arc<dyn RejectSink>>,
}

impl ServiceHost {
    /// Registers the service with NATS so it answers `$SRV.PING/INFO/STATS`.
    pub async fn start(
        bus: &Bus,
        spec: ServiceSpec,
        metrics: &MetricsRegistry,
    ) -> Result<Self, HostError> {
        let service = bus
            .client
            .service_builder()
            .description(&spec.description)
            .start(&spec.name, &spec.version)
            .await
            .map_err(|error| HostError {
                what: format!("service {}", spec.name),
                reason: error.to_string(),
            })?;
        Ok(Self {
            client: bus.client.clone(),
            spec,
            service,
            tracker: TaskTracker::new(),
            stop: Shutdown::new(),
            metrics: EndpointMetrics::register(metrics),
            reject_sink: None,
        })
    }

    /// Where bad input is kept; without one it is only logged and counted.
    pub fn set_reject_sink(&mut self, sink: Arc<dyn RejectSink>) {
        self.reject_sink = Some(sink);
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Serves `subject` (queue group `q`, shared by replicas) with `handler`.
    pub async fn endpoint<H: Handler>(
        &self,
        name: &str,
        subject: String,
        handler: H,
    ) -> Result<(), HostError> {
        self.add_endpoint(name, subject, true, handler).await
    }

    /// Like [`ServiceHost::endpoint`], without a trace span per request: for
    /// high-rate, low-value requests such as heartbeats.
    pub async fn endpoint_untraced<H: Handler>(
        &self,
        name: &str,
        subject: String,
        handler: H,
    ) -> Result<(), HostError> {
        self.add_endpoint(name, subject, false, handler).await
    }

    async fn add_endpoint<H: Handler>(
        &self,
        name: &str,
        subject: String,
        traced: bool,
        handler: H,
    ) -> Result<(), HostError> {
        let mut endpoint = self
            .service
            .endpoint_builder()
            .name(name)
            .add(subject.clone())
            .await
            .map_err(|error| HostError {
                what: format!("endpoint {name} on {subject}"),
                reason: error.to_string(),
            })?;
        // Once this returns the endpoint must be reachable: make the server
        // process the subscription now rather than with the next message.
        self.client.flush().await.map_err(|error| HostError {
            what: format!("endpoint {name} on {subject}"),
            reason: error.to_string(),
        })?;
        let handler = Arc::new(handler);
        let context = Arc::new(EndpointContext {
            service: self.spec.name.clone(),
            endpoint: name.to_string(),
            traced,
            ok: self
                .metrics
                .requests
                .get_or_create(&EndpointLabels {
                    endpoint: name.to_string(),
                    outcome: "ok",
                })
                .clone(),
            latency: self
                .metrics
                .latency
                .get_or_create(&LatencyLabels {
                    endpoint: name.to_string(),
                })
                .clone(),
            metrics: self.metrics.clone(),
            reject_sink: self.reject_sink.clone(),
        });
        let permits = Arc::new(Semaphore::new(self.spec.max_in_flight));
        let tracker = self.tracker.clone();
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            let mut stopping = false;
            loop {
                let request = if stopping {
                    // Unsubscribed: take what is already buffered, then finish.
                    match tokio::time::timeout(Duration::from_millis(200), endpoint.next()).await {
                        Ok(Some(request)) => request,
                        _ => break,
                    }
                } else {
                    tokio::select! {
                        request = endpoint.next() => match request {
                            Some(request) => request,
                            None => break,
                        },
                        _ = stop.triggered() => {
                            let _ = endpoint.stop().await;
                            stopping = true;
                            continue;
                        }
                    }
                };
                let permit = permits
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("semaphore never closed");
                let handler = handler.clone();
                let context = context.clone();
                tracker.spawn(async move {
                    context.serve(handler.as_ref(), request).await;
                    drop(permit);
                });
            }
        });
        Ok(())
    }

    /// Stops taking requests, waits up to `grace` for in-flight ones, then
    /// deregisters the service.
    pub async fn shutdown(self, grace: Duration) {
        self.stop.trigger();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(service = %self.spec.name, "in-flight requests did not finish within the grace period");
        }
        let _ = self.service.stop().await;
    }
}

struct EndpointContext {
    service: String,
    endpoint: String,
    traced: bool,
    metrics: EndpointMetrics,
    /// This endpoint's success counter and latency histogram, resolved once
    /// (a family lookup per request hashes and clones the labels).
    ok: Counter,
    latency: Histogram,
    reject_sink: Option<Arc<dyn RejectSink>>,
}

impl EndpointContext {
    async fn serve<H: Handler>(&self, handler: &H, service_request: async_nats::service::Request) {
        let started = Instant::now();
        let message = &service_request.message;
        let span = if self.traced {
            tracing::info_span!(
                "request",
                otel.kind = "server",
                service = %self.service,
                endpoint = %self.endpoint,
                subject = %message.subject,
                outcome = tracing::field::Empty,
            )
        } else {
            // High-rate endpoints (heartbeats) skip the trace span: it was a
            // tenth of the registry's CPU at 10k heartbeats/s.
            tracing::Span::none()
        };
        headers::continue_trace(&span, message.headers.as_ref());
        let request = Request {
            subject: message.subject.to_string(),
            headers: message.headers.clone(),
            payload: message.payload.clone(),
            reply: message.reply.as_ref().map(|r| r.to_string()),
        };
        let result = handler
            .handle(request.clone())
            .instrument(span.clone())
            .await;
        let outcome = match &result {
            Ok(reply) if reply.later => "later",
            Ok(_) => "ok",
            Err(error) => error.code.as_str_name(),
        };
        span.record("outcome", outcome);

        let answer_now = !matches!(&result, Ok(reply) if reply.later);
        let mut rejected = None;
        let (payload, reply_headers) = match result {
            Ok(reply) => {
                let mut reply_headers = HeaderMap::new();
                reply_headers.insert(headers::CONTENT_TYPE, reply.content_type.as_str());
                (reply.payload, reply_headers)
            }
            Err(error) => {
                let _enter = span.enter();
                if error.is_bad_input() {
                    tracing::info!(error = %error, "request rejected");
                } else {
                    tracing::warn!(error = %error, "request failed");
                }
                drop(_enter);
                let content_type = request.content_type().unwrap_or(ContentType::Json);
                let reply = error_reply(&error, content_type);
                if error.is_bad_input() {
                    rejected = Some(error);
                }
                reply
            }
        };
        if request.expects_reply()
            && answer_now
            && let Err(error) = service_request
                .respond_with_headers(Ok(payload), reply_headers)
                .await
        {
            tracing::warn!(parent: &span, %error, "could not send reply");
        }
        // The reply goes out first: keeping the dead letter needs Postgres,
        // which must not delay (or, when down, withhold) the error reply.
        if let Some(error) = rejected {
            self.keep_rejected(&request, error).await;
        }
        if outcome == "ok" {
            self.ok.inc();
        } else {
            self.metrics
                .requests
                .get_or_create(&EndpointLabels {
                    endpoint: self.endpoint.clone(),
                    outcome,
                })
                .inc();
        }
        self.latency.observe(started.elapsed().as_secs_f64());
    }

    async fn keep_rejected(&self, request: &Request, error: ServiceError) {
        if let Some(sink) = &self.reject_sink {
            sink.reject(Rejected {
                service: self.service.clone(),
                subject: request.subject.clone(),
                headers: request.header_map(),
                payload: request.payload.clone(),
                error,
            })
            .await;
        }
    }
}

/// Longest `Nats-Service-Error` header value.
const MAX_ERROR_HEADER_CHARS: usize = 512;

/// The body and headers of an error reply.
pub fn error_reply(error: &ServiceError, content_type: ContentType) -> (Bytes, HeaderMap) {
    let mut reply_headers = HeaderMap::new();
    reply_headers.insert(headers::CONTENT_TYPE, content_type.as_str());
    // Header values cannot hold line breaks; keep the header short (the body
    // has the whole message) so an error about a huge field still fits.
    let mut description: String = error
        .message
        .chars()
        .take(MAX_ERROR_HEADER_CHARS)
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect();
    if error.message.chars().count() > MAX_ERROR_HEADER_CHARS {
        description.push_str("...");
    }
    reply_headers.insert(headers::SERVICE_ERROR, description.as_str());
    reply_headers.insert(
        headers::SERVICE_ERROR_CODE,
        error.status().to_string().as_str(),
    );
    reply_headers.insert(headers::ERROR_CODE, error.code.as_str_name());
    let body = codec::encode(content_type, &error.to_reply())
        .expect("an ErrorReply holds only strings and integers");
    (body.into(), reply_headers)
}

/// Headers as a sorted map (the last value wins for repeated names).
pub fn header_map(headers: Option<&HeaderMap>) -> BTreeMap<String, String> {
    headers
        .map(|h| {
            h.iter()
                .filter_map(|(name, values)| {
                    values
                        .last()
                        .map(|v| (name.to_string(), v.as_str().to_string()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Reads a reply: `Ok(M)` for success, `Err(ServiceError)` for an error reply.
pub fn read_reply<M: WireMessage>(message: &async_nats::Message) -> Result<M, ServiceError> {
    let content_type = ContentType::from_header(headers::get(
        message.headers.as_ref(),
        headers::CONTENT_TYPE,
    ))
    .map_err(ServiceError::from)?;
    let is_error = headers::get(message.headers.as_ref(), headers::SERVICE_ERROR_CODE).is_some();
    if is_error {
        let reply: concord_wire::v1::ErrorReply =
            codec::decode(content_type, &message.payload).unwrap_or_default();
        let code = concord_wire::v1::ErrorCode::try_from(reply.code)
            .unwrap_or(concord_wire::v1::ErrorCode::Internal);
        let message_text = if reply.message.is_empty() {
            headers::get(message.headers.as_ref(), headers::SERVICE_ERROR)
                .unwrap_or("error")
                .to_string()
        } else {
            reply.message
        };
        return Err(ServiceError {
            code,
            message: message_text,
            field: (!reply.field.is_empty()).then_some(reply.field),
            details: reply
                .details
                .as_ref()
                .map(concord_wire::json::from_wire_value),
        });
    }
    codec::decode(content_type, &message.payload)
        .map_err(|e| ServiceError::internal(format!("undecodable reply: {e}")))
}
