//! The tamper-evident audit log: a SHA-256 hash chain over `audit_log`, sealed and verified here
//! (sql/audit.sql has the table's triggers and `audit_row_text()`, the text of a row the chain
//! hashes; the audit rows themselves are written by write_path.rs).
//!
//! chain_hash(n) = hex SHA-256(chain_hash(n - 1) || audit_row_text(row n) || erasable_digest(n)),
//! chain_hash(0) = '', erasable_digest(n) = hex SHA-256(audit_erasable_text(row n)) (chain
//! version 2: the erasable content is committed through its digest, so that erasure can remove it
//! and the chain still verifies; sql/audit.sql).
//!
//! The rows stream through a cursor in batches (memory stays bounded however long the chain) and
//! are hashed in Rust, one pass, reading each row's texts in place.

use crate::catalog::SCHEMA;
use crate::fmgr::raw_arg;
use crate::spi::{self, arg, Connection, Effect, KeptPlan};
use pgrx::pg_sys;
use pgrx::prelude::*;

thread_local! {
    static TAKE_CHAIN_LOCK: KeptPlan = const { KeptPlan::new() };
    static CHAIN_END: KeptPlan = const { KeptPlan::new() };
    static UNSEALED_ROWS: KeptPlan = const { KeptPlan::new() };
    static UNSEALED_ROWS_V1: KeptPlan = const { KeptPlan::new() };
    static SEAL_ROWS: KeptPlan = const { KeptPlan::new() };
    static SEAL_ROWS_V1: KeptPlan = const { KeptPlan::new() };
    static COUNT_UNSEALED: KeptPlan = const { KeptPlan::new() };
    static SEALED_ROWS: KeptPlan = const { KeptPlan::new() };
    static SEALED_ROWS_V1: KeptPlan = const { KeptPlan::new() };
}

/// Is the catalog's chain version 2? A catalog older than this library (between a package
/// upgrade and ALTER EXTENSION UPDATE) has chain version 1: audit_row_text() is then the whole
/// row's text and there is no erasable digest, and the chain is sealed and verified as it was —
/// the link formula below with an empty digest is version 1's, sha256(previous || row text).
fn catalog_has_chain_version_2() -> bool {
    crate::catalog::has_column(c"audit_log", c"erasable_digest")
}

/// Rows read per cursor fetch.
const BATCH: i64 = 1000;

/// The next link of the chain: hex SHA-256 of the previous link, the row's text and the digest of
/// its erasable text.
fn chain_link(previous: &str, row_text: &[u8], erasable_digest: &str) -> String {
    crate::hashing::sha256_hex_of(&[previous.as_bytes(), row_text, erasable_digest.as_bytes()])
}

/// The digest of an audit row's erasable text.
fn erasable_digest(erasable_text: &[u8]) -> String {
    crate::hashing::sha256_hex_of(&[erasable_text])
}

/// The last sealed link: (its chain position, its hash), (0, '') for an empty chain.
fn chain_end(spi: &Connection, effect: Effect) -> (i64, String) {
    let end = spi.execute_kept(
        &CHAIN_END,
        || {
            format!(
                "SELECT a.chain_position, a.chain_hash FROM {SCHEMA}.audit_log a
                  WHERE a.chain_position IS NOT NULL ORDER BY a.chain_position DESC LIMIT 1"
            )
        },
        &[],
        &[],
        effect,
    );
    (end.get::<i64>(0, 1).unwrap_or(0), end.get::<String>(0, 2).unwrap_or_default())
}

