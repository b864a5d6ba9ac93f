//! Graph integrity: the memory graph stays acyclic, also under concurrent writers.
//!
//! Adding `source -> target` closes a cycle exactly when `source` is already reachable from
//! `target`. Two transactions can each add one edge of a cycle while each check passes on its own
//! snapshot, so edge writers that could close a cycle are serialised on one row
//! (`memory_graph_clock`) and the reachability check runs on a fresh snapshot taken after that
//! row lock is held.
//!
//! Edges implied by the conversation tables (a message belongs_to its session, a fork is
//! forked_from its parent; see the memory_graph_edges view) count as graph edges here: they are
//! never written to memory_edges, so conversation writes never take this check at all.
//!
//! Every edge write that changes an endpoint takes the serialised check. (An earlier fast path
//! skipped it for a source "created by this transaction", judged by the row's xmin; but an
//! UPDATE sets xmin too, and a deleted-and-reinserted id is still visible to others, so two
//! transactions could each take the fast path and together commit a cycle.)

use crate::catalog::SCHEMA;
use crate::errors::{raise, TriggerError};
use pgrx::prelude::*;

/// Is `to` reachable from `from` along edges? Asks `edge_path_exists()` (SQL, SECURITY DEFINER so
/// that edges the caller cannot see still count), through writable SPI so that it reads with a
/// snapshot taken now, after the lock.
fn reachable(from: pgrx::Uuid, to: pgrx::Uuid) -> bool {
    Spi::get_one_with_args::<bool>(
        &format!("SELECT {SCHEMA}.edge_path_exists($1::pg_catalog.uuid, $2::pg_catalog.uuid)"),
        &[from.into(), to.into()],
    )
    .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("cycle check failed: {e}"), None))
    .unwrap_or(false)
}

/// BEFORE INSERT OR UPDATE OF source_id, target_id trigger on `memory_edges`.
#[pg_trigger]
fn prevent_cycles<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, impl WhoAllocated>>, TriggerError> {
    let row = trigger.new().ok_or(TriggerError::NotARowTrigger)?;
    let source: Option<pgrx::Uuid> = row.get_by_name("source_id")?;
    let target: Option<pgrx::Uuid> = row.get_by_name("target_id")?;
    let relation: String = row.get_by_name("relation")?.unwrap_or_default();
    let (Some(source), Some(target)) = (source, target) else {
        // NOT NULL constraints report the missing endpoint right after this trigger.
        return Ok(Some(row));
    };
    if source == target {
        raise(
            PgSqlErrorCode::ERRCODE_CHECK_VIOLATION,
            format!("edge {source} -[{relation}]-> {target} is a self-loop"),
            Some("a memory cannot be related to itself"),
        );
    }
    if let Some(old) = trigger.old() {
        let unchanged = old.get_by_name::<pgrx::Uuid>("source_id")? == Some(source)
            && old.get_by_name::<pgrx::Uuid>("target_id")? == Some(target);
        if unchanged {
            return Ok(Some(row));
        }
    }
    // Waits for any concurrent edge writer; under REPEATABLE READ or SERIALIZABLE a concurrent
    // committed writer makes this fail with 40001, and the client retries.
    Spi::run(&format!("UPDATE {SCHEMA}.memory_graph_clock SET version = version OPERATOR(pg_catalog.+) 1"))
        .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("graph lock failed: {e}"), None));
    if reachable(target, source) {
        raise(
            PgSqlErrorCode::ERRCODE_CHECK_VIOLATION,
            format!("edge {source} -[{relation}]-> {target} would close a cycle"),
            Some("the memory graph is acyclic: the target already reaches the source"),
        );
    }
    Ok(Some(row))
}

crate::fmgr::guarded_trigger_entry!(pg_finfo_prevent_cycles_guarded, prevent_cycles_guarded, prevent_cycles_wrapper, "prevent_cycles()");
