//! One module per request the registry answers.

pub mod deregister;
pub mod discover;
pub mod get;
pub mod heartbeat;
pub mod register;
pub mod remove;
