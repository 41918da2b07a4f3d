//! Durable events: appended to the Postgres event store in batches, then
//! published on `<root>.events.<aggregate>.<type>` as JSON for live observers.
//!
//! Callers await [`EventPublisher::emit`] until their events are committed, so
//! a JetStream message can be acknowledged only after its outcome is durable.
//! Concurrent callers share one multi-row INSERT (the performance budget: one
//! row per commit caps the system near 4k/s, batches reach ~150k rows/s).

use std::sync::Arc;

use concord_bus::Bus;
use concord_store::{EventData, EventStore, NewEvent, StoreError};
use concord_telemetry::MetricsRegistry;
use concord_wire::codec::ContentType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Largest number of events written in one INSERT.
const MAX_BATCH: usize = 1000;
/// Events waiting for the writer before `emit` applies backpressure.
const QUEUE_DEPTH: usize = 16_384;

/// Why events could not be made durable.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EmitError {
    #[error("event store write failed: {0}")]
    Store(Arc<StoreError>),
    #[error("event publisher is shut down")]
    Closed,
}

struct Pending {
    events: Vec<NewEvent>,
    done: oneshot::Sender<Result<(), EmitError>>,
}

/// Handle on the batching event writer; clone freely.
#[derive(Clone)]
pub struct EventPublisher {
    tx: mpsc::Sender<Pending>,
    source: Arc<str>,
    store: EventStore,
    bus: Bus,
    closing: CancellationToken,
    writer: Arc<tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl EventPublisher {
    /// Starts the writer task.
    pub fn start(store: EventStore, bus: Bus, source: &str, metrics: &MetricsRegistry) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let written = metrics.add(
            "events_written",
            "Events committed to the event store",
            Counter::<u64>::default(),
        );
        let batch_sizes = metrics.add(
            "event_batch_size",
            "Events per event-store INSERT",
            Histogram::new(exponential_buckets(1.0, 2.0, 11)),
        );
        let closing = CancellationToken::new();
        let writer = tokio::spawn(write_loop(
            store.clone(),
            bus.clone(),
            rx,
            closing.clone(),
            written,
            batch_sizes,
        ));
        Self {
            tx,
            source: source.into(),
            store,
            bus,
            closing,
            writer: Arc::new(tokio::sync::Mutex::new(Some(writer))),
        }
    }

    /// The `source` stamped on events built with [`EventPublisher::event`].
    pub fn source(&self) -> &str {
        &self.source
    }

    /// A new event from this service, with a fresh id, the current trace id
    /// and time. The time is cut to whole microseconds, the event store's
    /// precision, so state derived from the event in memory equals what a
    /// replay reads back.
    pub fn event(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: i64,
        event_type: &str,
        data: impl Into<EventData>,
    ) -> NewEvent {
        NewEvent {
            event_id: uuid::Uuid::now_v7(),
            aggregate_type: aggregate_type.to_string(),
            aggregate_id: aggregate_id.to_string(),
            sequence,
            event_type: event_type.to_string(),
            data: data.into(),
            trace_id: concord_telemetry::current_trace_id(),
            source: self.source.to_string(),
            occurred_at: whole_micros(chrono::Utc::now()),
        }
    }

    /// Makes `events` durable (one transaction with other callers' events),
    /// then publishes them; resolves once committed.
    pub async fn emit(&self, events: Vec<NewEvent>) -> Result<(), EmitError> {
        if events.is_empty() {
            return Ok(());
        }
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Pending { events, done })
            .await
            .map_err(|_| EmitError::Closed)?;
        wait.await.map_err(|_| EmitError::Closed)?
    }

    /// The event store, for services that append events inside their own
    /// transaction (`EventStore::append_in`) and then call
    /// [`EventPublisher::publish_committed`].
    pub fn store(&self) -> &EventStore {
        &self.store
    }

    /// Publishes events that the caller already committed to the store
    /// itself, in the same transaction as its own state change.
    pub async fn publish_committed(&self, events: &[NewEvent]) {
        publish(&self.bus, events).await;
    }

    /// Stops accepting events (later `emit`s fail with [`EmitError::Closed`])
    /// and waits until the queued ones are written.
    pub async fn close(&self) {
        self.closing.cancel();
        let writer = self.writer.lock().await.take();
        if let Some(writer) = writer {
            let _ = writer.await;
        }
    }
}

async fn write_loop(
    store: EventStore,
    bus: Bus,
    mut rx: mpsc::Receiver<Pending>,
    closing: CancellationToken,
    written: Counter<u64>,
    batch_sizes: Histogram,
) {
    let mut batch: Vec<Pending> = Vec::new();
    let mut rows: Vec<NewEvent> = Vec::with_capacity(MAX_BATCH);
    loop {
        let next = tokio::select! {
            biased;
            next = rx.recv() => next,
            _ = closing.cancelled(), if !rx.is_closed() => {
                // Refuse new events; what is already queued is still written.
                rx.close();
                continue;
            }
        };
        let Some(first) = next else { break };
        rows.extend(first.events.iter().cloned());
        batch.push(first);
        while rows.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(next) => {
                    rows.extend(next.events.iter().cloned());
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        let result = store
            .append(&rows)
            .await
            .map(|_| ())
            .map_err(|e| EmitError::Store(Arc::new(e)));
        if result.is_ok() {
            written.inc_by(rows.len() as u64);
            batch_sizes.observe(rows.len() as f64);
            publish(&bus, &rows).await;
        } else if let Err(error) = &result {
            tracing::error!(%error, events = rows.len(), "event store append failed");
        }
        for pending in batch.drain(..) {
            let _ = pending.done.send(result.clone());
        }
        rows.clear();
    }
}

/// `at` without its sub-microsecond part (the precision Postgres keeps, so
/// a time written and read back compares equal).
pub fn whole_micros(at: chrono::DateTime<chrono::Utc>) -> chrono::DateTime<chrono::Utc> {
    let extra = at.timestamp_subsec_nanos() % 1000;
    at - chrono::Duration::nanoseconds(i64::from(extra))
}

/// Publishes committed events on `<root>.events.<aggregate>.<name>` over
/// `bus` as core NATS messages (cheap, at most once, a failed publish is
/// logged; the durable copy is in Postgres, replayable with `concord events
/// replay`).
pub async fn publish(bus: &Bus, events: &[NewEvent]) {
    for event in events {
        let subject = bus
            .subjects
            .event(&event.aggregate_type, event_suffix(event));
        let payload = event_json_bytes(event);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            concord_bus::headers::CONTENT_TYPE,
            ContentType::Json.as_str(),
        );
        if let Err(error) = bus
            .client
            .publish_with_headers(subject, headers, payload.into())
            .await
        {
            tracing::warn!(%error, "could not publish event");
        }
    }
}

