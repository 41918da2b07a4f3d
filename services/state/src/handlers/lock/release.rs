//! `<root>.state.lock.release`: ends a grant and grants whoever is next.

use concord_bus::{Reply, Request, ServiceError};
use concord_identity::purpose;
use concord_wire::v1::{LockReleased, ReleaseLock};

use crate::app::State;
use crate::lock_table::{LockAnswer, LockOp, grant};

pub async fn handle(state: State, request: Request) -> Result<Reply, ServiceError> {
    let message: ReleaseLock = request.decode()?;
    let resource = super::resource(&message.resource)?;
    super::owner(&message.owner)?;
    let token = super::token(message.token)?;
    state.check_identity(&request, purpose::STATE_LOCK, &message.owner)?;
    let op = LockOp::Release {
        owner: message.owner,
        token,
    };
    match state.locks().apply(&resource, op).await? {
        LockAnswer::Released { ended, granted } => Reply::to(
            &request,
            &LockReleased {
                resource: resource.clone(),
                token: ended.token,
                granted: granted.iter().map(|h| grant(&resource, h)).collect(),
            },
        ),
        _ => Err(ServiceError::internal("a release answered something else")),
    }
}
