//! The conversation write path in Rust: creating a session, taking positions in a session and
//! appending a message.
//!
//! `add_message_to_session()` runs on every turn of every conversation. In PL/pgSQL it was a
//! function calling four others (argument checks and the position taker), each a SQL-level call
//! with a pinned search_path, so that half of an append was function-call overhead (see
//! BENCHMARKS.md). Here the arguments are checked in Rust, the position is taken and the message
//! inserted in one statement kept per backend (spi.rs), and the text and jsonb arguments are
//! handed to the INSERT as PostgreSQL passed them: nothing is converted to Rust values and back.
//!
//! It runs as the extension owner (SECURITY DEFINER), like the other conversation writers, and
//! decides for its caller explicitly: the acting user, and the session's write rule in the same
//! UPDATE that takes the position (so check and row lock are one statement). It declares no
//! SET search_path: every statement it runs is fixed text in this library naming everything
//! schema-qualified, operators included, so the caller's search_path cannot change its meaning
//! (tests/attack.rs poisons it), and the pin would cost two search_path recomputations per call.
//!
//! Errors are the SQL contract's: where a fast check in Rust is not certain that an argument is
//! fine, the SQL function that owns the rule and its message (check_message_role(),
//! metadata_object(), refuse_session_write()) decides and raises, so there is one wording of
//! each error.

use crate::catalog::SCHEMA;
use crate::errors::raise;
use crate::fmgr::raw_arg;
use crate::identity;
use crate::spi::{self, arg, Arg, Connection, Effect, KeptPlan};
use pgrx::pg_sys;
use pgrx::pg_sys::{BOOLOID as BOOL, INT4OID as INT4, INT8OID as INT8, JSONBOID as JSONB, TEXTOID as TEXT, UUIDOID as UUID};
use pgrx::prelude::*;

thread_local! {
    static TAKE_POSITIONS: KeptPlan = const { KeptPlan::new() };
    static APPEND_MESSAGE: KeptPlan = const { KeptPlan::new() };
    static INSERT_SESSION: KeptPlan = const { KeptPlan::new() };
    static REGISTER_SESSION: KeptPlan = const { KeptPlan::new() };
    static FORK_PARENT: KeptPlan = const { KeptPlan::new() };
    static LATEST_VISIBLE_MESSAGE: KeptPlan = const { KeptPlan::new() };
    static FORK_MESSAGE: KeptPlan = const { KeptPlan::new() };
    static INSERT_MESSAGES: KeptPlan = const { KeptPlan::new() };
    static LINEAGE: KeptPlan = const { KeptPlan::new() };
}

/// The UPDATE that takes the next `$2` positions of session `$1` for new messages if the acting
/// user `$4` may add to it (owner, or a share with can_write; `$3`: roles that bypass row-level
/// security always may), returning the last of them; nothing when the caller may not (or there
/// is no such session). The row lock it takes orders concurrent appends to one session; the
/// write rule is in the same statement, so check and lock are one.
fn take_positions_sql() -> String {
    format!(
        "UPDATE {SCHEMA}.memory_sessions s SET last_position = s.last_position OPERATOR(pg_catalog.+) $2
          WHERE s.id OPERATOR(pg_catalog.=) $1
            AND ($3 OR s.owner_id OPERATOR(pg_catalog.=) $4
                 OR EXISTS (SELECT 1 FROM {SCHEMA}.memory_shares g
                             WHERE g.memory_id OPERATOR(pg_catalog.=) s.id
                               AND g.grantee OPERATOR(pg_catalog.=) $4 AND g.can_write))
         RETURNING s.last_position, s.message_ttl"
    )
}

/// How long a new message lives, given its session's message_ttl (SQL `session_ttl`): the
/// session's retention, else the message type's default_ttl (a built-in type's is only ever set
/// in memory_type_definitions); NULL: for ever.
fn message_ttl(session_ttl: &str) -> String {
    format!(
        "coalesce({session_ttl}, (SELECT d.default_ttl FROM {SCHEMA}.memory_type_definitions d
                                    WHERE d.name OPERATOR(pg_catalog.=) 'message'))"
    )
}

