//! `<root>.state.snapshot.take`: every live document of a namespace, with
//! its version, at one consistent point.

use concord_bus::{Reply, Request, ServiceError};
use concord_wire::v1::TakeSnapshot;

use crate::app::State;

pub async fn handle(state: State, request: Request) -> Result<Reply, ServiceError> {
    let message: TakeSnapshot = request.decode()?;
    super::namespace(&message.namespace)?;
    let actor = super::super::actor(&message.actor)?;
    let head = state.snapshots().take(&message.namespace, &actor).await?;
    Reply::to(
        &request,
        &super::view(&head, Vec::new(), false, String::new()),
    )
}
