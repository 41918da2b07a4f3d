//! `<root>.state.lock.list`: locks held or waited for, by resource name.

use concord_bus::{Reply, Request, ServiceError};
use concord_wire::v1::{ListLocks, ListLocksReply};

use crate::app::State;
use crate::lock_table::state_of;

pub async fn handle(state: State, request: Request) -> Result<Reply, ServiceError> {
    let message: ListLocks = request.decode()?;
    let limit = super::super::page("limit", message.limit)?;
    let (locks, next) = state
        .locks()
        .list(&message.prefix, &message.after, limit)
        .await?;
    Reply::to(
        &request,
        &ListLocksReply {
            locks: locks.iter().map(|(r, l)| state_of(r, l)).collect(),
            next,
        },
    )
}
