//! The event relay: change events reach LISTENers without slowing writers down.
//!
//! PostgreSQL serialises the commits of all transactions that sent a NOTIFY (a database-wide
//! lock held from pre-commit until the commit record is flushed), so a NOTIFY inside every
//! message insert caps write throughput at one commit per disk flush. Instead, the triggers
//! append their events to `memory_event_outbox` in the writer's transaction, and a relay — a
//! background worker per database, started on demand — moves them to NOTIFY in batches, in
//! order, a few milliseconds after commit. Events of rolled-back transactions never reach the
//! outbox. When no relay can be started (no free worker slot), the triggers fall back to NOTIFY
//! in the writer's transaction, so no event is ever lost.
//!
//! Two locks make "is a relay running?" exact without shared memory:
//!   RELAY    held (exclusively, for its lifetime) by the running relay;
//!   WRITERS  held (shared, until commit) by every transaction that appends to the outbox.
//! A relay that has been idle releases RELAY, then waits until no writer that counted on it is
//! still in flight, and drains once more before it exits. A writer that finds RELAY free starts
//! a new relay. So every committed event is relayed.
//!
//! Neither side ever queues behind the other. The relay only *tries* WRITERS (it polls while a
//! writer is in flight, e.g. a client idle in its transaction), so no exclusive request ever
//! sits in the lock queue for writers to wait behind; writers only probe RELAY without waiting.
//! And nobody else can take these locks: they are object locks on a tag no SQL command uses
//! (advisory locks, which any role can take with pg_advisory_lock(), once let a hostile role
//! freeze every writer), so no role can stall writers or fake a running relay.
//!
//! What the relay cannot send (a NULL, empty or over-long channel name, a payload of 8000 bytes
//! or more) is skipped, counted and logged; it never blocks the events behind it.

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::prelude::*;
use std::time::{Duration, Instant};

/// The relay's locks: object locks (per database) on pg_extension, object id "MDBE", sub-ids 1
/// and 2. No catalog object has this id (DROP/ALTER EXTENSION lock sub-id 0 of a real oid), and
/// SQL cannot take object locks, so only this module does.
const LOCK_OBJECT: u32 = 0x4d44_4245; // "MDBE"
const RELAY_KEY: u16 = 1;
const WRITER_KEY: u16 = 2;

/// How often an active relay looks for new events, and how long it stays without any.
const POLL_INTERVAL: Duration = Duration::from_millis(2);
const IDLE_EXIT_AFTER: Duration = Duration::from_secs(2);
/// Outbox rows (one per writing statement, usually 2-3 events) per relay transaction; each
/// transaction takes NOTIFY's commit lock once.
const BATCH: i64 = 1000;

const RELAY_TYPE: &str = "memoriesdb event relay";

thread_local! {
    static OUTBOX_INSERT: crate::spi::KeptPlan = const { crate::spi::KeptPlan::new() };
}

/// Send events in order: through the outbox and the relay, or, when no relay can be started, by
/// NOTIFY in this transaction. Either way they are delivered after commit and never for a
/// rolled-back transaction. Only the extension's own code (running as its owner) calls this:
/// the outbox is written by nobody else.
pub fn emit(channels: Vec<Option<String>>, payloads: Vec<Option<String>>) {
    if channels.is_empty() {
        return;
    }
    if ensure_event_relay() {
        let schema = crate::catalog::SCHEMA;
        crate::spi::connect(|spi| {
            spi.execute_kept(
                &OUTBOX_INSERT,
                || format!("INSERT INTO {schema}.memory_event_outbox (channels, payloads) VALUES ($1, $2)"),
                &[pg_sys::TEXTARRAYOID, pg_sys::TEXTARRAYOID],
                &[crate::spi::arg(channels), crate::spi::arg(payloads)],
                crate::spi::Effect::Writes,
            );
        });
    } else {
        for (channel, payload) in channels.into_iter().zip(payloads) {
            // SAFETY: pg_notify(text, text) with two text values (or NULLs, which it refuses
            // with an ordinary error, as it did when called from SQL).
            unsafe {
                pgrx::direct_function_call::<()>(pg_sys::pg_notify, &[channel.into_datum(), payload.into_datum()]);
            }
        }
    }
}

