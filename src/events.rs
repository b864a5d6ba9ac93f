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
//! Two advisory locks make "is a relay running?" exact without shared memory:
//!   RELAY_KEY   held (exclusively, for its lifetime) by the running relay;
//!   WRITER_KEY  held (shared, until commit) by every transaction that appends to the outbox.
//! A relay that has been idle releases RELAY_KEY, then waits for WRITER_KEY exclusively — that
//! is, for every in-flight writer to commit or abort — and drains once more before it exits.
//! A writer that finds RELAY_KEY free starts a new relay. So every committed event is relayed.

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::prelude::*;
use std::time::{Duration, Instant};

/// Advisory lock keys (two-int form; advisory locks are per database).
const LOCK_CLASS: i32 = 0x4d44_4245; // "MDBE"
const RELAY_KEY: i32 = 1;
const WRITER_KEY: i32 = 2;

/// How often an active relay looks for new events, and how long it stays without any.
const POLL_INTERVAL: Duration = Duration::from_millis(2);
const IDLE_EXIT_AFTER: Duration = Duration::from_secs(2);
/// Outbox rows (one per writing statement, usually 2-3 events) per relay transaction; each
/// transaction takes NOTIFY's commit lock once.
const BATCH: i64 = 1000;

const RELAY_TYPE: &str = "memoriesdb event relay";

/// For the event triggers: hold WRITER_KEY for this transaction and make sure a relay runs for
/// this database. Returns false when no relay could be started; the caller then NOTIFYs itself.
#[pg_extern(volatile, parallel_unsafe)]
fn ensure_event_relay() -> bool {
    // Straight to the lock manager: this runs in every writing statement, and the same two
    // advisory-lock calls through SPI cost more than the rest of the check.
    // SAFETY: advisory lock tags of this database; ShareLock never conflicts with other writers.
    let relay_missing = unsafe {
        pg_sys::LockAcquire(&advisory_tag(WRITER_KEY), pg_sys::ShareLock as i32, false, false);
        // RELAY_KEY is free exactly when no relay runs; probe it with a momentary shared lock
        let relay = advisory_tag(RELAY_KEY);
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

/// The lock tag of pg_advisory_lock(LOCK_CLASS, key) in this database (SET_LOCKTAG_INT32).
fn advisory_tag(key: i32) -> pg_sys::LOCKTAG {
    pg_sys::LOCKTAG {
        // SAFETY: read of the backend's database id
        locktag_field1: unsafe { pg_sys::MyDatabaseId }.to_u32(),
        locktag_field2: LOCK_CLASS as u32,
        locktag_field3: key as u32,
        locktag_field4: 2, // the two-int4 form of the advisory lock functions
        locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
        locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
    }
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
    /// The relay's statement, prepared once per schema: planning it cost more than running it,
    /// and a busy relay runs it hundreds of times a second.
    static RELAY_PLAN: std::cell::RefCell<Option<(String, pgrx::spi::OwnedPreparedStatement)>> =
        const { std::cell::RefCell::new(None) };
}

/// Moves the events of up to BATCH outbox rows to NOTIFY in one transaction, in outbox order.
/// Returns how many outbox rows it moved, or None when the extension is not (or no longer) installed.
fn relay_batch() -> Option<i64> {
    BackgroundWorker::transaction(|| {
        let schema = crate::catalog::installed_schema()?;
        Spi::connect(|client| {
            // taken out of the cell while it runs: no borrow is held across SPI
            let plan = match RELAY_PLAN.with(|kept| kept.borrow_mut().take()) {
                Some((for_schema, plan)) if for_schema == schema => plan,
                _ => client
                    .prepare_mut(
                        &*format!(
                            "WITH batch AS (
                                 DELETE FROM {schema}.memory_event_outbox o
                                  WHERE o.id IN (SELECT id FROM {schema}.memory_event_outbox ORDER BY id LIMIT $1)
                                 RETURNING o.id, o.channels, o.payloads)
                             SELECT (SELECT count(*) FROM batch), count(pg_catalog.pg_notify(e.channel, e.payload))
                               FROM (SELECT e.channel, e.payload
                                       FROM batch b, unnest(b.channels, b.payloads) WITH ORDINALITY AS e(channel, payload, n)
                                      ORDER BY b.id, e.n) e"
                        ),
                        &[PgOid::BuiltIn(PgBuiltInOids::INT8OID)],
                    )?
                    .keep(),
            };
            let moved = client.select(&plan, None, &[BATCH.into()])?.first().get_one::<i64>();
            RELAY_PLAN.with(|kept| *kept.borrow_mut() = Some((schema, plan)));
            moved
        })
        .ok()
        .flatten()
    })
}

fn advisory(sql: &str, key: i32) -> bool {
    BackgroundWorker::transaction(|| {
        Spi::get_one_with_args::<bool>(sql, &[LOCK_CLASS.into(), key.into()])
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

    // Become the relay, or leave if another one already is. Writers probe RELAY_KEY with
    // momentary shared locks, so a failed attempt is retried briefly.
    let started = Instant::now();
    while !advisory("SELECT pg_catalog.pg_try_advisory_lock($1, $2)", RELAY_KEY) {
        let other_relay = advisory(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_locks l
                             WHERE l.locktype = 'advisory' AND l.database = (SELECT oid FROM pg_catalog.pg_database
                                                                              WHERE datname = pg_catalog.current_database())
                               AND l.classid::int = $1 AND l.objid::int = $2 AND l.objsubid = 2
                               AND l.mode = 'ExclusiveLock' AND l.granted)",
            RELAY_KEY,
        );
        if other_relay || started.elapsed() > Duration::from_secs(5) || !BackgroundWorker::wait_latch(Some(POLL_INTERVAL)) {
            return;
        }
    }

    let mut idle_since = Instant::now();
    loop {
        match relay_batch() {
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
            // Hand over: from now on writers start a new relay. Wait for the writers that still
            // counted on this one, then relay what they committed.
            advisory("SELECT pg_catalog.pg_advisory_unlock($1, $2)", RELAY_KEY);
            advisory("SELECT true FROM pg_catalog.pg_advisory_lock($1, $2)", WRITER_KEY);
            let last = relay_batch();
            advisory("SELECT pg_catalog.pg_advisory_unlock($1, $2)", WRITER_KEY);
            match last {
                Some(moved) if moved > 0 => {
                    // more work arrived: stay, if no new relay took over meanwhile
                    if !advisory("SELECT pg_catalog.pg_try_advisory_lock($1, $2)", RELAY_KEY) {
                        return;
                    }
                    idle_since = Instant::now();
                }
                _ => return,
            }
        }
        if !BackgroundWorker::wait_latch(Some(POLL_INTERVAL)) {
            return; // SIGTERM or postmaster death
        }
    }
}
