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
const SCHEMA_C: &std::ffi::CStr = c"memoriesdb";

/// Is the extension installed in the current database? A catalog lookup by name in
/// pg_extension (an index scan, no SQL, independent of search_path).
pub fn extension_installed() -> bool {
    // SAFETY: a catalog lookup; missing_ok = true returns InvalidOid instead of raising.
    unsafe { pg_sys::get_extension_oid(c"memoriesdb".as_ptr(), true) != pg_sys::InvalidOid }
}

/// Does the extension's table `table` have a column `column`? A catalog lookup (syscache), for
/// code that must also work against an older catalog: between a package upgrade, which replaces
/// the library, and ALTER EXTENSION UPDATE, which brings the catalog up to it.
pub fn has_column(table: &std::ffi::CStr, column: &std::ffi::CStr) -> bool {
    // SAFETY: a catalog lookup by name (syscache).
    relation(table).is_some_and(|relation| unsafe { pg_sys::get_attnum(relation, column.as_ptr()) } != pg_sys::InvalidAttrNumber as i16)
}

/// The extension's relation `table`, if the catalog has it (a syscache lookup by name,
/// independent of search_path; not locked: open it to use it).
pub fn relation(table: &std::ffi::CStr) -> Option<pg_sys::Oid> {
    // SAFETY: catalog lookups by name; missing_ok lookups return InvalidOid.
    unsafe {
        let namespace = pg_sys::get_namespace_oid(SCHEMA_C.as_ptr(), true);
        if namespace == pg_sys::InvalidOid {
            return None;
        }
        let relation = pg_sys::get_relname_relid(table.as_ptr(), namespace);
        (relation != pg_sys::InvalidOid).then_some(relation)
    }
}
