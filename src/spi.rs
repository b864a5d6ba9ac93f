//! Running SQL from the extension's Rust functions: one connection per call, plans prepared once
//! per backend and kept, and errors that reach the client exactly as PostgreSQL raised them.
//!
//! Why not pgrx's `Spi`: pgrx turns an error raised inside a statement into a Rust panic that
//! keeps only the SQLSTATE, message, detail and hint, so a constraint violated by
//! `add_message_to_session()` reached the client without its constraint, table, column and
//! schema fields and without CONTEXT — the fields drivers and the hub use to tell a duplicate
//! from a check failure. Here every call into SPI goes through `errors::catching()`, which keeps
//! PostgreSQL's own ErrorData; the entry point (fmgr.rs) re-raises it unchanged.
//!
//! A kept plan (SPI_keepplan) is one of PostgreSQL's cached plans: PostgreSQL re-analyses and
//! re-plans it itself whenever something it depends on changes (a table, index, policy or
//! function it uses is altered, dropped or re-created, e.g. by ALTER EXTENSION UPDATE or DROP and
//! CREATE EXTENSION), so keeping it for the backend's life is safe. Its text is fixed in this
//! library and names everything schema-qualified, operators included, so what it means never
//! depends on the caller's search_path.
//!
//! Errors are never Rust values here: a statement either succeeds or its ERROR unwinds to the
//! entry point, so callers read results without checking for failures SQL already reported.

use crate::errors::{catching, raise};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::{c_char, c_int, CString};
use std::marker::PhantomData;
use std::thread::LocalKey;

/// SPI's functions called directly, inside `catching()` (pgrx's bindings would catch the error
/// first and lose its fields).
mod raw {
    use pgrx::pg_sys::{Datum, Oid, Portal, SPIPlanPtr};
    use std::ffi::{c_char, c_int, c_long};
    unsafe extern "C-unwind" {
        #[link_name = "SPI_connect"]
        pub fn connect() -> c_int;
        #[link_name = "SPI_finish"]
        pub fn finish() -> c_int;
        #[link_name = "SPI_prepare_cursor"]
        pub fn prepare(src: *const c_char, nargs: c_int, argtypes: *mut Oid, options: c_int) -> SPIPlanPtr;
        #[link_name = "SPI_execute_plan"]
        pub fn execute_plan(plan: SPIPlanPtr, values: *mut Datum, nulls: *const c_char, read_only: bool, tcount: c_long) -> c_int;
        #[link_name = "SPI_cursor_open"]
        pub fn cursor_open(name: *const c_char, plan: SPIPlanPtr, values: *mut Datum, nulls: *const c_char, read_only: bool) -> Portal;
        #[link_name = "SPI_cursor_fetch"]
        pub fn cursor_fetch(portal: Portal, forward: bool, count: c_long);
        #[link_name = "SPI_cursor_close"]
        pub fn cursor_close(portal: Portal);
        #[link_name = "SPI_execute_plan_extended"]
        pub fn execute_plan_extended(plan: SPIPlanPtr, options: *const pgrx::pg_sys::SPIExecuteOptions) -> c_int;
        #[link_name = "SetSingleFuncCall"]
        pub fn set_single_func_call(fcinfo: pgrx::pg_sys::FunctionCallInfo, flags: u32);
        #[link_name = "SetTuplestoreDestReceiverParams"]
        pub fn set_tuplestore_dest_receiver_params(
            receiver: *mut pgrx::pg_sys::DestReceiver,
            store: *mut pgrx::pg_sys::Tuplestorestate,
            context: pgrx::pg_sys::MemoryContext,
            detoast: bool,
            target: pgrx::pg_sys::TupleDesc,
            map_failure_message: *const c_char,
        );
        #[link_name = "slot_getsomeattrs_int"]
        pub fn slot_getsomeattrs(slot: *mut pgrx::pg_sys::TupleTableSlot, attnum: c_int);
        #[link_name = "SPI_execute_with_args"]
        pub fn execute_with_args(
            src: *const c_char,
            nargs: c_int,
            argtypes: *mut Oid,
            values: *mut Datum,
            nulls: *const c_char,
            read_only: bool,
            tcount: c_long,
        ) -> c_int;
    }
}

