//! `<root>.state.lock.get`: one resource's holders and waiters (a resource
//! never locked answers with nobody and token 0).

use concord_bus::{Reply, Request, ServiceError};
use concord_wire::v1::GetLock;

use crate::app::State;
use crate::lock_table::state_of;

pub async fn handle(state: State, request: Request) -> Result<Reply, ServiceError> {
    let message: GetLock = request.decode()?;
    let resource = super::resource(&message.resource)?;
    let lock = state.locks().get(&resource).await?.unwrap_or_default();
    Reply::to(&request, &state_of(&resource, &lock))
}
