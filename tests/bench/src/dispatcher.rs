//! The dispatcher benchmark: end-to-end tasks (JetStream submission →
//! dispatcher → agent → every event committed in Postgres → result) through
//! the real `concord-registry` and `concord-dispatcher` release binaries,
//! next to the raw baseline ([`crate::baseline`]) measured in the same run
//! on the same servers.
//!
//! Configurations, each with its own capability so their agents are apart:
//!
//! - `a`: 10 agents answered by one in-process connection (no-op agents):
//!   fixed rates and saturation;
//! - `c`: 10,000 registered agents (one wildcard responder): saturation,
//!   compared with `a` (the target is ≥ 0.9×), measured right after it;
//! - `b`: 100 agents, each on its own NATS connection: saturation;
//! - backlog: 100,000 tasks nobody can take yet, to report the dispatcher's
//!   RSS with a full backlog (and, before it, after every configuration, to
//!   show it does not grow per completed task).
//!
//! Agents are registered with a 60 s heartbeat interval (the registry is
//! started with `CONCORD_HEARTBEAT_INTERVAL=60`), so heartbeat traffic is a
//! trickle during the measurement: each agent sends one heartbeat a minute,
//! spread evenly, which keeps it ALIVE however long the run lasts.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use async_nats::jetstream;
use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;

use crate::baseline::{self, BaselineArgs, BaselineReport};
use crate::infra::{self, Rng, ScratchDatabase, ServiceProcess};
use crate::load::{self, CpuGroup, LoadRunner, PhaseReport, PhaseSpec, TaskId};
use crate::procfs;

/// Options of `concord-bench dispatcher`.
#[derive(Debug, Clone, clap::Args)]
pub struct DispatcherArgs {
    #[command(flatten)]
    pub phases: infra::PhaseArgs,
    /// Registered agents of configuration `c`.
    #[arg(long, default_value_t = 10_000)]
    pub many_agents: usize,
    /// Tasks of the backlog measurement (0: skip it).
    #[arg(long, default_value_t = 100_000)]
    pub backlog: usize,
    /// Configurations to run: `a` (10 agents: fixed rates, saturation),
    /// `c` (many agents), `b` (100 agent connections).
    #[arg(long, value_delimiter = ',', default_value = "a,c,b")]
    pub configurations: Vec<String>,
    /// After configuration `a`, this many more saturation pairs, alternating
    /// the raw baseline and Concord (10 agents), each pair right after the
    /// other: the ratio of every pair and their median, less exposed to the
    /// machine's drift than one baseline at the start of the run.
    #[arg(long, default_value_t = 0)]
    pub repeat: usize,
    /// Skip the raw baseline.
    #[arg(long)]
    pub no_baseline: bool,
    /// Use the release binaries as they are (no `cargo build --release`).
    #[arg(long)]
    pub no_build: bool,
    #[command(flatten)]
    pub servers: infra::Servers,
}

impl Default for DispatcherArgs {
    fn default() -> Self {
        infra::defaults()
    }
}

/// One configuration's phases.
#[derive(Debug, Clone, Serialize)]
pub struct Configuration {
    pub name: String,
    pub agents: usize,
    pub phases: Vec<PhaseReport>,
    /// Dispatcher RSS after the configuration, MiB.
    pub dispatcher_rss_mib_after: f64,
    /// Task-writer transactions per completed task in this configuration.
    pub commits_per_task: f64,
    /// Per phase, the dispatcher's mean time per stage, ms
    /// (`dispatcher_task_stage_seconds`: intake, agent, commit).
    pub stage_means_ms: Vec<BTreeMap<String, f64>>,
}

/// The stages of `concord_dispatcher_task_stage_seconds`.
const STAGES: [&str; 3] = ["intake", "agent", "commit"];

/// Histograms whose means the bench reports per phase: the three stages, then one write.
const WRITE_SERIES: &str = "concord_dispatcher_write_duration_seconds";

