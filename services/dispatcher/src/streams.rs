//! The dispatcher's JetStream resources and their settings, named in one
//! place: the intake stream that captures `<root>.tasks.submit` and the
//! durable pull consumer the dispatcher replicas share.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use concord_bus::Subjects;

/// How long JetStream remembers `Nats-Msg-Id`s to drop duplicate publishes.
/// Duplicates older than this are caught by the task id in Postgres.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Durable name of the consumer all dispatcher replicas pull from.
pub const CONSUMER: &str = "dispatcher";
/// Unacknowledged messages before redelivery; the dispatcher acknowledges a
/// submission once its outcome is durable, and sends progress acks for
/// longer tasks.
pub const ACK_WAIT: Duration = Duration::from_secs(30);
/// Submissions handed out and not yet acknowledged, across replicas: the
/// dispatcher's in-memory window (and the bound on its memory).
pub const MAX_ACK_PENDING: i64 = 20_000;

/// Name of the intake stream for a subject root (`CONCORD_TASKS`).
pub fn stream_name(subjects: &Subjects) -> String {
    subjects.stream_name("tasks")
}

/// The intake stream's settings: work-queue retention (a submission leaves
/// the stream when acknowledged), file storage, a duplicate window.
pub fn stream_config(subjects: &Subjects) -> stream::Config {
    stream::Config {
        name: stream_name(subjects),
        description: Some("Concord task intake (concord-dispatcher)".into()),
        subjects: vec![subjects.tasks_submit()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        ..Default::default()
    }
}

/// The shared consumer's settings: explicit acks, no delivery limit (the
/// dispatcher counts attempts itself and dead-letters), bounded in flight.
pub fn consumer_config(ack_wait: Duration) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(CONSUMER.into()),
        description: Some("Concord dispatcher replicas".into()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait,
        max_deliver: -1,
        max_ack_pending: MAX_ACK_PENDING,
        deliver_policy: consumer::DeliverPolicy::All,
        ..Default::default()
    }
}

/// Creates or updates the intake stream and the shared consumer.
pub async fn ensure(
    js: &jetstream::Context,
    subjects: &Subjects,
    ack_wait: Duration,
) -> anyhow::Result<(stream::Stream, consumer::PullConsumer)> {
    let config = stream_config(subjects);
    let name = config.name.clone();
    let mut stream = js
        .get_or_create_stream(config)
        .await
        .map_err(|e| anyhow::anyhow!("cannot create stream {name}: {e}"))?;
    let consumer = stream
        .create_consumer(consumer_config(ack_wait))
        .await
        .map_err(|e| anyhow::anyhow!("cannot create consumer {CONSUMER} on {name}: {e}"))?;
    // Fetch the stream's info once so its creation time is cached: task ids
    // derived from stream sequences include it.
    stream
        .info()
        .await
        .map_err(|e| anyhow::anyhow!("cannot read stream {name}: {e}"))?;
    Ok((stream, consumer))
}

/// The identity of this stream instance, for ids derived from sequences (a
/// recreated stream restarts its sequences).
pub fn stream_identity(stream: &stream::Stream) -> String {
    let info = stream.cached_info();
    format!(
        "{}@{}",
        info.config.name,
        info.created.unix_timestamp_nanos()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_follow_the_subject_root() {
        let subjects = Subjects::new("t1").unwrap();
        let stream = stream_config(&subjects);
        assert_eq!(stream.name, "T1_TASKS");
        assert_eq!(stream.subjects, vec!["t1.tasks.submit".to_string()]);
        assert_eq!(stream.retention, stream::RetentionPolicy::WorkQueue);
        let consumer = consumer_config(ACK_WAIT);
        assert_eq!(consumer.durable_name.as_deref(), Some(CONSUMER));
        assert_eq!(consumer.ack_policy, consumer::AckPolicy::Explicit);
    }
}
