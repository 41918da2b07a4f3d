//! The agent's side of the registry protocol: register, heartbeat (and
//! re-register when forgotten), deregister.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use concord_bus::{ServiceError, Shutdown};
use concord_wire::v1::{
    DeregisterAgent, DeregisterAgentReply, ErrorCode, Heartbeat, HeartbeatAck, Liveness,
    RegisterAgent, RegisterAgentReply,
};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::{Shared, next_backoff};
use crate::identity::purpose;
use crate::{Agent, AgentError, AgentKey, protocol};

/// Failed heartbeats in a row between two warnings (the first one always warns).
const WARN_EVERY: u32 = 30;

/// Sends one registration with the agent's current capabilities.
async fn register<A: Agent>(shared: &Shared<A>) -> Result<RegisterAgentReply, ServiceError> {
    let capabilities = shared.agent.capabilities();
    let request = RegisterAgent {
        id: shared.agent_id.clone(),
        name: shared.config.name.clone(),
        capabilities: capabilities.clone(),
        max_concurrency: shared.config.max_concurrency,
        version: shared.config.version.clone(),
        labels: shared.config.labels.clone(),
        public_key: shared
            .key
            .as_ref()
            .map(AgentKey::public_key_base64)
            .unwrap_or_default(),
    };
    let reply: RegisterAgentReply = shared
        .bus
        .request_with(
            protocol::register(&shared.bus.subjects),
            &request,
            shared.config.request_timeout,
            signature(shared, purpose::REGISTER),
        )
        .await?;
    *shared
        .capabilities
        .write()
        .expect("capabilities lock poisoned") = capabilities.into_iter().map(|c| c.name).collect();
    shared.metrics.registered();
    Ok(reply)
}