/// seal_audit_log(max_rows integer DEFAULT 100000) RETURNS bigint (declared in sql/audit.sql):
/// link every finished transaction's audit rows into the chain, in (transaction, row) order, at
/// most max_rows of them (NULL: all). Only transactions older than every running one are
/// sealed, so no row can later appear before a sealed one. Returns the number of rows sealed.
unsafe fn seal_audit_log(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: declared in SQL with this one argument.
    let max_rows = unsafe { raw_arg(fcinfo, 0) };
    let sealed = spi::connect(|spi| {
        // one sealer at a time: the chain is one sequence (writers never take this lock)
        spi.execute_kept(
            &TAKE_CHAIN_LOCK,
            || "SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('memoriesdb.audit_chain'))".to_string(),
            &[],
            &[],
            Effect::Reads,
        );
        // (read after the lock, with a fresh snapshot: a sealer that waited sees the links the one
        // before it committed)
        let (position, mut previous) = chain_end(spi, Effect::Writes);
        let (mut ids, mut hashes, mut digests): (Vec<i64>, Vec<String>, Vec<String>) = (Vec::new(), Vec::new(), Vec::new());
        let version_2 = catalog_has_chain_version_2();
        let erasable = if version_2 { format!("{SCHEMA}.audit_erasable_text(a)") } else { "NULL::pg_catalog.text".into() };
        spi.for_each_batch(
            if version_2 { &UNSEALED_ROWS } else { &UNSEALED_ROWS_V1 },
            || {
                format!(
                    "SELECT a.id, {SCHEMA}.audit_row_text(a), {erasable} FROM {SCHEMA}.audit_log a
                      WHERE a.chain_position IS NULL
                        AND a.txid OPERATOR(pg_catalog.<) pg_catalog.txid_snapshot_xmin(pg_catalog.txid_current_snapshot())
                      ORDER BY a.txid, a.id LIMIT $1"
                )
            },
            &[pg_sys::INT4OID],
            &[max_rows],
            Effect::Writes,
            BATCH,
            |rows| {
                for row in 0..rows.count() {
                    let digest = if version_2 { erasable_digest(rows.text_bytes(row, 3).unwrap_or_default()) } else { String::new() };
                    previous = chain_link(&previous, rows.text_bytes(row, 2).unwrap_or_default(), &digest);
                    ids.push(rows.get::<i64>(row, 1).expect("audit_log.id is NOT NULL"));
                    hashes.push(previous.clone());
                    digests.push(digest);
                }
                true
            },
        );
        let sealed = ids.len() as i64;
        if sealed > 0 && !version_2 {
            spi.execute_kept(
                &SEAL_ROWS_V1,
                || {
                    format!(
                        "UPDATE {SCHEMA}.audit_log a
                            SET chain_position = $3 OPERATOR(pg_catalog.+) u.n, chain_hash = u.chain_hash
                           FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2)) WITH ORDINALITY AS u(id, chain_hash, n)
                          WHERE a.id OPERATOR(pg_catalog.=) u.id"
                    )
                },
                &[pg_sys::INT8ARRAYOID, pg_sys::TEXTARRAYOID, pg_sys::INT8OID],
                &[arg(ids), arg(hashes), arg(position)],
                Effect::Writes,
            );
        } else if sealed > 0 {
            // one UPDATE for the batch: an UPDATE per row doubled the cost of sealing
            spi.execute_kept(
                &SEAL_ROWS,
                || {
                    format!(
                        "UPDATE {SCHEMA}.audit_log a
                            SET chain_position = $3 OPERATOR(pg_catalog.+) u.n, chain_hash = u.chain_hash,
                                erasable_digest = u.erasable_digest
                           FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($4))
                                WITH ORDINALITY AS u(id, chain_hash, erasable_digest, n)
                          WHERE a.id OPERATOR(pg_catalog.=) u.id"
                    )
                },
                &[pg_sys::INT8ARRAYOID, pg_sys::TEXTARRAYOID, pg_sys::INT8OID, pg_sys::TEXTARRAYOID],
                &[arg(ids), arg(hashes), arg(position), arg(digests)],
                Effect::Writes,
            );
        }
        sealed
    });
    sealed.into_datum().expect("a count is never NULL")
}

crate::fmgr::sql_function_entry!(pg_finfo_seal_audit_log_native, seal_audit_log_native, seal_audit_log);

/// What verify_audit_chain() reports: its one result row.
struct Verdict {
    intact: bool,
    sealed_rows: i64,
    first_broken_position: Option<i64>,
    first_broken_audit_id: Option<i64>,
    problem: Option<String>,
    last_hash: Option<String>,
}