/// Take the next `how_many` positions of `session` (take_positions_sql()); returns the last of
/// them and the session's message_ttl, or None when the caller may not add to it.
fn take_positions(spi: &Connection, session: Arg, how_many: i64) -> Option<(i64, Arg)> {
    let me = identity::current_memory_user();
    let unrestricted = identity::acting_role_bypasses_rls();
    let taken = spi.execute_kept(
        &TAKE_POSITIONS,
        take_positions_sql,
        &[UUID, INT8, BOOL, UUID],
        &[session, arg(how_many), arg(unrestricted), arg(me)],
        Effect::Writes,
    );
    taken.get::<i64>(0, 1).map(|last| (last, taken.datum(0, 2)))
}

/// Raise the error for a session take_positions() refused (refuse_session_write() in SQL tells
/// "shared with you read-only" from "does not exist").
fn refuse_session_write(spi: &Connection, session: Arg) -> ! {
    spi.execute(&format!("SELECT {SCHEMA}.refuse_session_write($1)"), &[UUID], &[session], Effect::Reads);
    raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, "refuse_session_write() returned".into(), None)
}

/// A message role the SQL rule (check_message_role) certainly accepts: 1 to 64 characters, at
/// least one ASCII letter or digit (so not blank), and nothing but printable ASCII and
/// alphabetic characters (so no control or space-like characters).
fn role_certainly_valid(role: &str) -> bool {
    let mut count = 0;
    let mut has_alnum = false;
    for c in role.chars() {
        count += 1;
        has_alnum |= c.is_ascii_alphanumeric();
        if !(c == ' ' || c.is_ascii_graphic() || (!c.is_ascii() && c.is_alphabetic())) {
            return false;
        }
    }
    has_alnum && count <= 64
}

/// Check a message role; errors (and the rare role the fast check is unsure of) go to the SQL
/// rule, check_message_role(role, argument).
pub fn check_message_role(role: Option<&str>, argument: &str) {
    if role.is_some_and(role_certainly_valid) {
        return;
    }
    spi::connect(|spi| {
        spi.execute(
            &format!("SELECT {SCHEMA}.check_message_role($1, $2)"),
            &[TEXT, TEXT],
            &[arg(role), arg(argument)],
            Effect::Reads,
        );
    });
}

/// A metadata argument: NULL means `{}` (None), a JSON object is passed on as it is, anything
/// else gets metadata_object()'s error.
pub fn checked_metadata(metadata: Option<pg_sys::Datum>, argument: &str) -> Option<pg_sys::Datum> {
    let datum = metadata?;
    // SAFETY: a jsonb datum; pg_detoast_datum returns a 4-byte-header varlena whose data starts
    // with the root container's header word (JB_FOBJECT set for an object).
    let is_object = unsafe {
        let jsonb = pg_sys::pg_detoast_datum(datum.cast_mut_ptr::<pg_sys::varlena>());
        let header = std::ptr::read_unaligned((jsonb as *const u8).add(pg_sys::VARHDRSZ).cast::<u32>());
        header & pg_sys::JB_FOBJECT != 0
    };
    if !is_object {
        spi::connect(|spi| {
            spi.execute(
                &format!("SELECT {SCHEMA}.metadata_object($1, $2)"),
                &[JSONB, TEXT],
                &[Some(datum), arg(argument)],
                Effect::Reads,
            );
        });
        raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, format!("{argument} must be a JSON object"), None);
    }
    Some(datum)
}

