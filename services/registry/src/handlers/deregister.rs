//! `<root>.registry.deregister`: the agent leaves (soft delete: its id, key
//! and event sequence are kept for a later re-registration). An agent with a
//! public key must sign it; operators use `remove` instead.

use concord_bus::validate::check_token;
use concord_bus::{Reply, Request, ServiceError};
use concord_identity::purpose;
use concord_wire::v1::{DeregisterAgent, DeregisterAgentReply, Liveness};

use crate::app::{Registry, refused};
use crate::store::AgentRow;

pub async fn handle(registry: Registry, request: Request) -> Result<Reply, ServiceError> {
    let message: DeregisterAgent = request.decode()?;
    let id = message.id.trim().to_string();
    check_token("id", &id, registry.limits().max_id_chars)?;
    let now = registry.config().clock.now();
    let outcome = registry.store().modify(&id, |current| {
        let Some(existing) = current.filter(|row| row.deregistered_at.is_none()) else {
            return Err(
                ServiceError::not_found(format!("no registered agent with id {id}")).into(),
            );
        };
        registry.identity().check(
            &request,
            "deregister",
            purpose::DEREGISTER,
            &id,
            &existing.public_key,
            now,
        )?;
        let row = AgentRow {
            liveness: Liveness::Unavailable.as_str_name().into(),
            revision: existing.revision + 1,
            event_seq: existing.event_seq + 1,
            deregistered_at: Some(now),
            ..existing
        };
        let event = registry.event(
            &id,
            row.event_seq,
            "deregistered",
            serde_json::json!({ "agentId": id }),
        );
        let record = row.to_record();
        Ok((Some(row), vec![event], record))
    });
    match outcome.await {
        Ok((record, events)) => {
            registry
                .announce(&events, std::slice::from_ref(&record))
                .await;
            Reply::to(
                &request,
                &DeregisterAgentReply {
                    agent: Some(record),
                },
            )
        }
        Err(error) => Err(refused(error)),
    }
}