/// Sum and count of every stage histogram, now.
async fn stage_totals(port: u16) -> Vec<(f64, f64)> {
    let mut totals = Vec::new();
    for stage in STAGES {
        let series = |part: &str| {
            format!("concord_dispatcher_task_stage_seconds_{part}{{stage=\"{stage}\"}}")
        };
        let sum = metric(port, &series("sum")).await.unwrap_or(0.0);
        let count = metric(port, &series("count")).await.unwrap_or(0.0);
        totals.push((sum, count));
    }
    let sum = metric(port, &format!("{WRITE_SERIES}_sum"))
        .await
        .unwrap_or(0.0);
    let count = metric(port, &format!("{WRITE_SERIES}_count"))
        .await
        .unwrap_or(0.0);
    totals.push((sum, count));
    totals
}

/// Mean ms per stage between two [`stage_totals`].
fn stage_means(before: &[(f64, f64)], after: &[(f64, f64)]) -> BTreeMap<String, f64> {
    STAGES
        .iter()
        .chain(&["one write"])
        .zip(before.iter().zip(after))
        .filter_map(|(stage, ((sum0, count0), (sum1, count1)))| {
            let count = count1 - count0;
            (count > 0.0).then(|| (stage.to_string(), (sum1 - sum0) / count * 1e3))
        })
        .collect()
}

/// The result of `concord-bench dispatcher`.
#[derive(Debug, Clone, Serialize)]
pub struct DispatcherReport {
    pub date: String,
    pub machine: String,
    pub baseline: Option<BaselineReport>,
    pub configurations: Vec<Configuration>,
    /// The `--repeat` pairs: (baseline, Concord) tasks per second at saturation.
    pub repeats: Vec<(f64, f64)>,
    pub rss_mib_start: f64,
    pub backlog_tasks: usize,
    pub backlog_held: f64,
    pub backlog_rss_mib: f64,
}

