//! The one write path: what every write to `memories` and `memory_edges` derives, whether it
//! comes through the conversation API or as direct DML, computed in one BEFORE trigger.
//!
//! `derive_row_fields()` (BEFORE INSERT OR UPDATE, per row) sets, from nothing the caller
//! supplies:
//!   * `content_hash`: the hex SHA-256 of `content` (memories);
//!   * provenance: `created_by` (and on memories `updated_by`) is the acting user on INSERT;
//!     an UPDATE keeps `created_by` and `_created_at` and stamps `updated_by` and `_updated_at`;
//!   * integrity of the branch structure: a memory's kind, session and position never change
//!     (moving a message would rewrite other branches' history): 0A000;
//!   * no stale embedding: when an UPDATE changes `content`, the embedding computed from the old
//!     content and its model are cleared (the embedding queue asks for a new one).
//!
//! This replaced three triggers (a Rust hash trigger and two PL/pgSQL ones with pinned
//! search_paths): one call per row, one tuple copy for all changed fields, no SQL.

use crate::errors::raise;
use crate::hashing::sha256_hex;
use crate::identity;
use pgrx::prelude::*;
use pgrx::pg_sys;
use std::ffi::CStr;

/// The bytes of a text datum (detoasted, in the current memory context if it has to be).
unsafe fn text_bytes<'a>(datum: pg_sys::Datum) -> &'a [u8] {
    // SAFETY: the caller passes a text (or other varlena) datum.
    unsafe {
        let varlena = pg_sys::pg_detoast_datum_packed(datum.cast_mut_ptr::<pg_sys::varlena>());
        std::slice::from_raw_parts(
            pgrx::varlena::vardata_any(varlena).cast::<u8>(),
            pgrx::varlena::varsize_any_exhdr(varlena),
        )
    }
}

/// A row's attribute: (1-based number, value or None for NULL).
struct Attribute {
    number: i32,
    value: Option<pg_sys::Datum>,
}

/// The named attribute of `tuple`; None when the table has no such column.
unsafe fn attribute(tuple: pg_sys::HeapTuple, desc: pg_sys::TupleDesc, name: &CStr) -> Option<Attribute> {
    // SAFETY: a valid tuple of a relation with descriptor `desc`.
    unsafe {
        let number = pg_sys::SPI_fnumber(desc, name.as_ptr());
        if number <= 0 {
            return None;
        }
        let mut is_null = false;
        let value = pg_sys::heap_getattr(tuple, number, desc, &mut is_null);
        Some(Attribute { number, value: (!is_null).then_some(value) })
    }
}

/// The changes a trigger makes to its new row, applied in one heap_modify_tuple_by_cols.
#[derive(Default)]
struct Changes {
    columns: Vec<i32>,
    values: Vec<pg_sys::Datum>,
    nulls: Vec<bool>,
}

impl Changes {
    fn set(&mut self, column: i32, value: Option<pg_sys::Datum>) {
        self.columns.push(column);
        self.values.push(value.unwrap_or(pg_sys::Datum::from(0usize)));
        self.nulls.push(value.is_none());
    }
}

fn uuid_value(datum: Option<pg_sys::Datum>) -> Option<pgrx::Uuid> {
    // SAFETY: a uuid datum.
    datum.and_then(|d| unsafe { pgrx::Uuid::from_datum(d, false) })
}

