//! `<root>.state.lock.check`: what a fencing token is worth now.

use concord_bus::{Reply, Request, ServiceError};
use concord_wire::v1::{CheckLock, LockTokenStatus, TokenStatus};

use crate::app::State;
use crate::lock::TokenCheck;
use crate::lock_table::grant;

pub async fn handle(state: State, request: Request) -> Result<Reply, ServiceError> {
    let message: CheckLock = request.decode()?;
    let resource = super::resource(&message.resource)?;
    let token = super::token(message.token)?;
    let lock = state.locks().get(&resource).await?.unwrap_or_default();
    let (status, holder) = match lock.check(token) {
        TokenCheck::Held(holder) => (TokenStatus::TokenHeld, Some(grant(&resource, &holder))),
        TokenCheck::Released => (TokenStatus::TokenReleased, None),
        TokenCheck::Superseded { .. } => (TokenStatus::TokenSuperseded, None),
        TokenCheck::Unknown { .. } => (TokenStatus::TokenUnknown, None),
    };
    Reply::to(
        &request,
        &LockTokenStatus {
            resource,
            token,
            status: status as i32,
            latest_token: lock.last_token,
            holder,
        },
    )
}
