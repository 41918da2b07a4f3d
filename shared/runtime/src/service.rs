//! A running service: its NATS service host (with dead-lettering of bad
//! input) plus its connections, stopped together on shutdown.

use concord_bus::{ServiceHost, ServiceSpec};

use crate::ServiceContext;

/// A service's endpoints and context, run until the shutdown token trips.
pub struct Service {
    context: ServiceContext,
    host: ServiceHost,
}

impl Service {
    /// Registers the service on NATS (`$SRV.PING/INFO/STATS` answer from now on).
    pub async fn start(context: ServiceContext) -> anyhow::Result<Self> {
        let spec = ServiceSpec::new(context.info.name, context.info.description);
        let mut host = ServiceHost::start(&context.bus, spec, &context.metrics).await?;
        host.set_reject_sink(context.reject_sink());
        Ok(Self { context, host })
    }

    /// Where endpoints are added.
    pub fn host(&self) -> &ServiceHost {
        &self.host
    }

    /// The connections.
    pub fn context(&self) -> &ServiceContext {
        &self.context
    }

    /// Serves until shutdown, then drains: no new requests, in-flight ones
    /// finish (bounded by the grace period), queued events are written.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.context.shutdown.triggered().await;
        tracing::info!(service = self.context.info.name, "draining");
        self.host.shutdown(self.context.shutdown_grace).await;
        self.context.close().await;
        Ok(())
    }
}
