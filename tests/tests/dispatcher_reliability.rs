//! Proof of reliability: 10,000 tasks under load while the dispatcher (a
//! separate process) is SIGKILLed and restarted twice, an agent process
//! crashes mid-task, nats-server is killed and restarted and Postgres is
//! killed and restarted. Afterwards every task is completed exactly once or
//! dead-lettered with a reason; none is missing. And: two dispatcher
//! replicas share the load without completing any task twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use concord_bus::Shutdown;
use concord_chaos_agent::{ChaosAgent, ChaosConfig, Latency};
use concord_runtime::ServiceContext;
use concord_sdk::AgentConfig;
use concord_testkit::{NatsServer, PostgresServer, ServiceProcess, service_binary};
use futures::StreamExt;
use serde_json::json;
use tokio::task::JoinHandle;

const TASKS: usize = 10_000;

/// The dispatcher binary with test-friendly timings: a short ack wait so a
/// killed replica's submissions come back quickly.
fn spawn_dispatcher(nats_url: &str, database_url: &str, root: &str) -> ServiceProcess {
    let binary = service_binary("concord-dispatcher").expect("the dispatcher binary");
    let args: Vec<String> = [
        "--nats-url",
        nats_url,
        "--database-url",
        database_url,
        "--subject-root",
        root,
        "--metrics-addr",
        "127.0.0.1:0",
        "--ack-wait-ms",
        "2000",
        "--retry-base-ms",
        "20",
        "--retry-max-ms",
        "200",
        "--no-agent-wait-ms",
        "60000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    ServiceProcess::spawn(&binary, &args, &[("CONCORD_LOG".into(), "warn".into())])
        .expect("dispatcher starts")
}

/// Runs an in-process chaos agent until `shutdown`.
fn spawn_agent(
    nats_url: &str,
    root: &str,
    id: &str,
    config: ChaosConfig,
    shutdown: &Shutdown,
) -> JoinHandle<()> {
    let agent = ChaosAgent::new(config).unwrap();
    let config = AgentConfig::new(
        id,
        concord_bus::BusConfig::new(nats_url, id).with_subject_root(root.to_string()),
    )
    .with_id(id)
    .with_max_concurrency(64)
    .with_heartbeat_interval(Duration::from_millis(500));
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        let _ = concord_sdk::run(agent, config, shutdown).await;
    })
}

/// Counts results per task id: first publications and re-publications.
#[derive(Default)]
struct Results {
    fresh: HashMap<String, u32>,
    replayed: HashMap<String, u32>,
}

async fn observe(client: async_nats::Client, subject: String, results: Arc<Mutex<Results>>) {
    let mut subscriber = client.subscribe(subject).await.unwrap();
    while let Some(message) = subscriber.next().await {
        let id = message
            .subject
            .rsplit('.')
            .next()
            .unwrap_or_default()
            .to_string();
        let replayed =
            concord_bus::headers::get(message.headers.as_ref(), "Concord-Replayed").is_some();
        let mut results = results.lock().unwrap();
        let map = if replayed {
            &mut results.replayed
        } else {
            &mut results.fresh
        };
        *map.entry(id).or_default() += 1;
    }
}

/// Publishes one submission until JetStream confirms it (same message id on
/// every try, so a retry after a lost ack is one task).
async fn submit(js: &jetstream::Context, subject: &str, i: usize) {
    submit_as(js, subject, i, format!("r-{i}")).await;
}

