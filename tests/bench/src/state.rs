//! The state benchmark: durable compare-and-set updates of documents
//! through the real `concord-state` binary, next to a raw baseline of the
//! same shape measured first in the same run.
//!
//! Raw baseline: core NATS requests `{"key","expectedVersion","value"}`
//! answered by a plain responder in this process that collects what arrived
//! (at most 200), applies `UPDATE ... SET version = version + 1 WHERE key =
//! $k AND version = $v` for all of them from UNNEST (keys sorted) in one
//! transaction and replies per row. Concord: `state.put` with
//! `expectedVersion` on the same number of distinct keys.
//!
//! Phases, on each side: saturation (`in_flight` clients, each updating its
//! own keys, so no conflicts), then one update at a time (latency). Concord
//! only: `contended_writers` clients doing get + compare-and-set on one key
//! (throughput and conflict rate), lock acquire + release round trips one
//! at a time, and barriers of `barrier_participants` named participants all
//! arriving at once with `wait` (creation of the barrier excluded; the time
//! from the first arrival sent to the last participant released).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use async_nats::Client;
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::infra::{self, Rng, ScratchDatabase, Servers, ServiceProcess};
use crate::stats::Summary;

/// Most rows the baseline applies in one transaction.
const BASELINE_BATCH: usize = 200;

#[derive(Debug, Clone, clap::Args)]
pub struct StateArgs {
    #[command(flatten)]
    pub servers: Servers,
    /// Distinct documents updated during saturation.
    #[arg(long, default_value_t = 10_000)]
    pub keys: usize,
    /// Requests outstanding at saturation (one client each).
    #[arg(long, default_value_t = 400)]
    pub in_flight: usize,
    /// Length of each measured window, seconds.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Warm-up before each window, seconds.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Updates sent one at a time for the latency figures.
    #[arg(long, default_value_t = 2_000)]
    pub serial: usize,
    /// Writers doing get + compare-and-set on one key.
    #[arg(long, default_value_t = 8)]
    pub contended_writers: usize,
    /// Lock acquire + release round trips, one at a time.
    #[arg(long, default_value_t = 1_000)]
    pub lock_round_trips: usize,
    /// Participants of each measured barrier.
    #[arg(long, default_value_t = 100)]
    pub barrier_participants: usize,
    /// Barriers measured.
    #[arg(long, default_value_t = 20)]
    pub barriers: usize,
    /// Do not build `concord-state` first.
    #[arg(long)]
    pub no_build: bool,
}

impl Default for StateArgs {
    fn default() -> Self {
        infra::defaults()
    }
}

/// One side's figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Side {
    pub updates_per_second: f64,
    pub conflicts: u64,
    pub serial: Summary,
}

