//! Transcripts: what a branch of a conversation shows, in order — inherited messages first (each
//! ancestor's up to the fork point below it), then its own.
//!
//! These run as their caller (not SECURITY DEFINER): row-level security's memories_read policy
//! decides which messages the caller sees, so a transcript shows exactly what a direct query
//! would. One statement reads every segment of the lineage (session_lineage()), each through
//! its own B-tree range of (session_id, position), and its rows go straight into the function's
//! result. JIT compilation costs far more than it saves here (row-level security inflates the
//! plan's cost estimates past jit_above_cost), so the SQL declarations turn it off.

use crate::catalog::SCHEMA;
use crate::fmgr::raw_arg;
use crate::spi::{self, arg, Connection, Effect, KeptPlan, ResultSet};
use pgrx::pg_sys;
use pgrx::pg_sys::{BOOLOID as BOOL, INT4OID as INT4, INT8OID as INT8, UUIDOID as UUID};

thread_local! {
    static REQUIRE_SESSION: KeptPlan = const { KeptPlan::new() };
    static TRANSCRIPT_PAGE: KeptPlan = const { KeptPlan::new() };
    static RECENT_MESSAGES: KeptPlan = const { KeptPlan::new() };
    static TRANSCRIPT_TEXT: KeptPlan = const { KeptPlan::new() };
}

/// The messages of session $1's branch after position $2 (and before $6, unless NULL), at most
/// $3 of them (NULL: all), with their metadata when $4: each segment is read from the first
/// position after $2, so a late page of a long transcript does not read the pages before it.
/// $5: row-level security applies to the caller (see rls_applies()).
const TRANSCRIPT_TYPES: [pg_sys::Oid; 6] = [UUID, INT8, INT4, BOOL, BOOL, INT8];

/// Which end of the range a limited transcript keeps: the first messages (a page) or the last.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Keep {
    Oldest,
    Newest,
}

/// The transcript statement; its rows are in position order either way (the newest are taken
/// in reverse order, and put back in order by an outer query).
fn transcript_sql(keep: Keep) -> String {
    let order = if keep == Keep::Newest { "DESC" } else { "" };
    let range = format!(
        "SELECT m.position, m.role, m.content, m.id, m.session_id, m._created_at,
                  CASE WHEN $4 THEN m._metadata END
             FROM {SCHEMA}.session_lineage($1) l
            CROSS JOIN LATERAL (
                  SELECT mm.position, mm.role, mm.content, mm.id, mm.session_id, mm._created_at, mm._metadata
                    FROM {SCHEMA}.memories mm
                   WHERE mm.session_id OPERATOR(pg_catalog.=) l.lineage_session_id
                     AND mm.position OPERATOR(pg_catalog.>) $2
                     AND mm.position OPERATOR(pg_catalog.<=) l.visible_upto
                     AND ($6 IS NULL OR mm.position OPERATOR(pg_catalog.<) $6)
                     -- the read rule refuses expired memories; for roles that bypass row-level
                     -- security ($5 false) the transcript does
                     AND ($5 OR {not_expired})
                   ORDER BY mm.position {order}
                   LIMIT $3) m
            ORDER BY m.position {order}
            LIMIT $3",
        not_expired = crate::policies::not_expired("mm.expires_at")
    );
    match keep {
        Keep::Oldest => range,
        Keep::Newest => format!("SELECT t.* FROM ({range}) t ORDER BY t.position"),
    }
}

/// Does row-level security filter the caller's reads ($5 of the transcript)? Expired messages are
/// then refused by the read rule, and the transcript need not look at their expiry again.
fn rls_applies() -> bool {
    !crate::identity::acting_role_bypasses_rls()
}

/// The session whose transcript is asked for, checked by require_session() (the rule every
/// session reader uses): not NULL (22004) and visible to the caller (P0002, as for a session
/// that does not exist).
fn require_session(spi: &Connection, session: Option<pg_sys::Datum>) -> pg_sys::Datum {
    spi.execute_kept(&REQUIRE_SESSION, || format!("SELECT 1 FROM {SCHEMA}.require_session($1)"), &[UUID], &[session], Effect::Reads);
    session.expect("require_session() refuses NULL")
}

/// get_conversation_page(session_id uuid, after_position bigint DEFAULT 0, lim integer DEFAULT
/// 100, include_metadata boolean DEFAULT false) RETURNS TABLE (position, role, content,
/// message_id, origin_session_id, created_at, metadata): the transcript's messages after
/// after_position, at most lim of them (NULL: all). Ask for lim + 1 rows to learn whether more
/// follow.
unsafe fn get_conversation_page(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: declared in SQL with these four arguments.
    let (session, after, lim, include_metadata) =
        unsafe { (raw_arg(fcinfo, 0), raw_arg(fcinfo, 1), raw_arg(fcinfo, 2), raw_arg(fcinfo, 3)) };
    let lim = lim.map(|d| d.value() as i32);
    // SAFETY: a set-returning function with a row type.
    unsafe { return_transcript(fcinfo, session, after.map_or(0, |d| d.value() as i64), None, lim, Keep::Oldest, include_metadata) }
}