/// A receiver of a statement's rows that passes each on to `inner` and copies its first column,
/// a uuid, into `ids` (up to `capacity`). Its callbacks run inside the executor, under the
/// `catching()` of the statement's execution: they hold nothing that needs dropping and call
/// only PostgreSQL's C functions directly, so an ERROR raised in them unwinds as PostgreSQL's own.
#[repr(C)]
struct NotingReceiver {
    base: pg_sys::DestReceiver,
    inner: *mut pg_sys::DestReceiver,
    ids: *mut [u8; 16],
    count: usize,
    capacity: usize,
}

unsafe extern "C-unwind" fn note_and_pass_on(slot: *mut pg_sys::TupleTableSlot, this: *mut pg_sys::DestReceiver) -> bool {
    // SAFETY: `this` is a NotingReceiver (its first field is the DestReceiver), `slot` a row of
    // the statement, whose first column is a uuid (16 bytes, by reference).
    unsafe {
        let this = this.cast::<NotingReceiver>();
        if (*slot).tts_nvalid < 1 {
            raw::slot_getsomeattrs(slot, 1);
        }
        if !*(*slot).tts_isnull && (*this).count < (*this).capacity {
            *(*this).ids.add((*this).count) = *(*(*slot).tts_values).cast_mut_ptr::<[u8; 16]>();
            (*this).count += 1;
        }
        let inner = (*this).inner;
        match (*inner).receiveSlot {
            Some(receive) => receive(slot, inner),
            None => true,
        }
    }
}

unsafe extern "C-unwind" fn start_passing_on(this: *mut pg_sys::DestReceiver, operation: c_int, desc: pg_sys::TupleDesc) {
    // SAFETY: as in note_and_pass_on().
    unsafe {
        let inner = (*this.cast::<NotingReceiver>()).inner;
        if let Some(start) = (*inner).rStartup {
            start(inner, operation, desc);
        }
    }
}

unsafe extern "C-unwind" fn shut_down_passing_on(this: *mut pg_sys::DestReceiver) {
    // SAFETY: as in note_and_pass_on().
    unsafe {
        let inner = (*this.cast::<NotingReceiver>()).inner;
        if let Some(shut_down) = (*inner).rShutdown {
            shut_down(inner);
        }
    }
}

/// (the inner receiver is destroyed by return_rows_to(), the NotingReceiver is on its stack)
unsafe extern "C-unwind" fn destroy_nothing(_this: *mut pg_sys::DestReceiver) {}

/// Where a backend keeps one plan: `thread_local! { static X: KeptPlan = const { KeptPlan::new() }; }`
pub struct KeptPlan(Cell<pg_sys::SPIPlanPtr>, PlanChoice);

/// How PostgreSQL plans a kept statement for its parameters.
#[derive(Clone, Copy)]
pub enum PlanChoice {
    /// PostgreSQL's own choice: a plan for each call's values at first, then one generic plan if
    /// that is not estimated to cost more.
    Adaptive,
    /// One generic plan, always. For statements whose parameters let a plan for the values fold
    /// away most of the statement for some callers (e.g. the read rule for a role that reads
    /// everything): PostgreSQL would then never stop planning the statement anew for each call,
    /// which costs more than running it.
    Generic,
}

impl KeptPlan {
    pub const fn new() -> Self {
        KeptPlan(Cell::new(std::ptr::null_mut()), PlanChoice::Adaptive)
    }

    /// A kept plan that is always the generic one (`PlanChoice::Generic`).
    pub const fn generic() -> Self {
        KeptPlan(Cell::new(std::ptr::null_mut()), PlanChoice::Generic)
    }

    /// Drop the plan (e.g. its parameter types no longer exist); the next use prepares it again.
    pub fn forget(&self) {
        let plan = self.0.replace(std::ptr::null_mut());
        if !plan.is_null() {
            // SAFETY: a plan this cell kept; nobody else holds it.
            unsafe { pg_sys::SPI_freeplan(plan) };
        }
    }
}

