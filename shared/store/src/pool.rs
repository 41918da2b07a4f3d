//! Connecting to Postgres with a clear error, and applying the migrations.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

use crate::StoreError;

/// How long [`connect`] waits for the first connection before giving up.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A set of migrations, embedded with `sqlx::migrate!("../../migrations/<owner>")`.
pub use sqlx::migrate::Migrator;

/// The tables every service writes (`events`, `dead_letters`), from
/// `migrations/shared/`, embedded at compile time.
static SHARED: Migrator = sqlx::migrate!("../../migrations/shared");

/// Connects a pool of at most `max_connections` to the database at `url`.
///
/// One connection is opened before returning (within
/// [`DEFAULT_CONNECT_TIMEOUT`]), so a wrong URL, a stopped server or bad
/// credentials fail here with a one-line [`StoreError::Connect`] that names
/// host, port and database but never the password.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, StoreError> {
    connect_with_timeout(url, max_connections, DEFAULT_CONNECT_TIMEOUT).await
}

/// [`connect`] with an explicit timeout for opening a connection.
pub async fn connect_with_timeout(
    url: &str,
    max_connections: u32,
    timeout: Duration,
) -> Result<PgPool, StoreError> {
    let options = PgConnectOptions::from_str(url).map_err(|err| StoreError::Connect {
        target: "the configured URL".to_owned(),
        reason: format!(
            "invalid database URL ({}); expected postgres://USER:PASSWORD@HOST:PORT/DATABASE",
            one_line(&err.to_string())
        ),
    })?;
    let target = describe_target(&options);

    // The pool retries refused connections until its timeout and then reports
    // only "timed out"; one direct attempt first keeps the real cause.
    let probe = tokio::time::timeout(timeout, PgConnection::connect_with(&options)).await;
    match probe {
        Err(_) => {
            return Err(StoreError::Connect {
                target,
                reason: format!("no answer within {}s", timeout.as_secs_f32()),
            });
        }
        Ok(Err(err)) => {
            return Err(StoreError::Connect {
                target,
                reason: describe_connect_error(&err),
            });
        }
        Ok(Ok(conn)) => {
            // Best effort: the probe has done its job either way.
            let _ = conn.close().await;
        }
    }

    PgPoolOptions::new()
        .max_connections(max_connections.max(1))
        .acquire_timeout(timeout)
        .connect_with(options)
        .await
        .map_err(|err| StoreError::Connect {
            target,
            reason: describe_connect_error(&err),
        })
}

/// Applies the shared migrations (`migrations/shared/`) that the database
/// has not seen yet.
///
/// Safe to run concurrently from several replicas (sqlx takes an advisory
/// lock) and to run again (applied migrations are skipped).
pub async fn migrate_shared(pool: &PgPool) -> Result<(), StoreError> {
    migrate(pool, &SHARED).await
}

/// Applies `migrations` (one owner's folder) that the database has not seen
/// yet. Every folder shares one `_sqlx_migrations` table, so the versions of
/// the other folders found there are ignored, not an error.
pub async fn migrate(pool: &PgPool, migrations: &Migrator) -> Result<(), StoreError> {
    let mut own = Migrator::with_migrations(migrations.iter().cloned().collect());
    own.set_ignore_missing(true);
    own.run(pool).await?;
    Ok(())
}

fn describe_target(options: &PgConnectOptions) -> String {
    let database = options
        .get_database()
        .unwrap_or_else(|| options.get_username());
    match options.get_socket() {
        Some(socket) => format!("socket {} (database {database})", socket.display()),
        None => format!(
            "{}:{} (database {database})",
            options.get_host(),
            options.get_port()
        ),
    }
}

fn describe_connect_error(err: &sqlx::Error) -> String {
    match err {
        sqlx::Error::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
            std::io::ErrorKind::TimedOut => "connection timed out".to_owned(),
            _ => one_line(&io.to_string()),
        },
        sqlx::Error::Database(db) => one_line(db.message()),
        sqlx::Error::PoolTimedOut => "timed out waiting for a connection".to_owned(),
        sqlx::Error::Tls(tls) => format!("TLS error: {}", one_line(&tls.to_string())),
        other => one_line(&other.to_string()),
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_names_host_port_and_database() {
        let options =
            PgConnectOptions::from_str("postgres://u:secret@db.example:6543/concord").unwrap();
        assert_eq!(
            describe_target(&options),
            "db.example:6543 (database concord)"
        );
    }

    #[test]
    fn one_line_collapses_newlines() {
        assert_eq!(one_line("a\nb  c\r\n"), "a b c");
    }
}