/// verify_audit_chain() RETURNS TABLE (intact, sealed_rows, unsealed_rows, first_broken_position,
/// first_broken_audit_id, problem, last_hash) (declared in sql/audit.sql): recompute the chain
/// and report the first broken link — a changed row (its hash no longer matches), a removed row
/// (a gap in positions) or a forged hash. Compare last_hash with a value recorded outside the
/// database to detect a rewrite of the whole chain by a superuser.
unsafe fn verify_audit_chain(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    let (verdict, unsealed) = spi::connect(|spi| {
        let unsealed = spi
            .execute_kept(
                &COUNT_UNSEALED,
                || format!("SELECT pg_catalog.count(*) FROM {SCHEMA}.audit_log a WHERE a.chain_position IS NULL"),
                &[],
                &[],
                Effect::Reads,
            )
            .get::<i64>(0, 1)
            .unwrap_or(0);
        let mut expected = 0i64;
        let mut previous = String::new();
        let mut broken: Option<Verdict> = None;
        let version_2 = catalog_has_chain_version_2();
        spi.for_each_batch(
            if version_2 { &SEALED_ROWS } else { &SEALED_ROWS_V1 },
            || {
                // (version 1: no erasable part, as if erased, with an empty digest)
                let erasable = if version_2 {
                    format!("{SCHEMA}.audit_erasable_text(a), a.erasable_digest, a.erased_at IS NOT NULL")
                } else {
                    "NULL::pg_catalog.text, ''::pg_catalog.text, true".into()
                };
                format!(
                    "SELECT a.id, a.chain_position, a.chain_hash, {SCHEMA}.audit_row_text(a), {erasable}
                       FROM {SCHEMA}.audit_log a
                      WHERE a.chain_position IS NOT NULL ORDER BY a.chain_position"
                )
            },
            &[],
            &[],
            Effect::Reads,
            BATCH,
            |rows| {
                for row in 0..rows.count() {
                    expected += 1;
                    let id = rows.get::<i64>(row, 1);
                    let position = rows.get::<i64>(row, 2).expect("sealed rows have a position");
                    if position != expected {
                        broken = Some(Verdict {
                            intact: false,
                            sealed_rows: expected - 1,
                            first_broken_position: Some(expected),
                            first_broken_audit_id: id,
                            problem: Some(format!(
                                "chain position {expected} is missing (next present: {position}): rows were removed"
                            )),
                            last_hash: Some(previous.clone()),
                        });
                        return false;
                    }
                    // the erasable content verifies against its digest until it is erased; then the
                    // digest sealed with it stands for it
                    let sealed_digest = rows.get::<String>(row, 6).unwrap_or_default();
                    let erased = rows.get::<bool>(row, 7) == Some(true);
                    if !erased && erasable_digest(rows.text_bytes(row, 5).unwrap_or_default()) != sealed_digest {
                        broken = Some(Verdict {
                            intact: false,
                            sealed_rows: expected - 1,
                            first_broken_position: Some(position),
                            first_broken_audit_id: id,
                            problem: Some("row content was changed after sealing".into()),
                            last_hash: Some(previous.clone()),
                        });
                        return false;
                    }
                    previous = chain_link(&previous, rows.text_bytes(row, 4).unwrap_or_default(), &sealed_digest);
                    let stored = rows.get::<String>(row, 3);
                    if stored.as_deref() != Some(previous.as_str()) {
                        broken = Some(Verdict {
                            intact: false,
                            sealed_rows: expected - 1,
                            first_broken_position: Some(position),
                            first_broken_audit_id: id,
                            problem: Some("row content or chain hash was changed after sealing".into()),
                            last_hash: stored,
                        });
                        return false;
                    }
                }
                true
            },
        );
        let verdict = broken.unwrap_or(Verdict {
            intact: true,
            sealed_rows: expected,
            first_broken_position: None,
            first_broken_audit_id: None,
            problem: None,
            last_hash: (!previous.is_empty()).then_some(previous),
        });
        (verdict, unsealed)
    });
    // SAFETY: the fcinfo of a set-returning call; its one row goes to the tuplestore
    // InitMaterializedSRF makes (which refuses a caller that cannot take a materialized set).
    unsafe {
        pg_sys::InitMaterializedSRF(fcinfo, pg_sys::MAT_SRF_USE_EXPECTED_DESC);
        let result = (*fcinfo).resultinfo.cast::<pg_sys::ReturnSetInfo>();
        let values = [
            verdict.intact.into_datum(),
            verdict.sealed_rows.into_datum(),
            unsealed.into_datum(),
            verdict.first_broken_position.into_datum(),
            verdict.first_broken_audit_id.into_datum(),
            verdict.problem.into_datum(),
            verdict.last_hash.into_datum(),
        ];
        let mut datums: Vec<pg_sys::Datum> = values.iter().map(|v| v.unwrap_or(pg_sys::Datum::from(0usize))).collect();
        let mut nulls: Vec<bool> = values.iter().map(Option::is_none).collect();
        pg_sys::tuplestore_putvalues((*result).setResult, (*result).setDesc, datums.as_mut_ptr(), nulls.as_mut_ptr());
    }
    pg_sys::Datum::from(0usize)
}

crate::fmgr::sql_function_entry!(pg_finfo_verify_audit_chain_native, verify_audit_chain_native, verify_audit_chain);

#[cfg(test)]
mod unit {
    #[test]
    fn a_link_hashes_the_previous_link_the_row_and_its_erasable_digest() {
        // sha256("" || "ab" || "c") = sha256("abc"), then sha256(that || "abc" || digest)
        let first = super::chain_link("", b"ab", "c");
        assert_eq!(first, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        let digest = super::erasable_digest(b"[null]");
        assert_eq!(digest, crate::hashing::sha256_hex("[null]"));
        assert_eq!(super::chain_link(&first, b"abc", &digest), crate::hashing::sha256_hex(format!("{first}abc{digest}")));
    }
}