unsafe fn derive_row_fields(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: the guarded entry point checked that PostgreSQL called this as a trigger.
    unsafe {
        let trigger = (*fcinfo).context.cast::<pg_sys::TriggerData>();
        let event = (*trigger).tg_event;
        let operation = event & pg_sys::TRIGGER_EVENT_OPMASK;
        let inserting = operation == pg_sys::TRIGGER_EVENT_INSERT;
        if event & pg_sys::TRIGGER_EVENT_ROW == 0
            || event & pg_sys::TRIGGER_EVENT_TIMINGMASK != pg_sys::TRIGGER_EVENT_BEFORE
            || !(inserting || operation == pg_sys::TRIGGER_EVENT_UPDATE)
        {
            raise(
                PgSqlErrorCode::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
                "derive_row_fields() must be a BEFORE INSERT OR UPDATE row trigger".into(),
                None,
            );
        }
        let desc = (*(*trigger).tg_relation).rd_att;
        let (new, old) = if inserting {
            ((*trigger).tg_trigtuple, std::ptr::null_mut())
        } else {
            ((*trigger).tg_newtuple, (*trigger).tg_trigtuple)
        };
        let new_attribute = |name: &CStr| attribute(new, desc, name);
        let old_attribute = |name: &CStr| attribute(old, desc, name);
        let column = |name: &CStr| new_attribute(name).map(|a| a.number);

        let mut changes = Changes::default();
        let is_memories = column(c"content_hash").is_some();
        let content = new_attribute(c"content");
        if let (true, Some(Attribute { value: Some(content), .. })) = (is_memories, &content) {
            // (content is NOT NULL: a NULL is rejected by that constraint right after)
            let hash = sha256_hex(std::str::from_utf8_unchecked(text_bytes(*content)));
            changes.set(column(c"content_hash").expect("checked"), hash.into_datum());
        }

        let me = identity::current_memory_user().into_datum();
        let created_by = column(c"created_by").expect("memories and memory_edges have created_by");
        if inserting {
            changes.set(created_by, me);
            if is_memories {
                changes.set(column(c"updated_by").expect("memories have updated_by"), me);
            }
        } else {
            changes.set(created_by, old_attribute(c"created_by").and_then(|a| a.value));
            let created_at = old_attribute(c"_created_at").expect("memories and memory_edges have _created_at");
            changes.set(created_at.number, created_at.value);
            if is_memories {
                let kind_changed = match (old_attribute(c"kind").and_then(|a| a.value), new_attribute(c"kind").and_then(|a| a.value)) {
                    (Some(a), Some(b)) => text_bytes(a) != text_bytes(b),
                    (a, b) => a.is_some() != b.is_some(),
                };
                let session_changed = uuid_value(old_attribute(c"session_id").and_then(|a| a.value))
                    != uuid_value(new_attribute(c"session_id").and_then(|a| a.value));
                let position = |a: Option<Attribute>| a.and_then(|a| a.value).and_then(|d| i64::from_datum(d, false));
                let position_changed = position(old_attribute(c"position")) != position(new_attribute(c"position"));
                if kind_changed || session_changed || position_changed {
                    let id = uuid_value(old_attribute(c"id").and_then(|a| a.value));
                    raise(
                        PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                        format!(
                            "the kind, session and position of memory {} cannot be changed",
                            id.map_or("NULL".to_string(), |id| id.to_string())
                        ),
                        Some("content, role and metadata can be updated"),
                    );
                }
                changes.set(column(c"updated_by").expect("memories have updated_by"), me);
                changes.set(
                    column(c"_updated_at").expect("memories have _updated_at"),
                    Some(pg_sys::Datum::from(pg_sys::GetCurrentTransactionStartTimestamp())),
                );
                let old_content = old_attribute(c"content").and_then(|a| a.value);
                let new_content = content.and_then(|a| a.value);
                let content_changed = match (old_content, new_content) {
                    (Some(a), Some(b)) => text_bytes(a) != text_bytes(b),
                    (a, b) => a.is_some() != b.is_some(),
                };
                if content_changed {
                    changes.set(column(c"content_embedding").expect("memories have content_embedding"), None);
                    changes.set(column(c"embedding_model").expect("memories have embedding_model"), None);
                }
            }
        }
        let row = pg_sys::heap_modify_tuple_by_cols(
            new,
            desc,
            changes.columns.len() as i32,
            changes.columns.as_mut_ptr(),
            changes.values.as_mut_ptr(),
            changes.nulls.as_mut_ptr(),
        );
        pg_sys::Datum::from(row)
    }
}

crate::fmgr::guarded_trigger_entry!(
    pg_finfo_derive_row_fields_guarded,
    derive_row_fields_guarded,
    derive_row_fields,
    "derive_row_fields()"
);

// A database still on the 0.1.0 catalog, between installing this library and ALTER EXTENSION
// memoriesdb UPDATE, calls its hash trigger function update_content_hash() by this symbol. It
// gets derive_row_fields(), which sets the same hash (and the provenance and embedding fields
// that 0.1.0's own triggers then set to the same values).
crate::fmgr::guarded_trigger_entry!(
    pg_finfo_update_content_hash_guarded,
    update_content_hash_guarded,
    derive_row_fields,
    "update_content_hash()"
);
