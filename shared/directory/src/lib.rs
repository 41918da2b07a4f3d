//! The agent directory: who exists, what they can do, whether they are alive.
//!
//! The registry owns it and publishes every change to the JetStream KV
//! bucket `<ROOT>_AGENTS` ([`bucket`]); every service that needs it (the
//! registry's replicas, the dispatcher) keeps an in-memory, indexed copy
//! ([`Directory`]) fed by [`bucket::watch`].

pub mod bucket;
mod directory;

pub use bucket::{DirectoryBucket, SharedDirectory, bucket_name, watch, watch_notifying};
pub use directory::{
    DEFAULT_PAGE_SIZE, Directory, MAX_PAGE_SIZE, Page, decode_page_token, encode_page_token,
};
