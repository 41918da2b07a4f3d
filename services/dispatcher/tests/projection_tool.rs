//! `concord-dispatcher --verify-projection` and `--rebuild-projection` as an
//! operator runs them: Postgres only, the answer on stdout, exit 1 when the
//! table and the events differ. (What counts as a difference is tested on a
//! full stack in the workspace's tests/projection.rs.)

use std::process::{Command, Output};

use concord_testkit::TestDatabase;

fn dispatcher(database_url: &str, flag: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_concord-dispatcher"))
        .env("CONCORD_DATABASE_URL", database_url)
        .arg(flag)
        .output()
        .expect("run concord-dispatcher")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn verify_fails_naming_a_row_without_events_and_rebuild_clears_it() -> anyhow::Result<()> {
    let db = TestDatabase::create().await?;
    // A fresh database: the tool applies the dispatcher's migrations itself.
    let empty = dispatcher(db.url(), "--verify-projection");
    assert!(
        empty.status.success(),
        "{}",
        String::from_utf8_lossy(&empty.stderr)
    );
    assert!(
        stdout(&empty).contains("matches the events: 0 task(s)"),
        "{}",
        stdout(&empty)
    );

    sqlx::query(
        r#"insert into tasks (task_id, capability, status, priority, correlation_id, attempts,
               agent_id, spec, result, last_sequence, submitted_at, updated_at)
           values ('t-orphan', 'echo', 'COMPLETED', 5, '', 1, 'a1',
               '{"id":"t-orphan","capability":"echo"}', '{"taskId":"t-orphan"}', 3, now(), now())"#,
    )
    .execute(db.pool())
    .await?;
    let differs = dispatcher(db.url(), "--verify-projection");
    assert_eq!(differs.status.code(), Some(1));
    assert_eq!(stdout(&differs).trim(), "t-orphan  row without events");
    assert!(
        String::from_utf8_lossy(&differs.stderr).contains("--rebuild-projection"),
        "the message says how to fix it"
    );

    let rebuilt = dispatcher(db.url(), "--rebuild-projection");
    assert!(
        rebuilt.status.success(),
        "{}",
        String::from_utf8_lossy(&rebuilt.stderr)
    );
    assert!(
        stdout(&rebuilt).contains("0 task(s)"),
        "{}",
        stdout(&rebuilt)
    );
    assert!(dispatcher(db.url(), "--verify-projection").status.success());

    // The flags exclude each other.
    let both = Command::new(env!("CARGO_BIN_EXE_concord-dispatcher"))
        .args(["--verify-projection", "--rebuild-projection"])
        .output()?;
    assert!(!both.status.success());
    Ok(())
}
