//! `<root>.state.snapshot.get`: a snapshot and a page of its documents
//! (keys and versions, and values when asked).

use concord_bus::{Reply, Request, ServiceError};
use concord_wire::v1::GetSnapshot;

use crate::app::State;

pub async fn handle(state: State, request: Request) -> Result<Reply, ServiceError> {
    let message: GetSnapshot = request.decode()?;
    super::id(&message.id)?;
    let limit = super::super::page("limit", message.limit)? as u32;
    let (head, entries, more) = state
        .snapshots()
        .get(&message.id, &message.after, limit)
        .await?;
    let next = if more {
        entries.last().map(|e| e.key.clone()).unwrap_or_default()
    } else {
        String::new()
    };
    Reply::to(&request, &super::view(&head, entries, message.values, next))
}
