//! The group-committing writer: task rows, task events and dead letters go
//! to Postgres in batches (one transaction per batch: while one commits, the
//! next accumulates), then the events are published on NATS (on the
//! connection the engine publishes results on, so they arrive first) and the engine
//! is told which writes landed, so it can publish results and acknowledge
//! submissions only once their outcome is durable.
//!
//! A failed batch is retried (Postgres restarting) until it lands or the
//! dispatcher stops; nothing is dropped.

use std::time::Duration;

use concord_bus::Bus;
use concord_store::{DeadLetterStore, NewDeadLetter};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::store::{TaskStore, TaskWrite};

/// Most task writes in one transaction.
const MAX_BATCH: usize = 512;

/// A task write, optionally with a dead letter stored before it.
#[derive(Debug)]
pub struct WriteRequest {
    pub write: TaskWrite,
    pub dead_letter: Option<NewDeadLetter>,
}

/// What became of one write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub task_id: String,
    /// False: another writer owns the task (its stored sequence moved on).
    pub owned: bool,
}

/// Writer metrics.
#[derive(Clone)]
pub struct WriterMetrics {
    pub batches: Counter,
    pub retries: Counter,
    pub batch_size: Option<Histogram>,
    /// Time to store one batch (all tries).
    pub duration: Histogram,
}

impl WriterMetrics {
    pub fn register(registry: &concord_telemetry::MetricsRegistry) -> Self {
        Self {
            batches: registry.add(
                "dispatcher_write_batches",
                "Transactions committed by the dispatcher's task writer",
                Counter::default(),
            ),
            retries: registry.add(
                "dispatcher_write_retries",
                "Task write batches retried after a database error",
                Counter::default(),
            ),
            batch_size: Some(registry.add(
                "dispatcher_write_batch_size",
                "Task writes per transaction",
                Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            )),
            duration: registry.add(
                "dispatcher_write_duration_seconds",
                "Time to store one batch of task writes (retries included)",
                Histogram::new(exponential_buckets(0.000_05, 2.0, 20)),
            ),
        }
    }
}

/// Transactions in flight at once: while one waits for its fsync, the next
/// one runs (a task has at most one write in flight, so lanes never touch
/// the same row).
const LANES: usize = 2;

/// Runs until `requests` closes (after draining it) or `stop` fires while a
/// batch cannot be written.
pub async fn run(
    store: TaskStore,
    dead_letters: DeadLetterStore,
    events: &Bus,
    mut requests: mpsc::UnboundedReceiver<WriteRequest>,
    written: mpsc::UnboundedSender<Vec<Written>>,
    stop: CancellationToken,
    metrics: WriterMetrics,
) {
    let mut lanes = FuturesUnordered::new();
    let mut open = true;
    loop {
        tokio::select! {
            first = requests.recv(), if open && lanes.len() < LANES => {
                let Some(first) = first else {
                    open = false;
                    continue;
                };
                // Sized for what is queued: a write request is about 700
                // bytes, so a full-size buffer for every batch would be a
                // third of a megabyte of fresh memory each time.
                let mut batch = Vec::with_capacity(1 + requests.len().min(MAX_BATCH - 1));
                batch.push(first);
                while batch.len() < MAX_BATCH {
                    match requests.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                let (store, dead_letters, stop, metrics) = (&store, &dead_letters, &stop, &metrics);
                lanes.push(async move {
                    let started = std::time::Instant::now();
                    let outcome = write_with_retry(store, dead_letters, &batch, stop, metrics).await;
                    metrics.duration.observe(started.elapsed().as_secs_f64());
                    (batch, outcome)
                });
            }
            Some((batch, outcome)) = lanes.next() => {
                let Some(outcome) = outcome else {
                    tracing::error!(
                        writes = batch.len(),
                        "dispatcher stopping with task writes not stored; their submissions stay unacknowledged and will be redelivered"
                    );
                    return;
                };
                metrics.batches.inc();
                if let Some(histogram) = &metrics.batch_size {
                    histogram.observe(batch.len() as f64);
                }
                let mut report = Vec::with_capacity(batch.len());
                let mut committed = Vec::new();
                for (request, owned) in batch.into_iter().zip(outcome) {
                    if owned {
                        committed.extend(request.write.events);
                    }
                    report.push(Written {
                        task_id: request.write.row.task_id,
                        owned,
                    });
                }
                concord_runtime::publish_events(events, &committed).await;
                if written.send(report).is_err() {
                    return;
                }
            }
            else => return,
        }
    }
}

async fn write_with_retry(
    store: &TaskStore,
    dead_letters: &DeadLetterStore,
    batch: &[WriteRequest],
    stop: &CancellationToken,
    metrics: &WriterMetrics,
) -> Option<Vec<bool>> {
    let letters: Vec<NewDeadLetter> = batch.iter().filter_map(|r| r.dead_letter.clone()).collect();
    let writes: Vec<&TaskWrite> = batch.iter().map(|r| &r.write).collect();
    let mut delay = Duration::from_millis(50);
    loop {
        // Dead letters first (idempotent by id): a crash between the two
        // leaves a dead letter whose task is redelivered and dead-lettered
        // again under the same id, never a dead-lettered task without one.
        let result = async {
            if !letters.is_empty() {
                dead_letters.put_many(&letters).await?;
            }
            store.commit(&writes).await
        }
        .await;
        match result {
            Ok(owned) => return Some(owned),
            Err(error) => {
                metrics.retries.inc();
                tracing::warn!(error = %format!("{error:#}"), writes = writes.len(), retry_in_ms = delay.as_millis() as u64, "task write failed; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}
