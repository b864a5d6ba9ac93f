//! Where the extension lives, for SQL that Rust builds at run time.

use crate::errors::raise;
use pgrx::prelude::*;

/// The quoted name of the schema the extension is installed in, or None when it is not installed
/// in the current database.
pub fn installed_schema() -> Option<String> {
    Spi::get_one::<String>(
        "SELECT pg_catalog.quote_ident(n.nspname::text) FROM pg_catalog.pg_extension e
           JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'memoriesdb'",
    )
    .ok()
    .flatten()
}

/// Like `installed_schema`, for code that cannot run without the extension.
pub fn extension_schema() -> String {
    installed_schema()
        .unwrap_or_else(|| raise(PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT, "extension memoriesdb is not installed".into(), None))
}