crate::fmgr::sql_function_entry!(pg_finfo_get_conversation_page_native, get_conversation_page_native, get_conversation_page);

/// get_recent_messages(session_id uuid, lim integer DEFAULT 20, after_position bigint DEFAULT 0,
/// before_position bigint DEFAULT NULL, include_metadata boolean DEFAULT false) RETURNS TABLE
/// (position, role, content, message_id, origin_session_id, created_at, metadata): the last lim
/// messages of the transcript after after_position and before before_position (NULL: up to the
/// end), in order. Each segment is read backwards from its end, so the tail of a long transcript
/// costs what it returns.
unsafe fn get_recent_messages(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: declared in SQL with these five arguments.
    let [session, lim, after, before, include_metadata] = std::array::from_fn(|i| unsafe { raw_arg(fcinfo, i) });
    let Some(lim) = lim.map(|d| d.value() as i32) else {
        crate::errors::raise(pgrx::PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, "lim must not be NULL".into(), None)
    };
    let before = before.map(|d| d.value() as i64);
    // SAFETY: a set-returning function with a row type.
    unsafe {
        return_transcript(fcinfo, session, after.map_or(0, |d| d.value() as i64), before, Some(lim), Keep::Newest, include_metadata)
    }
}

crate::fmgr::sql_function_entry!(pg_finfo_get_recent_messages_native, get_recent_messages_native, get_recent_messages);

/// get_formatted_conversation(session_id uuid, include_metadata boolean DEFAULT false) RETURNS
/// TABLE (position, role, content, message_id, origin_session_id, created_at, metadata): the
/// whole transcript. origin_session_id names the session (this one or an ancestor) each message
/// was written in.
unsafe fn get_formatted_conversation(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: declared in SQL with these two arguments.
    let (session, include_metadata) = unsafe { (raw_arg(fcinfo, 0), raw_arg(fcinfo, 1)) };
    // SAFETY: a set-returning function with a row type.
    unsafe { return_transcript(fcinfo, session, 0, None, None, Keep::Oldest, include_metadata) }
}

crate::fmgr::sql_function_entry!(
    pg_finfo_get_formatted_conversation_native,
    get_formatted_conversation_native,
    get_formatted_conversation
);

/// The rows of a transcript range (after `after`, before `before`; at most `lim`, those `keep`
/// names) as the result of the set-returning function called in `fcinfo`.
unsafe fn return_transcript(
    fcinfo: pg_sys::FunctionCallInfo,
    session: Option<pg_sys::Datum>,
    after: i64,
    before: Option<i64>,
    lim: Option<i32>,
    keep: Keep,
    include_metadata: Option<pg_sys::Datum>,
) -> pg_sys::Datum {
    // SAFETY: as the caller promises.
    let result = unsafe { ResultSet::materialize(fcinfo) };
    spi::connect(|spi| {
        let session = require_session(spi, session);
        if let Some(n) = lim {
            crate::search::checked_limit(n, "lim");
        }
        let plan = match keep {
            Keep::Oldest => spi::kept(&TRANSCRIPT_PAGE, || transcript_sql(Keep::Oldest), &TRANSCRIPT_TYPES),
            Keep::Newest => spi::kept(&RECENT_MESSAGES, || transcript_sql(Keep::Newest), &TRANSCRIPT_TYPES),
        };
        spi.return_rows(plan, &[Some(session), arg(after), arg(lim), include_metadata, arg(rls_applies()), arg(before)], &result);
    });
    pg_sys::Datum::from(0)
}

/// get_conversation_text(session_id uuid) RETURNS text: the transcript as plain text, one
/// "role: content" line per message ('' for a session without messages).
unsafe fn get_conversation_text(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: declared in SQL with this one argument.
    let session = unsafe { raw_arg(fcinfo, 0) };
    spi::connect(|spi| {
        let session = require_session(spi, session);
        let text = spi.execute_kept(
            &TRANSCRIPT_TEXT,
            || {
                format!(
                    "SELECT coalesce(pg_catalog.string_agg(
                                t.role OPERATOR(pg_catalog.||) ': ' OPERATOR(pg_catalog.||) t.content, E'\\n'
                                ORDER BY t.position), '')
                       FROM ({transcript}) t",
                    transcript = transcript_sql(Keep::Oldest)
                )
            },
            &TRANSCRIPT_TYPES,
            &[Some(session), arg(0i64), None, arg(false), arg(rls_applies()), None],
            Effect::Reads,
        );
        let value = text.datum(0, 1).expect("coalesce(..., '') is never NULL");
        // SAFETY: a text datum in SPI's memory, copied into the caller's before SPI's is freed.
        unsafe { pg_sys::SPI_datumTransfer(value, false, -1) }
    })
}

crate::fmgr::sql_function_entry!(pg_finfo_get_conversation_text_native, get_conversation_text_native, get_conversation_text);
