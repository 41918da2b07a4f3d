//! `<root>.deadletters.get`: one dead letter with its payload, headers and
//! history.

use concord_bus::ServiceError;
use concord_bus::service::{Reply, Request};
use concord_wire::v1::GetDeadLetter;

use super::{not_found, parse_id, to_wire, unavailable};
use crate::app::Dispatcher;

pub async fn handle(dispatcher: Dispatcher, request: Request) -> Result<Reply, ServiceError> {
    let query: GetDeadLetter = request.decode()?;
    let id = parse_id("id", &query.id)?;
    let letter = dispatcher
        .store
        .dead_letters()
        .get(id)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| not_found(id))?;
    Reply::to(&request, &to_wire(letter))
}
