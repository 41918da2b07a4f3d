//! One module per request the state service answers.

pub mod barrier;
pub mod create;
pub mod delete;
pub mod get;
pub mod history;
pub mod list;
pub mod lock;
pub mod patch;
pub mod put;
pub mod reconcile;
pub mod snapshot;
pub mod workflow;

use concord_bus::ServiceError;

use crate::key::DocKey;

/// Longest `actor`.
const MAX_ACTOR_CHARS: usize = 256;

/// Most entries one list or history reply carries.
const MAX_PAGE: u32 = 1000;
/// Entries when the request names no limit.
const DEFAULT_PAGE: u32 = 100;

/// The request's `key`, checked.
fn key(key: &str) -> Result<DocKey, ServiceError> {
    DocKey::parse(key).map_err(|e| ServiceError::invalid("key", e.0))
}

/// The request's `actor`, checked (empty is allowed: nobody named).
pub(crate) fn actor(actor: &str) -> Result<String, ServiceError> {
    let chars = actor.chars().count();
    if chars > MAX_ACTOR_CHARS {
        return Err(concord_bus::validate::too_long(
            "actor",
            MAX_ACTOR_CHARS,
            chars,
        ));
    }
    Ok(actor.to_string())
}

/// A page size from the request (`field` names it in errors).
pub(crate) fn page(field: &str, limit: u32) -> Result<usize, ServiceError> {
    match limit {
        0 => Ok(DEFAULT_PAGE as usize),
        n if n <= MAX_PAGE => Ok(n as usize),
        n => Err(ServiceError::invalid(
            field,
            format!("{n} is more than the {MAX_PAGE} allowed"),
        )),
    }
}

/// A required JSON value from the request.
fn value(
    field: &str,
    value: Option<concord_wire::pbjson_types::Value>,
) -> Result<serde_json::Value, ServiceError> {
    value
        .as_ref()
        .map(concord_wire::json::from_wire_value)
        .ok_or_else(|| ServiceError::invalid(field, "required"))
}

/// The document after a committed write, as the reply.
fn written(
    request: &concord_bus::Request,
    change: &crate::store::ChangeRow,
) -> Result<concord_bus::Reply, ServiceError> {
    concord_bus::Reply::to(request, &change.to_row().to_document())
}

/// A write's `fence`, checked.
fn fence(fence: Option<concord_wire::v1::Fence>) -> Result<crate::app::Fence, ServiceError> {
    let Some(fence) = fence else { return Ok(None) };
    let resource = lock::resource(&fence.resource).map_err(|mut e| {
        e.field = Some("fence.resource".into());
        e
    })?;
    if fence.token == 0 {
        return Err(ServiceError::invalid(
            "fence.token",
            "required: the token of the grant",
        ));
    }
    Ok(Some((resource, fence.token)))
}
