//! `<root>.registry.register`: create or update an agent. With a public key
//! the registration is signed with it (proof of possession).

use concord_bus::{Reply, Request, ServiceError};
use concord_identity::purpose;
use concord_wire::v1::{AgentHealth, AgentRecord, Liveness, RegisterAgent, RegisterAgentReply};
use sqlx::types::Json;

use crate::app::{Registry, unavailable};
use crate::store::{AgentRow, ModifyError, record_json, timestamp};
use crate::validate::{check_key_change, validate_registration};

pub async fn handle(registry: Registry, request: Request) -> Result<Reply, ServiceError> {
    let message: RegisterAgent = request.decode()?;
    let registration = validate_registration(&message, registry.limits())?;
    let now = registry.config().clock.now();
    registry
        .identity()
        .check_key_present(registration.public_key.is_some())?;
    let id = match (&registration.id, registration.public_key.is_some()) {
        (Some(id), _) => id.clone(),
        (None, false) => format!("agent-{}", uuid::Uuid::now_v7().simple()),
        (None, true) => {
            return Err(ServiceError::invalid(
                "id",
                "required with publicKey: the signature names the agent it is for",
            ));
        }
    };
    // Proof of possession of the key (verified before any storage work);
    // for a known id the key must also be the stored one (check_key_change).
    registry.identity().check(
        &request,
        "register",
        purpose::REGISTER,
        &id,
        &registration.public_key_base64(),
        now,
    )?;

    for _ in 0..3 {
        let outcome = registry.store().modify(&id, |current| {
            let (row, kind, created) = match current {
                None => {
                    let mut record = AgentRecord {
                        id: id.clone(),
                        registered_at: Some(timestamp(now)),
                        updated_at: Some(timestamp(now)),
                        ..Default::default()
                    };
                    registration.write_to(&mut record);
                    let row = AgentRow {
                        id: id.clone(),
                        record: Json(record_json(&record)),
                        public_key: record.public_key.clone(),
                        liveness: Liveness::Alive.as_str_name().into(),
                        health: AgentHealth::Healthy.as_str_name().into(),
                        in_flight: 0,
                        last_heartbeat_at: Some(now),
                        revision: 1,
                        event_seq: 1,
                        deregistered_at: None,
                        reputation: 0.5,
                    };
                    (row, "registered", true)
                }
                Some(existing) => {
                    check_key_change(&existing.public_key, &registration)?;
                    let was_deregistered = existing.deregistered_at.is_some();
                    let mut record = existing.to_record();
                    registration.write_to(&mut record);
                    // A new start after an operator's removal.
                    record.removed_reason.clear();
                    record.updated_at = Some(timestamp(now));
                    let row = AgentRow {
                        record: Json(record_json(&record)),
                        public_key: record.public_key.clone(),
                        liveness: Liveness::Alive.as_str_name().into(),
                        last_heartbeat_at: Some(now),
                        revision: existing.revision + 1,
                        event_seq: existing.event_seq + 1,
                        deregistered_at: None,
                        ..existing
                    };
                    let kind = if was_deregistered {
                        "registered"
                    } else {
                        "updated"
                    };
                    (row, kind, was_deregistered)
                }
            };
            let record = row.to_record();
            let data = serde_json::to_value(&record).unwrap_or_default();
            let event = registry.event(&id, row.event_seq, kind, data);
            Ok((Some(row), vec![event], (record, created)))
        });
        match outcome.await {
            Ok(((record, created), events)) => {
                registry
                    .announce(&events, std::slice::from_ref(&record))
                    .await;
                return Reply::to(
                    &request,
                    &RegisterAgentReply {
                        agent: Some(record),
                        created,
                    },
                );
            }
            Err(ModifyError::Retry) => continue,
            Err(ModifyError::Refused(error)) => return Err(error),
            Err(ModifyError::Store(error)) => return Err(unavailable(error)),
        }
    }
    Err(ServiceError::conflict(format!(
        "agent {id} is being registered concurrently; retry"
    )))
}
