//! Concord's wire schema (generated from `proto/`) and the JSON/protobuf codec.
//!
//! The message types live in [`v1`]; every one of them is a [`prost::Message`]
//! and has serde impls following the canonical proto3 JSON mapping, so
//! [`codec::decode`] and [`codec::encode`] handle both encodings.

pub mod codec;
mod error_code;

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
