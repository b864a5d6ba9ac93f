//! One way to raise a SQL error from Rust: a proper SQLSTATE and a message naming the bad value.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

/// Raise an ERROR with `code` and `message` (and an optional hint). Never returns.
#[track_caller]
pub fn raise(code: PgSqlErrorCode, message: String, hint: Option<&str>) -> ! {
    let mut report = ErrorReport::new(code, message, "memoriesdb");
    if let Some(hint) = hint {
        report = report.set_hint(hint);
    }
    report.report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// Errors a trigger function can hit while reading its own trigger data. They mean the function
/// was attached wrongly (not as a row trigger on the table it expects), never bad user input.
#[derive(Debug)]
pub enum TriggerError {
    NotARowTrigger,
    Datum(pgrx::datum::TryFromDatumError),
    Trigger(PgTriggerError),
}

impl std::fmt::Display for TriggerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TriggerError::NotARowTrigger => write!(f, "must be used as a row-level INSERT or UPDATE trigger"),
            TriggerError::Datum(e) => write!(f, "trigger row: {e}"),
            TriggerError::Trigger(e) => write!(f, "trigger data: {e}"),
        }
    }
}

impl std::error::Error for TriggerError {}

impl From<pgrx::datum::TryFromDatumError> for TriggerError {
    fn from(e: pgrx::datum::TryFromDatumError) -> Self {
        TriggerError::Datum(e)
    }
}

impl From<PgTriggerError> for TriggerError {
    fn from(e: PgTriggerError) -> Self {
        TriggerError::Trigger(e)
    }
}

/// The entry point a trigger function is declared with in SQL (sql/finalize.sql): it refuses,
/// with the error PostgreSQL gives for PL/pgSQL trigger functions (0A000), a call that is not a
/// trigger's — e.g. `SELECT memoriesdb.update_content_hash()` by a superuser (nobody else may
/// execute it) — and otherwise hands the call to pgrx's wrapper, which would panic (XX000).
macro_rules! guarded_trigger_entry {
    ($finfo:ident, $entry:ident, $wrapper:path, $name:literal) => {
        #[unsafe(no_mangle)]
        #[doc(hidden)]
        pub extern "C" fn $finfo() -> &'static ::pgrx::pg_sys::Pg_finfo_record {
            const V1: ::pgrx::pg_sys::Pg_finfo_record = ::pgrx::pg_sys::Pg_finfo_record { api_version: 1 };
            &V1
        }

        #[::pgrx::pg_guard]
        #[unsafe(no_mangle)]
        #[doc(hidden)]
        pub unsafe extern "C-unwind" fn $entry(fcinfo: ::pgrx::pg_sys::FunctionCallInfo) -> ::pgrx::pg_sys::Datum {
            // SAFETY: PostgreSQL passes a valid fcinfo; context is a node pointer or NULL.
            let called_as_trigger = unsafe {
                let context = (*fcinfo).context;
                !context.is_null() && (*context).type_ == ::pgrx::pg_sys::NodeTag::T_TriggerData
            };
            if !called_as_trigger {
                $crate::errors::raise(
                    ::pgrx::prelude::PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                    format!("{} is a trigger function: it can only be called as a trigger", $name),
                    None,
                );
            }
            // SAFETY: the same fcinfo, for the function it was meant for.
            unsafe { $wrapper(fcinfo) }
        }
    };
}
pub(crate) use guarded_trigger_entry;
