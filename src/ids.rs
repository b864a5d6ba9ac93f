//! Time-ordered ids. UUIDv7 values grow with time, so the B-tree indexes on memories and edges
//! stay compact and their hot end stays in cache, unlike random v4 ids.

use pgrx::prelude::*;

/// A new UUIDv7 (RFC 9562): 48-bit millisecond timestamp followed by random bits.
#[pg_extern(volatile, parallel_safe)]
fn uuid_generate_v7() -> pgrx::Uuid {
    new_v7()
}

/// The same, for Rust code that writes rows.
pub fn new_v7() -> pgrx::Uuid {
    pgrx::Uuid::from_bytes(*uuid::Uuid::now_v7().as_bytes())
}