/// emit_events(channels text[], payloads text[]) (declared in sql/events.sql): emit() for the
/// extension's SQL code (the embedding queue's re-arm trigger). Internal.
unsafe fn emit_events(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: declared in SQL with two text[] arguments.
    let array = |n: usize| unsafe {
        crate::fmgr::raw_arg(fcinfo, n).and_then(|d| Vec::<Option<String>>::from_datum(d, false)).unwrap_or_default()
    };
    let channels = array(0);
    let mut payloads = array(1);
    payloads.resize(channels.len(), None);
    emit(channels, payloads);
    pg_sys::Datum::from(0usize)
}

crate::fmgr::sql_function_entry!(pg_finfo_emit_events_native, emit_events_native, emit_events);

/// For the event triggers: hold WRITER_KEY for this transaction and make sure a relay runs for
/// this database. Returns false when no relay could be started; the caller then NOTIFYs itself.
#[pg_extern(volatile, parallel_unsafe)]
pub(crate) fn ensure_event_relay() -> bool {
    // Straight to the lock manager: this runs in every writing statement.
    // SAFETY: lock tags of this database; ShareLock never conflicts with other writers, and the
    // relay holds WRITERS exclusively only for an instant (it never waits for it).
    let relay_missing = unsafe {
        pg_sys::LockAcquire(&relay_lock_tag(WRITER_KEY), pg_sys::ShareLock as i32, false, false);
        // RELAY is free exactly when no relay runs; probe it with a momentary shared lock
        let relay = relay_lock_tag(RELAY_KEY);
        let free = pg_sys::LockAcquire(&relay, pg_sys::ShareLock as i32, true, true)
            != pg_sys::LockAcquireResult::LOCKACQUIRE_NOT_AVAIL;
        if free {
            pg_sys::LockRelease(&relay, pg_sys::ShareLock as i32, true);
        }
        free
    };
    if !relay_missing {
        return true;
    }
    // A relay started by this backend a moment ago may still be starting up.
    thread_local! {
        static LAST_START: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
    }
    if LAST_START.with(|t| t.get()).is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
        return true;
    }
    let started = start_relay();
    if started {
        LAST_START.with(|t| t.set(Some(Instant::now())));
    }
    started
}

/// The tag of lock `key` in this database (SET_LOCKTAG_OBJECT: database, class, object, sub-id).
fn relay_lock_tag(key: u16) -> pg_sys::LOCKTAG {
    pg_sys::LOCKTAG {
        // SAFETY: read of the backend's database id
        locktag_field1: unsafe { pg_sys::MyDatabaseId }.to_u32(),
        locktag_field2: pg_sys::ExtensionRelationId.to_u32(),
        locktag_field3: LOCK_OBJECT,
        locktag_field4: key,
        locktag_type: pg_sys::LockTagType::LOCKTAG_OBJECT as u8,
        locktag_lockmethodid: pg_sys::DEFAULT_LOCKMETHOD as u8,
    }
}

/// Try to take lock `key` in `mode` without waiting; `session` locks outlive transactions.
fn try_lock(key: u16, mode: u32, session: bool) -> bool {
    // SAFETY: a conditional acquisition (dontWait) never enters the wait queue.
    unsafe {
        pg_sys::LockAcquire(&relay_lock_tag(key), mode as i32, session, true)
            != pg_sys::LockAcquireResult::LOCKACQUIRE_NOT_AVAIL
    }
}

fn unlock(key: u16, mode: u32, session: bool) {
    // SAFETY: releases a lock this backend holds (returns false, harmlessly, if it does not).
    unsafe { pg_sys::LockRelease(&relay_lock_tag(key), mode as i32, session) };
}

/// Are no writers in flight that appended events? (A momentary exclusive try of WRITERS.)
fn no_writers_in_flight() -> bool {
    let free = try_lock(WRITER_KEY, pg_sys::ExclusiveLock, true);
    if free {
        unlock(WRITER_KEY, pg_sys::ExclusiveLock, true);
    }
    free
}

