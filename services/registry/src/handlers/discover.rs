//! `<root>.registry.discover`: agents matching a capability, level, liveness
//! and label filter, from this replica's in-memory directory.

use concord_bus::{Reply, Request, ServiceError};
use concord_wire::v1::DiscoverAgents;

use crate::app::Registry;

pub async fn handle(registry: Registry, request: Request) -> Result<Reply, ServiceError> {
    let query: DiscoverAgents = request.decode()?;
    let reply = {
        let directory = registry.directory();
        let directory = directory.read().expect("directory lock poisoned");
        directory.discover(&query)?
    };
    Reply::to(&request, &reply)
}
