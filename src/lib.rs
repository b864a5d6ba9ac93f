//! MemoriesDB: conversational memory for AI applications, inside PostgreSQL.
//!
//! Rust carries the parts where it is faster or safer than SQL: SHA-256 content hashing, the
//! cycle check and the breadth-first traversal of the memory graph, time-ordered ids, the acting
//! user (resolved once per statement) and the event relay worker.
//! Everything that is naturally SQL (tables, the conversation API, search, queues, audit,
//! events) lives in `src/sql/*.sql`, pulled in below in dependency order.

use pgrx::prelude::*;

::pgrx::pg_module_magic!(name, version);

mod catalog;
mod errors;
mod events;
mod graph;
mod hashing;
mod identity;
mod ids;
mod search;
mod traversal;

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
}

extension_sql_file!(
    "sql/schema.sql",
    name = "schema",
    requires = [ids::uuid_generate_v7, search::require_durable_search_config, search::searchable_text]
);
extension_sql_file!(
    "sql/identity.sql",
    name = "identity",
    requires = [
        "schema",
        identity::current_memory_user,
        identity::forget_cached_identity,
        identity::acting_role_is,
        identity::acting_role_bypasses_rls
    ]
);
extension_sql_file!(
    "sql/triggers.sql",
    name = "triggers",
    requires = ["identity", hashing::update_content_hash, graph::prevent_cycles, events::ensure_event_relay]
);
extension_sql_file!("sql/sessions.sql", name = "sessions", requires = ["triggers"]);
extension_sql_file!("sql/integrity.sql", name = "integrity", requires = ["sessions", hashing::content_sha256]);
extension_sql_file!("sql/search.sql", name = "search", requires = ["sessions"]);
extension_sql_file!("sql/embeddings.sql", name = "embeddings", requires = ["search"]);
extension_sql_file!("sql/graph_api.sql", name = "graph_api", requires = ["sessions", traversal::traverse_memory_graph]);
extension_sql_file!("sql/security.sql", name = "security", requires = ["integrity", "embeddings", "graph_api", hashing::content_sha256]);
extension_sql_file!("sql/finalize.sql", name = "finalize", requires = ["security"], finalize);

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
