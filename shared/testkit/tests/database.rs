//! Tests of the per-test Postgres database: created, migrated, isolated, dropped.

use concord_testkit::TestDatabase;

#[tokio::test]
async fn databases_are_migrated_and_isolated() -> anyhow::Result<()> {
    let (a, b) = tokio::try_join!(TestDatabase::create(), TestDatabase::create())?;
    assert_ne!(a.name(), b.name());
    assert!(a.name().starts_with("concord_test_"));
    assert!(a.url().ends_with(a.name()));

    sqlx::query("create table only_in_a (x int)")
        .execute(a.pool())
        .await?;
    let in_b: Option<String> = sqlx::query_scalar("select to_regclass('only_in_a')::text")
        .fetch_one(b.pool())
        .await?;
    assert_eq!(
        in_b, None,
        "a table made in one test database shows up in another"
    );

    // Migrations ran: the store's tables exist in both.
    for db in [&a, &b] {
        let events: Option<String> = sqlx::query_scalar("select to_regclass('events')::text")
            .fetch_one(db.pool())
            .await?;
        assert_eq!(events.as_deref(), Some("events"));
    }
    Ok(())
}

#[tokio::test]
async fn drop_removes_the_database() -> anyhow::Result<()> {
    let keeper = TestDatabase::create().await?;
    let db = TestDatabase::create().await?;
    let name = db.name().to_owned();
    drop(db);
    let exists: bool =
        sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
            .bind(&name)
            .fetch_one(keeper.pool())
            .await?;
    assert!(!exists, "{name} still exists after drop");
    Ok(())
}
