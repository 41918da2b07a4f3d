//! Concord's public contract: the wire schema (generated from `proto/`), the
//! JSON/protobuf codec, and what services, the CLI and agents must agree on
//! beyond the messages: header names ([`headers`]), derived ids ([`ids`]),
//! task error codes and dead-letter reasons ([`codes`]), priority names
//! ([`priority`]), JSON values of messages ([`json`]), every subject under
//! its root ([`subjects::Subjects`], re-exported by `concord_bus`), and the
//! task events with the view of a task they fold into ([`task_view`]).
//!
//! The message types live in [`v1`]; every one of them is a [`prost::Message`]
//! and has serde impls following the canonical proto3 JSON mapping, so
//! [`codec::decode`] and [`codec::encode`] handle both encodings.

pub mod codec;
pub mod codes;
mod error_code;
pub mod event_data;
pub mod headers;
pub mod ids;
pub mod json;
pub mod priority;
pub mod subjects;
pub mod task_view;

pub use codec::{CodecError, ContentType, EncodeError, WireMessage, decode, encode};
/// The well-known types used by [`v1`], re-exported so users need no version-matched dependency.
pub use pbjson_types;

/// Types of the `concord.v1` protobuf package, generated at build time.
///
/// Well-known types (`Timestamp`, `Value`, `Struct`, ...) come from
/// [`pbjson_types`]; map fields are `BTreeMap`s so encodings are deterministic.
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/concord.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/concord.v1.serde.rs"));
}
