//! The service runtime: turns [`ServiceArgs`] into a connected, observable
//! service and runs it until shutdown.
//!
//! A service binary is a few lines:
//!
//! ```no_run
//! use concord_runtime::{run_service, Service, ServiceInfo};
//! # fn args() -> concord_config::ServiceArgs { unimplemented!() }
//!
//! const INFO: ServiceInfo = ServiceInfo {
//!     name: "concord-example",
//!     description: "An example service",
//!     default_metrics_port: 9199,
//!     migrations: None,
//! };
//!
//! fn main() -> std::process::ExitCode {
//!     run_service(INFO, args(), |context| async move {
//!         let service = Service::start(context).await?;
//!         // service.serve("group", "name", &app, handlers::name::handle) per request
//!         service.run_until_stopped().await
//!     })
//! }
//! ```
//!
//! Tests skip [`run_service`] and call [`ServiceContext::connect`] directly, so
//! services run in-process against the test's own NATS and database.

mod background;
pub mod clock;
mod context;
mod dead_letters;
mod events;
mod service;

pub use background::{Background, for_each_until};
pub use clock::{Clock, ManualClock, SystemClock};
pub use context::{ServiceContext, ServiceInfo, StartupError, run_service};
pub use dead_letters::{DeadLetterKeeper, StoreRejectSink, reason_of};
pub use events::{EmitError, EventPublisher, event_json, publish as publish_events, whole_micros};
pub use service::Service;
