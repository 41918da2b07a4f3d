//! Concord's Rust agent SDK: an agent is one [`Agent`] impl and one [`run`] call.
//!
//! The SDK speaks the agent side of the protocol in docs/PROTOCOL.md
//! (subjects in [`protocol`]):
//!
//! - registers the agent with the registry and heartbeats with its real load,
//!   re-registering when the registry has forgotten it, signing each request
//!   with the agent's ed25519 key ([`AgentConfig::key`]); stops when an
//!   operator removes it ([`AgentError::Removed`]);
//! - takes task assignments from `<root>.agent.<id>.tasks`, at most
//!   [`AgentConfig::max_concurrency`] at once, runs [`Agent::handle`] in a
//!   span that continues the caller's W3C trace, and replies with the result
//!   in the assignment's encoding (JSON or protobuf);
//! - lets handlers report progress ([`TaskContext::progress`]) and notice
//!   cancellation ([`TaskContext::cancelled`]);
//! - survives NATS restarts, and on shutdown stops taking work, lets running
//!   tasks finish for a grace period, hands the rest back, deregisters.
//!
//! ```no_run
//! use clap::Parser;
//! use concord_sdk::{Agent, AgentArgs, Capability, Task, TaskContext, TaskFailure, capability};
//! use serde_json::{Value, json};
//!
//! /// Counts the words of `payload.text`.
//! #[derive(Parser)]
//! struct Cli {
//!     #[command(flatten)]
//!     agent: AgentArgs,
//! }
//!
//! struct WordCount;
//!
//! impl Agent for WordCount {
//!     fn capabilities(&self) -> Vec<Capability> {
//!         vec![capability("word-count", 1.0)]
//!     }
//!
//!     async fn handle(&self, task: Task, _ctx: TaskContext) -> Result<Value, TaskFailure> {
//!         let text = task.payload["text"]
//!             .as_str()
//!             .ok_or_else(|| TaskFailure::permanent("payload.text must be a string"))?;
//!         Ok(json!({ "words": text.split_whitespace().count() }))
//!     }
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     // Flags or CONCORD_NATS_URL, CONCORD_AGENT_ID, CONCORD_AGENT_MAX_CONCURRENCY, ...
//!     concord_sdk::run_main("word-count-agent", env!("CARGO_PKG_VERSION"), Cli::parse().agent, WordCount)
//! }
//! ```
//!
//! To embed an agent in a larger program, build an [`AgentConfig`] and call
//! [`run`] with your own [`Shutdown`](bus::Shutdown).

mod agent;
mod cli;
mod config;
mod context;
mod error;
mod metrics;
pub mod protocol;
mod runtime;
mod task;
pub mod testing;

pub use agent::{Agent, capability};
pub use cli::{AgentArgs, run_main};
pub use config::{AgentConfig, MAX_AGENT_ID_CHARS};
pub use context::{ProgressError, TaskContext};
pub use error::AgentError;
pub use runtime::run;
pub use task::{Task, TaskFailure};

/// The agent's ed25519 key and the signing scheme (docs/PROTOCOL.md, "Signatures").
pub use concord_identity as identity;
pub use concord_identity::AgentKey;

/// Wire types an agent deals with.
pub use concord_wire::v1::{AgentHealth, Capability};

/// The NATS layer (`BusConfig`, `Shutdown`, `Subjects`, `ServiceError`, ...).
pub use concord_bus as bus;
/// The wire schema and codec.
pub use concord_wire as wire;