/// The last dotted token of the event type is the subject suffix:
/// `task.completed` on aggregate `task` goes to `<root>.events.task.completed`.
fn event_suffix(event: &NewEvent) -> &str {
    event
        .event_type
        .rsplit('.')
        .next()
        .unwrap_or(&event.event_type)
}

/// [`event_json`] serialized, written straight from the event (no
/// intermediate value, no copy of its data).
pub fn event_json_bytes(event: &NewEvent) -> Vec<u8> {
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Wire<'a> {
        id: uuid::fmt::Hyphenated,
        aggregate_type: &'a str,
        aggregate_id: &'a str,
        sequence: String,
        #[serde(rename = "type")]
        event_type: &'a str,
        data: &'a EventData,
        time: String,
        source: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        trace_id: Option<&'a str>,
    }
    let wire = Wire {
        id: event.event_id.hyphenated(),
        aggregate_type: &event.aggregate_type,
        aggregate_id: &event.aggregate_id,
        sequence: event.sequence.max(0).to_string(),
        event_type: &event.event_type,
        data: &event.data,
        time: event
            .occurred_at
            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        source: &event.source,
        trace_id: event.trace_id.as_deref(),
    };
    // Room for the envelope and a typical body up front: growing from
    // serde_json's default 128 bytes costs two or three reallocations.
    let mut out = Vec::with_capacity(512);
    serde_json::to_writer(&mut out, &wire).expect("events always serialize");
    out
}

/// The canonical JSON of the wire `Event` message for a stored event.
///
/// Built directly rather than through `google.protobuf.Struct`, which would
/// turn every integer in `data` into a float.
pub fn event_json(event: &NewEvent) -> serde_json::Value {
    let mut json = serde_json::json!({
        "id": event.event_id.to_string(),
        "aggregateType": event.aggregate_type,
        "aggregateId": event.aggregate_id,
        "sequence": event.sequence.max(0).to_string(),
        "type": event.event_type,
        "data": event.data.to_value(),
        "time": event.occurred_at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        "source": event.source,
    });
    if let Some(trace_id) = &event.trace_id {
        json["traceId"] = trace_id.clone().into();
    }
    json
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_wire::codec;
    use concord_wire::v1::Event;

    #[test]
    fn bytes_are_the_json_value() {
        for trace_id in [None, Some("0af7651916cd43dd8448eb211c80319c".to_string())] {
            let event = NewEvent {
                event_id: uuid::Uuid::now_v7(),
                aggregate_type: "task".into(),
                aggregate_id: "t\"1".into(),
                sequence: 7,
                event_type: "task.completed".into(),
                data: serde_json::json!({"output": {"n": 1, "s": "é"}, "attempt": 2}).into(),
                trace_id,
                source: "concord-dispatcher".into(),
                occurred_at: chrono::Utc::now(),
            };
            let parsed: serde_json::Value =
                serde_json::from_slice(&event_json_bytes(&event)).unwrap();
            assert_eq!(parsed, event_json(&event));
        }
    }

    #[test]
    fn suffix_is_the_last_token_of_the_type() {
        let mut event = NewEvent {
            event_id: uuid::Uuid::nil(),
            aggregate_type: "task".into(),
            aggregate_id: "t1".into(),
            sequence: 1,
            event_type: "task.completed".into(),
            data: serde_json::json!({"a": 1}).into(),
            trace_id: None,
            source: "x".into(),
            occurred_at: chrono::Utc::now(),
        };
        assert_eq!(event_suffix(&event), "completed");
        event.event_type = "registered".into();
        assert_eq!(event_suffix(&event), "registered");
    }

    #[test]
    fn wire_form_keeps_the_data_object() {
        let event = NewEvent {
            event_id: uuid::Uuid::nil(),
            aggregate_type: "agent".into(),
            aggregate_id: "a1".into(),
            sequence: 3,
            event_type: "agent.registered".into(),
            data: serde_json::json!({"name": "echo", "capabilities": ["echo"]}).into(),
            trace_id: Some("abc".into()),
            source: "concord-registry".into(),
            occurred_at: chrono::Utc::now(),
        };
        let json = event_json(&event);
        assert_eq!(json["data"]["name"], "echo");
        // It is a valid wire Event.
        let bytes = serde_json::to_vec(&json).unwrap();
        let wire: Event = codec::decode(ContentType::Json, &bytes).unwrap();
        assert_eq!(wire.aggregate_id, "a1");
        assert_eq!(wire.trace_id, "abc");
        assert_eq!(json["aggregateType"], "agent");
        assert_eq!(json["sequence"], "3");
        assert_eq!(json["type"], "agent.registered");
    }
}
