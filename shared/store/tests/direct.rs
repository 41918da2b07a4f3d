//! Direct connections: reused after success, closed after a failure, capped.

use std::time::Duration;

use concord_store::DirectConnections;
use concord_testkit::TestDatabase;

async fn backend_pid(conn: &mut concord_store::PgConnection) -> anyhow::Result<i32> {
    Ok(sqlx::query_scalar("select pg_backend_pid()")
        .fetch_one(conn)
        .await?)
}

#[tokio::test]
async fn a_released_connection_is_reused_and_a_failed_one_is_closed() -> anyhow::Result<()> {
    let db = TestDatabase::create().await?;
    let direct = DirectConnections::of(db.pool(), 2);

    let mut conn = direct.take().await?;
    let first = backend_pid(&mut conn).await?;
    conn.release();
    assert_eq!(direct.idle(), 1);

    let mut conn = direct.take().await?;
    assert_eq!(
        backend_pid(&mut conn).await?,
        first,
        "the same session again"
    );
    // A failed statement: the caller does not release it.
    let failed = sqlx::query("select * from no_such_table")
        .execute(&mut *conn)
        .await;
    assert!(failed.is_err());
    drop(conn);
    assert_eq!(direct.idle(), 0, "a connection that failed is not kept");

    let mut conn = direct.take().await?;
    assert_ne!(backend_pid(&mut conn).await?, first, "a fresh session");
    conn.release();
    Ok(())
}

#[tokio::test]
async fn at_most_max_connections_are_open() -> anyhow::Result<()> {
    let db = TestDatabase::create().await?;
    let direct = DirectConnections::of(db.pool(), 2);
    let a = direct.take().await?;
    let b = direct.take().await?;
    let third = tokio::time::timeout(Duration::from_millis(200), direct.take()).await;
    assert!(third.is_err(), "a third take waits while two are out");
    a.release();
    let c = tokio::time::timeout(Duration::from_secs(5), direct.take())
        .await
        .expect("a released connection frees a place")?;
    drop((b, c));
    Ok(())
}
