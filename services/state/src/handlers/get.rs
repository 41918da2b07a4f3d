//! `<root>.state.get`: a document's value, version, last writer and time.

use concord_bus::{Reply, Request, ServiceError};
use concord_wire::v1::GetDocument;

use crate::app::{State, not_found, unavailable};

pub async fn handle(state: State, request: Request) -> Result<Reply, ServiceError> {
    let message: GetDocument = request.decode()?;
    let key = super::key(&message.key)?;
    match state.store().get(key.as_str()).await.map_err(unavailable)? {
        Some(row) if row.value.is_some() => Reply::to(&request, &row.to_document()),
        Some(row) => Err(ServiceError::not_found(format!(
            "document {key} was deleted at version {}",
            row.version
        ))),
        None => Err(not_found(key.as_str())),
    }
}
