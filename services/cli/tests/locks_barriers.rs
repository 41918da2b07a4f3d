//! `concord lock` and `concord barrier` against a real state service
//! (in-process, real NATS and Postgres): acquire, a busy lock refused,
//! list and show, release; a holder that keeps renewing; a SIGKILLed holder
//! whose lock goes to the next waiter when its lease runs out; SIGTERM
//! releasing; a command run under the lock; barriers created, arrived at,
//! released to a waiting participant, timed out, and refused when bad.

// A test that fails early leaves its children to the test process's exit.
#![allow(clippy::zombie_processes)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use concord_bus::Shutdown;
use concord_testkit::{NatsServer, TestDatabase};
use serde_json::{Value, json};

fn concord(nats: &NatsServer, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_concord"))
        .env("CONCORD_NATS_URL", nats.url())
        .args(args)
        .output()
        .expect("run concord")
}

fn spawn(nats: &NatsServer, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_concord"))
        .env("CONCORD_NATS_URL", nats.url())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run concord")
}

fn stdout(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "concord failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn json_of(output: &std::process::Output) -> Value {
    serde_json::from_str(&stdout(output)).expect("JSON on stdout")
}

/// The first line a spawned concord prints, as JSON.
fn first_line(child: &mut Child) -> Value {
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line:?}"))
}

fn lock(nats: &NatsServer, resource: &str) -> Value {
    json_of(&concord(nats, &["lock", "show", resource]))
}

