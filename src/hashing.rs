//! Content hashing: `memories.content_hash` is always the hex SHA-256 of `content`.

use pgrx::prelude::*;
use crate::errors::TriggerError;
use sha2::{Digest, Sha256};

/// Lowercase hex SHA-256 of a UTF-8 string (the same text `sha256sum` prints).
pub fn sha256_hex(content: &str) -> String {
    let digest = Sha256::digest(content.as_bytes());
    let mut hex = String::with_capacity(64);
    for byte in digest {
        use std::fmt::Write;
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// SQL access to the hash used by the trigger, e.g. to look a memory up by its content.
#[pg_extern(immutable, strict, parallel_safe)]
fn content_sha256(content: &str) -> String {
    sha256_hex(content)
}

/// BEFORE INSERT OR UPDATE trigger on `memories`: recomputes `content_hash` from `content` on
/// every write, so a caller-supplied hash (right or wrong) is always replaced by the true one.
#[pg_trigger]
fn update_content_hash<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, impl WhoAllocated>>, TriggerError> {
    let mut row = trigger
        .new()
        .ok_or(TriggerError::NotARowTrigger)?
        .into_owned();
    // content is NOT NULL in the schema; a NULL here is rejected by that constraint right after.
    let hash = match row.get_by_name::<&str>("content")? {
        Some(content) => sha256_hex(content),
        None => return Ok(Some(row)),
    };
    row.set_by_name("content_hash", hash)?;
    Ok(Some(row))
}

#[cfg(test)]
mod unit {
    #[test]
    fn known_vectors() {
        assert_eq!(
            super::sha256_hex(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            super::sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}

crate::fmgr::guarded_trigger_entry!(pg_finfo_update_content_hash_guarded, update_content_hash_guarded, update_content_hash_wrapper, "update_content_hash()");
