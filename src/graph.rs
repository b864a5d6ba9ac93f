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
use crate::errors::raise;
use crate::spi::{self, arg, Effect, KeptPlan};
use crate::tuples::{attribute, text_bytes, uuid_value};
use pgrx::pg_sys;
use pgrx::prelude::*;

thread_local! {
    static TAKE_GRAPH_LOCK: KeptPlan = const { KeptPlan::new() };
    static REACHABLE: KeptPlan = const { KeptPlan::new() };
}

/// BEFORE INSERT OR UPDATE OF source_id, target_id row trigger on `memory_edges` (declared in
/// sql/graph.sql; SECURITY DEFINER so that edges the caller cannot see still count).
unsafe fn prevent_cycles(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: the guarded entry point checked that PostgreSQL called this as a trigger.
    let (row, source, target, old_endpoints, relation) = unsafe {
        let trigger = (*fcinfo).context.cast::<pg_sys::TriggerData>();
        let event = (*trigger).tg_event;
        let operation = event & pg_sys::TRIGGER_EVENT_OPMASK;
        let updating = operation == pg_sys::TRIGGER_EVENT_UPDATE;
        if event & pg_sys::TRIGGER_EVENT_ROW == 0
            || event & pg_sys::TRIGGER_EVENT_TIMINGMASK != pg_sys::TRIGGER_EVENT_BEFORE
            || !(updating || operation == pg_sys::TRIGGER_EVENT_INSERT)
        {
            raise(
                PgSqlErrorCode::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
                "prevent_cycles() must be a BEFORE INSERT OR UPDATE row trigger".into(),
                None,
            );
        }
        let desc = (*(*trigger).tg_relation).rd_att;
        let new = if updating { (*trigger).tg_newtuple } else { (*trigger).tg_trigtuple };
        let value = |tuple, name| attribute(tuple, desc, name).and_then(|a| a.value);
        let old_endpoints = updating.then(|| {
            let old = (*trigger).tg_trigtuple;
            (uuid_value(value(old, c"source_id")), uuid_value(value(old, c"target_id")))
        });
        let relation = value(new, c"relation").map(|d| String::from_utf8_lossy(text_bytes(d)).into_owned());
        (
            pg_sys::Datum::from(new),
            uuid_value(value(new, c"source_id")),
            uuid_value(value(new, c"target_id")),
            old_endpoints,
            relation.unwrap_or_default(),
        )
    };
    let (Some(source), Some(target)) = (source, target) else {
        // NOT NULL constraints report the missing endpoint right after this trigger.
        return row;
    };
    if source == target {
        raise(
            PgSqlErrorCode::ERRCODE_CHECK_VIOLATION,
            format!("edge {source} -[{relation}]-> {target} is a self-loop"),
            Some("a memory cannot be related to itself"),
        );
    }
    if old_endpoints == Some((Some(source), Some(target))) {
        return row;
    }
    let closes_cycle = spi::connect(|spi| {
        // Waits for any concurrent edge writer; under REPEATABLE READ or SERIALIZABLE a
        // concurrent committed writer makes this fail with 40001, and the client retries.
        spi.execute_kept(
            &TAKE_GRAPH_LOCK,
            || format!("UPDATE {SCHEMA}.memory_graph_clock SET version = version OPERATOR(pg_catalog.+) 1"),
            &[],
            &[],
            Effect::Writes,
        );
        // Is the source already reachable from the target, along edges stored or implied? Read
        // with a snapshot taken now, after the lock. Breadth-first over a recursive query whose
        // UNION (not UNION ALL) is the visited set, so it terminates on any graph and stops as
        // soon as the source is found. As the extension owner, edges the caller cannot see count.
        spi.execute_kept(
            &REACHABLE,
            || {
                format!(
                    "SELECT EXISTS (
                         WITH RECURSIVE reach(id) AS (
                             SELECT $1::pg_catalog.uuid
                             UNION
                             SELECT e.target_id FROM {SCHEMA}.memory_graph_edges e
                               JOIN reach r ON e.source_id OPERATOR(pg_catalog.=) r.id)
                         SELECT 1 FROM reach WHERE reach.id OPERATOR(pg_catalog.=) $2)"
                )
            },
            &[pg_sys::UUIDOID, pg_sys::UUIDOID],
            &[arg(target), arg(source)],
            Effect::Writes,
        )
        .get::<bool>(0, 1)
        .unwrap_or(false)
    });
    if closes_cycle {
        raise(
            PgSqlErrorCode::ERRCODE_CHECK_VIOLATION,
            format!("edge {source} -[{relation}]-> {target} would close a cycle"),
            Some("the memory graph is acyclic: the target already reaches the source"),
        );
    }
    row
}

crate::fmgr::guarded_trigger_entry!(pg_finfo_prevent_cycles_guarded, prevent_cycles_guarded, prevent_cycles, "prevent_cycles()");
