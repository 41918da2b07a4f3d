//! The agent runtime against a real nats-server, with a fake registry standing in for the registry service.

mod reconnect;
mod registration;
mod shutdown;
mod support;
mod tasks;