/// Where a backend keeps plans of statements made in a few variants (e.g. one per embedding
/// dimension, which the statement must name for its index to match), by variant:
/// `thread_local! { static X: KeptPlans = KeptPlans::new(); }`. Each text is prepared once.
/// At most KEPT_VARIANTS are kept: a caller cycling through thousands of variants (every
/// dimension pgvector allows) must not grow the backend's memory without bound, so a full set
/// is emptied and the plans in use are prepared again.
pub struct KeptPlans(RefCell<HashMap<(String, Vec<pg_sys::Oid>), pg_sys::SPIPlanPtr>>, PlanChoice);

const KEPT_VARIANTS: usize = 64;

impl KeptPlans {
    pub fn new(choice: PlanChoice) -> Self {
        KeptPlans(RefCell::new(HashMap::new()), choice)
    }
}

/// A prepared plan kept for the backend's life (by a KeptPlan or KeptPlans), with the parameter
/// types it was prepared with.
#[derive(Clone, Copy)]
pub struct Plan<'t> {
    plan: pg_sys::SPIPlanPtr,
    types: &'t [pg_sys::Oid],
}

/// The plan kept in `kept`, prepared from `sql` (parameters of `types`) on its first use in this
/// backend.
pub fn kept<'t>(kept: &'static LocalKey<KeptPlan>, sql: impl FnOnce() -> String, types: &'t [pg_sys::Oid]) -> Plan<'t> {
    Plan { plan: kept_plan(kept, sql, types), types }
}

/// The plan of the statement variant `variant` (its text made by `sql` on first use, parameters
/// of `types`) kept in `plans`. `variant` names everything the text depends on, e.g.
/// "vector_search 384 public": shorter to build and hash on every call than the text.
pub fn kept_variant<'t>(
    plans: &'static LocalKey<KeptPlans>,
    variant: String,
    sql: impl FnOnce() -> String,
    types: &'t [pg_sys::Oid],
) -> Plan<'t> {
    let plan = plans.with(|plans| {
        let key = (variant, types.to_vec());
        if let Some(plan) = plans.0.borrow().get(&key) {
            return *plan;
        }
        let plan = prepare_and_keep(&sql(), types, plans.1);
        let mut kept = plans.0.borrow_mut();
        if kept.len() >= KEPT_VARIANTS {
            for (_, old) in kept.drain() {
                // SAFETY: a plan this set kept; it is not running (plans run after this returns).
                unsafe { pg_sys::SPI_freeplan(old) };
            }
        }
        kept.insert(key, plan);
        plan
    });
    Plan { plan, types }
}

/// The rows of a set-returning function that returns them all at once (materialize mode): a
/// tuplestore in the memory of the calling query, filled by statements run with
/// `Connection::return_rows()`, straight from the executor (no copy of a row in between).
pub struct ResultSet {
    store: *mut pg_sys::Tuplestorestate,
    desc: pg_sys::TupleDesc,
    context: pg_sys::MemoryContext,
}

impl ResultSet {
    /// Set up the call in `fcinfo` to return its rows in a tuplestore, of the function's
    /// declared result type (0A000 where the caller cannot take a set).
    ///
    /// # Safety
    /// `fcinfo` is the fcinfo of a call to a set-returning function declared with a row type.
    pub unsafe fn materialize(fcinfo: pg_sys::FunctionCallInfo) -> ResultSet {
        // SAFETY: as the caller promises; SetSingleFuncCall checks that the caller takes a
        // materialized set and fills resultinfo's tuplestore and descriptor.
        unsafe {
            catching(|| raw::set_single_func_call(fcinfo, 0));
            let info = (*fcinfo).resultinfo.cast::<pg_sys::ReturnSetInfo>();
            ResultSet { store: (*info).setResult, desc: (*info).setDesc, context: (*(*info).econtext).ecxt_per_query_memory }
        }
    }
}

/// Whether a statement changes data. A writing statement runs read-write, after a command
/// counter increment and with a fresh snapshot, so it sees what the call wrote before it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Reads,
    Writes,
}

/// A statement's parameter: a datum as PostgreSQL holds it, or None for NULL.
pub type Arg = Option<pg_sys::Datum>;

