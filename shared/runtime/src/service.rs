//! A running service: its NATS service host (with dead-lettering of bad
//! input) plus its connections and background work, stopped together on
//! shutdown.
//!
//! Every service builds itself the same way (see the registry):
//!
//! 1. [`Service::start`] registers it on NATS;
//! 2. [`Service::watch_directory`] when it reads the registry's directory;
//! 3. [`Service::serve`] once per request, each handled by a function
//!    `handle(app, request)` in `handlers/`;
//! 4. [`Service::listen`] for plain subscriptions, [`Service::spawn_background`]
//!    for periodic work;
//! 5. [`Service::run_until_stopped`].
//!
//! and exposes `build(context) -> Service` and
//! `build_with(context, config) -> (Service, App)`, `App` being the cheap
//! handle its handlers share (tests drive sweeps and flushes through it).

use std::future::Future;
use std::time::Duration;

use concord_bus::{Reply, Request, ServiceError, ServiceHost, ServiceSpec};
use concord_directory::{DirectoryBucket, SharedDirectory};
use tokio_util::sync::CancellationToken;

use crate::ServiceContext;
use crate::background::{Background, for_each_until};

/// How long [`Service::watch_directory`] waits for the first full copy.
const DIRECTORY_LOAD: Duration = Duration::from_secs(10);

/// The name of the endpoint serving `<group>.<name>`: unique within the
/// service, as its subject is (`$SRV` names allow no dots).
fn endpoint_name(group: &str, name: &str) -> String {
    // Endpoint names are letters, digits, `-` and `_`; a dotted operation
    // (`lock.acquire`) keeps its subject and becomes `state_lock_acquire`.
    format!("{group}_{name}").replace('.', "_")
}

/// `handler` with its own clone of `app` for every request.
fn bind<A, F, Fut>(app: &A, handler: F) -> impl Fn(Request) -> Fut + Send + Sync + 'static
where
    A: Clone + Send + Sync + 'static,
    F: Fn(A, Request) -> Fut + Send + Sync + 'static,
{
    let app = app.clone();
    move |request| handler(app.clone(), request)
}

/// A service's endpoints and context, run until the shutdown token trips.
pub struct Service {
    context: ServiceContext,
    host: ServiceHost,
    background: Background,
}

impl Service {
    /// Registers the service on NATS (`$SRV.PING/INFO/STATS` answer from now on).
    pub async fn start(context: ServiceContext) -> anyhow::Result<Self> {
        let mut spec = ServiceSpec::new(context.info.name, context.info.description);
        spec.max_in_flight = context.max_in_flight;
        let mut host = ServiceHost::start(&context.bus, spec, &context.metrics).await?;
        host.set_reject_sink(context.reject_sink());
        Ok(Self {
            context,
            host,
            background: Background::new(),
        })
    }

    /// Where endpoints are added (prefer [`Service::serve`]).
    pub fn host(&self) -> &ServiceHost {
        &self.host
    }

    /// The connections.
    pub fn context(&self) -> &ServiceContext {
        &self.context
    }

    /// Serves `<root>.<group>.<name>` (queue group `q`, shared by replicas)
    /// with `handler(app, request)`, one trace span per request. The
    /// endpoint is named `<group>_<name>` in `$SRV.INFO`/`$SRV.STATS` and in
    /// the request metrics' `endpoint` label.
    pub async fn serve<A, F, Fut>(
        &self,
        group: &str,
        name: &str,
        app: &A,
        handler: F,
    ) -> anyhow::Result<()>
    where
        A: Clone + Send + Sync + 'static,
        F: Fn(A, Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Reply, ServiceError>> + Send + 'static,
    {
        let subject = self.context.bus.subjects.endpoint(group, name);
        let name = endpoint_name(group, name);
        Ok(self
            .host
            .endpoint(&name, subject, bind(app, handler))
            .await?)
    }

    /// [`Service::serve`] without a trace span per request: for high-rate,
    /// low-value requests such as heartbeats.
    pub async fn serve_untraced<A, F, Fut>(
        &self,
        group: &str,
        name: &str,
        app: &A,
        handler: F,
    ) -> anyhow::Result<()>
    where
        A: Clone + Send + Sync + 'static,
        F: Fn(A, Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Reply, ServiceError>> + Send + 'static,
    {
        self.add(group, name, bind(app, handler), false).await
    }

    async fn add(
        &self,
        group: &str,
        name: &str,
        handler: impl concord_bus::Handler,
        traced: bool,
    ) -> anyhow::Result<()> {
        let subject = self.context.bus.subjects.endpoint(group, name);
        let name = endpoint_name(group, name);
        if traced {
            self.host.endpoint(&name, subject, handler).await?;
        } else {
            self.host.endpoint_untraced(&name, subject, handler).await?;
        }
        Ok(())
    }

    /// Keeps `directory` a copy of the registry's published directory (the
    /// KV bucket), and returns once the first full copy is loaded (or after
    /// ten seconds, with a warning: the watch goes on filling it).
    pub async fn watch_directory(&self, bucket: DirectoryBucket, directory: SharedDirectory) {
        self.watch_directory_notifying(bucket, directory, None)
            .await
    }

    /// [`Service::watch_directory`], sending the id of each agent whose
    /// entry changed on `changed` ([`concord_directory::watch_notifying`]).
    pub async fn watch_directory_notifying(
        &self,
        bucket: DirectoryBucket,
        directory: SharedDirectory,
        changed: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    ) {
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        self.spawn_background(concord_directory::watch_notifying(
            bucket,
            directory,
            self.background_token(),
            ready_tx,
            changed,
        ));
        if tokio::time::timeout(DIRECTORY_LOAD, ready).await.is_err() {
            tracing::warn!(
                service = self.context.info.name,
                "the agent directory is not loaded yet; serving while the watch catches up"
            );
        }
    }

    /// Subscribes to each of `subjects` (in queue group `queue` when given:
    /// one replica gets each message) and runs `handle` for every message,
    /// one at a time, until shutdown.
    pub async fn listen<F, Fut>(
        &self,
        subjects: impl IntoIterator<Item = String>,
        queue: Option<&str>,
        handle: F,
    ) -> anyhow::Result<()>
    where
        F: FnMut(async_nats::Message) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let client = &self.context.bus.client;
        let mut subscribers = Vec::new();
        for subject in subjects {
            let subscriber = match queue {
                Some(queue) => client.queue_subscribe(subject, queue.to_string()).await?,
                None => client.subscribe(subject).await?,
            };
            subscribers.push(subscriber);
        }
        let messages = futures::stream::select_all(subscribers);
        self.spawn_background(for_each_until(messages, self.background_token(), handle));
        Ok(())
    }

    /// The handle that spawns tracked background tasks, for parts of the
    /// service that start work of their own.
    pub fn background(&self) -> Background {
        self.background.clone()
    }

    /// The token that tells background tasks to stop: cancelled only after
    /// the endpoints have drained, so work accepted during the drain (a
    /// buffered heartbeat) is still written by the task's last batch.
    pub fn background_token(&self) -> CancellationToken {
        self.background.token()
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
        if !self.background.stop(self.context.shutdown_grace).await {
            tracing::warn!(
                service = self.context.info.name,
                "background tasks did not stop in time"
            );
        }
        self.context.close().await;
        Ok(())
    }
}
