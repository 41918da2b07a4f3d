//! `<root>.state.put`: replaces a document's value; a compare-and-set with
//! `expectedVersion`.

use concord_bus::{Reply, Request, ServiceError};
use concord_wire::v1::PutDocument;

use crate::app::State;
use crate::document::Write;

pub async fn handle(state: State, request: Request) -> Result<Reply, ServiceError> {
    let message: PutDocument = request.decode()?;
    let key = super::key(&message.key)?;
    let value = super::value("value", message.value)?;
    let actor = super::actor(&message.actor)?;
    let write = Write::Put {
        value,
        expected: message.expected_version,
    };
    let fence = super::fence(message.fence)?;
    let change = state.write(key, write, actor, fence).await?;
    super::written(&request, &change)
}