/// add_message_to_session(session_id uuid, role text, content text, metadata jsonb DEFAULT '{}')
/// RETURNS uuid (declared in sql/sessions.sql).
unsafe fn add_message_to_session(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: declared in SQL with these four arguments.
    let (session, role, content, metadata) =
        unsafe { (raw_arg(fcinfo, 0), raw_arg(fcinfo, 1), raw_arg(fcinfo, 2), raw_arg(fcinfo, 3)) };
    // (in the order the SQL contract checks them)
    let metadata = checked_metadata(metadata, "metadata");
    let Some(session) = session else {
        raise(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, "session_id must not be NULL".into(), None)
    };
    // SAFETY: a text datum (detoasted into the current memory context if it has to be).
    let role_text = role.and_then(|datum| unsafe { <&str as FromDatum>::from_datum(datum, false) });
    check_message_role(role_text, "role");
    if content.is_none() {
        raise(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, "content must not be NULL".into(), None)
    }
    let id = crate::ids::new_v7();
    let me = identity::current_memory_user();
    let unrestricted = identity::acting_role_bypasses_rls();
    spi::connect(|spi| {
        // the position taken and the message inserted in one statement (one executor run, not
        // two); no row inserted means the caller may not add to the session. The id is made here
        // rather than by RETURNING, which would also check the new row against the read policy.
        let inserted = spi.execute_kept(
            &APPEND_MESSAGE,
            || {
                format!(
                    "WITH taken AS ({take_positions})
                     INSERT INTO {SCHEMA}.memories (id, kind, content, _metadata, session_id, position, role, expires_at)
                     SELECT $5, 'message', $6, COALESCE($7, '{{}}'::pg_catalog.jsonb), $1, taken.last_position, $8,
                            pg_catalog.now() OPERATOR(pg_catalog.+) {message_ttl}
                       FROM taken",
                    message_ttl = message_ttl("taken.message_ttl"),
                    take_positions = take_positions_sql()
                )
            },
            &[UUID, INT8, BOOL, UUID, UUID, TEXT, JSONB, TEXT],
            &[Some(session), arg(1i64), arg(unrestricted), arg(me), arg(id), content, metadata, role],
            Effect::Writes,
        );
        if inserted.count() == 0 {
            refuse_session_write(spi, Some(session))
        }
    });
    id.into_datum().expect("a uuid is never NULL")
}

crate::fmgr::sql_function_entry!(pg_finfo_add_message_to_session_native, add_message_to_session_native, add_message_to_session);

/// The acting user, for code that writes on their behalf; 42501 (worded by the SQL function
/// require_acting_user(), with the hint how to map a role) when the role acts as nobody. Roles
/// that bypass row-level security may act as nobody, as direct DML allows them.
fn require_acting_user() -> Option<pgrx::Uuid> {
    let me = identity::current_memory_user();
    if me.is_none() && !identity::acting_role_bypasses_rls() {
        spi::connect(|spi| spi.execute(&format!("SELECT {SCHEMA}.require_acting_user()"), &[], &[], Effect::Reads).count());
        raise(PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE, "the role acts as no MemoriesDB user".into(), None);
    }
    me
}

/// Insert a session memory (kind 'session', title as content) with the id `id`. The id is made
/// by the caller rather than by RETURNING, which would also check the new row against the
/// memories read policy.
fn insert_session_memory(spi: &Connection, id: pgrx::Uuid, title: Arg, metadata: Arg) {
    spi.execute_kept(
        &INSERT_SESSION,
        || {
            format!(
                "INSERT INTO {SCHEMA}.memories (id, kind, content, _metadata)
                 VALUES ($1, 'session', $2, COALESCE($3, '{{}}'::pg_catalog.jsonb))"
            )
        },
        &[UUID, TEXT, JSONB],
        &[arg(id), title, metadata],
        Effect::Writes,
    );
}

/// Register session `id` in memory_sessions, owned by `owner`: a session of its own (no
/// parent), or a fork of `parent` at position `fork_at` (message `fork_message`, none when the
/// fork sees no message) one generation below it. The caller has checked the fork point.
fn register_session(spi: &Connection, id: pgrx::Uuid, owner: Option<pgrx::Uuid>, fork: Option<Fork>) {
    let (parent, fork_at, fork_message, depth) = match fork {
        Some(Fork { parent, at, message, parent_depth }) => (Some(parent), at, message, parent_depth + 1),
        None => (None, 0, None, 0),
    };
    spi.execute_kept(
        &REGISTER_SESSION,
        || {
            format!(
                "INSERT INTO {SCHEMA}.memory_sessions (id, owner_id, parent_id, fork_position, fork_message_id, depth, last_position,
                                                       message_ttl, keep_last)
                 SELECT $1, $2, $3, $4, $5, $6, $4, p.message_ttl, p.keep_last
                   -- a fork keeps its parent's retention
                   FROM (SELECT 1) one
                   LEFT JOIN {SCHEMA}.memory_sessions p ON p.id OPERATOR(pg_catalog.=) $3"
            )
        },
        &[UUID, UUID, UUID, INT8, UUID, INT4],
        &[arg(id), arg(owner), arg(parent), arg(fork_at), arg(fork_message), arg(depth)],
        Effect::Writes,
    );
}

