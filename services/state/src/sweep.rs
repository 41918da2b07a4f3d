//! Ends what runs out without a request: lock leases and waits, barrier
//! timeouts. Every replica sweeps; the row locks make the second one find
//! nothing left to do.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::barrier_table::Barriers;
use crate::lock_table::{LockOp, Locks};

/// Rows handled per pass and kind.
const PASS: i64 = 200;

/// Sweeps every `every` until `stop`.
pub async fn run(locks: Locks, barriers: Barriers, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match locks.due(PASS).await {
            Ok(resources) => {
                for resource in resources {
                    if let Err(error) = locks.apply(&resource, LockOp::Expire).await {
                        tracing::warn!(%error, %resource, "could not expire a lock");
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "could not look for expired locks"),
        }
        match barriers.due(PASS).await {
            Ok(ids) => {
                for id in ids {
                    if let Err(error) = barriers.expire(&id).await {
                        tracing::warn!(%error, barrier = %id, "could not time out a barrier");
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "could not look for timed-out barriers"),
        }
    }
}
