//! `<root>.state.lock.renew`: extends a grant's lease from now.

use concord_bus::{Reply, Request, ServiceError};
use concord_identity::purpose;
use concord_wire::v1::RenewLock;

use crate::app::State;
use crate::lock_table::{LockAnswer, LockOp, grant};

pub async fn handle(state: State, request: Request) -> Result<Reply, ServiceError> {
    let message: RenewLock = request.decode()?;
    let resource = super::resource(&message.resource)?;
    super::owner(&message.owner)?;
    let token = super::token(message.token)?;
    let ttl_ms = super::ttl(message.ttl_ms, true)?;
    state.check_identity(&request, purpose::STATE_LOCK, &message.owner)?;
    let op = LockOp::Renew {
        owner: message.owner,
        token,
        ttl_ms,
    };
    match state.locks().apply(&resource, op).await? {
        LockAnswer::Renewed(holder) => Reply::to(&request, &grant(&resource, &holder)),
        _ => Err(ServiceError::internal("a renewal answered something else")),
    }
}
