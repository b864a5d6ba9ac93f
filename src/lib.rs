//! MemoriesDB: conversational memory for AI applications, inside PostgreSQL.
//!
//! Rust carries the functions on the hot paths and those where it is safer or faster than SQL:
//! the conversation writers (sessions.rs: create, append, batch append, fork), the one write
//! path every write to memories and edges takes (write_path.rs: derived fields, audit rows, the
//! embedding queue and change events), the audit hash chain (audit.rs), SHA-256 content hashing,
//! the cycle check and the breadth-first traversal of the memory graph, time-ordered ids, the
//! acting user (resolved once per statement), the event relay worker, transcripts
//! (transcripts.rs), search (search.rs) and the one definition of the memories read rule
//! (policies.rs). They run SQL through spi.rs (kept plans, errors with every field, rows
//! returned straight into a function's result). Tables, policies, views, grants and the
//! functions still written in SQL (sharing, queues) live in `sql/<feature>.sql`, pulled in
//! below in dependency order.

use pgrx::prelude::*;

::pgrx::pg_module_magic!(name, version);

mod audit;
mod catalog;
mod embeddings;
mod errors;
mod events;
mod fmgr;
mod graph;
mod hashing;
mod identity;
mod ids;
mod policies;
mod ranking;
mod search;
mod sessions;
mod spi;
mod traversal;
mod transcripts;
mod tuples;
mod write_path;

/// Runs when a backend (or the event relay) loads the library.
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // A client must never see a Rust backtrace. pgrx attaches one to the DETAIL of errors that
    // pass through Rust whenever backtraces are enabled, which RUST_BACKTRACE=1 in the
    // environment of whoever started the postmaster does; RUST_LIB_BACKTRACE=0 turns them off
    // for this process (read once, at the first capture, which has not happened yet).
    // SAFETY: a backend is single-threaded; nothing reads the environment concurrently.
    unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    identity::register_settings();
    embeddings::register_settings();
    ranking::register_settings();
}

// The SQL of each feature, in sql/ at the top of the tree, in dependency order. (pgrx writes them
// into one install script; PL/pgSQL bodies are checked only when called, so the order matters
// for tables, SQL-language functions, policies and triggers.)
extension_sql_file!(
    "../sql/schema.sql",
    name = "schema",
    requires = [ids::uuid_generate_v7, search::require_durable_search_config, search::searchable_text]
);
extension_sql_file!(
    "../sql/identity.sql",
    name = "identity",
    requires = [
        "schema",
        identity::current_memory_user,
        identity::acting_role_is,
        identity::acting_role_bypasses_rls
    ]
);
extension_sql_file!(
    "../sql/sessions.sql",
    name = "sessions",
    requires = ["identity", sessions::session_channel, search::search_limit]
);
extension_sql_file!("../sql/sharing.sql", name = "sharing", requires = ["sessions"]);
extension_sql_file!(
    "../sql/graph.sql",
    name = "graph",
    requires = ["sessions", traversal::traverse_memory_graph]
);
extension_sql_file!(
    "../sql/audit.sql",
    name = "audit",
    requires = ["sessions", hashing::content_sha256]
);
extension_sql_file!("../sql/search.sql", name = "search", requires = ["sessions"]);
extension_sql_file!("../sql/embeddings.sql", name = "embeddings", requires = ["search"]);
extension_sql_file!("../sql/events.sql", name = "events", requires = ["embeddings", events::ensure_event_relay]);
extension_sql_file!("../sql/lifecycle.sql", name = "lifecycle", requires = ["sessions", "sharing"]);
extension_sql_file!("../sql/facts.sql", name = "facts", requires = ["lifecycle", search::search_limit]);
extension_sql_file!("../sql/ranking.sql", name = "ranking", requires = ["lifecycle"]);
extension_sql_file!("../sql/context.sql", name = "context", requires = ["ranking", "facts", "search"]);
extension_sql_file!("../sql/statistics.sql", name = "statistics", requires = ["ranking", "embeddings"]);
extension_sql_file!("../sql/erasure.sql", name = "erasure", requires = ["context", "lifecycle", "audit"]);
extension_sql_file!(
    "../sql/policies.sql",
    name = "policies",
    requires = ["sharing", "graph", "audit", "events", "lifecycle", "facts", "ranking", "context", "statistics", "erasure", policies::memories_read_rule_sql]
);
extension_sql_file!("../sql/finalize.sql", name = "finalize", requires = ["policies"], finalize);

#[cfg(any(test, feature = "pg_test"))]
mod pg_tests;

/// Required by `cargo pgrx test`; must be visible at the crate root.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        // the extension's schema on the path, as the README has administrators set it per database
        vec!["search_path = '\"$user\", public, memoriesdb'"]
    }
}
