//! The dispatcher service: task intake, routing, delivery, retries, dead letters and results.
//!
//! Submissions arrive on `<root>.tasks.submit`, captured by the JetStream
//! stream `<ROOT>_TASKS` and consumed by the durable pull consumer
//! `dispatcher` that every replica shares. The [`engine`] routes each task
//! to an agent from the registry's published directory, follows the attempt
//! (lease, progress, retries with backoff, circuit breakers), records every
//! transition as a `task.*` event with the `tasks` projection row in
//! batched Postgres transactions, then publishes the result on
//! `<root>.tasks.result.<id>` ([`results`]) and acknowledges the submission.
//! Requests: `<root>.tasks.run`, `<root>.tasks.get`, `<root>.tasks.cancel`
//! (see [`handlers`] and docs/PROTOCOL.md).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use concord_runtime::{Service, ServiceContext, ServiceInfo};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub(crate) mod agents;
pub mod app;
pub(crate) mod backoff;
pub(crate) mod breaker;
pub mod config;
pub(crate) mod engine;
pub(crate) mod handlers;
pub(crate) mod holder;
pub(crate) mod known_ids;
pub(crate) mod lifecycle;
pub mod metrics;
pub(crate) mod performance;
/// The task events and the view they fold into (the contract crate's).
pub use concord_wire::task_view as projection;
pub mod projection_tool;
pub(crate) mod results;
pub(crate) mod routing;
pub mod store;
pub mod streams;
pub(crate) mod submission;
pub(crate) mod task_spec;
pub(crate) mod writer;

/// A map keyed by agent or task id. These are read several times per task
/// (routing reads four per candidate agent), so they use a fast hash
/// (foldhash, seeded per process) rather than the standard SipHash.
pub type IdMap<V> = std::collections::HashMap<String, V, foldhash::fast::RandomState>;

pub use app::Dispatcher;
pub use backoff::BackoffPolicy;
pub use breaker::BreakerPolicy;
pub use config::{DispatcherArgs, DispatcherConfig};
pub use routing::RoutingWeights;
pub use store::TaskStore;

/// The dispatcher's tables (`migrations/dispatcher/`).
fn migrations() -> concord_store::Migrator {
    sqlx::migrate!("../../migrations/dispatcher")
}

/// Name, description, default metrics port and tables of the dispatcher.
pub const INFO: ServiceInfo = ServiceInfo {
    name: "concord-dispatcher",
    description: "Task intake, routing, delivery, retries, dead letters and results",
    default_metrics_port: 9102,
    migrations: Some(migrations),
};

/// Builds the service with default settings; tests call this in-process.
pub async fn build(context: ServiceContext) -> anyhow::Result<Service> {
    Ok(build_with(context, DispatcherConfig::default()).await?.0)
}

/// Builds the service with `config` and returns the handle its request
/// handlers share.
pub async fn build_with(
    context: ServiceContext,
    config: DispatcherConfig,
) -> anyhow::Result<(Service, Dispatcher)> {
    let bus = context.bus.clone();
    let js = jetstream::new(bus.client.clone());
    let (stream, consumer) = streams::ensure(&js, &bus.subjects, config.ack_wait).await?;
    let stream_identity = streams::stream_identity(&stream);
    let store = store::TaskStore::new(context.pool.clone());
    let metrics = metrics::Metrics::register(&context.metrics);

    let service = Service::start(context.clone()).await?;
    let stop = service.background_token();

    // The registry's directory, kept current by a KV watch.
    let directory = concord_directory::SharedDirectory::default();
    service
        .watch_directory(
            concord_directory::DirectoryBucket::open(&bus).await?,
            directory.clone(),
        )
        .await;

    let loads = agents::Loads::new(config.clock.clone());
    agents::listen_heartbeats(
        &service,
        loads.clone(),
        directory.clone(),
        metrics.heartbeats_refused.clone(),
    )
    .await?;

    // A second connection, without echo, carries what must reach others in
    // order (a task's events, then its result) and the feed of the other
    // replicas' new task ids: the server does not send this replica its own
    // `task.submitted` events back.
    let feed = bus.sibling("events", false).await?;

    // The writer outlives the engine: it drains what the engine hands it.
    // When the engine returns it drops the writer's sender: the writer
    // drains what it was handed and ends. It gives up retrying a failing
    // batch only `grace` after shutdown began (the database is gone; the
    // submissions stay unacknowledged and are redelivered).
    let (write_tx, write_rx) = mpsc::unbounded_channel();
    let (written_tx, written_rx) = mpsc::unbounded_channel();
    let grace = context.shutdown_grace;
    {
        let store = store.clone();
        let dead_letters = store.dead_letters();
        let feed = feed.clone();
        let writer_metrics = writer::WriterMetrics::register(&context.metrics);
        let stop = stop.clone();
        service.spawn_background(async move {
            let writer_stop = CancellationToken::new();
            let writer = writer::run(
                store,
                dead_letters,
                &feed,
                write_rx,
                written_tx,
                writer_stop.clone(),
                writer_metrics,
            );
            let mut writer = std::pin::pin!(writer);
            tokio::select! {
                _ = &mut writer => {}
                _ = async {
                    stop.cancelled().await;
                    tokio::time::sleep(grace).await;
                } => {
                    writer_stop.cancel();
                    writer.await;
                }
            }
            let _ = feed.client.flush().await;
        });
    }

    let inbox = bus.client.new_inbox();
    let replies = bus.client.subscribe(format!("{inbox}.>")).await?;
    let progress = bus
        .client
        .subscribe(bus.subjects.join("tasks.progress.*"))
        .await?;
    // Other replicas' new task ids, for the known-ids filter.
    let known_feed = feed
        .client
        .subscribe(feed.subjects.event("task", "submitted"))
        .await?;
    let cancel_queued = bus
        .client
        .subscribe(holder::cancel_queued_subject(&bus))
        .await?;
    let (command_tx, command_rx) = mpsc::channel(1024);
    holder::listen(&service, command_tx).await?;

    let held = Arc::new(AtomicUsize::new(0));
    let (pulled_tx, pulled_rx) = mpsc::channel(8);
    service.spawn_background(pull(
        consumer,
        pulled_tx,
        held.clone(),
        config.max_held,
        metrics.pull_restarts.clone(),
        stop.clone(),
    ));

    let engine = engine::Engine::new(engine::Parts {
        config: config.clone(),
        bus: bus.clone(),
        feed: feed.clone(),
        events: context.events.clone(),
        store: store.clone(),
        directory,
        loads,
        writer: write_tx,
        inbox,
        stream_identity,
        held,
        metrics,
        background: service.background(),
        dead_letters: context.dead_letter_keeper(),
    })?;
    let inputs = engine::Inputs {
        pulled: pulled_rx,
        written: written_rx,
        commands: command_rx,
        replies,
        progress,
        known_feed,
        cancel_queued,
        connection: feed.connection_changes(),
    };
    service.spawn_background(async move {
        engine.run(inputs, stop, grace).await;
        let _ = feed.client.flush().await;
    });

    let dispatcher = Dispatcher {
        bus: bus.clone(),
        store,
        events: context.events.clone(),
        config,
        jetstream: js,
    };
    service
        .serve("tasks", "run", &dispatcher, handlers::run::handle)
        .await?;
    service
        .serve("tasks", "get", &dispatcher, handlers::get::handle)
        .await?;
    service
        .serve("tasks", "cancel", &dispatcher, handlers::cancel::handle)
        .await?;
    use handlers::deadletters as dl;
    service
        .serve("deadletters", "list", &dispatcher, dl::list::handle)
        .await?;
    service
        .serve("deadletters", "get", &dispatcher, dl::get::handle)
        .await?;
    service
        .serve("deadletters", "replay", &dispatcher, dl::replay::handle)
        .await?;
    service
        .serve("deadletters", "purge", &dispatcher, dl::purge::handle)
        .await?;
    Ok((service, dispatcher))
}

