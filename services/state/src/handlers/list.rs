//! `<root>.state.list`: live documents under a prefix, in key order, a page
//! at a time.

use concord_bus::{Reply, Request, ServiceError};
use concord_wire::v1::{ListDocuments, ListDocumentsReply};

use crate::app::{State, unavailable};
use crate::key::check_prefix;

pub async fn handle(state: State, request: Request) -> Result<Reply, ServiceError> {
    let message: ListDocuments = request.decode()?;
    let prefix = check_prefix(&message.prefix).map_err(|e| ServiceError::invalid("prefix", e.0))?;
    let limit = super::page("limit", message.limit)?;
    let (rows, more) = state
        .store()
        .list(prefix, &message.after, limit)
        .await
        .map_err(unavailable)?;
    let next = if more {
        rows.last().map(|row| row.key.clone()).unwrap_or_default()
    } else {
        String::new()
    };
    let reply = ListDocumentsReply {
        documents: rows.iter().map(|row| row.to_document()).collect(),
        next,
    };
    Reply::to(&request, &reply)
}
