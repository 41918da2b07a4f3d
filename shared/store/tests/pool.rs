//! Connecting and migrating: clear connection errors, idempotent migrations.

use std::net::TcpListener;
use std::time::Duration;

use concord_store::{Migrator, StoreError, connect_with_timeout, migrate, migrate_shared};
use concord_testkit::TestDatabase;

#[tokio::test]
async fn wrong_port_gives_one_line_error_without_password() {
    // A port nobody listens on: bind one, note it, release it.
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("postgres://concord:s3cret-pw@127.0.0.1:{port}/concord");
    let err = connect_with_timeout(&url, 2, Duration::from_secs(3))
        .await
        .expect_err("nothing listens there");
    let message = err.to_string();
    assert!(matches!(err, StoreError::Connect { .. }), "{message}");
    assert!(!message.contains('\n'), "one line: {message}");
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
    assert!(message.contains("database concord"), "{message}");
    assert!(message.contains("connection refused"), "{message}");
    assert!(message.contains("CONCORD_DATABASE_URL"), "{message}");
    assert!(!message.contains("s3cret"), "password leaked: {message}");
}

#[tokio::test]
async fn invalid_url_is_a_connect_error() {
    let err = concord_store::connect("mysql:/nope", 1).await.unwrap_err();
    assert!(matches!(err, StoreError::Connect { .. }), "{err}");
    assert!(!err.to_string().contains('\n'));
}

#[tokio::test]
async fn bad_credentials_say_so() -> anyhow::Result<()> {
    let db = TestDatabase::create().await?;
    // Same server, a database that does not exist.
    let url = db.url().replace(db.name(), "concord_no_such_database");
    let err = concord_store::connect(&url, 1).await.unwrap_err();
    let message = err.to_string();
    assert!(message.contains("concord_no_such_database"), "{message}");
    assert!(message.contains("does not exist"), "{message}");
    assert!(
        !message.contains(":concord@"),
        "credentials leaked: {message}"
    );
    Ok(())
}

#[tokio::test]
async fn migrations_are_idempotent() -> anyhow::Result<()> {
    const APPLIED: &str = "select count(*) from _sqlx_migrations where success";
    // TestDatabase has migrated once already.
    let db = TestDatabase::create().await?;
    let before: i64 = sqlx::query_scalar(APPLIED).fetch_one(db.pool()).await?;
    assert!(
        before >= 3,
        "events, dead letters and the BRIN index migrations ran"
    );
    migrate_shared(db.pool()).await?;
    migrate_shared(db.pool()).await?;
    let after: i64 = sqlx::query_scalar(APPLIED).fetch_one(db.pool()).await?;
    assert_eq!(before, after);
    Ok(())
}

/// Each service applies the shared folder and its own; they share one
/// `_sqlx_migrations` table, so neither may refuse the other's versions.
#[tokio::test]
async fn each_owner_applies_its_own_folder_next_to_the_others() -> anyhow::Result<()> {
    static REGISTRY: Migrator = sqlx::migrate!("../../migrations/registry");
    static DISPATCHER: Migrator = sqlx::migrate!("../../migrations/dispatcher");
    const TABLES: &str = "select count(*) from information_schema.tables \
        where table_name in ('registry_agents', 'tasks', 'task_cancellations')";
    let db = TestDatabase::create().await?;
    // Only the shared tables so far.
    let tables: i64 = sqlx::query_scalar(TABLES).fetch_one(db.pool()).await?;
    assert_eq!(tables, 0, "the test database holds only the shared tables");

    migrate(db.pool(), &REGISTRY).await?;
    migrate(db.pool(), &DISPATCHER).await?;
    // Every owner again, in another order: the versions the others applied
    // are not an error.
    migrate(db.pool(), &DISPATCHER).await?;
    migrate_shared(db.pool()).await?;
    migrate(db.pool(), &REGISTRY).await?;
    let tables: i64 = sqlx::query_scalar(TABLES).fetch_one(db.pool()).await?;
    assert_eq!(tables, 3);

    // Versions are global: no two folders use the same number.
    let mut versions: Vec<i64> = [&REGISTRY, &DISPATCHER]
        .iter()
        .flat_map(|m| m.iter().map(|migration| migration.version))
        .collect();
    let total = versions.len();
    versions.sort_unstable();
    versions.dedup();
    assert_eq!(versions.len(), total, "a migration version is used twice");
    Ok(())
}
