//! `<root>.state.snapshot.restore`: brings a namespace back to a snapshot
//! in one transaction; each document that differs gets a new version.

use concord_bus::{Reply, Request, ServiceError};
use concord_wire::v1::{RestoreReply, RestoreSnapshot};

use crate::app::State;

pub async fn handle(state: State, request: Request) -> Result<Reply, ServiceError> {
    let message: RestoreSnapshot = request.decode()?;
    super::id(&message.id)?;
    let actor = super::super::actor(&message.actor)?;
    let restored = state.snapshots().restore(&message.id, &actor).await?;
    let reply = RestoreReply {
        id: message.id,
        namespace: restored.namespace,
        changes: restored.changes.iter().map(|c| c.to_change()).collect(),
        unchanged: restored.unchanged,
    };
    Reply::to(&request, &reply)
}
