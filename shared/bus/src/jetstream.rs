//! Settling JetStream deliveries: every service acknowledges the same way
//! and logs (at debug: the server redelivers an unsettled message after its
//! ack wait, so a lost acknowledgement costs a duplicate delivery, never a
//! message) when an acknowledgement does not reach the server.

use std::time::Duration;

use async_nats::jetstream::{AckKind, Message};

/// Done with it: the server does not deliver it again.
pub async fn ack(message: &Message) {
    settle(message, AckKind::Ack).await;
}

/// Not now: deliver it again after `delay` (at once when `None`).
pub async fn nak(message: &Message, delay: Option<Duration>) {
    settle(message, AckKind::Nak(delay)).await;
}

/// Still working on it: restart its ack wait.
pub async fn in_progress(message: &Message) {
    settle(message, AckKind::Progress).await;
}

/// Never deliver it again (it can never be processed; keep a dead letter
/// first).
pub async fn term(message: &Message) {
    settle(message, AckKind::Term).await;
}

async fn settle(message: &Message, kind: AckKind) {
    if let Err(error) = message.ack_with(kind).await {
        let sequence = message.info().map(|info| info.stream_sequence).ok();
        tracing::debug!(%error, ?kind, ?sequence, "could not settle a JetStream delivery; the server will deliver it again");
    }
}
