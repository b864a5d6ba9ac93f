//! Where the extension lives, for SQL that Rust builds at run time.
//!
//! The schema is looked up once per backend and kept until the next relation cache
//! invalidation: the hot paths that need it (the acting user's lookup in every statement, the
//! event relay's every batch) would otherwise pay a catalog query each time. Any relcache
//! invalidation counts, because DROP EXTENSION and ALTER EXTENSION ... SET SCHEMA both change
//! the extension's tables, which sends one.

use crate::errors::raise;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::{Cell, RefCell};

// The invalidation callback can run in the middle of anything (whenever PostgreSQL reads
// invalidation messages, e.g. while SPI opens a relation), so it only bumps a counter in a Cell;
// the cached schema remembers the generation it was looked up in.
thread_local! {
    static RELCACHE_GENERATION: Cell<u64> = const { Cell::new(0) };
    static SCHEMA: RefCell<Option<(u64, String)>> = const { RefCell::new(None) };
    static CALLBACK_REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// The quoted name of the schema the extension is installed in, or None when it is not installed
/// in the current database.
pub fn installed_schema() -> Option<String> {
    register_relcache_callback();
    let generation = RELCACHE_GENERATION.with(Cell::get);
    let cached = SCHEMA.with(|schema| schema.borrow().as_ref().filter(|(g, _)| *g == generation).map(|(_, s)| s.clone()));
    if cached.is_some() {
        return cached;
    }
    // SPI: no borrow may be held here. `generation` as read before the lookup: an invalidation
    // that arrives during it makes the next call look again.
    let schema = Spi::get_one::<String>(
        "SELECT pg_catalog.quote_ident(n.nspname::text) FROM pg_catalog.pg_extension e
           JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'memoriesdb'",
    )
    .ok()
    .flatten()?;
    SCHEMA.with(|cell| *cell.borrow_mut() = Some((generation, schema.clone())));
    Some(schema)
}

/// Like `installed_schema`, for code that cannot run without the extension.
pub fn extension_schema() -> String {
    installed_schema()
        .unwrap_or_else(|| raise(PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT, "extension memoriesdb is not installed".into(), None))
}

fn register_relcache_callback() {
    if CALLBACK_REGISTERED.with(Cell::get) {
        return;
    }
    // SAFETY: registering a backend-lifetime callback that only bumps a thread-local counter.
    unsafe { pg_sys::CacheRegisterRelcacheCallback(Some(on_relation_change), pg_sys::Datum::from(0)) };
    CALLBACK_REGISTERED.with(|registered| registered.set(true));
}

#[pg_guard]
unsafe extern "C-unwind" fn on_relation_change(_arg: pg_sys::Datum, _relation: pg_sys::Oid) {
    RELCACHE_GENERATION.with(|generation| generation.set(generation.get().wrapping_add(1)));
}