/// A value as a statement's parameter.
pub fn arg(value: impl IntoDatum) -> Arg {
    value.into_datum()
}

/// The SPI connection of one call. Dropping it without `connect()` returning (an error
/// unwinding) leaves it to PostgreSQL, which closes it when the (sub)transaction aborts.
pub struct Connection {
    _single_threaded: PhantomData<*const ()>,
}

/// Run `work` with an SPI connection. What `work` returns must not point into SPI's memory
/// (results are freed when the connection closes).
pub fn connect<R>(work: impl FnOnce(&Connection) -> R) -> R {
    // SAFETY: SPI_connect pushes a connection for this call; finish pops it.
    let code = unsafe { catching(|| raw::connect()) };
    if code != pg_sys::SPI_OK_CONNECT as c_int {
        raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("SPI_connect failed ({code})"), None);
    }
    let result = work(&Connection { _single_threaded: PhantomData });
    // SAFETY: the connection pushed above; nothing of its memory survives in `result`.
    unsafe { catching(|| raw::finish()) };
    result
}

impl Connection {
    /// Run the plan kept in `kept`, preparing `sql` (parameters of `types`) on its first use in
    /// this backend.
    pub fn execute_kept(
        &self,
        kept: &'static LocalKey<KeptPlan>,
        sql: impl FnOnce() -> String,
        types: &[pg_sys::Oid],
        args: &[Arg],
        effect: Effect,
    ) -> Rows<'_> {
        self.execute_plan(self::kept(kept, sql, types), args, effect)
    }

    /// Read the rows of the kept query in `kept` (as execute_kept() prepares it) through a
    /// cursor, `batch` rows at a time, handing each batch to `each` (which returns whether to go
    /// on) and freeing it afterwards: memory stays bounded by one batch however many rows the
    /// query returns. `Effect::Writes` reads with a snapshot taken now (e.g. after a lock),
    /// `Effect::Reads` with the caller's.
    #[allow(clippy::too_many_arguments)]
    pub fn for_each_batch(
        &self,
        kept: &'static LocalKey<KeptPlan>,
        sql: impl FnOnce() -> String,
        types: &[pg_sys::Oid],
        args: &[Arg],
        effect: Effect,
        batch: i64,
        mut each: impl FnMut(&Rows<'_>) -> bool,
    ) {
        let plan = kept_plan(kept, sql, types);
        let (mut values, nulls) = datums(args, types);
        // SAFETY: a kept plan with its parameters; the portal lives until closed
        // below (or until the (sub)transaction's abort, on an error).
        let portal = unsafe {
            catching(|| raw::cursor_open(std::ptr::null(), plan, values.as_mut_ptr(), nulls.as_ptr(), effect == Effect::Reads))
        };
        loop {
            // SAFETY: the portal opened above.
            unsafe { catching(|| raw::cursor_fetch(portal, true, batch as std::ffi::c_long)) };
            let rows = self.rows(0);
            let done = rows.count() == 0 || !each(&rows);
            // SAFETY: the batch just read; nothing of it is used any more.
            unsafe { pg_sys::SPI_freetuptable(rows.table) };
            if done {
                break;
            }
        }
        // SAFETY: the portal opened above.
        unsafe { catching(|| raw::cursor_close(portal)) };
    }

    /// Run the query `plan` and add the rows it returns to `result` (the function's result
    /// set); returns how many it added. Its columns must be those the function returns.
    pub fn return_rows(&self, plan: Plan<'_>, args: &[Arg], result: &ResultSet) -> u64 {
        self.return_rows_to(plan, args, result, None)
    }

    /// return_rows() for a query whose first column is a uuid (an id) and which returns at most
    /// `most` rows: also returns the ids of the rows it added (the first `most`).
    pub fn return_rows_noting_ids(&self, plan: Plan<'_>, args: &[Arg], result: &ResultSet, most: usize) -> Vec<pgrx::Uuid> {
        let mut ids = vec![[0u8; 16]; most];
        let mut noted = 0;
        self.return_rows_to(plan, args, result, Some((&mut ids, &mut noted)));
        ids.truncate(noted);
        ids.into_iter().map(pgrx::Uuid::from_bytes).collect()
    }

    fn return_rows_to(&self, plan: Plan<'_>, args: &[Arg], result: &ResultSet, noting: Option<(&mut [[u8; 16]], &mut usize)>) -> u64 {
        let (values, nulls) = datums(args, plan.types);
        // SAFETY: a parameter list of the plan's types (PARAM_FLAG_CONST: the values are fixed
        // for the statement), a tuplestore receiver writing into the function's result in its
        // memory context, and the plan with both, read-only with the caller's snapshot.
        unsafe {
            let params = pg_sys::makeParamList(values.len() as c_int);
            let slots = (*params).params.as_mut_slice(values.len());
            for (i, slot) in slots.iter_mut().enumerate() {
                slot.value = values[i];
                slot.isnull = nulls[i] == b'n' as c_char;
                slot.pflags = pg_sys::PARAM_FLAG_CONST as u16;
                slot.ptype = plan.types[i];
            }
            let receiver = pg_sys::CreateDestReceiver(pg_sys::CommandDest::DestTuplestore);
            catching(|| {
                raw::set_tuplestore_dest_receiver_params(
                    receiver,
                    result.store,
                    result.context,
                    false,
                    result.desc,
                    c"the query's columns do not match the function's result".as_ptr(),
                )
            });
            // the rows go to `receiver`, or through a NotingReceiver that copies their ids
            let (noting, noted) = match noting {
                Some((ids, noted)) => (Some((ids.as_mut_ptr(), ids.len())), Some(noted)),
                None => (None, None),
            };
            let mut noting_receiver = noting.map(|(ids, capacity)| NotingReceiver {
                base: pg_sys::DestReceiver {
                    receiveSlot: Some(note_and_pass_on),
                    rStartup: Some(start_passing_on),
                    rShutdown: Some(shut_down_passing_on),
                    rDestroy: Some(destroy_nothing),
                    mydest: (*receiver).mydest,
                },
                inner: receiver,
                ids,
                count: 0,
                capacity,
            });
            let dest = match noting_receiver.as_mut() {
                Some(noting) => std::ptr::from_mut(noting).cast::<pg_sys::DestReceiver>(),
                None => receiver,
            };
            let options = pg_sys::SPIExecuteOptions {
                params,
                read_only: true,
                allow_nonatomic: false,
                must_return_tuples: false,
                tcount: 0,
                dest,
                owner: std::ptr::null_mut(),
            };
            let code = catching(|| raw::execute_plan_extended(plan.plan, &options));
            if let (Some(noting_receiver), Some(noted)) = (noting_receiver, noted) {
                *noted = noting_receiver.count;
            }
            if code < 0 {
                raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("SPI failed to run a statement ({code})"), None);
            }
            ((*receiver).rDestroy.expect("a receiver can be destroyed"))(receiver);
            pg_sys::SPI_processed
        }
    }

    /// Run the query `plan` and return its rows.
    pub fn execute_plan(&self, plan: Plan<'_>, args: &[Arg], effect: Effect) -> Rows<'_> {
        let (mut values, nulls) = datums(args, plan.types);
        // SAFETY: a kept plan with args.len() parameters of the types it was prepared with.
        let code = unsafe {
            catching(|| raw::execute_plan(plan.plan, values.as_mut_ptr(), nulls.as_ptr(), effect == Effect::Reads, 0))
        };
        self.rows(code)
    }

    /// Run a statement once (not kept: for rare paths, such as wording an error).
    pub fn execute(&self, sql: &str, types: &[pg_sys::Oid], args: &[Arg], effect: Effect) -> Rows<'_> {
        let text = statement_text(sql);
        let mut types = types.to_vec();
        let (mut values, nulls) = datums(args, &types);
        // SAFETY: a NUL-terminated statement, its parameter types and as many values.
        let code = unsafe {
            catching(|| {
                raw::execute_with_args(
                    text.as_ptr(),
                    types.len() as c_int,
                    types.as_mut_ptr(),
                    values.as_mut_ptr(),
                    nulls.as_ptr(),
                    effect == Effect::Reads,
                    0,
                )
            })
        };
        self.rows(code)
    }

    fn rows(&self, code: c_int) -> Rows<'_> {
        if code < 0 {
            raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("SPI failed to run a statement ({code})"), None);
        }
        // SAFETY: the globals SPI set for the statement just run on this connection.
        unsafe { Rows { count: pg_sys::SPI_processed, table: pg_sys::SPI_tuptable, _connection: PhantomData } }
    }
}

