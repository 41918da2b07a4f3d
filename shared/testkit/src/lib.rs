//! Test harness: a real `nats-server -js` on a random port and a fresh, migrated Postgres database per test.
//!
//! [`NatsProxy`] sits between one service and the server when a test needs
//! the server to miss a chosen message (a pull request, say).
//!
//! No mocks: tests talk to the same broker and database the services use in
//! production. Both helpers clean up on drop.
//!
//! Environment:
//!
//! - `CONCORD_TEST_DATABASE_URL`: admin URL of the Postgres server to create
//!   test databases on (default `postgres://concord:concord@127.0.0.1:5433/postgres`,
//!   the server `make test` starts).
//! - `CONCORD_TEST_KEEP_DATABASES`: set to `1` to keep test databases after
//!   the test for inspection.
//! - `CONCORD_NATS_SERVER_BIN`: the `nats-server` binary to run (default
//!   `<workspace>/.local/bin/nats-server`, then `nats-server` on `PATH`).

mod database;
mod nats;
mod nats_proxy;
mod postgres;
mod process;
mod server;

pub use database::{DEFAULT_TEST_DATABASE_URL, TestDatabase, with_database};
pub use nats::NatsServer;
pub use nats_proxy::NatsProxy;
pub use postgres::PostgresServer;
pub use process::{ServiceProcess, service_binary};