/// The signature headers of a registry request, made from its exact
/// payload bytes; none without a key.
fn signature<'a, A>(
    shared: &'a Shared<A>,
    purpose: &'static str,
) -> impl FnOnce(&[u8]) -> Vec<(&'static str, String)> + 'a {
    move |payload| match &shared.key {
        Some(key) => key
            .sign(
                purpose,
                &shared.agent_id,
                crate::identity::now_ms(),
                payload,
            )
            .headers()
            .into(),
        None => Vec::new(),
    }
}

/// Whether a failed request may succeed later unchanged.
fn is_transient(error: &ServiceError) -> bool {
    matches!(
        error.code,
        ErrorCode::Timeout | ErrorCode::Unavailable | ErrorCode::Internal
    )
}

/// Registers, retrying while the registry does not answer. `Ok(false)` when
/// shutdown came first; an error when the registry refused.
pub(crate) async fn register_at_start<A: Agent>(
    shared: &Shared<A>,
    shutdown: &Shutdown,
) -> Result<bool, AgentError> {
    let mut backoff = Duration::from_millis(100);
    let mut failures = 0u32;
    loop {
        let attempt = tokio::select! {
            biased;
            _ = shutdown.triggered() => return Ok(false),
            attempt = register(shared) => attempt,
        };
        match attempt {
            Ok(reply) => {
                log_registration(shared, &reply);
                return Ok(true);
            }
            Err(error) if is_transient(&error) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(10) {
                    tracing::warn!(
                        agent_id = %shared.agent_id,
                        %error,
                        failures,
                        "registration not acknowledged; retrying (is the registry running?)"
                    );
                }
                tokio::select! {
                    biased;
                    _ = shutdown.triggered() => return Ok(false),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = next_backoff(backoff);
            }
            Err(source) => {
                return Err(AgentError::Register {
                    agent_id: shared.agent_id.clone(),
                    source,
                });
            }
        }
    }
}

fn log_registration<A>(shared: &Shared<A>, reply: &RegisterAgentReply) {
    let stored_id = reply.agent.as_ref().map(|a| a.id.as_str()).unwrap_or("");
    if !stored_id.is_empty() && stored_id != shared.agent_id {
        tracing::warn!(
            agent_id = %shared.agent_id,
            stored_id,
            "the registry stored the agent under another id"
        );
    }
    tracing::info!(agent_id = %shared.agent_id, created = reply.created, "registered");
}

/// Re-registers after the registry said it does not know the agent; failures
/// are logged and retried on the next heartbeat.
async fn register_again<A: Agent>(shared: &Shared<A>, why: &str) {
    tracing::info!(agent_id = %shared.agent_id, why, "registering again");
    match register(shared).await {
        Ok(reply) => log_registration(shared, &reply),
        Err(error) if is_transient(&error) => {
            tracing::warn!(agent_id = %shared.agent_id, %error, "re-registration not acknowledged; will retry");
        }
        Err(error) => {
            // Keep serving the tasks already here; an operator must fix this.
            tracing::error!(agent_id = %shared.agent_id, %error, "the registry refused the re-registration; will retry");
        }
    }
}

fn heartbeat<A: Agent>(shared: &Shared<A>) -> Heartbeat {
    let capacity = if shared.is_draining() {
        0
    } else {
        shared.config.max_concurrency
    };
    let performance: BTreeMap<String, f64> = shared
        .agent
        .performance()
        .into_iter()
        .filter(|(_, value)| value.is_finite())
        .collect();
    Heartbeat {
        agent_id: shared.agent_id.clone(),
        in_flight: u32::try_from(shared.in_flight()).unwrap_or(u32::MAX),
        capacity,
        health: shared.agent.health().into(),
        performance,
    }
}

/// Heartbeats until `stop`: on every tick, and at once when woken through
/// `heartbeat_now`. Never gives up: the registry or NATS may be restarting.
pub(crate) async fn heartbeat_loop<A: Agent>(shared: Arc<Shared<A>>, stop: CancellationToken) {
    let mut period = shared.config.heartbeat_interval;
    let mut ticker = ticker(period);
    let mut failures = 0u32;
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = shared.heartbeat_now.notified() => {}
            _ = ticker.tick() => {}
        }
        let request = heartbeat(&shared);
        let timeout = shared.config.request_timeout;
        let subject = protocol::heartbeat(&shared.bus.subjects);
        let sign = signature(&shared, purpose::HEARTBEAT);
        let reply = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            reply = shared.bus.request_with::<_, HeartbeatAck, _>(subject, &request, timeout, sign) => reply,
        };
        match reply {
            Ok(ack) => {
                if failures > 0 {
                    tracing::info!(agent_id = %shared.agent_id, failures, "heartbeats acknowledged again");
                    failures = 0;
                }
                if ack.liveness == Liveness::Unavailable as i32 {
                    register_again(&shared, "the registry reports the agent unavailable").await;
                }
                // Never beat slower than the registry expects, or it would
                // think the agent is dying.
                let expected = Duration::from_secs(ack.heartbeat_interval_secs.into());
                if !expected.is_zero() && expected < period {
                    period = expected;
                    ticker = self::ticker(period);
                }
            }
            Err(error) if error.code == ErrorCode::NotFound => {
                register_again(&shared, "the registry does not know the agent").await;
            }
            Err(error) if error.code == ErrorCode::AgentRemoved => {
                tracing::warn!(agent_id = %shared.agent_id, %error, "removed by an operator; shutting down");
                *shared.removed.lock().expect("removed lock poisoned") = Some(error.message);
                shared.shutdown.trigger();
                return;
            }
            Err(error) => {
                failures += 1;
                shared.metrics.heartbeat_failed();
                if failures % WARN_EVERY == 1 {
                    tracing::warn!(agent_id = %shared.agent_id, %error, failures, "heartbeat failed; still trying");
                } else {
                    tracing::debug!(agent_id = %shared.agent_id, %error, failures, "heartbeat failed");
                }
            }
        }
    }
}

/// Ticks every `period`, starting one period from now.
fn ticker(period: Duration) -> tokio::time::Interval {
    let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker
}

/// Tells the registry the agent is gone; failures are only logged (the
/// registry will notice the missing heartbeats anyway).
pub(crate) async fn deregister<A>(shared: &Shared<A>) {
    let request = DeregisterAgent {
        id: shared.agent_id.clone(),
    };
    let reply: Result<DeregisterAgentReply, _> = shared
        .bus
        .request_with(
            protocol::deregister(&shared.bus.subjects),
            &request,
            shared.config.request_timeout,
            signature(shared, purpose::DEREGISTER),
        )
        .await;
    match reply {
        Ok(_) => tracing::info!(agent_id = %shared.agent_id, "deregistered"),
        Err(error) if error.code == ErrorCode::NotFound => {
            tracing::info!(agent_id = %shared.agent_id, "the registry had already forgotten the agent");
        }
        Err(error) => {
            tracing::warn!(agent_id = %shared.agent_id, %error, "deregistration failed; the registry will notice the missing heartbeats");
        }
    }
}