/// With no delivery for this long, the puller checks that the server still
/// has a pull request waiting while submissions are pending (see [`pull`]).
const STALL_CHECK: Duration = Duration::from_secs(2);

/// Whether the consumer has submissions to deliver but no pull request
/// waiting for them: the server has forgotten ours (seen under load: the
/// client then waits for its request's expiry while the stream fills up).
pub fn pull_request_lost(num_pending: u64, num_waiting: usize) -> bool {
    num_pending > 0 && num_waiting == 0
}

/// Pulls submissions from the shared consumer and hands them to the engine
/// in batches, holding back while this replica holds `max_held`.
///
/// After [`STALL_CHECK`] without a delivery it asks the server for the
/// consumer's state and, when submissions wait with no pull request of any
/// replica open, starts a new pull instead of waiting for the old one to
/// expire.
async fn pull(
    consumer: jetstream::consumer::PullConsumer,
    engine: mpsc::Sender<Vec<jetstream::Message>>,
    held: Arc<AtomicUsize>,
    max_held: usize,
    restarts: prometheus_client::metrics::counter::Counter,
    stop: CancellationToken,
) {
    let batch = max_held.clamp(1, 256);
    'outer: loop {
        let messages = match consumer
            .stream()
            .max_messages_per_batch(batch)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
        {
            Ok(messages) => messages,
            Err(error) => {
                tracing::warn!(%error, "cannot pull from the intake stream; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        let mut chunks = messages.ready_chunks(batch);
        loop {
            while held.load(Ordering::Relaxed) >= max_held {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                }
            }
            let chunk = tokio::select! {
                _ = stop.cancelled() => return,
                chunk = chunks.next() => chunk,
                _ = tokio::time::sleep(STALL_CHECK) => {
                    match consumer.get_info().await {
                        Ok(info) if pull_request_lost(info.num_pending, info.num_waiting) => {
                            tracing::warn!(
                                pending = info.num_pending,
                                "submissions wait in the intake stream but no pull request is open; pulling again"
                            );
                            restarts.inc();
                            continue 'outer;
                        }
                        Ok(_) => continue,
                        Err(error) => {
                            tracing::debug!(%error, "cannot read the intake consumer's state");
                            continue;
                        }
                    }
                }
            };
            let Some(chunk) = chunk else { continue 'outer };
            let mut delivered = Vec::with_capacity(chunk.len());
            for message in chunk {
                match message {
                    Ok(message) => delivered.push(message),
                    Err(error) => tracing::debug!(%error, "pull stream hiccup"),
                }
            }
            if !delivered.is_empty() && engine.send(delivered).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::pull_request_lost;

    #[test]
    fn a_pull_is_lost_only_when_work_waits_and_nobody_pulls() {
        assert!(pull_request_lost(1, 0));
        assert!(pull_request_lost(2_000, 0));
        // Idle: nothing to deliver.
        assert!(!pull_request_lost(0, 0));
        assert!(!pull_request_lost(0, 1));
        // Some replica's request is open: the server delivers to it.
        assert!(!pull_request_lost(2_000, 1));
    }
}
