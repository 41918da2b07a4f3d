//! `<root>.state.barrier.arrive`: a participant arrives (idempotent); with
//! `wait`, the reply comes at the release or the timeout.

use concord_bus::{Reply, Request, ServiceError};
use concord_identity::purpose;
use concord_wire::v1::ArriveAtBarrier;

use crate::app::State;
use crate::barrier_table::view;

pub async fn handle(state: State, request: Request) -> Result<Reply, ServiceError> {
    let message: ArriveAtBarrier = request.decode()?;
    super::id(&message.id)?;
    super::participant("participant", &message.participant)?;
    let data = message
        .data
        .as_ref()
        .map(concord_wire::json::from_wire_value);
    state.check_identity(&request, purpose::STATE_BARRIER, &message.participant)?;
    let wait = request.reply_to().filter(|_| message.wait);
    let answer = state
        .barriers()
        .arrive(&message.id, &message.participant, data, wait)
        .await?;
    if answer.later {
        return Ok(Reply::later());
    }
    Reply::to(&request, &view(&message.id, &answer.barrier))
}
