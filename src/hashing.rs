//! Content hashing: `memories.content_hash` is always the hex SHA-256 of `content` (set by
//! derive_row_fields(), src/write_path.rs).

use pgrx::prelude::*;
use sha2::{Digest, Sha256};

/// Lowercase hex SHA-256 of a UTF-8 string's bytes (the same text `sha256sum` prints).
pub fn sha256_hex(content: impl AsRef<[u8]>) -> String {
    sha256_hex_of(&[content.as_ref()])
}

/// Lowercase hex SHA-256 of `parts` one after the other, without joining them first (the audit
/// chain hashes the previous link followed by a row's text).
pub fn sha256_hex_of(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    let digest = hasher.finalize();
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