/// Where a fork branches off: its parent, the position of the last message it inherits, that
/// message (None for a fork of a session without messages) and the parent's depth.
struct Fork {
    parent: pgrx::Uuid,
    at: i64,
    message: Option<pgrx::Uuid>,
    parent_depth: i32,
}

/// The elements of a jsonb batch of messages if every one certainly passes the SQL rules
/// (check_message_batch()): an object with a string role the fast role check accepts, string
/// content, and metadata absent, JSON null or an object, and no other key. None when the value is
/// not an array or anything is unusual; the SQL rule then decides, and words the error. The
/// checks read the jsonb in place: no element, key or string is copied.
unsafe fn batch_certainly_valid(messages: pg_sys::Datum) -> Option<i64> {
    use pg_sys::jbvType::{jbvBinary, jbvNull, jbvString};
    use pg_sys::JsonbIteratorToken::{WJB_DONE, WJB_ELEM, WJB_KEY, WJB_VALUE};
    // SAFETY: a jsonb datum, detoasted; the iterators walk containers inside it.
    unsafe {
        let jsonb = pg_sys::pg_detoast_datum(messages.cast_mut_ptr()).cast::<pg_sys::Jsonb>();
        let root = &raw mut (*jsonb).root;
        let header = (*root).header;
        if header & pg_sys::JB_FARRAY == 0 || header & pg_sys::JB_FSCALAR != 0 {
            return None;
        }
        let string = |v: &pg_sys::JsonbValue| {
            std::slice::from_raw_parts(v.val.string.val.cast::<u8>(), v.val.string.len as usize)
        };
        let mut count = 0;
        let mut elements = pg_sys::JsonbIteratorInit(root);
        let mut element: pg_sys::JsonbValue = std::mem::zeroed();
        loop {
            match pg_sys::JsonbIteratorNext(&mut elements, &mut element, true) {
                WJB_DONE => return Some(count),
                WJB_ELEM => {}
                _ => continue, // the array's begin and end
            }
            count += 1;
            if element.type_ != jbvBinary || (*element.val.binary.data).header & pg_sys::JB_FOBJECT == 0 {
                return None;
            }
            let (mut role, mut content) = (false, false);
            let mut fields = pg_sys::JsonbIteratorInit(element.val.binary.data);
            let (mut key, mut value): (pg_sys::JsonbValue, pg_sys::JsonbValue) = (std::mem::zeroed(), std::mem::zeroed());
            loop {
                match pg_sys::JsonbIteratorNext(&mut fields, &mut key, true) {
                    WJB_DONE => break,
                    WJB_KEY => {}
                    _ => continue, // the object's begin and end
                }
                if pg_sys::JsonbIteratorNext(&mut fields, &mut value, true) != WJB_VALUE {
                    return None;
                }
                match string(&key) {
                    b"role" => {
                        role = value.type_ == jbvString
                            && std::str::from_utf8(string(&value)).is_ok_and(role_certainly_valid);
                    }
                    b"content" => content = value.type_ == jbvString,
                    b"metadata" => {
                        let object = value.type_ == jbvBinary && (*value.val.binary.data).header & pg_sys::JB_FOBJECT != 0;
                        if !(object || value.type_ == jbvNull) {
                            return None;
                        }
                    }
                    _ => return None,
                }
            }
            if !(role && content) {
                return None;
            }
        }
    }
}

