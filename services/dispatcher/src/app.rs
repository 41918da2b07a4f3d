//! What the dispatcher's request handlers share: cheap to clone, one per
//! process.

use concord_bus::Bus;
use concord_runtime::EventPublisher;

use crate::config::DispatcherConfig;
use crate::store::TaskStore;

/// One dispatcher process, as its handlers see it.
#[derive(Clone)]
pub struct Dispatcher {
    pub(crate) bus: Bus,
    pub(crate) store: TaskStore,
    pub(crate) events: EventPublisher,
    pub(crate) config: DispatcherConfig,
    pub(crate) jetstream: async_nats::jetstream::Context,
}

impl Dispatcher {
    /// The `tasks` projection and the task events.
    pub fn store(&self) -> &TaskStore {
        &self.store
    }

    /// The settings it runs with.
    pub fn config(&self) -> &DispatcherConfig {
        &self.config
    }
}