/// What a statement returned (RETURNING or SELECT), readable while its connection is open.
pub struct Rows<'c> {
    count: u64,
    table: *mut pg_sys::SPITupleTable,
    _connection: PhantomData<&'c Connection>,
}

impl Rows<'_> {
    /// Rows returned (or, for a statement without RETURNING, rows changed).
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Column `column` (1-based) of row `row` (0-based); None for NULL or no such row.
    pub fn datum(&self, row: u64, column: i32) -> Option<pg_sys::Datum> {
        if self.table.is_null() || row >= self.count {
            return None;
        }
        // SAFETY: a row of this statement's tuple table, alive while the connection is.
        unsafe {
            let table = &*self.table;
            let mut is_null = false;
            let value = pg_sys::SPI_getbinval(*table.vals.add(row as usize), table.tupdesc, column, &mut is_null);
            (!is_null).then_some(value)
        }
    }

    /// The bytes of text column `column` of row `row`, read in place (valid while the rows are).
    pub fn text_bytes(&self, row: u64, column: i32) -> Option<&[u8]> {
        // SAFETY: a text column; the bytes live in SPI's memory as long as these rows.
        self.datum(row, column).map(|d| unsafe { crate::tuples::text_bytes(d) })
    }

    /// Column `column` of row `row` as a Rust value (copied out of SPI's memory).
    pub fn get<T: FromDatum>(&self, row: u64, column: i32) -> Option<T> {
        // SAFETY: T is the column's type (the statement's text fixes it).
        self.datum(row, column).and_then(|d| unsafe { T::from_datum(d, false) })
    }
}