/// Submits task `r-<i>` with `msg_id` as its Nats-Msg-Id.
async fn submit_as(js: &jetstream::Context, subject: &str, i: usize, msg_id: String) {
    let id = format!("r-{i}");
    let body = json!({"id": id, "capability": "chaos", "payload": {"i": i}, "timeoutMs": 3000, "maxAttempts": 20});
    let bytes: bytes::Bytes = serde_json::to_vec(&body).unwrap().into();
    loop {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", msg_id.as_str());
        let sent = async {
            js.publish_with_headers(subject.to_string(), headers, bytes.clone())
                .await?
                .await
                .map_err(|e| anyhow::anyhow!(e))
        }
        .await;
        match sent {
            Ok(_) => return,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

async fn count_final(pool: &sqlx::PgPool) -> Option<(i64, i64)> {
    sqlx::query_as(
        "select count(*) filter (where status = 'COMPLETED'), count(*) filter (where status = 'DEAD_LETTERED') from tasks",
    )
    .fetch_one(pool)
    .await
    .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_tasks_survive_killed_dispatchers_agents_nats_and_postgres() {
    concord_tests::init_telemetry();
    let mut nats = NatsServer::start().await.unwrap();
    let mut pg = PostgresServer::start().await.unwrap();
    let root = format!("r{}", uuid::Uuid::new_v4().simple());
    let nats_url = nats.url();
    let db_url = pg.url();

    // Registry in-process; agents in-process plus one crashing agent process.
    let args = concord_tests::service_args(&nats_url, &db_url, &root);
    let context = ServiceContext::connect(&concord_registry::INFO, &args, Shutdown::new())
        .await
        .unwrap();
    let registry_shutdown = context.shutdown.clone();
    let registry = concord_registry::build(context).await.unwrap();
    let registry_task = tokio::spawn(async move { registry.run_until_stopped().await });

    let agents_shutdown = Shutdown::new();
    let mut agents = Vec::new();
    for n in 0..4 {
        let config = ChaosConfig {
            latency: Latency::Uniform {
                min: Duration::from_millis(0),
                max: Duration::from_millis(5),
            },
            seed: n,
            ..ChaosConfig::default()
        };
        agents.push(spawn_agent(
            &nats_url,
            &root,
            &format!("agent-{n}"),
            config,
            &agents_shutdown,
        ));
    }
    let crasher_binary = service_binary("concord-chaos-agent").expect("the chaos agent binary");
    let mut crasher = ServiceProcess::spawn(
        &crasher_binary,
        &[
            "--nats-url".into(),
            nats_url.clone(),
            "--subject-root".into(),
            root.clone(),
            "--agent-id".into(),
            "crasher".into(),
            "--max-concurrency".into(),
            "16".into(),
            "--latency-ms".into(),
            "1..20".into(),
            "--crash-after".into(),
            "100".into(),
        ],
        &[],
    )
    .unwrap();

    let mut dispatcher = spawn_dispatcher(&nats_url, &db_url, &root);

    // The observer and the submitter, each with its own connection.
    // When the observer was last connected (again, after the NATS restart).
    let reconnected: Arc<Mutex<Option<chrono::DateTime<chrono::Utc>>>> = Arc::default();
    let observer_client = {
        let reconnected = reconnected.clone();
        async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .event_callback(move |event| {
                let reconnected = reconnected.clone();
                async move {
                    if matches!(event, async_nats::Event::Connected) {
                        *reconnected.lock().unwrap() = Some(chrono::Utc::now());
                    }
                }
            })
            .connect(&nats_url)
            .await
            .unwrap()
    };
    let results = Arc::new(Mutex::new(Results::default()));
    let observer = tokio::spawn(observe(
        observer_client.clone(),
        format!("{root}.tasks.result.>"),
        results.clone(),
    ));
    observer_client.flush().await.unwrap();
    let submit_client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(&nats_url)
        .await
        .unwrap();
    let js = jetstream::new(submit_client);
    // Wait until the dispatcher created the intake stream.
    let subject = format!("{root}.tasks.submit");
    let stream_name = format!("{}_TASKS", root.to_uppercase());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while js.get_stream(&stream_name).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dispatcher never created its intake stream; its log:\n{}",
            dispatcher.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let submitter = {
        let js = js.clone();
        let subject = subject.clone();
        tokio::spawn(async move {
            // About 670 tasks/s for 15 seconds: every fault below falls
            // inside the submissions.
            for chunk in (0..TASKS).collect::<Vec<_>>().chunks(100) {
                let sends = chunk.iter().map(|&i| submit(&js, &subject, i));
                futures::future::join_all(sends).await;
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        })
    };

    // The faults, while the load runs. The sleeps between them are the
    // scenario's schedule (each fault lands inside the ~15 s of submissions,
    // with load in flight), not waits for something to happen.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let first_kill = chrono::Utc::now();
    dispatcher.kill().unwrap();
    dispatcher = spawn_dispatcher(&nats_url, &db_url, &root);
    // Tasks the killed dispatcher committed but had not published yet are
    // redelivered after the ack wait (2 s) and their results re-published
    // by the new one: leave that time before restarting NATS, or those
    // re-publications could fall into the restart, where the observer
    // cannot see them, without counting as published around it.
    // Seen in CI: with 3 s, re-publications still fell into the restart
    // (after the ack wait come the new process's start-up and its lookups,
    // on two busy cores): 6 s.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let nats_killed = chrono::Utc::now();
    nats.restart().await.unwrap();
    // Scenario: the second kill hits a dispatcher busy with the backlog
    // the restart left.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second_kill = chrono::Utc::now();
    dispatcher.kill().unwrap();
    dispatcher = spawn_dispatcher(&nats_url, &db_url, &root);
    // Scenario: Postgres dies under the new replica once it has taken over.
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg.kill().await.unwrap();
    // Scenario: how long Postgres stays down (writes and lookups fail meanwhile).
    tokio::time::sleep(Duration::from_millis(500)).await;
    pg.start_again().await.unwrap();

    submitter.await.unwrap();
    let pool = pg.connect().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let (completed, dead) = loop {
        if let Some((completed, dead)) = count_final(&pool).await
            && (completed + dead) as usize == TASKS
        {
            break (completed, dead);
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "not every task finished: {:?}; dispatcher log:\n{}",
                count_final(&pool).await,
                dispatcher.log_tail(60)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(!crasher.is_running(), "the crashing agent crashed mid-task");

    // None missing, none twice.
    let rows: i64 = sqlx::query_scalar("select count(*) from tasks")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        rows as usize, TASKS,
        "one row per task, none missing or extra"
    );
    let twice = completed_twice(&pool).await;
    assert!(twice.is_empty(), "tasks completed twice: {twice:?}");
    let completions: i64 =
        sqlx::query_scalar("select count(*) from events where event_type = 'task.completed'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(completions, completed);
    let wrong_output: i64 = sqlx::query_scalar(
        "select count(*) from tasks where status = 'COMPLETED' and (result->'output'->>'i')::int <> (spec->'payload'->>'i')::int",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(wrong_output, 0, "every output is its own task's payload");
    // Dead-lettered tasks have their dead letter and reason.
    let without_letter: i64 = sqlx::query_scalar(
        "select count(*) from events e where e.event_type = 'task.dead_lettered' \
         and not exists (select 1 from dead_letters d where d.id::text = e.data->>'deadLetterId')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        without_letter, 0,
        "every dead-lettered task has its dead letter"
    );
    // No task here may be dead-lettered. The agents never fail on their own
    // and the tasks have no deadline, so `task_failed` and
    // `deadline_exceeded` cannot happen; `no_eligible_agent` needs a minute
    // (`--no-agent-wait-ms`) without any live agent, and every outage here
    // lasts seconds; `max_attempts` needs 20 failed attempts, and an attempt
    // fails only when a fault catches it: the crash (its lease, then
    // `agent_unreachable` once: failed agents are avoided), a dispatcher
    // kill (the successor counts the attempt that was out, twice), the NATS
    // restart (a lost assignment or reply: a lease or two). Postgres'
    // restart costs no attempt (lookups and writes are retried). That is
    // about six attempts at most, far from 20.
    let letters: Vec<(String, String, String, i32, serde_json::Value)> = sqlx::query_as(
        "select e.aggregate_id, d.reason, d.error, d.attempts, d.history from events e \
         join dead_letters d on d.id::text = e.data->>'deadLetterId' \
         where e.event_type = 'task.dead_lettered' order by e.aggregate_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        letters.len() as i64,
        dead,
        "one dead letter per dead-lettered task"
    );
    assert!(
        letters.is_empty(),
        "{} tasks dead-lettered, none may be (task, reason, error, attempts, history): {:#?}",
        letters.len(),
        &letters[..letters.len().min(5)]
    );
    let other_letters: i64 = sqlx::query_scalar("select count(*) from dead_letters")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(other_letters, 0, "no submission was refused as invalid");

    // Core NATS delivers nothing to a disconnected subscriber: results
    // published around the NATS restart, before the observer was back, may
    // be missed by it (their tasks are complete in the store, checked
    // above). Any other miss fails. A result is published right after the
    // commit of the task's last events, so the time that counts is when
    // that transaction ran (`recorded_at`), not when the agent answered
    // (`completed_at`): under load a commit can come seconds later.
    let observer_back = reconnected
        .lock()
        .unwrap()
        .expect("the observer reconnected");
    let window = (
        nats_killed - chrono::Duration::seconds(2),
        observer_back + chrono::Duration::seconds(2),
    );
    // A replica killed between a commit and its publication leaves the
    // result to its successor, which re-publishes it when the submission
    // is redelivered: after the ack wait, its start-up and a lookup, which
    // on two busy cores can fall into the NATS restart as well. Those are
    // excused here only if asking again (a duplicate submission) brings
    // their result back.
    let just_before_a_kill = |at: &chrono::DateTime<chrono::Utc>| {
        [first_kill, second_kill]
            .iter()
            .any(|kill| *at <= *kill && *at >= *kill - chrono::Duration::seconds(2))
    };
    // The last results follow their commits by moments: wait until every
    // result the observer must have seen has come (or give up and report).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (seen, replayed, missing, missed_outside, left_by_a_killed_replica) = loop {
        let (seen, replayed, missing) = {
            let results = results.lock().unwrap();
            let missing: Vec<String> = (0..TASKS)
                .map(|i| format!("r-{i}"))
                .filter(|id| !results.fresh.contains_key(id) && !results.replayed.contains_key(id))
                .collect();
            (
                results.fresh.len(),
                results.replayed.values().sum::<u32>(),
                missing,
            )
        };
        let last_commits: Vec<(String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
            "select aggregate_id, max(recorded_at) from events \
             where aggregate_type = 'task' and aggregate_id = any($1) group by aggregate_id",
        )
        .bind(&missing)
        .fetch_all(&pool)
        .await
        .unwrap();
        let mut missed_outside = Vec::new();
        let mut left_by_a_killed_replica = Vec::new();
        for (id, at) in last_commits {
            if at >= window.0 && at <= window.1 {
                continue;
            }
            if just_before_a_kill(&at) {
                left_by_a_killed_replica.push(id);
            } else {
                missed_outside.push((id, at));
            }
        }
        if missed_outside.is_empty() || tokio::time::Instant::now() > deadline {
            break (
                seen,
                replayed,
                missing,
                missed_outside,
                left_by_a_killed_replica,
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // On the result subject: no task's result published twice as new.
    {
        let results = results.lock().unwrap();
        let duplicates: Vec<(&String, &u32)> =
            results.fresh.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            duplicates.is_empty(),
            "results published twice: {duplicates:?}"
        );
    }
    assert!(
        missed_outside.is_empty(),
        "{} results never seen although published while the observer was connected \
         (NATS killed {nats_killed}, observer back {observer_back}, dispatchers killed \
         {first_kill} and {second_kill}; task id, commit time of its last events): {:?}",
        missed_outside.len(),
        &missed_outside[..missed_outside.len().min(10)]
    );
    for id in &left_by_a_killed_replica {
        let i: usize = id.trim_start_matches("r-").parse().unwrap();
        submit_as(&js, &subject, i, format!("{id}-again")).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let still_missing: Vec<String> = {
            let results = results.lock().unwrap();
            left_by_a_killed_replica
                .iter()
                .filter(|id| {
                    !results.replayed.contains_key(*id) && !results.fresh.contains_key(*id)
                })
                .cloned()
                .collect()
        };
        if still_missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "results of tasks a killed replica had committed are not re-published on a \
             duplicate submission: {still_missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "reliability: {completed} completed, {dead} dead-lettered, results seen {seen} \
         (+{replayed} re-published after recovery), {} missed while the observer was away \
         ({} of them left by a killed replica, re-published on request)",
        missing.len(),
        left_by_a_killed_replica.len()
    );

    dispatcher.terminate(Duration::from_secs(5)).await.unwrap();
    agents_shutdown.trigger();
    for agent in agents {
        let _ = tokio::time::timeout(Duration::from_secs(5), agent).await;
    }
    registry_shutdown.trigger();
    let _ = tokio::time::timeout(Duration::from_secs(5), registry_task).await;
    observer.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_dispatcher_replicas_share_the_load_without_completing_a_task_twice() {
    let world = concord_tests::World::start().await.unwrap();
    let mut stops = Vec::new();
    let context = world.context(&concord_registry::INFO).await.unwrap();
    stops.push(context.shutdown.clone());
    let registry = concord_registry::build(context).await.unwrap();
    tokio::spawn(async move { registry.run_until_stopped().await });
    let mut registries = Vec::new();
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let context = world.context(&concord_dispatcher::INFO).await.unwrap();
        stops.push(context.shutdown.clone());
        registries.push(context.metrics.clone());
        let dispatcher = concord_dispatcher::build(context).await.unwrap();
        replicas.push(tokio::spawn(
            async move { dispatcher.run_until_stopped().await },
        ));
    }
    let agents_shutdown = Shutdown::new();
    for n in 0..3 {
        let config = ChaosConfig {
            latency: Latency::Uniform {
                min: Duration::from_millis(0),
                max: Duration::from_millis(3),
            },
            seed: n,
            ..ChaosConfig::default()
        };
        spawn_agent(
            &world.nats.url(),
            &world.root,
            &format!("agent-{n}"),
            config,
            &agents_shutdown,
        );
    }
    let client = world.bus("submitter").await.unwrap();
    for n in 0..3 {
        concord_tests::stack::wait_for_directory_agent(&client, &format!("agent-{n}")).await;
    }
    let js = jetstream::new(client.client.clone());
    let subject = client.subjects.tasks_submit();
    let total = 2000;
    for chunk in (0..total).collect::<Vec<_>>().chunks(200) {
        futures::future::join_all(chunk.iter().map(|&i| submit(&js, &subject, i))).await;
    }
    let pool = world.db.pool().clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((completed, dead)) = count_final(&pool).await {
            assert_eq!(dead, 0);
            if completed as usize == total {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "tasks did not finish: {:?}",
            count_final(&pool).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let twice = completed_twice(&pool).await;
    assert!(twice.is_empty(), "tasks completed twice: {twice:?}");
    let per_replica: Vec<u64> = registries
        .iter()
        .map(|metrics| {
            concord_tests::metric_counter(&metrics.encode(), "dispatcher_tasks_completed")
        })
        .collect();
    assert_eq!(
        per_replica.iter().sum::<u64>(),
        total as u64,
        "{per_replica:?}"
    );
    assert!(
        per_replica.iter().all(|n| *n > 0),
        "both replicas worked: {per_replica:?}"
    );
    eprintln!("replicas completed {per_replica:?}");
    // New ids skipped the store lookup (the known-ids filter had loaded).
    let skipped: u64 = registries
        .iter()
        .map(|metrics| {
            concord_tests::metric_counter(&metrics.encode(), "dispatcher_lookups_skipped")
        })
        .sum();
    assert!(skipped > 0, "no lookup was skipped");

    // Every id again, under new Nats-Msg-Ids (as if beyond the dedupe
    // window), with only replica 1 left: the ids replica 0 completed reached
    // replica 1's filter as events, so every one is recognised as finished
    // (a re-published result), and none is given to an agent again.
    stops[1].trigger();
    let stopped = replicas.remove(0);
    tokio::time::timeout(Duration::from_secs(20), stopped)
        .await
        .expect("replica 0 stops")
        .unwrap()
        .unwrap();
    let survivor = &registries[1];
    let assigned_before =
        concord_tests::metric_counter(&survivor.encode(), "dispatcher_attempts_started");
    let duplicates_before =
        concord_tests::metric_counter(&survivor.encode(), "dispatcher_tasks_duplicate");
    for chunk in (0..total).collect::<Vec<_>>().chunks(200) {
        futures::future::join_all(
            chunk
                .iter()
                .map(|&i| submit_as(&js, &subject, i, format!("again-r-{i}"))),
        )
        .await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while concord_tests::metric_counter(&survivor.encode(), "dispatcher_tasks_duplicate")
        - duplicates_before
        < total as u64
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "resubmissions not all answered: {}",
            concord_tests::metric_counter(&survivor.encode(), "dispatcher_tasks_duplicate")
                - duplicates_before
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        concord_tests::metric_counter(&survivor.encode(), "dispatcher_attempts_started"),
        assigned_before,
        "a finished task was given to an agent again"
    );
    let twice = completed_twice(&pool).await;
    assert!(twice.is_empty(), "tasks completed twice: {twice:?}");
    agents_shutdown.trigger();
    for stop in stops {
        stop.trigger();
    }
}

/// Tasks with more than one `task.completed` event, with their count.
async fn completed_twice(pool: &sqlx::PgPool) -> Vec<(String, i64)> {
    sqlx::query_as(
        "select aggregate_id, count(*) from events where event_type = 'task.completed' group by 1 having count(*) > 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}
