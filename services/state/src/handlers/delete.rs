//! `<root>.state.delete`: deletes a document, leaving a tombstone at the
//! next version; the reply is the tombstone.

use concord_bus::{Reply, Request, ServiceError};
use concord_wire::v1::DeleteDocument;

use crate::app::State;
use crate::document::Write;

pub async fn handle(state: State, request: Request) -> Result<Reply, ServiceError> {
    let message: DeleteDocument = request.decode()?;
    let key = super::key(&message.key)?;
    let actor = super::actor(&message.actor)?;
    let write = Write::Delete {
        expected: message.expected_version,
    };
    let fence = super::fence(message.fence)?;
    let change = state.write(key, write, actor, fence).await?;
    super::written(&request, &change)
}
