//! memoriesdb-hub: bridges PostgreSQL LISTEN/NOTIFY to WebSocket clients, lets clients publish
//! through `pg_notify` (so several hubs can share one database) and exposes MemoriesDB's chat
//! API (send a message, read a transcript, create and fork sessions) over the same socket.
//!
//! Modules by capability:
//! - [`config`]: flags and environment
//! - [`channel`]: channel names, quoting, glob patterns
//! - [`auth`]: optional HS256 JWT authentication
//! - [`users`]: whether a token's user exists (cached)
//! - [`protocol`]: request parsing and the frames the hub sends
//! - [`registry`]: connections, subscriptions and fan-out with bounded queues
//! - [`listener`]: the dedicated LISTEN connection, reconciliation and reconnects
//! - [`database`]: `pub` and the chat actions over a connection pool
//! - [`role`]: the hub's database role must not bypass row-level security
//! - [`connection`]: one WebSocket connection (reader, writer, heartbeat, timeouts)
//! - [`http`]: the upgrade endpoint, demo page, health, readiness and metrics
//! - [`server`]: startup, accept loop, graceful shutdown

pub mod auth;
pub mod channel;
pub mod config;
pub mod connection;
pub mod database;
pub mod http;
pub mod hub;
pub mod listener;
pub mod metrics;
pub mod protocol;
pub mod registry;
pub mod role;
pub mod server;
pub mod users;

/// An error with its causes, for logs: tokio-postgres' Display says only "db error" and keeps
/// PostgreSQL's message (e.g. why a connection was refused) in its source.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