/// The contended key.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Contended {
    pub writers: usize,
    pub acknowledged_per_second: f64,
    pub conflict_rate: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StateReport {
    pub keys: usize,
    pub in_flight: usize,
    pub baseline: Side,
    pub concord: Side,
    pub contended: Contended,
    /// One exclusive acquire plus its release, uncontended.
    pub lock_round_trip: Summary,
    pub barrier_participants: usize,
    /// First arrival sent to the last participant released.
    pub barrier_release: Summary,
    pub throughput_ratio: f64,
    pub p50_ratio: f64,
    pub p99_ratio: f64,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CasRequest {
    key: String,
    expected_version: u64,
    value: serde_json::Value,
}

/// What a compare-and-set came to.
enum Outcome {
    Applied(u64),
    Conflict,
}

/// Sends one compare-and-set on either side.
#[derive(Clone)]
struct Target {
    client: Client,
    subject: String,
    concord: bool,
}

impl Target {
    async fn cas(&self, key: &str, expected: u64) -> anyhow::Result<Outcome> {
        let body = serde_json::to_vec(&CasRequest {
            key: key.to_string(),
            expected_version: expected,
            value: serde_json::json!({"n": expected + 1}),
        })?;
        let reply = self
            .client
            .request(self.subject.clone(), body.into())
            .await?;
        let code = reply
            .headers
            .as_ref()
            .and_then(|h| h.get("Concord-Error-Code"))
            .map(|v| v.as_str().to_string());
        let json: serde_json::Value = serde_json::from_slice(&reply.payload)?;
        match code.as_deref() {
            Some("CONFLICT") => return Ok(Outcome::Conflict),
            Some(other) => bail!("update refused: {other}: {json}"),
            None => {}
        }
        if !self.concord && json["ok"] == false {
            return Ok(Outcome::Conflict);
        }
        let version = &json["version"];
        let version = version
            .as_u64()
            .or_else(|| version.as_str().and_then(|s| s.parse().ok()))
            .ok_or_else(|| anyhow::anyhow!("reply without a version: {json}"))?;
        Ok(Outcome::Applied(version))
    }
}

pub async fn run(args: &StateArgs) -> anyhow::Result<StateReport> {
    if !args.no_build {
        infra::build_release("concord-state")?;
    }
    let mut rng = Rng::from_entropy();
    let tag = rng.tag();
    let root = format!("bench{tag}");
    let database = format!("concord_bench_{tag}");
    let scratch = ScratchDatabase::create(&args.servers.database_url, &database).await?;
    let result = measure(args, &root, &scratch).await;
    eprintln!("bench: state: dropping {database}");
    let _ = scratch.drop_now().await;
    result
}

async fn measure(
    args: &StateArgs,
    root: &str,
    scratch: &ScratchDatabase,
) -> anyhow::Result<StateReport> {
    let client = infra::connect(&args.servers.nats_url, "concord-bench-state").await?;

    eprintln!("bench: state: raw baseline ({} keys)", args.keys);
    let pool = concord_store::connect(&scratch.url, 4).await?;
    sqlx::query("CREATE TABLE bench_docs (key TEXT PRIMARY KEY, version BIGINT NOT NULL, value JSONB NOT NULL)")
        .execute(&pool)
        .await?;
    sqlx::query("INSERT INTO bench_docs SELECT 'bench/k' || i, 1, '{\"n\":1}' FROM generate_series(0, $1 - 1) AS i")
        .bind(args.keys as i64)
        .execute(&pool)
        .await?;
    let subject = format!("{root}.baseline.cas");
    let responder_client =
        infra::connect(&args.servers.nats_url, "concord-bench-state-responder").await?;
    let subscriber = responder_client.subscribe(subject.clone()).await?;
    // The subscription is on the server before the first request is sent.
    responder_client.flush().await?;
    let responder = tokio::spawn(respond(responder_client.clone(), subscriber, pool.clone()));
    client.flush().await?;
    let baseline_target = Target {
        client: client.clone(),
        subject,
        concord: false,
    };
    let baseline = side(args, &baseline_target).await?;
    responder.abort();

    eprintln!("bench: state: concord-state");
    let log = std::env::temp_dir().join(format!("concord-bench-{root}-state.log"));
    let mut service = ServiceProcess::spawn(
        "concord-state",
        &[
            ("CONCORD_NATS_URL", args.servers.nats_url.clone()),
            ("CONCORD_DATABASE_URL", scratch.url.clone()),
            ("CONCORD_SUBJECT_ROOT", root.to_string()),
            ("CONCORD_LOG", "warn".to_string()),
            ("CONCORD_METRICS_ADDR", "127.0.0.1:0".to_string()),
        ],
        &["OTEL_EXPORTER_OTLP_ENDPOINT"],
        log,
    )?;
    let measured = async {
        wait_ready(&client, root, &mut service).await?;
        preload(&client, root, args.keys).await?;
        let target = Target {
            client: client.clone(),
            subject: format!("{root}.state.put"),
            concord: true,
        };
        let concord = side(args, &target).await?;
        let contended = contended(args, &client, root).await?;
        let lock_round_trip = lock_round_trips(args, &client, root).await?;
        let barrier_release = barriers(args, &client, root).await?;
        service.check_alive()?;
        anyhow::Ok((concord, contended, lock_round_trip, barrier_release))
    }
    .await;
    service.stop(Duration::from_secs(10)).await?;
    let (concord, contended, lock_round_trip, barrier_release) = measured?;
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    Ok(StateReport {
        keys: args.keys,
        in_flight: args.in_flight,
        throughput_ratio: ratio(concord.updates_per_second, baseline.updates_per_second),
        p50_ratio: ratio(concord.serial.p50_ms, baseline.serial.p50_ms),
        p99_ratio: ratio(concord.serial.p99_ms, baseline.serial.p99_ms),
        baseline,
        concord,
        contended,
        lock_round_trip,
        barrier_participants: args.barrier_participants,
        barrier_release,
    })
}

/// A request to the state service that must not be refused.
async fn ask(client: &Client, subject: String, body: String) -> anyhow::Result<serde_json::Value> {
    let reply = client.request(subject, body.into()).await?;
    if let Some(code) = reply
        .headers
        .as_ref()
        .and_then(|h| h.get("Concord-Error-Code"))
    {
        bail!(
            "refused ({}): {}",
            code.as_str(),
            String::from_utf8_lossy(&reply.payload)
        );
    }
    Ok(serde_json::from_slice(&reply.payload)?)
}

/// Exclusive acquire + release of one resource, one round trip at a time.
async fn lock_round_trips(
    args: &StateArgs,
    client: &Client,
    root: &str,
) -> anyhow::Result<Summary> {
    let acquire = format!("{root}.state.lock.acquire");
    let release = format!("{root}.state.lock.release");
    let mut samples = Vec::with_capacity(args.lock_round_trips);
    for _ in 0..args.lock_round_trips {
        let started = Instant::now();
        let grant = ask(
            client,
            acquire.clone(),
            r#"{"resource":"bench/lock","owner":"bench","ttlMs":10000}"#.to_string(),
        )
        .await?;
        let token = grant["token"].as_str().unwrap_or("0");
        ask(
            client,
            release.clone(),
            format!(r#"{{"resource":"bench/lock","owner":"bench","token":"{token}"}}"#),
        )
        .await?;
        samples.push(started.elapsed().as_nanos() as u64);
    }
    let summary = Summary::of(&mut samples);
    eprintln!(
        "bench: state: lock acquire + release p50 {:.3} ms, p99 {:.3} ms",
        summary.p50_ms, summary.p99_ms
    );
    Ok(summary)
}

/// Barriers of `barrier_participants` all arriving at once with `wait`.
async fn barriers(args: &StateArgs, client: &Client, root: &str) -> anyhow::Result<Summary> {
    let participants: Vec<String> = (0..args.barrier_participants)
        .map(|n| format!("p{n}"))
        .collect();
    let mut samples = Vec::with_capacity(args.barriers);
    for round in 0..args.barriers {
        let id = format!("bench-{round}");
        let create = serde_json::json!({
            "id": id,
            "participants": participants,
            "timeoutMs": 60_000,
        });
        ask(
            client,
            format!("{root}.state.barrier.create"),
            create.to_string(),
        )
        .await?;
        let started = Instant::now();
        let arrivals = participants.iter().map(|participant| {
            let client = client.clone();
            let subject = format!("{root}.state.barrier.arrive");
            let body = format!(r#"{{"id":"{id}","participant":"{participant}","wait":true}}"#);
            async move { ask(&client, subject, body).await }
        });
        for released in futures::future::join_all(arrivals).await {
            let released = released?;
            if released["status"] != "BARRIER_RELEASED" {
                bail!("barrier {id} answered {released}");
            }
        }
        samples.push(started.elapsed().as_nanos() as u64);
    }
    let summary = Summary::of(&mut samples);
    eprintln!(
        "bench: state: {}-participant barrier released in p50 {:.3} ms",
        args.barrier_participants, summary.p50_ms
    );
    Ok(summary)
}

/// The baseline responder: batches what arrived, one UPDATE from UNNEST per
/// batch (keys sorted), one reply per row.
async fn respond(client: Client, mut subscriber: async_nats::Subscriber, pool: sqlx::PgPool) {
    let mut batch: Vec<(CasRequest, async_nats::Subject)> = Vec::with_capacity(BASELINE_BATCH);
    loop {
        let Some(first) = subscriber.next().await else {
            return;
        };
        let mut messages = vec![first];
        while messages.len() < BASELINE_BATCH {
            match futures::FutureExt::now_or_never(subscriber.next()) {
                Some(Some(message)) => messages.push(message),
                _ => break,
            }
        }
        for message in messages {
            if let (Some(reply), Ok(request)) = (
                message.reply,
                serde_json::from_slice::<CasRequest>(&message.payload),
            ) {
                batch.push((request, reply));
            }
        }
        batch.sort_by(|a, b| a.0.key.cmp(&b.0.key));
        let keys: Vec<&str> = batch.iter().map(|(r, _)| r.key.as_str()).collect();
        let versions: Vec<i64> = batch
            .iter()
            .map(|(r, _)| r.expected_version as i64)
            .collect();
        let values: Vec<String> = batch.iter().map(|(r, _)| r.value.to_string()).collect();
        let updated: Result<Vec<(String, i64)>, sqlx::Error> = async {
            let mut tx = pool.begin().await?;
            let rows = sqlx::query_as(
                "UPDATE bench_docs d SET version = d.version + 1, value = u.v::jsonb
                 FROM UNNEST($1::text[], $2::bigint[], $3::text[]) AS u(k, ver, v)
                 WHERE d.key = u.k AND d.version = u.ver
                 RETURNING d.key, d.version",
            )
            .bind(&keys)
            .bind(&versions)
            .bind(&values)
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(rows)
        }
        .await;
        let updated: std::collections::HashMap<String, i64> =
            updated.unwrap_or_default().into_iter().collect();
        for (request, reply) in batch.drain(..) {
            let body = match updated.get(&request.key) {
                Some(version) => format!(r#"{{"ok":true,"version":{version}}}"#),
                None => r#"{"ok":false}"#.to_string(),
            };
            let _ = client.publish(reply, Bytes::from(body)).await;
        }
    }
}

/// Saturation, then one update at a time, on `target`.
async fn side(args: &StateArgs, target: &Target) -> anyhow::Result<Side> {
    let clients = args.in_flight.min(args.keys).max(1);
    let stop = Arc::new(AtomicBool::new(false));
    let counting = Arc::new(AtomicBool::new(false));
    let updates = Arc::new(AtomicU64::new(0));
    let conflicts = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for client in 0..clients {
        let target = target.clone();
        let (stop, counting, updates, conflicts) = (
            stop.clone(),
            counting.clone(),
            updates.clone(),
            conflicts.clone(),
        );
        // Client c owns keys c, c + clients, c + 2 * clients, ...: no conflicts.
        let mine: Vec<usize> = (client..args.keys).step_by(clients).collect();
        tasks.push(tokio::spawn(async move {
            let mut versions = vec![1u64; mine.len()];
            let mut next = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("bench/k{}", mine[next]);
                match target.cas(&key, versions[next]).await? {
                    Outcome::Applied(version) => {
                        versions[next] = version;
                        if counting.load(Ordering::Relaxed) {
                            updates.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Outcome::Conflict => {
                        conflicts.fetch_add(1, Ordering::Relaxed);
                        bail!("unexpected conflict on {key} at version {}", versions[next]);
                    }
                }
                next = (next + 1) % mine.len();
            }
            anyhow::Ok(versions.into_iter().zip(mine).collect::<Vec<_>>())
        }));
    }
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;
    counting.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    counting.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut versions = vec![1u64; args.keys];
    for task in tasks {
        for (version, key) in task.await?? {
            versions[key] = version;
        }
    }
    let updates_per_second = updates.load(Ordering::Relaxed) as f64 / elapsed;
    eprintln!("bench: state: {updates_per_second:.0} updates/s with {clients} clients");

    let mut samples = Vec::with_capacity(args.serial);
    for i in 0..args.serial {
        let key = i % args.keys;
        let started = Instant::now();
        match target.cas(&format!("bench/k{key}"), versions[key]).await? {
            Outcome::Applied(version) => versions[key] = version,
            Outcome::Conflict => bail!("unexpected conflict on bench/k{key}"),
        }
        samples.push(started.elapsed().as_nanos() as u64);
    }
    let serial = Summary::of(&mut samples);
    eprintln!(
        "bench: state: one at a time p50 {:.3} ms, p99 {:.3} ms",
        serial.p50_ms, serial.p99_ms
    );
    Ok(Side {
        updates_per_second,
        conflicts: conflicts.load(Ordering::Relaxed),
        serial,
    })
}

async fn wait_ready(
    client: &Client,
    root: &str,
    service: &mut ServiceProcess,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        service.check_alive()?;
        let answer = client
            .request(
                format!("{root}.state.list"),
                Bytes::from_static(br#"{"prefix":"bench/"}"#),
            )
            .await;
        if answer.is_ok_and(|m| {
            m.headers.is_none()
                || m.headers
                    .as_ref()
                    .is_some_and(|h| h.get("Concord-Error-Code").is_none())
        }) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("concord-state did not become ready within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Creates `keys` documents at version 1, 256 requests at a time.
async fn preload(client: &Client, root: &str, keys: usize) -> anyhow::Result<()> {
    let subject = format!("{root}.state.create");
    futures::stream::iter(0..keys)
        .map(|i| {
            let client = client.clone();
            let subject = subject.clone();
            async move {
                let body = format!(r#"{{"key":"bench/k{i}","value":{{"n":1}}}}"#);
                let reply = client.request(subject, body.into()).await?;
                if reply
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Concord-Error-Code"))
                    .is_some()
                {
                    bail!(
                        "create refused: {}",
                        String::from_utf8_lossy(&reply.payload)
                    );
                }
                anyhow::Ok(())
            }
        })
        .buffer_unordered(256)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<()>>>()?;
    Ok(())
}

/// `writers` clients doing get + compare-and-set on one key.
async fn contended(args: &StateArgs, client: &Client, root: &str) -> anyhow::Result<Contended> {
    let key = "bench/contended";
    let created = client
        .request(
            format!("{root}.state.create"),
            format!(r#"{{"key":"{key}","value":{{"n":0}}}}"#).into(),
        )
        .await?;
    if created
        .headers
        .as_ref()
        .and_then(|h| h.get("Concord-Error-Code"))
        .is_some()
    {
        bail!(
            "cannot create {key}: {}",
            String::from_utf8_lossy(&created.payload)
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let conflicts = Arc::new(AtomicU64::new(0));
    let target = Target {
        client: client.clone(),
        subject: format!("{root}.state.put"),
        concord: true,
    };
    let mut tasks = Vec::new();
    for _ in 0..args.contended_writers {
        let (target, stop, acked, conflicts) = (
            target.clone(),
            stop.clone(),
            acked.clone(),
            conflicts.clone(),
        );
        let get = format!("{root}.state.get");
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let current = target
                    .client
                    .request(get.clone(), format!(r#"{{"key":"{key}"}}"#).into())
                    .await?;
                let json: serde_json::Value = serde_json::from_slice(&current.payload)?;
                let version: u64 = json["version"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                match target.cas(key, version).await? {
                    Outcome::Applied(_) => acked.fetch_add(1, Ordering::Relaxed),
                    Outcome::Conflict => conflicts.fetch_add(1, Ordering::Relaxed),
                };
            }
            anyhow::Ok(())
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (acked, conflicts) = (
        acked.load(Ordering::Relaxed),
        conflicts.load(Ordering::Relaxed),
    );
    let attempts = (acked + conflicts).max(1);
    eprintln!(
        "bench: state: contended key, {} writers: {acked} acknowledged, {conflicts} conflicts",
        args.contended_writers
    );
    Ok(Contended {
        writers: args.contended_writers,
        acknowledged_per_second: acked as f64 / elapsed,
        conflict_rate: conflicts as f64 / attempts as f64,
    })
}

impl StateReport {
    pub fn markdown(&self) -> String {
        format!(
            "## State: durable compare-and-set updates\n\n\
             {keys} documents, {in_flight} clients at saturation, each updating its own keys.\n\n\
             | | raw baseline | Concord | Concord / baseline |\n| --- | --- | --- | --- |\n\
             | updates/s at saturation | {b_sat:.0} | {c_sat:.0} | {ratio:.2} |\n\
             | one at a time, p50 ms | {b_p50:.3} | {c_p50:.3} | {p50:.2} |\n\
             | one at a time, p99 ms | {b_p99:.3} | {c_p99:.3} | {p99:.2} |\n\n\
             Contended key, {writers} writers (get + compare-and-set): {acked:.0} acknowledged updates/s, \
             conflict rate {rate:.2}.\n\n\
             Lock acquire + release round trip (one at a time, {locks} samples): p50 {l_p50:.3} ms, p99 {l_p99:.3} ms.\n\n\
             {participants}-participant barrier, all arriving at once with `wait` ({barriers} barriers): \
             released in p50 {b_rel_p50:.3} ms, max {b_rel_max:.3} ms (first arrival sent to the last participant answered).\n",
            keys = self.keys,
            in_flight = self.in_flight,
            b_sat = self.baseline.updates_per_second,
            c_sat = self.concord.updates_per_second,
            ratio = self.throughput_ratio,
            b_p50 = self.baseline.serial.p50_ms,
            c_p50 = self.concord.serial.p50_ms,
            p50 = self.p50_ratio,
            b_p99 = self.baseline.serial.p99_ms,
            c_p99 = self.concord.serial.p99_ms,
            p99 = self.p99_ratio,
            writers = self.contended.writers,
            acked = self.contended.acknowledged_per_second,
            rate = self.contended.conflict_rate,
            locks = self.lock_round_trip.count,
            l_p50 = self.lock_round_trip.p50_ms,
            l_p99 = self.lock_round_trip.p99_ms,
            participants = self.barrier_participants,
            barriers = self.barrier_release.count,
            b_rel_p50 = self.barrier_release.p50_ms,
            b_rel_max = self.barrier_release.max_ms,
        )
    }
}
