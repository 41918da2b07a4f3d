//! `<root>.state.snapshot.list`: a namespace's snapshots, newest first.

use concord_bus::{Reply, Request, ServiceError};
use concord_wire::v1::{ListSnapshots, ListSnapshotsReply};

use crate::app::State;

pub async fn handle(state: State, request: Request) -> Result<Reply, ServiceError> {
    let message: ListSnapshots = request.decode()?;
    super::namespace(&message.namespace)?;
    let limit = super::super::page("limit", message.limit)? as u32;
    let (heads, more) = state
        .snapshots()
        .list(&message.namespace, &message.after, limit)
        .await?;
    let next = if more {
        heads.last().map(|h| h.id.clone()).unwrap_or_default()
    } else {
        String::new()
    };
    let reply = ListSnapshotsReply {
        snapshots: heads
            .iter()
            .map(|head| super::view(head, Vec::new(), false, String::new()))
            .collect(),
        next,
    };
    Reply::to(&request, &reply)
}
