//! Ranking by importance and recency, and the access tracking recency counts from (what they
//! mean, and why access tracking is shaped as it is: sql/ranking.sql).
//!
//! Each search statement ranks by relevance first, keeps the best matches (lim, or when it
//! re-ranks its `candidates`: an index drives that ranking as before), and then orders those by
//!   score = relevance x (1 - wi + wi x importance) x (1 - wr + wr x recency),
//! which with both weights 0 is the relevance itself. The search returns importance, recency
//! and score beside its relevance columns.
//!
//! Searches note the ids they return here (`note_accesses`), in this backend's memory, and
//! write them to memory_access_log at most once a second: one INSERT into an unlogged table,
//! never an update of memories (no dead versions, no WAL, no audit, no row lock anyone waits
//! for), and at most one transaction id per backend and second.

use crate::catalog::SCHEMA;
use crate::errors::raise;
use crate::spi::{self, arg, Arg, Effect, KeptPlan};
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::time::{Duration, Instant};

/// The parameters every search statement takes for ranking (search.rs numbers them):
/// the number of best matches by relevance to re-rank, the two weights, the half-life.
pub const POOL: &str = "$9";
const IMPORTANCE_WEIGHT: &str = "$10";
const RECENCY_WEIGHT: &str = "$11";
const HALF_LIFE: &str = "$12";
pub const PARAMETER_TYPES: [pg_sys::Oid; 4] = [pg_sys::INT4OID, pg_sys::FLOAT8OID, pg_sys::FLOAT8OID, pg_sys::INTERVALOID];

static TRACK_ACCESS: GucSetting<bool> = GucSetting::<bool>::new(true);

pub fn register_settings() {
    GucRegistry::define_bool_guc(
        c"memoriesdb.track_access",
        c"Whether searches record which memories they return (memory_access, recency ranking)",
        c"Recorded in this backend's memory and written at most once a second; off for searches that should not count as uses.",
        &TRACK_ACCESS,
        GucContext::Userset,
        GucFlags::default(),
    );
}

/// A search's ranking options, checked: importance_weight and recency_weight in [0, 1],
/// half_life a positive interval (22023 otherwise, 22004 for NULL).
pub struct Ranking {
    importance_weight: f64,
    recency_weight: f64,
    half_life: pg_sys::Datum,
}

impl Ranking {
    pub fn checked(importance_weight: Option<pg_sys::Datum>, recency_weight: Option<pg_sys::Datum>, half_life: Option<pg_sys::Datum>) -> Ranking {
        let weight = |datum: Option<pg_sys::Datum>, name: &str| {
            // SAFETY: a float8 datum (by value).
            let Some(w) = datum.map(|d| unsafe { f64::from_datum(d, false) }.expect("not NULL")) else {
                raise(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, format!("{name} must not be NULL"), Some("0 leaves it out of the ranking"))
            };
            if !(0.0..=1.0).contains(&w) {
                raise(
                    PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                    format!("{name} must be between 0 and 1, got {}", crate::search::float8_text(w)),
                    Some("0 ranks by relevance alone; 1 lets it scale the score fully"),
                )
            }
            w
        };
        let importance_weight = weight(importance_weight, "importance_weight");
        let recency_weight = weight(recency_weight, "recency_weight");
        let Some(half_life) = half_life else {
            raise(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, "half_life must not be NULL".into(), Some("e.g. '7 days'"))
        };
        // SAFETY: an interval datum (by reference).
        let interval = unsafe { &*half_life.cast_mut_ptr::<pg_sys::Interval>() };
        // its length in seconds exactly as the statement divides by it, date_part('epoch', ...):
        // a year of 365.25 days, a month of 30, integer division of the months as in C
        let (years, months) = (interval.month / 12, interval.month % 12);
        let seconds = (365.25 * f64::from(years) + 30.0 * f64::from(months) + f64::from(interval.day)) * 86_400.0
            + interval.time as f64 / 1e6;
        if seconds <= 0.0 {
            raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, "half_life must be a positive interval".into(), Some("e.g. '7 days'"))
        }
        Ranking { importance_weight, recency_weight, half_life }
    }

    /// Whether the order can differ from relevance alone.
    pub fn reranks(&self) -> bool {
        self.importance_weight > 0.0 || self.recency_weight > 0.0
    }

    /// How many of the best matches by relevance to rank for a search of `lim` rows: `lim`
    /// itself when the order is relevance alone, else the caller's `candidates` (at least lim,
    /// at most 10000: 22023 otherwise) or `default`.
    pub fn pool(&self, lim: i32, candidates: Option<pg_sys::Datum>, default: i32) -> i32 {
        let candidates = candidates.map(|d| d.value() as i32);
        if let Some(n) = candidates {
            if !(lim..=10000).contains(&n) {
                raise(
                    PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                    format!("candidates must be between lim ({lim}) and 10000, got {n}"),
                    Some("how many of the best matches by relevance the ranking orders"),
                )
            }
        }
        if !self.reranks() {
            return lim;
        }
        candidates.unwrap_or(default)
    }

    /// The values of the statement parameters $9 .. $12.
    pub fn args(&self, pool: i32) -> [Arg; 4] {
        [arg(pool), arg(self.importance_weight), arg(self.recency_weight), Some(self.half_life)]
    }
}