pub async fn run(args: &DispatcherArgs) -> anyhow::Result<DispatcherReport> {
    let baseline = if args.no_baseline {
        None
    } else {
        eprintln!("bench: dispatcher: the raw baseline first, same servers");
        let baseline_args = BaselineArgs {
            phases: args.phases.clone(),
            servers: args.servers.clone(),
            ..BaselineArgs::default()
        };
        Some(baseline::run(&baseline_args).await?)
    };
    if !args.no_build {
        infra::build_release("concord-registry")?;
        infra::build_release("concord-dispatcher")?;
    }
    let mut rng = Rng::from_entropy();
    let tag = rng.tag();
    let root = format!("bench{tag}");
    let database = format!("concord_bench_{tag}");
    let scratch = ScratchDatabase::create(&args.servers.database_url, &database).await?;
    let metrics_port = free_port()?;
    let common = |extra: &[(&'static str, String)]| {
        let mut env = vec![
            ("CONCORD_NATS_URL", args.servers.nats_url.clone()),
            ("CONCORD_DATABASE_URL", scratch.url.clone()),
            ("CONCORD_SUBJECT_ROOT", root.clone()),
            ("CONCORD_LOG", "warn".to_string()),
        ];
        env.extend(extra.iter().cloned());
        env
    };
    let registry_log = std::env::temp_dir().join(format!("concord-bench-{root}-registry.log"));
    let dispatcher_log = std::env::temp_dir().join(format!("concord-bench-{root}-dispatcher.log"));
    let spawned = async {
        let registry = ServiceProcess::spawn(
            "concord-registry",
            &common(&[
                (
                    "CONCORD_HEARTBEAT_INTERVAL",
                    HEARTBEAT_INTERVAL.as_secs().to_string(),
                ),
                ("CONCORD_METRICS_ADDR", "127.0.0.1:0".into()),
            ]),
            &["OTEL_EXPORTER_OTLP_ENDPOINT"],
            registry_log.clone(),
        )?;
        let dispatcher = ServiceProcess::spawn(
            "concord-dispatcher",
            &common(&[
                ("CONCORD_NO_AGENT_WAIT_MS", "600000".into()),
                ("CONCORD_METRICS_ADDR", format!("127.0.0.1:{metrics_port}")),
            ]),
            &["OTEL_EXPORTER_OTLP_ENDPOINT"],
            dispatcher_log.clone(),
        )?;
        anyhow::Ok((registry, dispatcher))
    }
    .await;
    let (registry, mut dispatcher) = match spawned {
        Ok(processes) => processes,
        Err(error) => {
            let _ = scratch.drop_now().await;
            return Err(error);
        }
    };
    let control = infra::connect(&args.servers.nats_url, "concord-bench-control").await?;
    let body = measure(
        args,
        &root,
        &control,
        &mut dispatcher,
        metrics_port,
        registry.pid,
    );
    let result = tokio::select! {
        result = body => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    let tail = result.is_err().then(|| dispatcher.log_tail(30));
    eprintln!("bench: stopping the services, deleting {root}'s streams, dropping {database}");
    let _ = dispatcher.stop(Duration::from_secs(15)).await;
    let _ = registry.stop(Duration::from_secs(15)).await;
    let js = jetstream::new(control.clone());
    let _ = js
        .delete_stream(format!("{}_TASKS", root.to_uppercase()))
        .await;
    let _ = js
        .delete_key_value(format!("{}_AGENTS", root.to_uppercase()))
        .await;
    let _ = control.drain().await;
    let _ = scratch.drop_now().await;
    let Measured {
        configurations,
        repeats,
        rss_start,
        backlog,
    } = result.map_err(|error| match tail {
        Some(tail) if !tail.is_empty() => error.context(format!("dispatcher log:\n{tail}")),
        _ => error,
    })?;
    Ok(DispatcherReport {
        date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        machine: {
            let machine = procfs::Machine::describe();
            format!(
                "{} CPUs ({}), {:.0} GiB, kernel {}",
                machine.cpus,
                machine.model,
                machine.memory_bytes as f64 / (1u64 << 30) as f64,
                machine.kernel
            )
        },
        baseline,
        configurations,
        repeats,
        rss_mib_start: rss_start,
        backlog_tasks: args.backlog,
        backlog_held: backlog.0,
        backlog_rss_mib: backlog.1,
    })
}

struct Measured {
    configurations: Vec<Configuration>,
    repeats: Vec<(f64, f64)>,
    rss_start: f64,
    /// Held tasks and RSS with the backlog.
    backlog: (f64, f64),
}

async fn measure(
    args: &DispatcherArgs,
    root: &str,
    control: &Client,
    dispatcher: &mut ServiceProcess,
    metrics_port: u16,
    registry_pid: u32,
) -> anyhow::Result<Measured> {
    wait_ready(control, root, dispatcher).await?;
    let rss_start = rss_mib(dispatcher.pid);
    let nats_pid = infra::url_port(&args.servers.nats_url).and_then(procfs::listener);
    let postmaster = infra::postmaster(&args.servers.database_url).await;
    let dispatcher_pid = dispatcher.pid;
    let cpu_groups = move || {
        let mut groups = vec![
            CpuGroup {
                name: "concord-dispatcher".into(),
                pids: vec![dispatcher_pid],
            },
            CpuGroup {
                name: "concord-bench (load, agents)".into(),
                pids: vec![std::process::id()],
            },
            CpuGroup {
                name: "concord-registry".into(),
                pids: vec![registry_pid],
            },
        ];
        if let Some(pid) = nats_pid {
            groups.push(CpuGroup {
                name: "nats-server".into(),
                pids: vec![pid],
            });
        }
        if let Some(postmaster) = postmaster {
            groups.push(CpuGroup {
                name: "postgres".into(),
                pids: procfs::postgres_family(postmaster),
            });
        }
        groups
    };
    let warmup = Duration::from_secs(args.phases.warmup);
    let saturation = || (args.phases.saturation_seconds > 0).then(|| saturation_spec(args));
    let wanted = |name: &str| args.configurations.iter().any(|c| c == name);
    let mut configurations = Vec::new();
    let mut repeats = Vec::new();

    // a: 10 agents on one connection, fixed rates then saturation.
    let mut specs: Vec<PhaseSpec> = args
        .phases
        .rates
        .iter()
        .filter(|&&rate| rate > 0)
        .map(|&rate| {
            PhaseSpec::rate(
                format!("rate {rate}/s"),
                rate,
                warmup,
                Duration::from_secs(args.phases.seconds),
            )
        })
        .collect();
    specs.extend(saturation());
    if wanted("a") && !specs.is_empty() {
        let responders = agents(args, root, "a", 10, Layout::Shared).await?;
        configurations.push(
            configuration(
                args,
                root,
                ("a", "a"),
                "10 agents, one connection",
                10,
                specs,
                metrics_port,
                dispatcher_pid,
                &cpu_groups,
            )
            .await?,
        );
        for round in 0..args.repeat {
            eprintln!(
                "bench: repeat {}/{}: the raw baseline, then Concord",
                round + 1,
                args.repeat
            );
            let baseline = baseline::run(&BaselineArgs {
                phases: infra::PhaseArgs {
                    rates: Vec::new(),
                    saturation_seconds: args.phases.saturation_seconds.max(1),
                    ..args.phases.clone()
                },
                servers: args.servers.clone(),
                ..BaselineArgs::default()
            })
            .await?;
            let ids = format!("a{round}");
            let concord = configuration(
                args,
                root,
                ("a", &ids),
                &format!("10 agents, repeat {}", round + 1),
                10,
                vec![saturation_spec(args)],
                metrics_port,
                dispatcher_pid,
                &cpu_groups,
            )
            .await?;
            let rate = |phases: &[PhaseReport]| {
                phases
                    .iter()
                    .find(|p| p.name == "saturation")
                    .map_or(0.0, |p| p.completed_per_second)
            };
            let pair = (
                rate(
                    &baseline
                        .phases
                        .iter()
                        .map(|p| p.load.clone())
                        .collect::<Vec<_>>(),
                ),
                rate(&concord.phases),
            );
            eprintln!(
                "bench: repeat {}: baseline {:.0}/s, Concord {:.0}/s, ratio {:.2}",
                round + 1,
                pair.0,
                pair.1,
                pair.1 / pair.0.max(1.0)
            );
            repeats.push(pair);
        }
        drop(responders);
    }

    // c: 10,000 registered agents; b: 100 agents, 100 connections.
    let saturation_only = [
        (
            "c",
            args.many_agents,
            Layout::Shared,
            format!("{} agents, one connection", args.many_agents),
        ),
        (
            "b",
            100,
            Layout::OwnConnections,
            "100 agents, 100 connections".to_string(),
        ),
    ];
    for (prefix, count, layout, name) in saturation_only {
        if !wanted(prefix) || args.phases.saturation_seconds == 0 {
            continue;
        }
        let responders = agents(args, root, prefix, count, layout).await?;
        configurations.push(
            configuration(
                args,
                root,
                (prefix, prefix),
                &name,
                count,
                vec![saturation_spec(args)],
                metrics_port,
                dispatcher_pid,
                &cpu_groups,
            )
            .await?,
        );
        drop(responders);
    }

    // The backlog: tasks for a capability nobody has (the dispatcher waits
    // 10 minutes before dead-lettering them in this run).
    let backlog = if args.backlog > 0 {
        eprintln!("bench: backlog of {} tasks", args.backlog);
        let js = jetstream::ContextBuilder::new()
            .max_ack_inflight(16_384)
            .build(control.clone());
        let subject = format!("{root}.tasks.submit");
        let mut pending = futures::stream::FuturesUnordered::new();
        for n in 0..args.backlog {
            let body = format!(r#"{{"id":"z-{n}","capability":"nobody"}}"#);
            pending.push(
                js.publish(subject.clone(), Bytes::from(body))
                    .await?
                    .into_future(),
            );
            while pending.len() > 8192 {
                pending.next().await.transpose()?;
            }
        }
        while let Some(ack) = pending.next().await {
            ack?;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        let held = metric(metrics_port, "concord_dispatcher_tasks_held")
            .await
            .unwrap_or(0.0);
        (held, rss_mib(dispatcher_pid))
    } else {
        (0.0, 0.0)
    };
    Ok(Measured {
        configurations,
        repeats,
        rss_start,
        backlog,
    })
}

/// A saturation phase with the run's window and length.
fn saturation_spec(args: &DispatcherArgs) -> PhaseSpec {
    PhaseSpec::saturation(
        "saturation",
        args.phases.saturation_in_flight,
        Duration::from_secs(args.phases.warmup),
        Duration::from_secs(args.phases.saturation_seconds.max(1)),
    )
}

#[allow(clippy::too_many_arguments)]
async fn configuration(
    args: &DispatcherArgs,
    root: &str,
    (prefix, ids): (&str, &str),
    name: &str,
    agents: usize,
    specs: Vec<PhaseSpec>,
    metrics_port: u16,
    dispatcher_pid: u32,
    cpu_groups: &(impl Fn() -> Vec<CpuGroup> + Clone + Send + Sync + 'static),
) -> anyhow::Result<Configuration> {
    let load_client = infra::connect(&args.servers.nats_url, "concord-bench-load").await?;
    let results_client = infra::connect(&args.servers.nats_url, "concord-bench-results").await?;
    let js = jetstream::ContextBuilder::new()
        .max_ack_inflight(16_384)
        .build(load_client.clone());
    let subject = async_nats::Subject::from(format!("{root}.tasks.submit"));
    let capability = format!("bench-{prefix}");
    // Task ids `<ids>-<n>`: every call uses its own `ids`, so no id repeats
    // an earlier phase's (a finished id would only be answered as a duplicate).
    let ids = ids.to_string();
    let ids_of = ids.clone();
    let publish = move |id: TaskId| {
        let js = js.clone();
        let subject = subject.clone();
        let body = Bytes::from(format!(
            r#"{{"id":"{ids}-{id}","capability":"{capability}"}}"#
        ));
        async move {
            js.publish_with_headers(subject, HeaderMap::new(), body)
                .await
                .context("JetStream publish")?
                .await
                .context("JetStream publish acknowledgement")?;
            anyhow::Ok(())
        }
    };
    let mut runner = LoadRunner::new(
        results_client.clone(),
        format!("{root}.tasks.result.>"),
        publish,
    )
    .id_of(move |message| {
        let token = message.subject.rsplit('.').next()?;
        token
            .strip_prefix(ids_of.as_str())?
            .strip_prefix('-')?
            .parse()
            .ok()
    })
    .cpu_groups(cpu_groups.clone());
    let commits_before = metric(metrics_port, "concord_dispatcher_write_batches_total")
        .await
        .unwrap_or(0.0);
    let completed_before = metric(metrics_port, "concord_dispatcher_tasks_completed_total")
        .await
        .unwrap_or(0.0);
    let mut phases = Vec::new();
    let mut stage_means_ms = Vec::new();
    for spec in specs {
        eprintln!("bench: {name}: phase {}", spec.name);
        let stages_before = stage_totals(metrics_port).await;
        let report = runner.run(&spec).await?;
        let means = stage_means(&stages_before, &stage_totals(metrics_port).await);
        eprintln!(
            "bench: {name}: {}: mean ms per dispatcher stage {means:?}",
            report.name
        );
        stage_means_ms.push(means);
        if report.missing > 0 {
            // What the dispatcher holds now tells a stalled intake (nothing
            // held), tasks waiting for an agent (queued) and lost agent
            // replies (lease expiries) apart.
            let mut state = Vec::new();
            for metric_name in STALL_DIAGNOSTICS {
                let value = metric(metrics_port, metric_name).await;
                state.push(format!(
                    "{} {}",
                    metric_name.trim_start_matches("concord_dispatcher_"),
                    value.map_or("?".to_string(), |v| v.to_string())
                ));
            }
            eprintln!(
                "bench: {name}: {}: {} tasks missing; the dispatcher now: {}",
                report.name,
                report.missing,
                state.join(", ")
            );
        }
        eprintln!(
            "bench: {name}: {}: {:.0} tasks/s, p50 {} ms, p99 {} ms, {} missing, {} duplicates",
            report.name,
            report.completed_per_second,
            load::ms(report.latency.p50_ms),
            load::ms(report.latency.p99_ms),
            report.missing,
            report.duplicates,
        );
        phases.push(report);
    }
    let commits = metric(metrics_port, "concord_dispatcher_write_batches_total")
        .await
        .unwrap_or(0.0)
        - commits_before;
    let completed = metric(metrics_port, "concord_dispatcher_tasks_completed_total")
        .await
        .unwrap_or(0.0)
        - completed_before;
    for client in [load_client, results_client] {
        let _ = client.drain().await;
    }
    Ok(Configuration {
        name: name.to_string(),
        agents,
        phases,
        dispatcher_rss_mib_after: rss_mib(dispatcher_pid),
        commits_per_task: if completed > 0.0 {
            commits / completed
        } else {
            0.0
        },
        stage_means_ms,
    })
}

/// The bench registry's heartbeat interval: long, so heartbeats cost
/// nothing measurable, but kept, so agents stay ALIVE (three missed
/// intervals would make them SUSPECT and the dispatcher would stop routing
/// to them three minutes into a run).
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(60);

enum Layout {
    /// One connection answers every agent's subject.
    Shared,
    /// Each agent on its own connection.
    OwnConnections,
}

/// Registers `count` agents with capability `bench-<prefix>` and answers
/// their assignments at once; dropping the result stops the responders
/// and their heartbeats.
async fn agents(
    args: &DispatcherArgs,
    root: &str,
    prefix: &str,
    count: usize,
    layout: Layout,
) -> anyhow::Result<Agents> {
    eprintln!("bench: registering {count} agents for bench-{prefix}");
    let register = infra::connect(&args.servers.nats_url, "concord-bench-register").await?;
    let ids: Vec<String> = (0..count).map(|n| format!("{prefix}{n:05}")).collect();
    let mut handles = Vec::new();
    match layout {
        Layout::Shared => {
            let client = infra::connect(&args.servers.nats_url, "concord-bench-agents").await?;
            let subscriber = client.subscribe(format!("{root}.agent.*.tasks")).await?;
            handles.push(tokio::spawn(respond(client, subscriber)));
        }
        Layout::OwnConnections => {
            for id in &ids {
                let client = infra::connect(&args.servers.nats_url, id).await?;
                let subscriber = client.subscribe(format!("{root}.agent.{id}.tasks")).await?;
                handles.push(tokio::spawn(respond(client, subscriber)));
            }
        }
    }
    let subject = format!("{root}.registry.register");
    let mut pending = futures::stream::FuturesUnordered::new();
    for id in &ids {
        let body = format!(
            r#"{{"id":"{id}","name":"bench","capabilities":[{{"name":"bench-{prefix}","level":1}}],"maxConcurrency":1000}}"#
        );
        let register = register.clone();
        let subject = subject.clone();
        pending.push(async move {
            let mut headers = HeaderMap::new();
            headers.insert("Content-Type", "application/json");
            let reply = register
                .request_with_headers(subject, headers, Bytes::from(body))
                .await?;
            if reply
                .headers
                .as_ref()
                .and_then(|h| h.get("Concord-Error-Code"))
                .is_some()
            {
                bail!(
                    "registration refused: {}",
                    String::from_utf8_lossy(&reply.payload)
                );
            }
            anyhow::Ok(())
        });
        while pending.len() >= 256 {
            pending.next().await.transpose()?;
        }
    }
    while let Some(done) = pending.next().await {
        done?;
    }
    let _ = register.drain().await;
    handles.push(tokio::spawn(heartbeat(
        infra::connect(&args.servers.nats_url, "concord-bench-heartbeats").await?,
        format!("{root}.registry.heartbeat"),
        ids,
    )));
    // The dispatcher's copy of the directory follows the KV bucket; let
    // the registrations' writes settle before measuring.
    tokio::time::sleep(Duration::from_secs(2 + count as u64 / 2000)).await;
    Ok(Agents(handles))
}

/// The tasks standing in for a configuration's agents; aborted on drop.
struct Agents(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Agents {
    fn drop(&mut self) {
        for handle in &self.0 {
            handle.abort();
        }
    }
}

/// Sends every agent's heartbeat once per [`HEARTBEAT_INTERVAL`], spread
/// evenly over it in ticks of 100 ms, as independent agents would.
async fn heartbeat(client: Client, subject: String, ids: Vec<String>) {
    const TICK: Duration = Duration::from_millis(100);
    let ticks = (HEARTBEAT_INTERVAL.as_millis() / TICK.as_millis()) as usize;
    let per_tick = ids.len().div_ceil(ticks);
    let mut timer = tokio::time::interval(TICK);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    for chunk in ids.chunks(per_tick).cycle() {
        timer.tick().await;
        let sends = chunk.iter().map(|id| {
            let mut headers = HeaderMap::new();
            headers.insert("Content-Type", "application/json");
            let body =
                format!(r#"{{"agentId":"{id}","inFlight":0,"capacity":1000,"health":"HEALTHY"}}"#);
            client.request_with_headers(subject.clone(), headers, Bytes::from(body))
        });
        for reply in futures::future::join_all(sends).await {
            let refused = match &reply {
                Ok(reply) => reply
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Concord-Error-Code"))
                    .is_some(),
                Err(_) => true,
            };
            if refused && !warned {
                warned = true;
                eprintln!("bench: warning: a heartbeat failed: {reply:?}");
            }
        }
    }
}

/// A no-op agent: answers every assignment with a constant output.
async fn respond(client: Client, mut subscriber: async_nats::Subscriber) {
    static REPLY: &[u8] = br#"{"output":{"ok":true}}"#;
    while let Some(message) = subscriber.next().await {
        if let Some(reply) = message.reply {
            let _ = client.publish(reply, Bytes::from_static(REPLY)).await;
        }
    }
}

async fn wait_ready(
    control: &Client,
    root: &str,
    dispatcher: &mut ServiceProcess,
) -> anyhow::Result<()> {
    let js = jetstream::new(control.clone());
    let stream = format!("{}_TASKS", root.to_uppercase());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        dispatcher.check_alive()?;
        let registry_up = control
            .request(
                format!("{root}.registry.discover"),
                Bytes::from_static(b"{}"),
            )
            .await
            .is_ok();
        if registry_up && js.get_stream(&stream).await.is_ok() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the services did not become ready within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn rss_mib(pid: u32) -> f64 {
    procfs::memory(pid).map_or(0.0, |m| m.rss_bytes as f64 / (1024.0 * 1024.0))
}

/// One value from the dispatcher's `/metrics`.
/// Dispatcher metrics printed when a phase has missing tasks.
const STALL_DIAGNOSTICS: [&str; 8] = [
    "concord_dispatcher_tasks_held",
    "concord_dispatcher_tasks_queued",
    "concord_dispatcher_tasks_submitted_total",
    "concord_dispatcher_attempts_started_total",
    "concord_dispatcher_tasks_completed_total",
    "concord_dispatcher_leases_expired_total",
    "concord_dispatcher_attempts_retried_total",
    "concord_dispatcher_stale_replies_total",
];

async fn metric(port: u16, name: &str) -> Option<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await.ok()?;
    text.lines()
        .find(|line| line.starts_with(name) && line[name.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

impl DispatcherReport {
    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        let mut out = format!("### Dispatcher ({}, {})\n\n", self.date, self.machine);
        let saturation = |phases: &[PhaseReport]| {
            phases
                .iter()
                .find(|p| p.name == "saturation")
                .map(|p| p.completed_per_second)
        };
        if let Some(baseline) = &self.baseline {
            out.push_str("Raw baseline (same servers, same run):\n\n");
            let phases: Vec<PhaseReport> = baseline.phases.iter().map(|p| p.load.clone()).collect();
            out.push_str(&load::markdown_table(&phases));
            out.push('\n');
        }
        for configuration in &self.configurations {
            out.push_str(&format!(
                "Concord, {} ({:.2} task-writer commits per task, dispatcher RSS after: {:.0} MiB):\n\n",
                configuration.name, configuration.commits_per_task, configuration.dispatcher_rss_mib_after
            ));
            out.push_str(&load::markdown_table(&configuration.phases));
            out.push('\n');
            out.push_str(
                "Mean time per task in the dispatcher's stages (ms; the warm-up included): ",
            );
            let stages: Vec<String> = configuration
                .phases
                .iter()
                .zip(&configuration.stage_means_ms)
                .map(|(phase, means)| {
                    let parts: Vec<String> = means
                        .iter()
                        .map(|(stage, ms)| format!("{stage} {ms:.2}"))
                        .collect();
                    format!("{}: {}", phase.name, parts.join(", "))
                })
                .collect();
            out.push_str(&stages.join("; "));
            out.push_str("\n\n");
        }
        let baseline_saturation = self
            .baseline
            .as_ref()
            .and_then(|b| saturation(&b.phases.iter().map(|p| p.load.clone()).collect::<Vec<_>>()));
        let ten = self
            .configurations
            .iter()
            .find(|c| c.agents == 10 && !c.name.contains("connections"));
        let a = ten.and_then(|c| saturation(&c.phases));
        // The configuration with the most agents (all on one connection).
        let c = self
            .configurations
            .iter()
            .filter(|c| c.agents > 10 && !c.name.contains("connections"))
            .max_by_key(|c| c.agents)
            .and_then(|c| saturation(&c.phases));
        if let (Some(concord), Some(baseline)) = (a, baseline_saturation) {
            out.push_str(&format!(
                "- Concord / baseline at saturation: {concord:.0} / {baseline:.0} = **{:.2}** (target ≥ 0.8)\n",
                concord / baseline
            ));
        }
        if let (Some(many), Some(few)) = (c, a) {
            out.push_str(&format!(
                "- Many agents / 10 agents at saturation: {many:.0} / {few:.0} = **{:.2}** (target ≥ 0.9)\n",
                many / few
            ));
        }
        if let Some(rate) = ten.and_then(|c| c.phases.iter().find(|p| p.name == "rate 1000/s")) {
            out.push_str(&format!(
                "- At 1,000 tasks/s: p50 {} ms, p99 {} ms (targets ≤ 1 ms, ≤ 5 ms)\n",
                load::ms(rate.latency.p50_ms),
                load::ms(rate.latency.p99_ms)
            ));
        }
        if !self.repeats.is_empty() {
            let mut ratios: Vec<f64> = self
                .repeats
                .iter()
                .map(|(baseline, concord)| concord / baseline.max(1.0))
                .collect();
            let pairs: Vec<String> = self
                .repeats
                .iter()
                .zip(&ratios)
                .map(|((baseline, concord), ratio)| {
                    format!("{concord:.0} / {baseline:.0} = {ratio:.2}")
                })
                .collect();
            ratios.sort_by(f64::total_cmp);
            let middle = ratios.len() / 2;
            let median = if ratios.len().is_multiple_of(2) {
                (ratios[middle - 1] + ratios[middle]) / 2.0
            } else {
                ratios[middle]
            };
            out.push_str(&format!(
                "- Alternating saturation pairs (Concord / baseline): {}; median **{median:.2}**\n",
                pairs.join(", "),
            ));
        }
        out.push_str(&format!(
            "- Dispatcher RSS: {:.0} MiB at start; after each configuration {}; with a backlog of {} tasks ({:.0} held by the dispatcher, the rest in the stream): {:.0} MiB\n",
            self.rss_mib_start,
            self.configurations
                .iter()
                .map(|c| format!("{:.0} MiB", c.dispatcher_rss_mib_after))
                .collect::<Vec<_>>()
                .join(", "),
            self.backlog_tasks,
            self.backlog_held,
            self.backlog_rss_mib
        ));
        out
    }
}
