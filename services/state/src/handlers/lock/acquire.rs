//! `<root>.state.lock.acquire`: grants the lock now, queues the request
//! (answered when granted, or TIMEOUT when its wait runs out), or answers
//! CONFLICT when it is held and the request would not wait.

use concord_bus::{Reply, Request, ServiceError};
use concord_identity::purpose;
use concord_wire::v1::AcquireLock;

use crate::app::State;
use crate::lock::{Acquire, Acquired};
use crate::lock_table::{LockAnswer, LockOp, grant};

pub async fn handle(state: State, request: Request) -> Result<Reply, ServiceError> {
    let message: AcquireLock = request.decode()?;
    let resource = super::resource(&message.resource)?;
    super::owner(&message.owner)?;
    let mode = super::mode(message.mode)?;
    let ttl_ms = super::ttl(message.ttl_ms, false)?;
    let wait_ms = super::wait(message.wait_ms)?;
    state.check_identity(&request, purpose::STATE_LOCK, &message.owner)?;
    // Only a request someone waits on can be answered later.
    let reply = request.reply_to().filter(|_| wait_ms > 0);
    let acquire = Acquire {
        owner: message.owner,
        mode,
        ttl_ms,
        wait_ms: if reply.is_some() { wait_ms } else { 0 },
        reply: reply.map(|r| r.to_text()).unwrap_or_default(),
    };
    match state
        .locks()
        .apply(&resource, LockOp::Acquire(acquire))
        .await?
    {
        LockAnswer::Acquired(Acquired::Granted(holder)) => {
            Reply::to(&request, &grant(&resource, &holder))
        }
        LockAnswer::Acquired(Acquired::Queued { .. }) => Ok(Reply::later()),
        _ => Err(ServiceError::conflict(format!(
            "lock {resource} is held; set waitMs to wait in line"
        ))),
    }
}
