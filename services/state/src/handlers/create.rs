//! `<root>.state.create`: a new document; ALREADY_EXISTS if the key holds one.

use concord_bus::{Reply, Request, ServiceError};
use concord_wire::v1::CreateDocument;

use crate::app::State;
use crate::document::Write;

pub async fn handle(state: State, request: Request) -> Result<Reply, ServiceError> {
    let message: CreateDocument = request.decode()?;
    let key = super::key(&message.key)?;
    let value = super::value("value", message.value)?;
    let actor = super::actor(&message.actor)?;
    let change = state
        .write(key, Write::Create { value }, actor, None)
        .await?;
    super::written(&request, &change)
}