fn start_relay() -> bool {
    let database = unsafe { pg_sys::MyDatabaseId };
    BackgroundWorkerBuilder::new(RELAY_TYPE)
        .set_type(RELAY_TYPE)
        .set_library("memoriesdb")
        .set_function("memoriesdb_event_relay_main")
        .set_argument(database.into_datum())
        .enable_spi_access()
        .set_restart_time(None)
        .load_dynamic()
        .is_ok()
}

thread_local! {
    /// The relay's statement, prepared once: planning it cost more than running it, and a busy
    /// relay runs it hundreds of times a second. PostgreSQL re-plans it when the outbox changes
    /// (or is dropped and created again with the extension): it names the table by schema.
    static RELAY_PLAN: std::cell::RefCell<Option<pgrx::spi::OwnedPreparedStatement>> =
        const { std::cell::RefCell::new(None) };
}

/// One relay transaction: how many outbox rows it moved, and how many of their events it had to
/// skip because NOTIFY would refuse them.
struct Relayed {
    rows: i64,
    skipped: i64,
}

/// Moves the events of up to BATCH outbox rows to NOTIFY in one transaction, in outbox order.
/// Events NOTIFY would refuse are skipped (one bad event must not hold up every later one).
/// None when the extension is not (or no longer) installed.
fn relay_batch() -> Option<Relayed> {
    BackgroundWorker::transaction(|| {
        if !crate::catalog::extension_installed() {
            return None;
        }
        let schema = crate::catalog::SCHEMA;
        Spi::connect(|client| {
            // taken out of the cell while it runs: no borrow is held across SPI
            let plan = match RELAY_PLAN.with(|kept| kept.borrow_mut().take()) {
                Some(plan) => plan,
                // Qualified throughout, operators included. NOTIFY refuses a NULL or empty
                // channel, a channel of NAMEDATALEN (64) bytes or more and a payload of 8000
                // bytes or more.
                None => client
                    .prepare_mut(
                        &*format!(
                            "WITH batch AS (
                                 DELETE FROM {schema}.memory_event_outbox o
                                  WHERE o.id OPERATOR(pg_catalog.=) ANY (ARRAY(
                                        SELECT i.id FROM {schema}.memory_event_outbox i ORDER BY i.id LIMIT $1))
                                 RETURNING o.id, o.channels, o.payloads),
                             events AS (
                                 SELECT b.id, e.n, e.channel, e.payload,
                                        coalesce(pg_catalog.octet_length(e.channel) OPERATOR(pg_catalog.>) 0
                                                 AND pg_catalog.octet_length(e.channel) OPERATOR(pg_catalog.<) 64
                                                 AND coalesce(pg_catalog.octet_length(e.payload), 0) OPERATOR(pg_catalog.<) 8000,
                                                 false) AS sendable
                                   FROM batch b,
                                        ROWS FROM (pg_catalog.unnest(b.channels), pg_catalog.unnest(b.payloads)) WITH ORDINALITY AS e(channel, payload, n))
                             SELECT (SELECT pg_catalog.count(*) FROM batch),
                                    pg_catalog.count(CASE WHEN e.sendable THEN pg_catalog.pg_notify(e.channel, e.payload) END),
                                    pg_catalog.count(*) FILTER (WHERE NOT e.sendable)
                               FROM (SELECT * FROM events ORDER BY events.id, events.n) e"
                        ),
                        &[PgOid::BuiltIn(PgBuiltInOids::INT8OID)],
                    )?
                    .keep(),
            };
            let row = client.select(&plan, None, &[BATCH.into()])?.first().get_three::<i64, i64, i64>();
            RELAY_PLAN.with(|kept| *kept.borrow_mut() = Some(plan));
            let (rows, _sent, skipped) = row?;
            Ok::<_, pgrx::spi::SpiError>(Some(Relayed { rows: rows.unwrap_or(0), skipped: skipped.unwrap_or(0) }))
        })
        .ok()
        .flatten()
    })
}