fn holders(nats: &NatsServer, resource: &str) -> Vec<String> {
    lock(nats, resource)["holders"]
        .as_array()
        .map(|h| {
            h.iter()
                .map(|g| g["owner"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until `check` holds, polling the CLI.
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct State {
    nats: NatsServer,
    _db: TestDatabase,
    shutdown: Shutdown,
    running: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl State {
    async fn start() -> anyhow::Result<Self> {
        let nats = NatsServer::start().await?;
        let db = TestDatabase::create().await?;
        let args = concord_tests::service_args(&nats.url(), db.url(), "concord");
        let context =
            concord_runtime::ServiceContext::connect(&concord_state::INFO, &args, Shutdown::new())
                .await?;
        let shutdown = context.shutdown.clone();
        let service = concord_state::build(context).await?;
        let running = tokio::spawn(service.run_until_stopped());
        Ok(Self {
            nats,
            _db: db,
            shutdown,
            running,
        })
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.trigger();
        self.running.await??;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_commands_take_list_and_release() -> anyhow::Result<()> {
    let state = State::start().await?;
    let nats = &state.nats;

    let grant = json_of(&concord(
        nats,
        &["lock", "acquire", "printers/floor-2", "--owner", "ops"],
    ));
    assert_eq!(
        (grant["token"].as_str(), grant["mode"].as_str()),
        (Some("1"), Some("EXCLUSIVE"))
    );
    let busy = concord(
        nats,
        &["lock", "acquire", "printers/floor-2", "--owner", "other"],
    );
    assert!(!busy.status.success());
    assert!(
        String::from_utf8_lossy(&busy.stderr).contains("CONFLICT"),
        "{busy:?}"
    );

    concord(
        nats,
        &[
            "lock",
            "acquire",
            "printers/floor-3",
            "--owner",
            "a",
            "--shared",
        ],
    );
    let table = stdout(&concord(nats, &["lock", "list", "printers/"]));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines[1].starts_with("printers/floor-2") && lines[1].contains("ops"),
        "{table}"
    );
    assert!(lines[2].contains("SHARED"), "{table}");
    assert_eq!(
        stdout(&concord(nats, &["lock", "list", "--json"]))
            .lines()
            .count(),
        2
    );

    let wrong = concord(
        nats,
        &[
            "lock",
            "release",
            "printers/floor-2",
            "--owner",
            "ops",
            "--token",
            "7",
        ],
    );
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("token"),
        "{wrong:?}"
    );
    let released = json_of(&concord(
        nats,
        &[
            "lock",
            "release",
            "printers/floor-2",
            "--owner",
            "ops",
            "--token",
            "1",
        ],
    ));
    assert_eq!(released["token"], "1");
    assert!(holders(nats, "printers/floor-2").is_empty());
    state.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holder_loses_the_lock_to_the_next_waiter_after_its_lease() -> anyhow::Result<()> {
    let state = State::start().await?;
    let nats = &state.nats;

    let mut holder = spawn(
        nats,
        &[
            "lock", "acquire", "gpu", "--owner", "holder", "--ttl-ms", "600", "--hold",
        ],
    );
    let grant = first_line(&mut holder);
    let expiry = |grant: &Value| {
        grant["expiresAt"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    };
    let first_expiry = expiry(&grant).expect("an expiry");
    // It renews: the lease moves on while the holder lives.
    until("the holder renews its lease", || {
        expiry(&lock(nats, "gpu")["holders"][0]) > Some(first_expiry)
    })
    .await;
    assert_eq!(holders(nats, "gpu"), ["holder"]);

    let mut next = spawn(
        nats,
        &[
            "lock",
            "acquire",
            "gpu",
            "--owner",
            "next",
            "--wait-ms",
            "20000",
            "--json",
        ],
    );
    until("the next one waits", || {
        lock(nats, "gpu")["waiters"]
            .as_array()
            .is_some_and(|w| w.len() == 1)
    })
    .await;
    holder.kill()?;
    holder.wait()?;
    let granted = first_line(&mut next);
    assert_eq!(
        (granted["owner"].as_str(), granted["token"].as_str()),
        (Some("next"), Some("2"))
    );
    assert!(next.wait()?.success());

    // SIGTERM ends a hold by releasing it.
    concord(
        nats,
        &["lock", "release", "gpu", "--owner", "next", "--token", "2"],
    );
    let mut polite = spawn(
        nats,
        &["lock", "acquire", "gpu", "--owner", "polite", "--hold"],
    );
    assert_eq!(first_line(&mut polite)["token"], "3");
    Command::new("kill")
        .args(["-TERM", &polite.id().to_string()])
        .status()?;
    assert!(polite.wait()?.success());
    assert!(holders(nats, "gpu").is_empty(), "released on SIGTERM");
    state.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_runs_under_the_lock_with_its_token() -> anyhow::Result<()> {
    let state = State::start().await?;
    let nats = &state.nats;
    let output = concord(
        nats,
        &[
            "lock",
            "acquire",
            "deploy",
            "--owner",
            "ci",
            "--",
            "sh",
            "-c",
            "echo token=$CONCORD_LOCK_TOKEN resource=$CONCORD_LOCK_RESOURCE; exit 3",
        ],
    );
    assert_eq!(output.status.code(), Some(3), "the command's status");
    let text = String::from_utf8(output.stdout)?;
    let mut lines = text.lines();
    let grant: Value = serde_json::from_str(lines.next().unwrap())?;
    assert_eq!(grant["token"], "1");
    assert_eq!(lines.next(), Some("token=1 resource=deploy"));
    assert!(
        holders(nats, "deploy").is_empty(),
        "released when it exited"
    );
    state.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barrier_commands_create_arrive_wait_and_time_out() -> anyhow::Result<()> {
    let state = State::start().await?;
    let nats = &state.nats;

    let created = json_of(&concord(
        nats,
        &[
            "barrier",
            "create",
            "--id",
            "stage-2",
            "--participants",
            "a,b",
            "--data",
            r#"{"plan":"q4"}"#,
        ],
    ));
    assert_eq!(created["status"], "BARRIER_WAITING");
    assert_eq!(created["missing"], json!(["a", "b"]));
    let mut a = spawn(
        nats,
        &[
            "barrier",
            "arrive",
            "stage-2",
            "--participant",
            "a",
            "--wait",
            "--json",
        ],
    );
    until("a arrives", || {
        json_of(&concord(nats, &["barrier", "get", "stage-2"]))["arrivals"]
            .as_array()
            .is_some_and(|a| a.len() == 1)
    })
    .await;
    let b = json_of(&concord(
        nats,
        &[
            "barrier",
            "arrive",
            "stage-2",
            "--participant",
            "b",
            "--data",
            r#"{"b":2}"#,
        ],
    ));
    assert_eq!(b["status"], "BARRIER_RELEASED");
    let released = first_line(&mut a);
    assert!(a.wait()?.success());
    assert_eq!(released["status"], "BARRIER_RELEASED");
    assert_eq!(released["data"], json!({"plan": "q4", "b": 2}));

    concord(
        nats,
        &[
            "barrier",
            "create",
            "--id",
            "short",
            "--count",
            "2",
            "--timeout-ms",
            "300",
        ],
    );
    let timed_out = concord(
        nats,
        &[
            "barrier",
            "arrive",
            "short",
            "--participant",
            "x",
            "--wait",
            "--json",
        ],
    );
    assert_eq!(timed_out.status.code(), Some(1));
    let barrier: Value = serde_json::from_slice(&timed_out.stdout)?;
    assert_eq!(barrier["status"], "BARRIER_TIMEOUT");

    let bad = concord(
        nats,
        &[
            "barrier",
            "create",
            "--participants",
            "a,b",
            "--condition",
            "min-count",
            "--min-count",
            "3",
        ],
    );
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("minCount") && stderr.contains("MIN_COUNT 3"),
        "{stderr}"
    );
    state.stop().await
}