/// The rows of `hits` (a query returning at least `id`), ranked: each with importance, recency
/// and score (from `relevance`, an expression of the hit `h`), best first, at most lim ($6).
pub fn ranked(hits: &str, relevance: &str) -> String {
    format!(
        "SELECT h.*, s.importance, s.recency,
                -- (OPERATOR() gives every operator the same precedence: parenthesised throughout)
                ({relevance} OPERATOR(pg_catalog.*)
                  ((1::pg_catalog.float8 OPERATOR(pg_catalog.-) {IMPORTANCE_WEIGHT})
                   OPERATOR(pg_catalog.+) ({IMPORTANCE_WEIGHT} OPERATOR(pg_catalog.*) s.importance)))
                OPERATOR(pg_catalog.*)
                  ((1::pg_catalog.float8 OPERATOR(pg_catalog.-) {RECENCY_WEIGHT})
                   OPERATOR(pg_catalog.+) ({RECENCY_WEIGHT} OPERATOR(pg_catalog.*) s.recency)) AS score
           FROM ({hits}) h
           JOIN {SCHEMA}.memories rm ON rm.id OPERATOR(pg_catalog.=) h.id
           LEFT JOIN {SCHEMA}.memory_types rt ON rt.name OPERATOR(pg_catalog.=) rm.kind
           LEFT JOIN {SCHEMA}.memory_access ra ON ra.memory_id OPERATOR(pg_catalog.=) rm.id AND ra.user_id OPERATOR(pg_catalog.=) $1
          CROSS JOIN LATERAL (
                SELECT coalesce(rm.importance, rt.default_importance, 0.5::pg_catalog.float4) AS importance,
                       -- 0.5 ^ (age / half-life), the age counted from the caller's last use, else the writing
                       -- (at most 1000 half-lives: 0.5 ^ 1000 is 1e-301, where power() does not underflow)
                       pg_catalog.power(0.5::pg_catalog.float8, least(1000::pg_catalog.float8,
                         greatest(pg_catalog.date_part('epoch', pg_catalog.now() OPERATOR(pg_catalog.-)
                                               greatest(rm._created_at, ra.last_accessed_at)), 0::pg_catalog.float8)
                         OPERATOR(pg_catalog./) pg_catalog.date_part('epoch', {HALF_LIFE}))) AS recency) s
          ORDER BY score DESC, {relevance} DESC, h.id
          LIMIT $6"
    )
}

/// The accesses this backend has noted and not yet written: memory, user, time.
struct Pending {
    ids: Vec<pgrx::Uuid>,
    users: Vec<pgrx::Uuid>,
    at: Vec<pgrx::datum::TimestampWithTimeZone>,
    last_write: Option<Instant>,
}

thread_local! {
    static PENDING: RefCell<Pending> =
        const { RefCell::new(Pending { ids: Vec::new(), users: Vec::new(), at: Vec::new(), last_write: None }) };
    static LOG_ACCESSES: KeptPlan = const { KeptPlan::new() };
}

/// At most one write per backend in this time.
const WRITE_INTERVAL: Duration = Duration::from_secs(1);
/// Written sooner when this many are pending (bounds the backend's memory).
const MOST_PENDING: usize = 10_000;

/// Note that a search by `user` returned the memories `ids` (nothing for a role acting as
/// nobody, e.g. a superuser: there is no one whose use it is), and write what is pending to
/// memory_access_log when the last write is a second old (or none was made yet in this backend,
/// so that a one-search connection counts too). Not in a read-only transaction, a standby or a
/// parallel worker (nothing pending is written then), nor with memoriesdb.track_access off.
pub fn note_accesses(spi: &spi::Connection, user: Option<pgrx::Uuid>, ids: Vec<pgrx::Uuid>) {
    let Some(user) = user else { return };
    if ids.is_empty() || !TRACK_ACCESS.get() {
        return;
    }
    // SAFETY: reading the backend's transaction state.
    let now = unsafe { pg_sys::GetCurrentTransactionStartTimestamp() };
    let due = PENDING.with_borrow_mut(|pending| {
        // SAFETY: a timestamptz value.
        let at = unsafe { pgrx::datum::TimestampWithTimeZone::from_datum(pg_sys::Datum::from(now), false) }.expect("not NULL");
        pending.at.extend(std::iter::repeat_n(at, ids.len()));
        pending.users.extend(std::iter::repeat_n(user, ids.len()));
        pending.ids.extend(ids);
        pending.last_write.is_none_or(|t| t.elapsed() >= WRITE_INTERVAL) || pending.ids.len() >= MOST_PENDING
    });
    // SAFETY: reading the backend's transaction state.
    let writable = unsafe { !pg_sys::XactReadOnly && !pg_sys::IsInParallelMode() };
    if !due || !writable {
        // (a read-only backend keeps at most MOST_PENDING: the oldest make room)
        PENDING.with_borrow_mut(|pending| {
            if pending.ids.len() > MOST_PENDING {
                let excess = pending.ids.len() - MOST_PENDING;
                pending.ids.drain(..excess);
                pending.users.drain(..excess);
                pending.at.drain(..excess);
            }
        });
        return;
    }
    let (ids, users, at) = PENDING.with_borrow_mut(|pending| {
        pending.last_write = Some(Instant::now());
        (std::mem::take(&mut pending.ids), std::mem::take(&mut pending.users), std::mem::take(&mut pending.at))
    });
    spi.execute_kept(
        &LOG_ACCESSES,
        || {
            format!(
                "INSERT INTO {SCHEMA}.memory_access_log (memory_id, user_id, accessed_at)
                 SELECT a.id, a.user_id, a.at
                   FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3)) a (id, user_id, at)"
            )
        },
        &[pg_sys::UUIDARRAYOID, pg_sys::UUIDARRAYOID, pg_sys::TIMESTAMPTZARRAYOID],
        &[ids.into_datum(), users.into_datum(), at.into_datum()],
        Effect::Writes,
    );
}
