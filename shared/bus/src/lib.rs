//! Concord's NATS layer: every service and agent talks to the others through it.
//!
//! - [`connect`]: one NATS connection with reconnects, client name, credentials and TLS.
//! - [`Subjects`]: every subject under a configurable root (default `concord`).
//! - [`headers`]: `Nats-Msg-Id`, `Content-Type` and W3C trace context in NATS headers.
//! - [`ServiceError`]: error replies with a stable code and the name of the bad field.
//! - [`service`]: the scaffold that makes a service answer `$SRV.PING/INFO/STATS`,
//!   opens one span per request and drains in-flight work on shutdown.
//! - [`jetstream`]: acknowledging, delaying and terminating JetStream deliveries.
//! - [`Shutdown`]: one cancellation token, tripped by SIGTERM/SIGINT.

mod connect;
mod error;
pub mod headers;
pub mod jetstream;
pub mod service;
mod shutdown;
pub mod validate;

pub use concord_wire::subjects::Subjects;
pub use connect::{Bus, BusConfig, ConnectError, connect};
pub use error::ServiceError;
pub use service::{
    Handler, HostError, Reply, ReplyTo, Request, ServiceHost, ServiceSpec, send_reply,
};
pub use shutdown::Shutdown;

pub use async_nats;
pub use concord_wire as wire;
