//! A running service: its NATS service host (with dead-lettering of bad
//! input) plus its connections, stopped together on shutdown.

use std::future::Future;

use concord_bus::{ServiceHost, ServiceSpec};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ServiceContext;

/// A service's endpoints and context, run until the shutdown token trips.
pub struct Service {
    context: ServiceContext,
    host: ServiceHost,
    background: TaskTracker,
    background_stop: CancellationToken,
}

impl Service {
    /// Registers the service on NATS (`$SRV.PING/INFO/STATS` answer from now on).
    pub async fn start(context: ServiceContext) -> anyhow::Result<Self> {
        let spec = ServiceSpec::new(context.info.name, context.info.description);
        let mut host = ServiceHost::start(&context.bus, spec, &context.metrics).await?;
        host.set_reject_sink(context.reject_sink());
        Ok(Self {
            context,
            host,
            background: TaskTracker::new(),
            background_stop: CancellationToken::new(),
        })
    }

    /// Where endpoints are added.
    pub fn host(&self) -> &ServiceHost {
        &self.host
    }

    /// The connections.
    pub fn context(&self) -> &ServiceContext {
        &self.context
    }

    /// The token that tells background tasks to stop: cancelled only after
    /// the endpoints have drained, so work accepted during the drain (a
    /// buffered heartbeat) is still written by the task's last batch.
    pub fn background_token(&self) -> CancellationToken {
        self.background_stop.clone()
    }

    /// Runs a background task (a sweep, a subscription) that must end when
    /// [`Service::background_token`] is cancelled; shutdown waits for it
    /// before closing the connections.
    pub fn spawn_background<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.background.spawn(task);
    }

    /// Serves until shutdown, then drains: no new requests, in-flight ones
    /// finish (bounded by the grace period), background tasks end, queued
    /// events are written.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.context.shutdown.triggered().await;
        tracing::info!(service = self.context.info.name, "draining");
        self.host.shutdown(self.context.shutdown_grace).await;
        self.background_stop.cancel();
        self.background.close();
        if tokio::time::timeout(self.context.shutdown_grace, self.background.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                service = self.context.info.name,
                "background tasks did not stop in time"
            );
        }
        self.context.close().await;
        Ok(())
    }
}
