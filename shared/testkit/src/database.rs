//! A fresh Postgres database per test, created from a UUID and migrated.

use std::time::Duration;

use anyhow::{Context, bail};
use concord_store::StoreError;
use sqlx::{AssertSqlSafe, PgPool};
use uuid::Uuid;

/// Admin URL used when `CONCORD_TEST_DATABASE_URL` is not set.
pub const DEFAULT_TEST_DATABASE_URL: &str = "postgres://concord:concord@127.0.0.1:5433/postgres";

/// Prefix of every test database name; `make test` drops stale ones by it.
const NAME_PREFIX: &str = "concord_test_";

/// Connections in each test database's pool.
const POOL_SIZE: u32 = 8;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// An empty database with the project's migrations applied, unique to one test.
///
/// On drop the database is dropped (best effort, from a helper thread, with
/// `WITH (FORCE)` so open connections do not block it). A test process that
/// is killed leaves its databases behind; `make test` drops every
/// `concord_test_%` database before it runs. Set `CONCORD_TEST_KEEP_DATABASES=1`
/// to keep them for inspection.
#[derive(Debug)]
pub struct TestDatabase {
    pool: PgPool,
    url: String,
    name: String,
    admin_url: String,
}

impl TestDatabase {
    /// Creates `concord_test_<uuid>` on the server named by
    /// `CONCORD_TEST_DATABASE_URL`, connects a small pool and migrates it.
    pub async fn create() -> anyhow::Result<TestDatabase> {
        let admin_url = std::env::var("CONCORD_TEST_DATABASE_URL")
            .unwrap_or_else(|_| DEFAULT_TEST_DATABASE_URL.to_owned());
        let name = format!("{NAME_PREFIX}{}", Uuid::new_v4().simple());
        let url = with_database(&admin_url, &name)?;

        let admin = concord_store::connect_with_timeout(&admin_url, 1, CONNECT_TIMEOUT)
            .await
            .map_err(unreachable_hint)?;
        // The name is ours (prefix + hex), not input: safe to splice.
        sqlx::query(AssertSqlSafe(format!("create database {name}")))
            .execute(&admin)
            .await
            .with_context(|| format!("cannot create test database {name}"))?;
        admin.close().await;

        let pool = concord_store::connect_with_timeout(&url, POOL_SIZE, CONNECT_TIMEOUT)
            .await
            .with_context(|| format!("cannot connect to test database {name}"))?;
        concord_store::migrate_shared(&pool)
            .await
            .with_context(|| format!("cannot migrate test database {name}"))?;
        Ok(TestDatabase {
            pool,
            url,
            name,
            admin_url,
        })
    }

    /// Pool connected to the test database (clone it freely).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// URL of the test database, e.g. to configure a service under test.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Name of the test database (`concord_test_<uuid>`).
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if std::env::var_os("CONCORD_TEST_KEEP_DATABASES").is_some_and(|v| v == "1") {
            eprintln!("keeping test database {}", self.name);
            return;
        }
        // Drop runs inside the test's runtime, which may be single-threaded
        // and cannot be blocked on; a helper thread with its own runtime can.
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let drop_it = async {
                    let admin =
                        concord_store::connect_with_timeout(&admin_url, 1, CONNECT_TIMEOUT).await?;
                    sqlx::query(AssertSqlSafe(format!(
                        "drop database if exists {name} with (force)"
                    )))
                    .execute(&admin)
                    .await?;
                    admin.close().await;
                    Ok::<_, anyhow::Error>(())
                };
                // Best effort: `make test` removes whatever is left.
                let _ = tokio::time::timeout(Duration::from_secs(10), drop_it).await;
            });
        });
        let _ = cleanup.join();
    }
}

fn unreachable_hint(err: StoreError) -> anyhow::Error {
    match err {
        StoreError::Connect { target, reason } => anyhow::anyhow!(
            "cannot reach the test Postgres at {target}: {reason}; run `make test` (which starts Postgres) \
             or set CONCORD_TEST_DATABASE_URL to the admin URL of a running server"
        ),
        other => anyhow::Error::new(other).context("cannot connect to the test Postgres"),
    }
}

/// `url` with its database (path) replaced by `database`, keeping any query string.
pub fn with_database(url: &str, database: &str) -> anyhow::Result<String> {
    let Some(scheme_end) = url.find("://") else {
        bail!("database URL {url:?} is not a postgres:// URL");
    };
    let (base, query) = match url.find('?') {
        Some(q) => url.split_at(q),
        None => (url, ""),
    };
    let authority_start = scheme_end + 3;
    let authority_end = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    Ok(format!("{}/{database}{query}", &base[..authority_end]))
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn replaces_the_database() {
        assert_eq!(
            with_database("postgres://u:p@h:5433/postgres", "x").unwrap(),
            "postgres://u:p@h:5433/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h:5433", "x").unwrap(),
            "postgres://u:p@h:5433/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h/postgres?sslmode=disable", "x").unwrap(),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://u:p@127.0.0.1:5433/concord", "x").unwrap(),
            "postgres://u:p@127.0.0.1:5433/x"
        );
        assert_eq!(
            with_database("postgres://u@h/concord?sslmode=disable", "x").unwrap(),
            "postgres://u@h/x?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:5432", "x").unwrap(),
            "postgres://h:5432/x"
        );
        assert!(with_database("nonsense", "x").is_err());
    }
}
