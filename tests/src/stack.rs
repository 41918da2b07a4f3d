//! A registry and a dispatcher in-process on a [`World`], plus SDK agents:
//! what the dispatcher's end-to-end tests and the CLI's task tests share.

use std::time::Duration;

use async_nats::jetstream::kv::Operation;
use concord_bus::{Bus, BusConfig, Shutdown};
use concord_dispatcher::BackoffPolicy;
use concord_dispatcher::DispatcherConfig;
use concord_dispatcher::TaskStore;
use concord_runtime::ServiceContext;
use concord_sdk::{Agent, AgentConfig};
use concord_telemetry::MetricsRegistry;
use concord_testkit::NatsProxy;
use concord_wire::codec::{self, ContentType};
use concord_wire::v1::{AgentRecord, Liveness};
use tokio::task::JoinHandle;

use crate::World;

/// How long the helpers wait for something to happen.
pub const WAIT: Duration = Duration::from_secs(20);

/// Dispatcher settings for tests: a short wait for agents, quick retries.
pub fn test_config() -> DispatcherConfig {
    let defaults = DispatcherConfig::default();
    DispatcherConfig {
        no_agent_wait: Duration::from_millis(500),
        backoff: BackoffPolicy {
            base: Duration::from_millis(20),
            max: Duration::from_millis(100),
            ..defaults.backoff
        },
        ..defaults
    }
}

/// A world with a registry, a dispatcher, a client connection and the
/// dispatcher's task store; agents added with [`Stack::agent`].
pub struct Stack {
    pub world: World,
    pub client: Bus,
    pub store: TaskStore,
    /// The proxy the dispatcher connects through, when started with
    /// [`Stack::start_behind_proxy`].
    pub proxy: Option<NatsProxy>,
    /// The dispatcher's metrics.
    pub dispatcher_metrics: MetricsRegistry,
    stops: Vec<(Shutdown, JoinHandle<()>)>,
}

impl Stack {
    /// Starts the registry and a dispatcher with `config`.
    pub async fn start(config: DispatcherConfig) -> Stack {
        Self::start_with(config, false).await
    }

    /// Like [`Stack::start`], with the dispatcher's connections going
    /// through a [`NatsProxy`] (everything else connects directly), so a
    /// test can make the server miss some of the dispatcher's messages.
    pub async fn start_behind_proxy(config: DispatcherConfig) -> Stack {
        Self::start_with(config, true).await
    }

    async fn start_with(config: DispatcherConfig, behind_proxy: bool) -> Stack {
        let world = World::start().await.unwrap();
        let proxy = if behind_proxy {
            Some(NatsProxy::start(world.nats.port()).await.unwrap())
        } else {
            None
        };
        let mut stops = Vec::new();
        let context = world.context(&concord_registry::INFO).await.unwrap();
        let shutdown = context.shutdown.clone();
        let registry = concord_registry::build(context).await.unwrap();
        stops.push((
            shutdown,
            tokio::spawn(async move { registry.run_until_stopped().await.unwrap() }),
        ));
        let context = match &proxy {
            Some(proxy) => {
                let args = crate::service_args(&proxy.url(), world.db.url(), &world.root);
                ServiceContext::connect(&concord_dispatcher::INFO, &args, Shutdown::new())
                    .await
                    .unwrap()
            }
            None => world.context(&concord_dispatcher::INFO).await.unwrap(),
        };
        let store = TaskStore::new(context.pool.clone());
        let dispatcher_metrics = context.metrics.clone();
        let shutdown = context.shutdown.clone();
        let (dispatcher, _) = concord_dispatcher::build_with(context, config)
            .await
            .unwrap();
        stops.push((
            shutdown,
            tokio::spawn(async move { dispatcher.run_until_stopped().await.unwrap() }),
        ));
        let client = world.bus("test-client").await.unwrap();
        Stack {
            world,
            client,
            store,
            proxy,
            dispatcher_metrics,
            stops,
        }
    }

    /// Runs an SDK agent in-process until the stack stops; returns once the
    /// registry lists it.
    pub async fn agent<A: Agent>(&mut self, id: &str, agent: A, max_concurrency: u32) {
        let config = AgentConfig::new(
            id,
            BusConfig::new(self.world.nats.url(), id).with_subject_root(self.world.root.clone()),
        )
        .with_id(id)
        .with_max_concurrency(max_concurrency)
        .with_heartbeat_interval(Duration::from_millis(200));
        let shutdown = Shutdown::new();
        let handle = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                let _ = concord_sdk::run(agent, config, shutdown).await;
            }
        });
        self.stops.insert(0, (shutdown, handle));
        self.wait_for_agent(id).await;
    }

    /// Waits until the directory bucket the dispatcher routes from holds
    /// the agent, ALIVE (see [`wait_for_directory_agent`]).
    pub async fn wait_for_agent(&self, id: &str) {
        wait_for_directory_agent(&self.client, id).await;
    }

    /// `nats req <root>.tasks.run '<json>'`: the task's final result, or
    /// why not (the error reply).
    pub async fn run(
        &self,
        body: &serde_json::Value,
    ) -> Result<concord_wire::v1::TaskResult, concord_bus::ServiceError> {
        let message = tokio::time::timeout(
            WAIT,
            self.client.client.request(
                self.client.subjects.tasks_run(),
                serde_json::to_vec(body).expect("JSON serializes").into(),
            ),
        )
        .await
        .expect("a reply in time")
        .expect("a reply");
        concord_bus::service::read_reply(&message)
    }

    /// The dispatcher's counter `name` (without the `concord_` prefix).
    pub fn dispatcher_counter(&self, name: &str) -> u64 {
        crate::metric_counter(&self.dispatcher_metrics.encode(), name)
    }

    /// Stops agents first, then the dispatcher and the registry.
    pub async fn stop(self) {
        for (shutdown, handle) in self.stops {
            shutdown.trigger();
            let _ = tokio::time::timeout(Duration::from_secs(10), handle).await;
        }
    }
}

/// Waits until the directory bucket dispatchers route from holds agent
/// `id`, ALIVE.
///
/// The dispatcher exposes nothing about its copy of the directory (no
/// endpoint, no metric), so this waits for what that copy follows: the
/// registry writes the agent's record to the bucket before it answers the
/// registration, and the server pushes the write to the dispatcher's watch
/// as it stores it. (The registry's `get` answers from Postgres, committed
/// before the bucket is written, so it says nothing about the bucket.) What
/// is left is the dispatcher applying a message already sent to it; a task
/// routed in that instant is not lost, only routed again on the next tick
/// (for up to `no_agent_wait`).
pub async fn wait_for_directory_agent(bus: &Bus, id: &str) {
    let bucket = concord_directory::DirectoryBucket::open(bus)
        .await
        .expect("the directory bucket");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(Some(entry)) = bucket.store().entry(id).await
            && entry.operation == Operation::Put
            && let Ok(record) = codec::decode::<AgentRecord>(ContentType::Json, &entry.value)
            && !record.deregistered
            && record.liveness == Liveness::Alive as i32
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "agent {id} never appeared ALIVE in the directory bucket"
        );
        // Polling interval, not synchronisation: the loop waits for the record.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
