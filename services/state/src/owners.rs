//! Frees the locks of agents that went away: the directory watch names each
//! agent whose entry changed; one that is gone from the directory or
//! UNAVAILABLE loses every lock it holds and every wait it is in, and the
//! next waiters are granted. (Its lease would end them too, later.)

use concord_directory::SharedDirectory;
use concord_wire::v1::Liveness;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::lock_table::{LockOp, Locks};

/// Whether `agent` is gone: not in the directory, or UNAVAILABLE.
fn is_gone(directory: &SharedDirectory, agent: &str) -> bool {
    let directory = directory.read().expect("directory lock poisoned");
    directory
        .get(agent)
        .is_none_or(|record| record.liveness == Liveness::Unavailable as i32)
}

/// Acts on directory changes until `stop`.
pub async fn run(
    locks: Locks,
    directory: SharedDirectory,
    mut changed: mpsc::UnboundedReceiver<String>,
    stop: CancellationToken,
) {
    loop {
        let agent = tokio::select! {
            _ = stop.cancelled() => return,
            agent = changed.recv() => match agent {
                Some(agent) => agent,
                None => return,
            },
        };
        if !is_gone(&directory, &agent) {
            continue;
        }
        let resources = match locks.held_by(&agent).await {
            Ok(resources) => resources,
            Err(error) => {
                tracing::warn!(%error, %agent, "could not look up the locks of an agent that went away; their leases will end them");
                continue;
            }
        };
        for resource in resources {
            match locks
                .apply(&resource, LockOp::OwnerLost(agent.clone()))
                .await
            {
                Ok(_) => {
                    tracing::info!(%agent, %resource, "freed the lock of an agent that went away")
                }
                Err(error) => tracing::warn!(%error, %agent, %resource, "could not free a lock"),
            }
        }
    }
}
