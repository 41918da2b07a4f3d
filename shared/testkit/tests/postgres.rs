//! Tests of the private test Postgres (restart, kill, drop) and of the service-process helpers.

use std::time::Duration;

use concord_testkit::{PostgresServer, ServiceProcess, service_binary};
use sqlx::PgPool;

async fn notes(pool: &PgPool) -> anyhow::Result<Vec<String>> {
    Ok(sqlx::query_scalar("select body from notes order by id")
        .fetch_all(pool)
        .await?)
}

#[tokio::test]
async fn restart_keeps_port_and_data() -> anyhow::Result<()> {
    let mut server = PostgresServer::start().await?;
    let port = server.port();
    assert!(server.url().ends_with(&format!(":{port}/concord")));
    assert!(server.is_running());

    let pool = server.connect().await?;
    // Migrations ran.
    let events: Option<String> = sqlx::query_scalar("select to_regclass('events')::text")
        .fetch_one(&pool)
        .await?;
    assert_eq!(events.as_deref(), Some("events"));
    sqlx::query("create table notes (id serial primary key, body text not null)")
        .execute(&pool)
        .await?;
    sqlx::query("insert into notes (body) values ('before restart')")
        .execute(&pool)
        .await?;
    pool.close().await;

    server.restart().await?;
    assert_eq!(server.port(), port, "restart keeps the port");
    assert!(server.is_running());

    let pool = server.connect().await?;
    assert_eq!(notes(&pool).await?, ["before restart"]);
    sqlx::query("insert into notes (body) values ('after restart')")
        .execute(&pool)
        .await?;
    assert_eq!(notes(&pool).await?, ["before restart", "after restart"]);
    Ok(())
}

#[tokio::test]
async fn kill_then_start_again_recovers_committed_rows() -> anyhow::Result<()> {
    let mut server = PostgresServer::start().await?;
    let port = server.port();
    let pool = server.connect().await?;
    sqlx::query("create table notes (id serial primary key, body text not null)")
        .execute(&pool)
        .await?;
    sqlx::query("insert into notes (body) values ('committed')")
        .execute(&pool)
        .await?;
    // Left open across the crash: must not be there afterwards.
    let mut open = pool.begin().await?;
    sqlx::query("insert into notes (body) values ('uncommitted')")
        .execute(&mut *open)
        .await?;

    server.kill().await?;
    assert!(!server.is_running());
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err(),
        "nothing listens after the kill"
    );
    drop(open);
    pool.close().await;

    server.start_again().await?;
    assert_eq!(server.port(), port);
    let pool = server.connect().await?;
    assert_eq!(notes(&pool).await?, ["committed"]);
    assert!(
        server.log().contains("database system was interrupted"),
        "a killed server recovers from its WAL; log:\n{}",
        server.log()
    );

    // Stop and start work too.
    server.stop().await?;
    assert!(!server.is_running());
    server.start_again().await?;
    let pool = server.connect().await?;
    assert_eq!(notes(&pool).await?, ["committed"]);
    Ok(())
}

#[tokio::test]
async fn drop_stops_the_server_and_removes_its_directory() -> anyhow::Result<()> {
    let server = PostgresServer::start().await?;
    let port = server.port();
    let data_dir = server.data_dir();
    let dir = data_dir.parent().expect("data dir has a parent").to_owned();
    assert!(data_dir.join("PG_VERSION").is_file());

    drop(server);
    assert!(!dir.exists(), "{} is left behind", dir.display());
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err(),
        "the server still listens after drop"
    );
    Ok(())
}

#[test]
fn missing_service_binary_says_how_to_build_it() {
    let err = service_binary("concord-no-such-service").expect_err("no such binary");
    let message = err.to_string();
    assert!(
        message.contains("cargo build -p concord-no-such-service --bin concord-no-such-service"),
        "{message}"
    );
}

#[tokio::test]
async fn service_process_logs_terminates_and_kills() -> anyhow::Result<()> {
    let sh = std::path::Path::new("/bin/sh");
    let script = |body: &str| vec!["-c".to_owned(), body.to_owned()];

    // SIGTERM is handled: a clean exit within the grace period.
    let mut graceful = ServiceProcess::spawn(
        sh,
        &script(
            "trap 'echo bye; exit 0' TERM; echo \"hello $GREETING\"; while :; do sleep 0.05; done",
        ),
        &[("GREETING".to_owned(), "world".to_owned())],
    )?;
    assert!(graceful.pid() > 0);
    wait_for_log(&graceful, "hello world").await;
    assert!(graceful.is_running());
    let status = graceful.terminate(Duration::from_secs(5)).await?;
    assert!(status.success(), "{status}");
    assert_eq!(graceful.log_tail(1), "bye");

    // SIGTERM is ignored: killed after the grace period.
    let mut stubborn = ServiceProcess::spawn(
        sh,
        &script("trap '' TERM; echo ready; while :; do sleep 0.05; done"),
        &[],
    )?;
    wait_for_log(&stubborn, "ready").await;
    let status = stubborn.terminate(Duration::from_millis(200)).await?;
    assert_eq!(status.code(), None, "killed by a signal: {status}");
    assert!(!stubborn.is_running());

    // SIGKILL straight away.
    let mut crashed = ServiceProcess::spawn(sh, &script("echo up; sleep 30"), &[])?;
    wait_for_log(&crashed, "up").await;
    let status = crashed.kill()?;
    assert_eq!(status.code(), None, "{status}");
    assert_eq!(crashed.exit_status(), Some(status));
    Ok(())
}

async fn wait_for_log(process: &ServiceProcess, needle: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !process.log().contains(needle) {
        assert!(
            std::time::Instant::now() < deadline,
            "{needle:?} not in the log:\n{}",
            process.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