/// add_messages_to_session(session_id uuid, messages jsonb) RETURNS SETOF uuid (declared in
/// sql/sessions.sql): the messages of a JSON array appended in order at consecutive positions,
/// in one INSERT that reads them from the jsonb as the caller passed it. Everything is checked
/// before anything is written.
unsafe fn add_messages_to_session(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: declared in SQL with these two arguments.
    let (session, messages) = unsafe { (raw_arg(fcinfo, 0), raw_arg(fcinfo, 1)) };
    let Some(session) = session else {
        raise(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, "session_id must not be NULL".into(), None)
    };
    let Some(messages) = messages else {
        raise(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, "messages must not be NULL".into(), None)
    };
    let ids: Vec<pgrx::Uuid> = spi::connect(|spi| {
        // SAFETY: a jsonb datum.
        let count = match unsafe { batch_certainly_valid(messages) } {
            Some(count) => count,
            None => {
                // the SQL rule raises the error (or accepts what the fast check was unsure of)
                let counted = spi.execute(
                    &format!("SELECT {SCHEMA}.check_message_batch($1)"),
                    &[JSONB],
                    &[Some(messages)],
                    Effect::Reads,
                );
                counted.get::<i32>(0, 1).map_or(0, i64::from)
            }
        };
        // (an empty batch takes no position, but the session must still be one the caller may add to)
        let Some((last_position, session_ttl)) = take_positions(spi, Some(session), count) else {
            refuse_session_write(spi, Some(session))
        };
        let ids: Vec<pgrx::Uuid> = (0..count).map(|_| crate::ids::new_v7()).collect();
        if count > 0 {
            spi.execute_kept(
                &INSERT_MESSAGES,
                || {
                    format!(
                        "INSERT INTO {SCHEMA}.memories (id, kind, content, _metadata, session_id, position, role, expires_at)
                         SELECT $2[e.ordinality], 'message', e.value OPERATOR(pg_catalog.->>) 'content',
                                CASE WHEN pg_catalog.jsonb_typeof(e.value OPERATOR(pg_catalog.->) 'metadata') OPERATOR(pg_catalog.=) 'object'
                                     THEN e.value OPERATOR(pg_catalog.->) 'metadata' ELSE '{{}}'::pg_catalog.jsonb END,
                                $3, $4 OPERATOR(pg_catalog.+) e.ordinality, e.value OPERATOR(pg_catalog.->>) 'role',
                                pg_catalog.now() OPERATOR(pg_catalog.+) {message_ttl}
                           FROM pg_catalog.jsonb_array_elements($1) WITH ORDINALITY e",
                        message_ttl = message_ttl("$5")
                    )
                },
                &[JSONB, pg_sys::UUIDARRAYOID, UUID, INT8, pg_sys::INTERVALOID],
                &[Some(messages), arg(ids.clone()), Some(session), arg(last_position - count), session_ttl],
                Effect::Writes,
            );
        }
        ids
    });
    // SAFETY: the fcinfo of a set-returning call; the result rows go to the tuplestore
    // InitMaterializedSRF makes (it refuses a caller that cannot take a materialized set).
    unsafe {
        pg_sys::InitMaterializedSRF(fcinfo, pg_sys::MAT_SRF_USE_EXPECTED_DESC);
        let result = (*fcinfo).resultinfo.cast::<pg_sys::ReturnSetInfo>();
        for id in ids {
            let mut value = id.into_datum().expect("a uuid is never NULL");
            let mut is_null = false;
            pg_sys::tuplestore_putvalues((*result).setResult, (*result).setDesc, &mut value, &mut is_null);
        }
    }
    pg_sys::Datum::from(0usize)
}

crate::fmgr::sql_function_entry!(pg_finfo_add_messages_to_session_native, add_messages_to_session_native, add_messages_to_session);

/// create_session(title text, metadata jsonb DEFAULT '{}') RETURNS uuid (declared in
/// sql/sessions.sql): a session memory and its memory_sessions row, owned by the acting user.
unsafe fn create_session(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: declared in SQL with these two arguments.
    let (title, metadata) = unsafe { (raw_arg(fcinfo, 0), raw_arg(fcinfo, 1)) };
    // (in the order the SQL contract checks them)
    let me = require_acting_user();
    if title.is_none() {
        raise(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, "title must not be NULL".into(), None)
    }
    let metadata = checked_metadata(metadata, "metadata");
    let id = crate::ids::new_v7();
    spi::connect(|spi| {
        insert_session_memory(spi, id, title, metadata);
        register_session(spi, id, me, None);
    });
    id.into_datum().expect("a uuid is never NULL")
}

