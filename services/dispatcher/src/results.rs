//! Final results, published on `<root>.tasks.result.<task id>` (JSON) for
//! `tasks.run` callers and anyone watching a task.

use async_nats::HeaderMap;
use concord_bus::{Bus, headers};
use concord_wire::codec::{self, ContentType};
use concord_wire::v1::TaskResult;

/// Publishes a final result on `<root>.tasks.result.<id>`; `replayed`
/// marks a re-publication (header `Concord-Replayed`).
pub(crate) async fn publish(bus: &Bus, result: &TaskResult, replayed: bool) {
    let payload = codec::encode(ContentType::Json, result).expect("results encode");
    publish_json(bus, &result.task_id, payload.into(), replayed).await;
}

/// [`publish`] of a result already encoded as JSON.
pub(crate) async fn publish_json(bus: &Bus, task_id: &str, payload: bytes::Bytes, replayed: bool) {
    let mut headers = HeaderMap::new();
    headers.insert(headers::CONTENT_TYPE, ContentType::Json.as_str());
    if replayed {
        headers.insert(headers::REPLAYED, "true");
    }
    if let Err(error) = bus
        .client
        .publish_with_headers(bus.subjects.task_result(task_id), headers, payload)
        .await
    {
        tracing::warn!(%error, %task_id, "cannot publish task result");
    }
}
