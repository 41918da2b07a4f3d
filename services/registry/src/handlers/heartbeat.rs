//! `<root>.registry.heartbeat`: an agent is alive and reports its load.
//! Buffered and written in batches; answered at once when a reply is wanted.
//! An agent with a public key signs each heartbeat.

use concord_bus::{Reply, Request, ServiceError};
use concord_identity::purpose;
use concord_wire::v1::{Heartbeat, HeartbeatAck, Liveness};

use crate::app::{Registry, Standing, removed};
use crate::store::PendingHeartbeat;
use crate::validate::validate_heartbeat;

pub async fn handle(registry: Registry, request: Request) -> Result<Reply, ServiceError> {
    let message: Heartbeat = request.decode()?;
    let heartbeat = validate_heartbeat(&message, registry.limits())?;
    let now = registry.config().clock.now();
    match registry.standing(&heartbeat.agent_id).await? {
        Standing::Registered { public_key } => registry.identity().check(
            &request,
            "heartbeat",
            purpose::HEARTBEAT,
            &heartbeat.agent_id,
            &public_key,
            now,
        )?,
        Standing::Removed { reason } => return Err(removed(&heartbeat.agent_id, &reason)),
        Standing::Unknown => {
            // Tells the agent (the SDK) to register again.
            return Err(ServiceError::not_found(format!(
                "agent {} is not registered; register again",
                heartbeat.agent_id
            )));
        }
    }
    registry.record_heartbeat(PendingHeartbeat {
        agent_id: heartbeat.agent_id,
        at: now,
        in_flight: heartbeat.in_flight.min(i32::MAX as u32) as i32,
        health: heartbeat.health,
    });
    Reply::to(
        &request,
        &HeartbeatAck {
            liveness: Liveness::Alive as i32,
            heartbeat_interval_secs: registry.config().liveness.heartbeat_interval.as_secs() as u32,
        },
    )
}
