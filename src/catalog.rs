//! Where the extension lives, for SQL that Rust builds at run time.
//!
//! The control file fixes the schema (`schema = memoriesdb`, not relocatable), so SQL built in
//! Rust names it as a constant: nothing is looked up under the caller's search_path, and nothing
//! cached per backend can be steered by it (a hostile role once made a per-backend schema
//! lookup return its own schema, and with it its own `users` table). Every SQL string run from
//! Rust qualifies the extension's objects with this schema and built-in operators and functions
//! with `pg_catalog`.

use pgrx::pg_sys;

/// The extension's schema, as it appears in SQL (a plain identifier: no quoting needed).
pub const SCHEMA: &str = "memoriesdb";

/// Is the extension installed in the current database? A catalog lookup by name in
/// pg_extension (an index scan, no SQL, independent of search_path).
pub fn extension_installed() -> bool {
    // SAFETY: a catalog lookup; missing_ok = true returns InvalidOid instead of raising.
    unsafe { pg_sys::get_extension_oid(c"memoriesdb".as_ptr(), true) != pg_sys::InvalidOid }
}
