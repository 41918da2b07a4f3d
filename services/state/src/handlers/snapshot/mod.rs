//! `<root>.state.snapshot.*`: snapshots of a namespace and restoring one
//! ([`crate::snapshot_table`] holds the rows).

pub mod get;
pub mod list;
pub mod restore;
pub mod take;

use concord_bus::ServiceError;
use concord_wire::v1::{Snapshot, SnapshotEntry};

use crate::snapshot_table::{Entry, SnapshotHead};

/// The request's `namespace`, checked.
pub(crate) fn namespace(namespace: &str) -> Result<(), ServiceError> {
    crate::key::check_namespace(namespace).map_err(|e| ServiceError::invalid("namespace", e.0))
}

/// The request's snapshot `id`, checked (ids are UUIDs).
pub(crate) fn id(id: &str) -> Result<(), ServiceError> {
    if id.is_empty() {
        return Err(ServiceError::invalid("id", "required: the snapshot's id"));
    }
    uuid::Uuid::parse_str(id)
        .map(|_| ())
        .map_err(|_| ServiceError::invalid("id", format!("{id:?} is not a snapshot id (a UUID)")))
}

/// The wire form of a snapshot and a page of its documents.
pub(crate) fn view(
    head: &SnapshotHead,
    entries: Vec<Entry>,
    values: bool,
    next: String,
) -> Snapshot {
    Snapshot {
        id: head.id.clone(),
        namespace: head.namespace.clone(),
        taken_at: Some(concord_wire::task_view::timestamp(head.taken_at)),
        actor: head.actor.clone(),
        count: head.count,
        documents: entries
            .into_iter()
            .map(|entry| SnapshotEntry {
                key: entry.key,
                version: entry.version,
                value: values.then(|| concord_wire::json::to_wire_value(entry.value)),
            })
            .collect(),
        next,
    }
}
