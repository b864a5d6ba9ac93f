//! Full-text search: what every stored memory's search configuration must satisfy.

use crate::errors::raise;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::CStr;

/// pg_ts_config's columns, for SysCacheGetAttr (pgrx has no binding of its row struct).
const CFGNAME: i16 = 2;
const CFGNAMESPACE: i16 = 3;
const CFGOWNER: i16 = 4;

/// CHECK on `memories.search_config`: the text search configuration a memory is indexed with
/// must outlive the session that wrote it, and be one pg_dump restores: a built-in one
/// (pg_catalog) or one a superuser created in an ordinary schema. A temporary configuration —
/// or one an ordinary role made and can drop again — would leave rows whose search vector can
/// never be recomputed: every later UPDATE of such a row fails, and a restore loads none of the
/// table. Returns true, or raises 22023 naming the configuration. A syscache lookup in Rust,
/// because it runs for every row written.
#[pg_extern(stable, strict, parallel_safe)]
fn require_durable_search_config(config: pg_sys::Oid) -> bool {
    // SAFETY: a syscache lookup by oid; the tuple is released before returning, the values read
    // from it are plain oids, and the name is copied out first.
    let (name, namespace, owner) = unsafe {
        let cache = pg_sys::SysCacheIdentifier::TSCONFIGOID as i32;
        let tuple = pg_sys::SearchSysCache1(cache, pg_sys::Datum::from(config));
        if tuple.is_null() {
            raise(
                PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
                format!("text search configuration with oid {} does not exist", config.to_u32()),
                None,
            );
        }
        let mut is_null = false;
        let name_ptr = pg_sys::SysCacheGetAttr(cache, tuple, CFGNAME.into(), &mut is_null).cast_mut_ptr::<pg_sys::NameData>();
        let name = CStr::from_ptr((*name_ptr).data.as_ptr()).to_string_lossy().into_owned();
        let namespace = pg_sys::Oid::from(pg_sys::SysCacheGetAttr(cache, tuple, CFGNAMESPACE.into(), &mut is_null).value() as u32);
        let owner = pg_sys::Oid::from(pg_sys::SysCacheGetAttr(cache, tuple, CFGOWNER.into(), &mut is_null).value() as u32);
        pg_sys::ReleaseSysCache(tuple);
        (name, namespace, owner)
    };
    // SAFETY: catalog lookups by oid.
    let durable = namespace == pg_sys::Oid::from(pg_sys::PG_CATALOG_NAMESPACE)
        || unsafe { !pg_sys::isAnyTempNamespace(namespace) && pg_sys::superuser_arg(owner) };
    if !durable {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("text search configuration \"{name}\" cannot index stored memories: it is temporary or was not created by a superuser"),
            Some("use a built-in configuration such as 'english' or 'simple' (memoriesdb.text_search_config), or one an administrator created"),
        );
    }
    true
}

/// How much of a memory's content is indexed for full-text search, in bytes. PostgreSQL refuses
/// a tsvector whose distinct lexemes add up to 1 MiB or more (54000), and the lexemes of a text
/// can outgrow the text itself: hyphenated compounds are indexed whole and in parts (up to 2x),
/// and lowercasing lengthens some letters (e.g. U+023A, 2 bytes, becomes U+2C65, 3 bytes:
/// 1.5x). 256 KiB x 2 x 1.5 stays below 1 MiB, so no content, in any script, can make a write
/// fail. A limit in characters (as before) let 4-byte characters overflow it.
const SEARCHABLE_BYTES: usize = 256 * 1024;

/// The part of `content` that full-text search indexes: the whole text when it is at most
/// 256 KiB of UTF-8, else its first 256 KiB, cut at a character boundary.
#[pg_extern(immutable, strict, parallel_safe)]
fn searchable_text(content: &str) -> &str {
    if content.len() <= SEARCHABLE_BYTES {
        return content;
    }
    let mut end = SEARCHABLE_BYTES;
    while !content.is_char_boundary(end) {
        end -= 1;
    }
    &content[..end]
}

#[cfg(test)]
mod unit {
    use super::{searchable_text, SEARCHABLE_BYTES};

    #[test]
    fn searchable_text_cuts_at_a_character_boundary() {
        assert_eq!(searchable_text("short"), "short");
        let four_byte = "\u{20000}".repeat(SEARCHABLE_BYTES / 4 + 10);
        let cut = searchable_text(&four_byte);
        assert_eq!(cut.len(), SEARCHABLE_BYTES);
        let three_byte = "\u{4e00}".repeat(SEARCHABLE_BYTES / 3 + 10);
        let cut = searchable_text(&three_byte);
        assert!(cut.len() <= SEARCHABLE_BYTES && cut.len() > SEARCHABLE_BYTES - 3);
        assert!(cut.chars().all(|c| c == '\u{4e00}'));
    }
}
