//! `<root>.registry.remove`: an operator removes an agent and tells it to
//! stop. Like a deregistration, and the record keeps `removedReason`, so the
//! agent's next heartbeat is answered `AGENT_REMOVED` (stop, do not register
//! again) instead of `NOT_FOUND` (register again). Removing a removed agent
//! answers its record again. Restrict who may publish on this subject with
//! NATS permissions: it needs no signature.

use concord_bus::validate::{check_text, check_token};
use concord_bus::{Reply, Request, ServiceError};
use concord_wire::v1::{Liveness, RemoveAgent, RemoveAgentReply};
use sqlx::types::Json;

use crate::app::{Registry, refused};
use crate::store::{AgentRow, record_json};

/// The reason stored when the request gives none.
pub const DEFAULT_REASON: &str = "removed by an operator";

/// Longest reason kept.
const MAX_REASON_CHARS: usize = 500;

pub async fn handle(registry: Registry, request: Request) -> Result<Reply, ServiceError> {
    let message: RemoveAgent = request.decode()?;
    let id = message.id.trim().to_string();
    check_token("id", &id, registry.limits().max_id_chars)?;
    let reason = message.reason.trim();
    check_text("reason", reason, MAX_REASON_CHARS)?;
    let reason = if reason.is_empty() {
        DEFAULT_REASON
    } else {
        reason
    };
    let now = registry.config().clock.now();
    let outcome = registry.store().modify(&id, |current| {
        let not_found =
            || ServiceError::not_found(format!("no registered agent with id {id}")).into();
        let Some(existing) = current else {
            return Err(not_found());
        };
        if existing.deregistered_at.is_some() {
            let record = existing.to_record();
            if record.removed_reason.is_empty() {
                return Err(not_found());
            }
            return Ok((None, Vec::new(), record));
        }
        let mut stored = existing.to_record();
        stored.removed_reason = reason.to_string();
        let row = AgentRow {
            record: Json(record_json(&stored)),
            liveness: Liveness::Unavailable.as_str_name().into(),
            revision: existing.revision + 1,
            event_seq: existing.event_seq + 1,
            deregistered_at: Some(now),
            ..existing
        };
        let event = registry.event(
            &id,
            row.event_seq,
            "removed",
            serde_json::json!({ "agentId": id, "reason": reason }),
        );
        let record = row.to_record();
        Ok((Some(row), vec![event], record))
    });
    match outcome.await {
        Ok((record, events)) => {
            if !events.is_empty() {
                registry
                    .announce(&events, std::slice::from_ref(&record))
                    .await;
                tracing::info!(agent_id = %id, reason, "agent removed by an operator");
            }
            Reply::to(
                &request,
                &RemoveAgentReply {
                    agent: Some(record),
                },
            )
        }
        Err(error) => Err(refused(error)),
    }
}