/// Is a relay (another process) holding RELAY in this database?
fn other_relay_running() -> bool {
    BackgroundWorker::transaction(|| {
        Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_locks l
                             WHERE l.locktype OPERATOR(pg_catalog.=) 'object'
                               AND l.database OPERATOR(pg_catalog.=) (SELECT d.oid FROM pg_catalog.pg_database d
                                                                       WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database())
                               AND l.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_extension'::pg_catalog.regclass
                               AND l.objid::pg_catalog.int8 OPERATOR(pg_catalog.=) $1
                               AND l.objsubid OPERATOR(pg_catalog.=) $2
                               AND l.mode OPERATOR(pg_catalog.=) 'ExclusiveLock' AND l.granted
                               AND l.pid OPERATOR(pg_catalog.<>) pg_catalog.pg_backend_pid())",
            &[(LOCK_OBJECT as i64).into(), (RELAY_KEY as i16).into()],
        )
        .ok()
        .flatten()
        .unwrap_or(true)
    })
}

/// Entry point of the relay worker; its argument is the database oid.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn memoriesdb_event_relay_main(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let Some(database) = (unsafe { pg_sys::Oid::from_datum(arg, false) }) else {
        return;
    };
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(database), None);
    // Every statement here is qualified; this also keeps a database-level search_path set by
    // its owner from reaching anything the relay runs.
    BackgroundWorker::transaction(|| Spi::run("SET search_path = pg_catalog, pg_temp").ok());

    // (The lock calls run inside transactions, where the lock manager expects them; the locks
    // themselves are session locks and outlive them.)
    // Become the relay, or leave if another one already is. Writers probe RELAY with momentary
    // shared locks, so a failed attempt is retried briefly.
    let started = Instant::now();
    while !BackgroundWorker::transaction(|| try_lock(RELAY_KEY, pg_sys::ExclusiveLock, true)) {
        if other_relay_running() || started.elapsed() > Duration::from_secs(5) || !BackgroundWorker::wait_latch(Some(POLL_INTERVAL)) {
            return;
        }
    }

    let mut skipped_total: i64 = 0;
    let mut relay = || -> Option<i64> {
        let relayed = relay_batch()?;
        if relayed.skipped > 0 {
            skipped_total += relayed.skipped;
            pgrx::log!(
                "memoriesdb event relay: skipped {} event(s) NOTIFY cannot send (NULL, empty or over-long channel name, or a payload of 8000 bytes or more); {} skipped since this relay started",
                relayed.skipped,
                skipped_total
            );
        }
        Some(relayed.rows)
    };

    let mut idle_since = Instant::now();
    loop {
        match relay() {
            None => return,
            // a full batch: more are probably waiting
            Some(moved) if moved >= BATCH => {
                idle_since = Instant::now();
                continue;
            }
            // Under a steady stream of writes, going straight back would relay a handful of
            // events per transaction; waiting one poll interval lets them gather, so the relay
            // costs the writers' CPU little, for at most POLL_INTERVAL of extra latency.
            Some(moved) if moved > 0 => idle_since = Instant::now(),
            Some(_) => {}
        }
        if idle_since.elapsed() >= IDLE_EXIT_AFTER {
            // Hand over: from now on writers start a new relay. Once no writer that counted on
            // this one is in flight, relay what they committed and leave. While one is (a client
            // idle in its transaction, say), take RELAY back and carry on relaying — unless a
            // new relay has taken over, which then owns everything still to come.
            BackgroundWorker::transaction(|| unlock(RELAY_KEY, pg_sys::ExclusiveLock, true));
            if BackgroundWorker::transaction(no_writers_in_flight) {
                match relay() {
                    Some(moved) if moved > 0 => {}
                    _ => return,
                }
            }
            if !BackgroundWorker::transaction(|| try_lock(RELAY_KEY, pg_sys::ExclusiveLock, true)) {
                return;
            }
            idle_since = Instant::now();
        }
        if !BackgroundWorker::wait_latch(Some(POLL_INTERVAL)) {
            return; // SIGTERM or postmaster death
        }
    }
}