crate::fmgr::sql_function_entry!(pg_finfo_create_session_native, create_session_native, create_session);

/// fork_session(session_id uuid, new_title text, metadata jsonb DEFAULT '{}', parent_message_id
/// uuid DEFAULT NULL) RETURNS uuid (declared in sql/sessions.sql): a new session that sees the
/// parent's transcript up to the fork point (by default the latest message the parent's branch
/// sees; or parent_message_id, also accepted as metadata.parent_message_id), without copying a
/// message. Runs as the extension owner and decides for its caller, in two steps as the SQL
/// contract words them: the parent must be listed for them (theirs, shared with them, or any
/// for a worker: P0002 with a hint otherwise), and — a worker's reading rights do not extend to
/// branching other users' sessions — it must be part of what they own or were shared (P0002),
/// and the fork point a message they can read (22023).
unsafe fn fork_session(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: declared in SQL with these four arguments.
    let (session, title, metadata, parent_message) =
        unsafe { (raw_arg(fcinfo, 0), raw_arg(fcinfo, 1), raw_arg(fcinfo, 2), raw_arg(fcinfo, 3)) };
    // (in the order the SQL contract checks them)
    let metadata = checked_metadata(metadata, "metadata");
    let me = require_acting_user();
    // roles that bypass row-level security may fork anything; workers may read (list) every
    // session, but branch only what is theirs or shared with them
    let bypasses_rls = identity::acting_role_bypasses_rls();
    let lists_all = bypasses_rls || identity::acting_role_is("memoriesdb_worker");
    let Some(session) = session else {
        raise(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, "session_id must not be NULL".into(), None)
    };
    // SAFETY: a uuid datum.
    let session_id = unsafe { pgrx::Uuid::from_datum(session, false) }.expect("not NULL");
    let id = crate::ids::new_v7();
    spi::connect(|spi| {
        // the parent; whether the caller may see it listed (the memory_sessions read rule) and
        // whether it is part of what they own or were shared; metadata.parent_message_id when it
        // is the fork point
        let parent = spi.execute_kept(
            &FORK_PARENT,
            || {
                format!(
                    "SELECT s.last_position, s.depth,
                            pg_catalog.jsonb_typeof($3 OPERATOR(pg_catalog.->) 'parent_message_id'),
                            ($3 OPERATOR(pg_catalog.->) 'parent_message_id')::pg_catalog.text,
                            $3 OPERATOR(pg_catalog.->>) 'parent_message_id',
                            -- (the owner's own session needs neither lookup)
                            s.owner_id OPERATOR(pg_catalog.=) $2 OR {SCHEMA}.session_listed_for($2, s.id),
                            s.owner_id OPERATOR(pg_catalog.=) $2 OR {SCHEMA}.session_visible_to($2, s.id)
                       FROM {SCHEMA}.memory_sessions s
                      WHERE s.id OPERATOR(pg_catalog.=) $1"
                )
            },
            &[UUID, UUID, JSONB],
            &[Some(session), arg(me), metadata],
            Effect::Reads,
        );
        let listed = lists_all || parent.get::<bool>(0, 6) == Some(true);
        let (Some(last_position), Some(parent_depth), true) = (parent.get::<i64>(0, 1), parent.get::<i32>(0, 2), listed) else {
            raise_no_data(format!("session {session_id} does not exist"), Some("create one with create_session(title)"))
        };
        let may_branch = bypasses_rls || parent.get::<bool>(0, 7) == Some(true);
        if title.is_none() {
            raise(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, "new_title must not be NULL".into(), None)
        }
        let mut fork_message = parent_message;
        // metadata.parent_message_id (JSON null included) names the fork point when the argument does not
        if let (None, Some(json_type)) = (fork_message, parent.get::<String>(0, 3)) {
            if json_type != "string" {
                raise(
                    PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                    format!("metadata.parent_message_id is not a message id: {}", parent.get::<String>(0, 4).unwrap_or_default()),
                    None,
                )
            }
            // parse_uuid() words the error for text that is not a uuid
            let parsed = spi.execute(
                &format!("SELECT {SCHEMA}.parse_uuid($1, 'metadata.parent_message_id is not a message id')"),
                &[TEXT],
                &[arg(parent.get::<String>(0, 5))],
                Effect::Reads,
            );
            fork_message = parsed.datum(0, 1);
        }
        let fork = match fork_message {
            None => {
                // the latest message the branch sees, if any (one probe per segment of its lineage)
                let latest = spi.execute_kept(
                    &LATEST_VISIBLE_MESSAGE,
                    || {
                        format!(
                            "SELECT x.id, x.position, {readable}
                               FROM {lineage} l
                              CROSS JOIN LATERAL (
                                    SELECT m.id, m.position, m.created_by, m.session_id, m.expires_at FROM {SCHEMA}.memories m
                                     WHERE m.session_id OPERATOR(pg_catalog.=) l.lineage_session_id
                                       AND m.position OPERATOR(pg_catalog.<=) LEAST(l.visible_upto, $2)
                                       AND {not_expired}
                                     ORDER BY m.position DESC LIMIT 1) x
                              ORDER BY x.position DESC LIMIT 1",
                            not_expired = crate::policies::not_expired("m.expires_at"),
                            readable = crate::policies::readable_by("x", "$3"),
                            lineage = lineage_sql("$1"),
                        )
                    },
                    &[UUID, INT8, UUID],
                    &[Some(session), arg(last_position), arg(me)],
                    Effect::Reads,
                );
                let at = latest.get::<i64>(0, 2).unwrap_or(0);
                let readable = at == 0 || bypasses_rls || latest.get::<bool>(0, 3) == Some(true);
                (Fork { parent: session_id, at, message: latest.get(0, 1), parent_depth }, readable)
            }
            Some(message) => {
                // SAFETY: a uuid datum.
                let message_id = unsafe { pgrx::Uuid::from_datum(message, false) }.expect("not NULL");
                let found = spi.execute_kept(
                    &FORK_MESSAGE,
                    || {
                        format!(
                            "SELECT m.position,
                                    EXISTS (SELECT 1 FROM {lineage} l
                                             WHERE l.lineage_session_id OPERATOR(pg_catalog.=) m.session_id
                                               AND m.position OPERATOR(pg_catalog.<=) l.visible_upto),
                                    readable.by_user
                               FROM {SCHEMA}.memories m
                              CROSS JOIN LATERAL (SELECT {readable} AS by_user) readable
                              WHERE m.id OPERATOR(pg_catalog.=) $1 AND m.kind OPERATOR(pg_catalog.=) 'message'
                                AND ($3 OR readable.by_user)",
                            readable = crate::policies::readable_by("m", "$4"),
                            lineage = lineage_sql("$2"),
                        )
                    },
                    &[UUID, UUID, BOOL, UUID],
                    &[Some(message), Some(session), arg(lists_all), arg(me)],
                    Effect::Reads,
                );
                let Some(at) = found.get::<i64>(0, 1) else { raise_no_data(format!("message {message_id} does not exist"), None) };
                if found.get::<bool>(0, 2) != Some(true) {
                    raise(
                        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                        format!("message {message_id} is not part of session {session_id}"),
                        Some("the fork point must be a message the session's transcript shows"),
                    )
                }
                let readable = bypasses_rls || found.get::<bool>(0, 3) == Some(true);
                (Fork { parent: session_id, at, message: Some(message_id), parent_depth }, readable)
            }
        };
        let (fork, fork_point_readable) = fork;
        if !may_branch {
            raise_no_data(format!("session {session_id} does not exist"), None)
        }
        if !fork_point_readable {
            raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("position {} is not a message of session {session_id} you can see", fork.at),
                None,
            )
        }
        insert_session_memory(spi, id, title, metadata);
        register_session(spi, id, me, Some(fork));
    });
    id.into_datum().expect("a uuid is never NULL")
}

