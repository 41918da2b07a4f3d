//! The error type of the store: connection, migration, sequence conflicts, database.

use thiserror::Error;

/// Everything an operation of this crate can fail with.
///
/// `Display` is always one line, and never contains a password.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The database could not be reached or refused us; the message says what to fix.
    #[error(
        "cannot connect to Postgres at {target}: {reason}; check --database-url / CONCORD_DATABASE_URL"
    )]
    Connect {
        /// Where we tried to connect, e.g. `127.0.0.1:5433 (database concord)`.
        target: String,
        /// Why it failed, e.g. `connection refused`.
        reason: String,
    },

    /// Applying the embedded migrations failed.
    #[error("cannot migrate the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),

    /// A different event already holds this (aggregate, sequence): another
    /// writer got there first. Nothing of the batch was stored.
    #[error(
        "sequence conflict: {aggregate_type}/{aggregate_id} already has an event with sequence {sequence}"
    )]
    SequenceConflict {
        /// Aggregate type of the conflicting event.
        aggregate_type: String,
        /// Aggregate id of the conflicting event.
        aggregate_id: String,
        /// The sequence number that is already taken.
        sequence: i64,
    },

    /// Any other database error.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl StoreError {
    /// True for [`StoreError::SequenceConflict`].
    pub fn is_sequence_conflict(&self) -> bool {
        matches!(self, StoreError::SequenceConflict { .. })
    }
}