/// The plan kept in `kept`, prepared from `sql` (parameters of `types`) on its first use in this
/// backend.
fn kept_plan(kept: &'static LocalKey<KeptPlan>, sql: impl FnOnce() -> String, types: &[pg_sys::Oid]) -> pg_sys::SPIPlanPtr {
    kept.with(|cell| {
        if cell.0.get().is_null() {
            cell.0.set(prepare_and_keep(&sql(), types, cell.1));
        }
        cell.0.get()
    })
}

/// Prepare `sql` (parameters of `types`) and keep the plan for the backend's life.
fn prepare_and_keep(sql: &str, types: &[pg_sys::Oid], choice: PlanChoice) -> pg_sys::SPIPlanPtr {
    let text = statement_text(sql);
    let mut types = types.to_vec();
    let options = match choice {
        PlanChoice::Adaptive => 0,
        PlanChoice::Generic => pg_sys::CURSOR_OPT_GENERIC_PLAN as c_int,
    };
    // SAFETY: a NUL-terminated statement and its parameter types.
    let plan = unsafe { catching(|| raw::prepare(text.as_ptr(), types.len() as c_int, types.as_mut_ptr(), options)) };
    if plan.is_null() {
        raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, "SPI_prepare failed".into(), None);
    }
    // SAFETY: a plan just prepared; keeping it moves it out of this connection's memory.
    unsafe { pg_sys::SPI_keepplan(plan) };
    plan
}

fn statement_text(sql: &str) -> CString {
    CString::new(sql).expect("statement text has no NUL")
}

/// A statement's arguments as SPI takes them: values, and 'n' (NULL) or ' ' per value; one per
/// parameter type.
fn datums(args: &[Arg], types: &[pg_sys::Oid]) -> (Vec<pg_sys::Datum>, Vec<c_char>) {
    assert_eq!(args.len(), types.len(), "one argument per parameter");
    args.iter()
        .map(|a| (a.unwrap_or(pg_sys::Datum::from(0usize)), if a.is_some() { b' ' as c_char } else { b'n' as c_char }))
        .unzip()
}
