//! Reading the rows PostgreSQL hands a trigger: attributes by name, text and uuid values.

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::CStr;

/// The bytes of a text datum (detoasted, in the current memory context if it has to be).
pub unsafe fn text_bytes<'a>(datum: pg_sys::Datum) -> &'a [u8] {
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
pub struct Attribute {
    pub number: i32,
    pub value: Option<pg_sys::Datum>,
}

/// The named attribute of `tuple`; None when the table has no such column.
pub unsafe fn attribute(tuple: pg_sys::HeapTuple, desc: pg_sys::TupleDesc, name: &CStr) -> Option<Attribute> {
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

/// A uuid datum (or None for NULL) as a Rust value.
pub fn uuid_value(datum: Option<pg_sys::Datum>) -> Option<pgrx::Uuid> {
    // SAFETY: a uuid datum.
    datum.and_then(|d| unsafe { pgrx::Uuid::from_datum(d, false) })
}
