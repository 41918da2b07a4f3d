//! `<root>.state.history`: the kept changes of a key, oldest first.

use concord_bus::{Reply, Request, ServiceError};
use concord_wire::v1::{GetHistory, HistoryReply};

use crate::app::{State, unavailable};

pub async fn handle(state: State, request: Request) -> Result<Reply, ServiceError> {
    let message: GetHistory = request.decode()?;
    let key = super::key(&message.key)?;
    let limit = super::page("limit", message.limit)?;
    let (changes, more, oldest_kept) = state
        .store()
        .history(
            key.as_str(),
            message.since_version,
            limit,
            state.config().history_keep,
        )
        .await
        .map_err(unavailable)?;
    let reply = HistoryReply {
        changes: changes.iter().map(|c| c.to_change()).collect(),
        oldest_kept,
        reset: None,
        more,
    };
    Reply::to(&request, &reply)
}