crate::fmgr::sql_function_entry!(pg_finfo_fork_session_native, fork_session_native, fork_session);

/// The lineage of the session `session` (SQL, a uuid) as a FROM item: the session itself, seen
/// whole, and each ancestor up to the fork point of the line below it, as rows
/// (lineage_session_id, visible_upto, generation), generation 0 being the session. One index
/// probe per ancestor, whatever the number of messages. It checks no visibility: callers decide
/// who may see the session first (session_lineage() for SQL callers; fork_session() has).
pub fn lineage_sql(session: &str) -> String {
    format!(
        "(WITH RECURSIVE chain AS (
              SELECT s.id, s.parent_id, s.fork_position, 9223372036854775807::pg_catalog.int8 AS upto, 0 AS generation
                FROM {SCHEMA}.memory_sessions s
               WHERE s.id OPERATOR(pg_catalog.=) {session}
              UNION ALL
              -- a fork may sit at an inherited message, so an ancestor is seen only up to the
              -- lowest fork point on the way down to the branch
              SELECT p.id, p.parent_id, p.fork_position, LEAST(c.fork_position, c.upto), c.generation OPERATOR(pg_catalog.+) 1
                FROM {SCHEMA}.memory_sessions p
                JOIN chain c ON p.id OPERATOR(pg_catalog.=) c.parent_id)
          SELECT chain.id AS lineage_session_id, chain.upto AS visible_upto, chain.generation FROM chain)"
    )
}

