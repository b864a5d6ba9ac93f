//! How errors cross between PostgreSQL and the extension's Rust code.
//!
//! * `raise()`: the one way to raise a SQL error from Rust (a proper SQLSTATE and a message
//!   naming the bad value).
//! * `catching()`: a call into PostgreSQL whose ERROR, if it raises one, becomes a Rust panic
//!   carrying PostgreSQL's own ErrorData (every field: SQLSTATE, message, detail, hint, CONTEXT,
//!   schema, table, column, constraint, datatype, position), so that Rust frames unwind and
//!   drop what they hold.
//! * `run_entry()`: the top of every function PostgreSQL calls through fmgr.rs's entry points.
//!   It re-raises such an error unchanged (ReThrowError, as PL/pgSQL re-raises an error its
//!   handler does not take) and hands every other panic to pgrx, which reports it as an ERROR.
//!
//! pgrx's own guard (#[pg_extern], #[pg_trigger]) re-raises only SQLSTATE, message, detail and
//! hint. Where such a function calls `catching()`, the error is handed to pgrx in that form
//! (no Rust frame may be jumped over, and pgrx's guard understands nothing else). So the
//! functions that run SQL through spi.rs are declared through fmgr.rs's entry points, and code
//! under run_entry() calls back into PostgreSQL only through catching() where PostgreSQL could
//! call one of our functions. (Left on pgrx's own SPI: the acting-user lookup and the graph
//! traversal, #[pg_extern] functions whose errors keep those four fields.)

use pgrx::pg_sys;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use std::any::Any;
use std::cell::Cell;
use std::ffi::CStr;
use std::mem::MaybeUninit;

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

thread_local! {
    /// Is the Rust code running now under run_entry() (rather than under pgrx's guard)? Set by
    /// run_entry(), cleared while PostgreSQL runs a call made through catching() (whatever it
    /// calls back into has a guard of its own).
    static UNDER_RUN_ENTRY: Cell<bool> = const { Cell::new(false) };
}

/// The panic payload carrying a PostgreSQL error from `catching()` to `run_entry()`: a copy of
/// its ErrorData in the memory context of the call that raised it (alive until re-raised: a
/// failed call's SPI connection is closed by the (sub)transaction's abort, after that).
struct PgErrorInFlight(*mut pg_sys::ErrorData);

// SAFETY: never leaves the backend's one thread; a panic payload must be Send.
unsafe impl Send for PgErrorInFlight {}

/// PostgreSQL's ReThrowError, not wrapped by pgrx (which would catch the error again).
mod raw {
    unsafe extern "C-unwind" {
        #[link_name = "ReThrowError"]
        pub fn rethrow_error(edata: *mut pgrx::pg_sys::ErrorData) -> !;
    }
}

/// Call `call`, one call into PostgreSQL that may raise an ERROR. An ERROR becomes a Rust panic
/// that unwinds the Rust frames up to the entry point, which re-raises it unchanged.
///
/// # Safety
/// `call` must be a call into PostgreSQL and nothing else: PostgreSQL leaves it by longjmp,
/// which runs no destructors, so it must own none (capture only pointers and plain values).
pub unsafe fn catching<T>(call: impl FnOnce() -> T) -> T {
    // SAFETY: as the caller promises.
    match unsafe { attempt(call) } {
        Ok(value) => value,
        Err(error) => error.raise(),
    }
}

/// An ERROR PostgreSQL raised inside `attempt()`, copied out of its error state (which is
/// clean again): look at it, then raise it (unchanged) or raise another one instead.
pub struct CaughtError(*mut pg_sys::ErrorData);

impl CaughtError {
    pub fn sqlstate(&self) -> PgSqlErrorCode {
        // SAFETY: an ErrorData copied by attempt().
        PgSqlErrorCode::from(unsafe { (*self.0).sqlerrcode })
    }

    pub fn message(&self) -> String {
        // SAFETY: an ErrorData copied by attempt(); message is NULL or a C string.
        unsafe { text((*self.0).message).unwrap_or_default() }
    }

