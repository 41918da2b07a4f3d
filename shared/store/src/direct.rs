//! Connections for hot paths, without the pool's liveness round trips.
//!
//! sqlx's pool pings a connection when it hands it out
//! (`test_before_acquire`) and again, unconditionally, when it takes it back.
//! For a statement that is itself one round trip (a batched commit, a point
//! lookup) that triples the round trips and the Postgres wake-ups. The
//! connections here are used as they are: a connection whose statement
//! failed is closed instead of returned, and the next [`DirectConnections::take`]
//! opens a fresh one, so a Postgres restart costs one failed statement per
//! connection in use, not a ping per statement forever.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, PgPool};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{DEFAULT_CONNECT_TIMEOUT, StoreError};

/// A small set of connections, opened on demand and kept while they work.
/// Cheap to clone (clones share the set).
#[derive(Clone)]
pub struct DirectConnections {
    inner: Arc<Inner>,
}

struct Inner {
    options: PgConnectOptions,
    idle: Mutex<Vec<PgConnection>>,
    /// One permit per connection that may be open (idle or taken).
    open: Arc<Semaphore>,
}

impl std::fmt::Debug for DirectConnections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectConnections")
            .field("available", &self.inner.open.available_permits())
            .finish_non_exhaustive()
    }
}

impl DirectConnections {
    /// At most `max` connections to the pool's database (with its options),
    /// opened on first use and kept while they work.
    pub fn of(pool: &PgPool, max: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                options: (*pool.connect_options()).clone(),
                idle: Mutex::new(Vec::new()),
                open: Arc::new(Semaphore::new(max.max(1))),
            }),
        }
    }

    /// An idle connection, or a new one; waits while all `max` are taken.
    pub async fn take(&self) -> Result<Taken, StoreError> {
        let permit = Arc::clone(&self.inner.open)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let idle = self.inner.idle.lock().expect("idle list lock").pop();
        let connection = match idle {
            Some(connection) => connection,
            None => {
                let connecting = self.inner.options.connect();
                match tokio::time::timeout(DEFAULT_CONNECT_TIMEOUT, connecting).await {
                    Ok(connected) => connected?,
                    Err(_) => {
                        return Err(StoreError::Connect {
                            target: "the database".to_owned(),
                            reason: format!(
                                "no answer within {}s",
                                DEFAULT_CONNECT_TIMEOUT.as_secs_f32()
                            ),
                        });
                    }
                }
            }
        };
        Ok(Taken {
            connection: Some(connection),
            home: self.clone(),
            keep: false,
            _permit: permit,
        })
    }

    /// Connections kept idle right now.
    pub fn idle(&self) -> usize {
        self.inner.idle.lock().expect("idle list lock").len()
    }
}

/// A connection taken from a [`DirectConnections`]. Dropped without
/// [`Taken::release`] (an error, a cancelled statement), it is closed.
pub struct Taken {
    connection: Option<PgConnection>,
    home: DirectConnections,
    keep: bool,
    /// Released after the connection is back (or closed).
    _permit: OwnedSemaphorePermit,
}

impl Taken {
    /// The statement went through: the connection goes back for reuse.
    pub fn release(mut self) {
        self.keep = true;
    }
}

impl Deref for Taken {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        self.connection.as_ref().expect("present until dropped")
    }
}

impl DerefMut for Taken {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.connection.as_mut().expect("present until dropped")
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        if !self.keep {
            return;
        }
        if let Some(connection) = self.connection.take() {
            self.home
                .inner
                .idle
                .lock()
                .expect("idle list lock")
                .push(connection);
        }
    }
}
