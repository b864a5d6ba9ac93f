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
