//! `<root>.registry.get`: one agent by id.

use concord_bus::{Reply, Request, ServiceError};
use concord_wire::v1::GetAgent;

use crate::app::{Registry, unavailable};

pub async fn handle(registry: Registry, request: Request) -> Result<Reply, ServiceError> {
    let message: GetAgent = request.decode()?;
    let id = message.id.trim();
    if id.is_empty() {
        return Err(ServiceError::invalid("id", "must not be empty"));
    }
    let cached = registry
        .directory()
        .read()
        .expect("directory lock poisoned")
        .get(id)
        .cloned();
    let record = match cached {
        Some(record) => record,
        None => match registry.store().get(id).await.map_err(unavailable)? {
            Some(row) if row.deregistered_at.is_none() => row.to_record(),
            _ => {
                return Err(ServiceError::not_found(format!(
                    "no registered agent with id {id}"
                )));
            }
        },
    };
    Reply::to(&request, &record)
}
