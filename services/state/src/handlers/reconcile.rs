//! `<root>.state.reconcile`: what a replica at `sinceVersion` needs to reach
//! the current version of a key: the changes since, or, when the history no
//! longer reaches back that far, the current document to start again from.

use concord_bus::{Reply, Request, ServiceError};
use concord_wire::v1::{HistoryReply, Reconcile};

use crate::app::{State, not_found, unavailable};

/// Most changes one reply carries.
const MAX_CHANGES: usize = 1000;

pub async fn handle(state: State, request: Request) -> Result<Reply, ServiceError> {
    let message: Reconcile = request.decode()?;
    let key = super::key(&message.key)?;
    let since = message.since_version;
    let Some(current) = state.store().get(key.as_str()).await.map_err(unavailable)? else {
        return Err(not_found(key.as_str()));
    };
    if since > current.version {
        return Err(ServiceError::invalid(
            "sinceVersion",
            format!(
                "version {since} is ahead of document {key}, which is at version {}",
                current.version
            ),
        ));
    }
    let (changes, more, oldest_kept) = state
        .store()
        .history(
            key.as_str(),
            since,
            MAX_CHANGES,
            state.config().history_keep,
        )
        .await
        .map_err(unavailable)?;
    let reaches_back = since == current.version || (oldest_kept > 0 && oldest_kept <= since + 1);
    let reply = if reaches_back {
        HistoryReply {
            changes: changes.iter().map(|c| c.to_change()).collect(),
            oldest_kept,
            reset: None,
            more,
        }
    } else {
        HistoryReply {
            changes: Vec::new(),
            oldest_kept,
            reset: Some(current.to_document()),
            more: false,
        }
    };
    Reply::to(&request, &reply)
}