/// session_lineage(session_id uuid) RETURNS TABLE (lineage_session_id uuid, visible_upto bigint,
/// generation integer): lineage_sql() for SQL callers (transcripts, searches, shares, context),
/// as the extension owner, so that a grantee of a shared fork walks up to the ancestors it
/// inherits from without seeing their memory_sessions rows. It answers only for a session the
/// acting user may see (session_visible_to(): their own, or shared with them directly or as part
/// of a shared branch) — roles that bypass row-level security and workers see every session —
/// and returns nothing for any other id. Which messages of each segment the caller then reads is
/// still decided by the memories read rule.
unsafe fn session_lineage(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: declared in SQL with this one argument, as a set-returning function with a row type.
    let (session, result) = unsafe { (raw_arg(fcinfo, 0), spi::ResultSet::materialize(fcinfo)) };
    let sees_all = identity::acting_role_bypasses_rls() || identity::acting_role_is("memoriesdb_worker");
    let me = if sees_all { None } else { identity::current_memory_user() };
    spi::connect(|spi| {
        let plan = spi::kept(
            &LINEAGE,
            || {
                format!(
                    // (the condition names no column: PostgreSQL checks it once, before the walk)
                    "SELECT l.lineage_session_id, l.visible_upto, l.generation
                       FROM {lineage} l
                      WHERE $2 OR {SCHEMA}.session_visible_to($3, $1)",
                    lineage = lineage_sql("$1")
                )
            },
            &[UUID, BOOL, UUID],
        );
        spi.return_rows(plan, &[session, arg(sees_all), arg(me)], &result);
    });
    pg_sys::Datum::from(0)
}

crate::fmgr::sql_function_entry!(pg_finfo_session_lineage_native, session_lineage_native, session_lineage);

/// P0002 (no_data_found), as PL/pgSQL raises "does not exist" errors.
fn raise_no_data(message: String, hint: Option<&str>) -> ! {
    raise(PgSqlErrorCode::ERRCODE_NO_DATA_FOUND, message, hint)
}

/// session_channel(session_id uuid) RETURNS text: the channel a session's change events are
/// sent on (`LISTEN` it, or subscribe to it through the hub). The one definition of the name:
/// the events themselves are sent on what this returns.
#[pg_extern(immutable, strict, parallel_safe)]
fn session_channel(session_id: pgrx::Uuid) -> String {
    crate::write_path::chat_channel(&session_id)
}

#[cfg(test)]
mod unit {
    use super::role_certainly_valid;

    #[test]
    fn the_fast_role_check_accepts_only_what_the_sql_rule_accepts() {
        for ok in ["user", "assistant", "Dr. Smith", "agent-7", "élève", &"r".repeat(64)] {
            assert!(role_certainly_valid(ok), "{ok:?}");
        }
        // left to the SQL rule: blank, too long, control or space-like characters, no ASCII
        // letter or digit
        for unsure in ["", "   ", "\t", "a\nb", "a\u{0}", "\u{a0}", "a\u{2028}", "\u{200b}x", "éé", &"r".repeat(65)] {
            assert!(!role_certainly_valid(unsure), "{unsure:?}");
        }
    }
}
