//! `<root>.registry.get`: one agent by id, read from Postgres so the last
//! heartbeat and load are current (to within one heartbeat flush).

use concord_bus::validate::check_token;
use concord_bus::{Reply, Request, ServiceError};
use concord_wire::v1::GetAgent;

use crate::app::{Registry, unavailable};

pub async fn handle(registry: Registry, request: Request) -> Result<Reply, ServiceError> {
    let message: GetAgent = request.decode()?;
    let id = message.id.trim();
    check_token("id", id, registry.limits().max_id_chars)?;
    match registry.store().get(id).await.map_err(unavailable)? {
        Some(row) if row.deregistered_at.is_none() => Reply::to(&request, &row.to_record()),
        _ => Err(ServiceError::not_found(format!(
            "no registered agent with id {id}"
        ))),
    }
}
