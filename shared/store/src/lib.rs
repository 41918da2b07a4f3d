//! Concord's Postgres layer: connection pool, migrations, the event store and the dead-letter store.
//!
//! Every service that keeps durable state talks to Postgres through this
//! crate. All statements are runtime queries (no database needed to
//! compile); writes on hot paths are batched into one `UNNEST` statement.
//!
//! ```no_run
//! # async fn demo() -> Result<(), concord_store::StoreError> {
//! let pool = concord_store::connect("postgres://concord:concord@127.0.0.1:5433/concord", 8).await?;
//! concord_store::migrate_shared(&pool).await?;
//! let events = concord_store::EventStore::new(pool.clone());
//! let last = events.last_sequence("task", "t-1").await?;
//! # let _ = last;
//! # Ok(())
//! # }
//! ```

mod dead_letters;
mod direct;
mod error;
mod events;
mod pool;

pub use concord_wire::event_data::EventData;
pub use dead_letters::{
    DeadLetter, DeadLetterCursor, DeadLetterFilter, DeadLetterStore, NewDeadLetter, PurgeFilter,
};
pub use direct::{DirectConnections, Taken};
pub use error::StoreError;
pub use events::{
    AppendOutcome, EventColumns, EventStore, NewEvent, ReplayFilter, StoredEvent, insert_events_sql,
};
pub use pool::{
    DEFAULT_CONNECT_TIMEOUT, Migrator, connect, connect_with_timeout, migrate, migrate_shared,
};

/// Re-exported so callers can name pool and transaction types without their own sqlx import.
pub use sqlx::{PgConnection, PgPool, Postgres, Transaction};