    /// Raise the error as PostgreSQL raised it: every field under run_entry(), else through the
    /// pgrx guard that is the nearest boundary (which keeps SQLSTATE, message, detail and hint).
    pub fn raise(self) -> ! {
        let error = self.0;
        if UNDER_RUN_ENTRY.get() {
            std::panic::panic_any(PgErrorInFlight(error));
        }
        // SAFETY: an ErrorData copied by attempt(), freed here before the report leaves.
        unsafe {
            let mut report = ErrorReport::new(
                PgSqlErrorCode::from((*error).sqlerrcode),
                text((*error).message).unwrap_or_default(),
                "memoriesdb",
            );
            if let Some(detail) = text((*error).detail) {
                report = report.set_detail(detail);
            }
            if let Some(hint) = text((*error).hint) {
                report = report.set_hint(hint);
            }
            pg_sys::FreeErrorData(error);
            report.report(PgLogLevel::ERROR);
        }
        unreachable!("ERROR does not return")
    }
}

/// A C string PostgreSQL holds, as Rust text.
unsafe fn text(p: *const std::ffi::c_char) -> Option<String> {
    // SAFETY: NULL or a NUL-terminated string, as the caller promises.
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// Call `call` like `catching()`, but hand an ERROR it raises back as a value, for the caller
/// to look at (e.g. to word a user's mistake that PostgreSQL reports as an internal error).
///
/// # Safety
/// As for `catching()`.
pub unsafe fn attempt<T>(call: impl FnOnce() -> T) -> Result<T, CaughtError> {
    // SAFETY: the backend's one thread; the save-and-restore of PostgreSQL's error state that
    // PG_TRY/PG_CATCH does, around a sigsetjmp made by cee_scape for a Rust closure.
    unsafe {
        let caller_context = pg_sys::CurrentMemoryContext;
        let exception_stack = pg_sys::PG_exception_stack;
        let context_stack = pg_sys::error_context_stack;
        let under_run_entry = UNDER_RUN_ENTRY.replace(false);
        let mut result = MaybeUninit::<T>::uninit();
        let jumped = cee_scape::call_with_sigsetjmp(false, |jump_buffer| {
            pg_sys::PG_exception_stack = std::ptr::from_ref(jump_buffer).cast_mut().cast();
            result.write(call());
            0
        });
        pg_sys::PG_exception_stack = exception_stack;
        pg_sys::error_context_stack = context_stack;
        UNDER_RUN_ENTRY.set(under_run_entry);
        if jumped == 0 {
            return Ok(result.assume_init());
        }
        // PostgreSQL raised an ERROR: copy it out of ErrorContext and clear the error state, as
        // PG_CATCH blocks that re-throw later do
        pg_sys::CurrentMemoryContext = caller_context;
        let error = pg_sys::CopyErrorData();
        pg_sys::FlushErrorState();
        Err(CaughtError(error))
    }
}

/// Run `body`, a function PostgreSQL called, re-raising a PostgreSQL error that `catching()`
/// caught below it unchanged and reporting any other panic through pgrx.
///
/// # Safety
/// Only at the top of an `extern "C-unwind"` function PostgreSQL calls (fmgr.rs's entry points):
/// an error leaves it by longjmp.
pub unsafe fn run_entry(
    fcinfo: pg_sys::FunctionCallInfo,
    body: unsafe fn(pg_sys::FunctionCallInfo) -> pg_sys::Datum,
) -> pg_sys::Datum {
    let outer = UNDER_RUN_ENTRY.replace(true);
    // SAFETY: the caller's fcinfo, for the function `body` implements.
    let outcome = std::panic::catch_unwind(|| unsafe { body(fcinfo) });
    UNDER_RUN_ENTRY.set(outer);
    match outcome {
        Ok(datum) => datum,
        // SAFETY: nothing with a destructor is alive in this frame any more.
        Err(payload) => unsafe { reraise(payload) },
    }
}

unsafe fn reraise(payload: Box<dyn Any + Send>) -> ! {
    match payload.downcast::<PgErrorInFlight>() {
        Ok(error) => {
            let PgErrorInFlight(error) = *error;
            // SAFETY: an ERROR's data, copied by catching(); leaves by longjmp with no Rust
            // value alive in the frames it leaves.
            unsafe { raw::rethrow_error(error) }
        }
        Err(other) => {
            // SAFETY: pgrx's guard catches the resumed panic and reports it as an ERROR
            // (longjmp from its own frame, after dropping the payload).
            unsafe { pg_sys::submodules::panic::pgrx_extern_c_guard(move || -> () { std::panic::resume_unwind(other) }) };
            unreachable!("pgrx reports a panic as an ERROR")
        }
    }
}
