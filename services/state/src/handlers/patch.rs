//! `<root>.state.patch`: applies a JSON merge patch (RFC 7386).

use concord_bus::{Reply, Request, ServiceError};
use concord_wire::v1::PatchDocument;

use crate::app::State;
use crate::document::Write;

pub async fn handle(state: State, request: Request) -> Result<Reply, ServiceError> {
    let message: PatchDocument = request.decode()?;
    let key = super::key(&message.key)?;
    let patch = super::value("patch", message.patch)?;
    if !patch.is_object() {
        return Err(ServiceError::invalid(
            "patch",
            "a merge patch must be a JSON object",
        ));
    }
    let actor = super::actor(&message.actor)?;
    let write = Write::Patch {
        patch,
        expected: message.expected_version,
    };
    let fence = super::fence(message.fence)?;
    let change = state.write(key, write, actor, fence).await?;
    super::written(&request, &change)
}
