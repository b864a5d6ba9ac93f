//! SPI plans prepared once per backend and kept for its lifetime.
//!
//! A kept plan (SPI_keepplan) is one of PostgreSQL's cached plans: it is re-analysed and
//! re-planned by PostgreSQL itself whenever something it depends on changes (a table, index,
//! policy or function it uses is altered, dropped or re-created, e.g. by ALTER EXTENSION UPDATE
//! or DROP and CREATE EXTENSION), so keeping it is safe. Its text is fixed in this library and
//! names everything schema-qualified, operators included, so what it means never depends on the
//! caller's search_path.

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys;
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiError, SpiResult};
use pgrx::PgOid;
use std::cell::RefCell;
use std::thread::LocalKey;

/// Where a backend keeps one plan: `thread_local! { static X: KeptPlan = const { RefCell::new(None) }; }`
pub type KeptPlan = RefCell<Option<OwnedPreparedStatement>>;

/// Run `run` with the plan kept in `kept`, preparing `sql` (with parameter `types`) on first use.
/// `writes` prepares it for a statement that changes data (read-write SPI, a fresh snapshot).
pub fn with_kept_plan<R>(
    client: &SpiClient<'_>,
    kept: &'static LocalKey<KeptPlan>,
    sql: impl FnOnce() -> String,
    types: &[PgOid],
    writes: bool,
    run: impl FnOnce(&OwnedPreparedStatement) -> SpiResult<R>,
) -> SpiResult<R> {
    kept.with(|cell| {
        if cell.borrow().is_none() {
            let text = sql();
            let plan = if writes { client.prepare_mut(&*text, types)? } else { client.prepare(&*text, types)? };
            *cell.borrow_mut() = Some(plan.keep());
        }
        let plan = cell.borrow();
        run(plan.as_ref().expect("prepared above"))
    })
}

/// A datum as PostgreSQL holds it (or None for NULL) of type `oid`, as an SPI parameter.
pub fn param(datum: Option<pg_sys::Datum>, oid: PgOid) -> DatumWithOid<'static> {
    match datum {
        // SAFETY: the caller passes a valid value of type `oid` that outlives the SPI call.
        Some(datum) => unsafe { DatumWithOid::new(datum, oid.value()) },
        None => DatumWithOid::null_oid(oid.value()),
    }
}

/// An SPI failure that is not a PostgreSQL error of the statement (those propagate as raised).
pub fn spi_failed(what: &str, e: SpiError) -> ! {
    crate::errors::raise(pgrx::prelude::PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("{what}: {e}"), None)
}
