//! The memories read rule: who may see which memory. Its one definition.
//!
//! The rule is needed in three forms: the memories_read row-level security policy (transcripts,
//! direct queries and views read through it), memory_visible_to() (for SQL code that runs as
//! the extension owner and decides for its caller), and an ordinary condition inside the search
//! statements, which run as the extension owner because row-level security would keep the GIN
//! and HNSW indexes from driving them (their operators are not leakproof, so they may not run
//! before a policy). All three are made from `memories_read_rule()`: sql/policies.sql creates
//! the policy and the function from its text at install time, and search.rs (and fork_session()
//! in sessions.rs, for the fork point) puts it into its statements. The rule is written as plain
//! conditions and EXISTS probes, never as a function call, so that the planner sees it (a scalar
//! SQL function containing a subquery is never inlined), and tests/visibility.rs checks the
//! indexes still drive every plan.

use crate::catalog::SCHEMA;
use pgrx::prelude::*;

/// What the rule is about: SQL expressions for the memory's columns.
pub struct MemoryColumns {
    pub id: String,
    pub created_by: String,
    pub session_id: String,
    pub position: String,
    pub expires_at: String,
}

impl MemoryColumns {
    /// The columns of the memories row with this name or alias (e.g. `m`).
    pub fn of_row(row: &str) -> MemoryColumns {
        MemoryColumns {
            id: format!("{row}.id"),
            created_by: format!("{row}.created_by"),
            session_id: format!("{row}.session_id"),
            position: format!("{row}.position"),
            expires_at: format!("{row}.expires_at"),
        }
    }
}

/// The memory whose expiry is the SQL expression `expires_at` has not expired: the one
/// definition of "expired" the read rule, transcripts and forks use.
pub fn not_expired(expires_at: &str) -> String {
    format!("({expires_at} IS NULL OR {expires_at} OPERATOR(pg_catalog.>) pg_catalog.now())")
}

/// May user `me` see the memory? Never once it has expired (for nobody: an expired memory is
/// gone, whether or not sweep_expired_memories() has deleted it yet). `worker` (SQL) is true
/// for roles that read everything. A memory is visible to its creator, to the owner of the
/// session it was written in, to a grantee of a share that shows its position of that session (memory_share_segments: a shared session and
/// the ancestors' prefixes it inherits), and to a grantee of a share of the memory itself. Each
/// branch is an index probe.
pub fn memories_read_rule(memory: &MemoryColumns, me: &str, worker: &str) -> String {
    let MemoryColumns { id, created_by, session_id, position, expires_at } = memory;
    let not_expired = not_expired(expires_at);
    format!(
        "({not_expired}
         AND ({worker}
          OR {created_by} OPERATOR(pg_catalog.=) {me}
          OR ({session_id} IS NOT NULL AND EXISTS (
                  SELECT 1 FROM {SCHEMA}.memory_sessions owned
                   WHERE owned.id OPERATOR(pg_catalog.=) {session_id} AND owned.owner_id OPERATOR(pg_catalog.=) {me}))
          OR ({session_id} IS NOT NULL AND EXISTS (
                  SELECT 1 FROM {SCHEMA}.memory_share_segments segment
                   WHERE segment.grantee OPERATOR(pg_catalog.=) {me} AND segment.session_id OPERATOR(pg_catalog.=) {session_id}
                     AND {position} OPERATOR(pg_catalog.<=) segment.visible_upto))
          OR EXISTS (SELECT 1 FROM {SCHEMA}.memory_shares shared
                      WHERE shared.memory_id OPERATOR(pg_catalog.=) {id} AND shared.grantee OPERATOR(pg_catalog.=) {me})))"
    )
}

/// May the user `me` (SQL) read the memory `row` (a row or alias with the memories columns)? The
/// read rule written into the statement, as memory_visible_to() answers it. Calling that function
/// instead cost about a third of a fork while it was SQL (a pinned search_path keeps PostgreSQL 15
/// from inlining it, so it parsed and planned its body again in every statement), and still a
/// PL/pgSQL call now (BENCHMARKS.md, session 18). fork_session() uses it for the fork point.
pub fn readable_by(row: &str, me: &str) -> String {
    let rule = memories_read_rule(&MemoryColumns::of_row(row), me, "false");
    format!("({me} IS NOT NULL AND {rule})")
}

/// The rule as SQL text, for sql/policies.sql to create the memories_read policy and
/// memory_visible_to() from at install (and upgrade) time. Internal: nobody else may call it.
#[pg_extern(immutable, strict, parallel_safe)]
fn memories_read_rule_sql(
    id: &str,
    created_by: &str,
    session_id: &str,
    position: &str,
    expires_at: &str,
    me: &str,
    worker: &str,
) -> String {
    let columns = MemoryColumns {
        id: id.into(),
        created_by: created_by.into(),
        session_id: session_id.into(),
        position: position.into(),
        expires_at: expires_at.into(),
    };
    memories_read_rule(&columns, me, worker)
}
