//! `<root>.state.barrier.get`: a barrier as it stands.

use concord_bus::{Reply, Request, ServiceError};
use concord_wire::v1::GetBarrier;

use crate::app::State;
use crate::barrier_table::view;

pub async fn handle(state: State, request: Request) -> Result<Reply, ServiceError> {
    let message: GetBarrier = request.decode()?;
    super::id(&message.id)?;
    let barrier = state
        .barriers()
        .get(&message.id)
        .await?
        .ok_or_else(|| ServiceError::not_found(format!("no barrier {}", message.id)))?;
    Reply::to(&request, &view(&message.id, &barrier))
}
