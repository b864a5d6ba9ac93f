//! The one write path: what every write to `memories` and `memory_edges` derives, whether it
//! comes through the conversation API or as direct DML, computed in one BEFORE trigger.
//!
//! `derive_row_fields()` (BEFORE INSERT OR UPDATE, per row) sets, from nothing the caller
//! supplies:
//!   * `content_hash`: the hex SHA-256 of `content` (memories);
//!   * provenance: `created_by` (and on memories `updated_by`) is the acting user on INSERT;
//!     an UPDATE keeps `created_by` and `_created_at` and stamps `updated_by` and `_updated_at`;
//!   * integrity of the branch structure: a memory's kind, session and position never change
//!     (moving a message would rewrite other branches' history): 0A000;
//!   * no stale embedding: when an UPDATE changes `content`, the embedding computed from the old
//!     content and its model are cleared (the embedding queue asks for a new one).
//!
//! This replaced three triggers (a Rust hash trigger and two PL/pgSQL ones with pinned
//! search_paths): one call per row, one tuple copy for all changed fields, no SQL.
//!
//! `log_memory_change()` (AFTER UPDATE OR DELETE on memories, AFTER INSERT OR UPDATE OR DELETE
//! on memory_edges, per row) writes the audit row: the
//! row's state before and after as jsonb (without the derived search_tsv), the acting user (as
//! derive_row_fields() stamped it into the row), the user the change concerns (the row's
//! owner), the role and the transaction. It runs as the extension owner (SECURITY DEFINER):
//! nobody else may write audit_log. The row goes to the INSERT as one composite parameter of a
//! plan kept per backend; its jsonb is made by PostgreSQL's to_jsonb(), as before.
//!
//! `memories_inserted()` (AFTER INSERT, once per statement, over the statement's new rows)
//! writes the new memories' audit rows (the same rows log_memory_change() would write, in the
//! order the memories were inserted), queues those with content for embedding and sends the
//! change events, in one pass over the transition table: no query over it, one statement for
//! the audit and queue rows, one outbox row.
//!   events: each message gets one on its session's channel chat_updates_<session id without
//!   dashes> and one on memoriesdb_events; new sessions are announced on memoriesdb_events; a
//!   statement inserting more than 100 messages sends one summary per session instead; embedding
//!   workers get one wake-up on memoriesdb_embedding_queue. Payloads carry ids and small fields
//!   only, never content, so they stay far below NOTIFY's 8000-byte limit and reveal no private
//!   text. `ALTER DATABASE ... SET memoriesdb.global_events = off` keeps ids off the shared
//!   channel. The payload text is what json_build_object() makes (timestamps in the session's
//!   time zone, by PostgreSQL's own JSON encoder).

use crate::catalog::SCHEMA;
use crate::errors::raise;
use crate::hashing::sha256_hex;
use crate::identity;
use crate::spi::{self, arg, Effect, KeptPlan};
use crate::tuples::{attribute, text_bytes, uuid_value, Attribute};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::Cell;
use std::ffi::CStr;

/// The changes a trigger makes to its new row, applied in one heap_modify_tuple_by_cols.
#[derive(Default)]
struct Changes {
    columns: Vec<i32>,
    values: Vec<pg_sys::Datum>,
    nulls: Vec<bool>,
}

impl Changes {
    fn set(&mut self, column: i32, value: Option<pg_sys::Datum>) {
        self.columns.push(column);
        self.values.push(value.unwrap_or(pg_sys::Datum::from(0usize)));
        self.nulls.push(value.is_none());
    }
}

unsafe fn derive_row_fields(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: the guarded entry point checked that PostgreSQL called this as a trigger.
    unsafe {
        let trigger = (*fcinfo).context.cast::<pg_sys::TriggerData>();
        let event = (*trigger).tg_event;
        let operation = event & pg_sys::TRIGGER_EVENT_OPMASK;
        let inserting = operation == pg_sys::TRIGGER_EVENT_INSERT;
        if event & pg_sys::TRIGGER_EVENT_ROW == 0
            || event & pg_sys::TRIGGER_EVENT_TIMINGMASK != pg_sys::TRIGGER_EVENT_BEFORE
            || !(inserting || operation == pg_sys::TRIGGER_EVENT_UPDATE)
        {
            raise(
                PgSqlErrorCode::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
                "derive_row_fields() must be a BEFORE INSERT OR UPDATE row trigger".into(),
                None,
            );
        }
        let desc = (*(*trigger).tg_relation).rd_att;
        let (new, old) = if inserting {
            ((*trigger).tg_trigtuple, std::ptr::null_mut())
        } else {
            ((*trigger).tg_newtuple, (*trigger).tg_trigtuple)
        };
        let new_attribute = |name: &CStr| attribute(new, desc, name);
        let old_attribute = |name: &CStr| attribute(old, desc, name);
        let column = |name: &CStr| new_attribute(name).map(|a| a.number);

        let mut changes = Changes::default();
        let is_memories = column(c"content_hash").is_some();
        let content = new_attribute(c"content");
        if let (true, Some(Attribute { value: Some(content), .. })) = (is_memories, &content) {
            // (content is NOT NULL: a NULL is rejected by that constraint right after)
            let hash = sha256_hex(std::str::from_utf8_unchecked(text_bytes(*content)));
            changes.set(column(c"content_hash").expect("checked"), hash.into_datum());
        }

        // (a catalog older than the library, between a package upgrade and ALTER EXTENSION
        // UPDATE, has no expires_at and no memory types)
        if let (true, Some(expires_at)) = (is_memories, new_attribute(c"expires_at")) {
            let kind = new_attribute(c"kind").and_then(|a| a.value).map(|d| text_bytes(d));
            if kind == Some(b"session".as_slice()) && expires_at.value.is_some() {
                raise(
                    PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                    "a session does not expire by itself".into(),
                    Some("set how long its messages live with set_session_retention(session_id, message_ttl)"),
                );
            }
            // (a kind cannot change, so only a new row's is checked; messages are written only by
            // the conversation API, which sets their expiry from the session's retention)
            if let (true, Some(kind)) = (inserting, kind.filter(|k| *k != b"message")) {
                let default_expiry = memory_type_default_expiry(kind);
                if expires_at.value.is_none() {
                    if let Some(expiry) = default_expiry {
                        changes.set(expires_at.number, Some(expiry));
                    }
                }
            }
        }

        let me = identity::current_memory_user().into_datum();
        let created_by = column(c"created_by").expect("memories and memory_edges have created_by");
        if inserting {
            changes.set(created_by, me);
            if is_memories {
                changes.set(column(c"updated_by").expect("memories have updated_by"), me);
            }
        } else {
            changes.set(created_by, old_attribute(c"created_by").and_then(|a| a.value));
            let created_at = old_attribute(c"_created_at").expect("memories and memory_edges have _created_at");
            changes.set(created_at.number, created_at.value);
            if is_memories {
                let kind_changed = match (old_attribute(c"kind").and_then(|a| a.value), new_attribute(c"kind").and_then(|a| a.value)) {
                    (Some(a), Some(b)) => text_bytes(a) != text_bytes(b),
                    (a, b) => a.is_some() != b.is_some(),
                };
                let session_changed = uuid_value(old_attribute(c"session_id").and_then(|a| a.value))
                    != uuid_value(new_attribute(c"session_id").and_then(|a| a.value));
                let position = |a: Option<Attribute>| a.and_then(|a| a.value).and_then(|d| i64::from_datum(d, false));
                let position_changed = position(old_attribute(c"position")) != position(new_attribute(c"position"));
                if kind_changed || session_changed || position_changed {
                    let id = uuid_value(old_attribute(c"id").and_then(|a| a.value));
                    raise(
                        PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                        format!(
                            "the kind, session and position of memory {} cannot be changed",
                            id.map_or("NULL".to_string(), |id| id.to_string())
                        ),
                        Some("content, role and metadata can be updated"),
                    );
                }
                changes.set(column(c"updated_by").expect("memories have updated_by"), me);
                changes.set(
                    column(c"_updated_at").expect("memories have _updated_at"),
                    Some(pg_sys::Datum::from(pg_sys::GetCurrentTransactionStartTimestamp())),
                );
                let old_content = old_attribute(c"content").and_then(|a| a.value);
                let new_content = content.and_then(|a| a.value);
                let content_changed = match (old_content, new_content) {
                    (Some(a), Some(b)) => text_bytes(a) != text_bytes(b),
                    (a, b) => a.is_some() != b.is_some(),
                };
                if content_changed {
                    changes.set(column(c"content_embedding").expect("memories have content_embedding"), None);
                    changes.set(column(c"embedding_model").expect("memories have embedding_model"), None);
                }
            }
        }
        let row = pg_sys::heap_modify_tuple_by_cols(
            new,
            desc,
            changes.columns.len() as i32,
            changes.columns.as_mut_ptr(),
            changes.values.as_mut_ptr(),
            changes.nulls.as_mut_ptr(),
        );
        pg_sys::Datum::from(row)
    }
}

thread_local! {
    static MEMORY_TYPE_EXPIRY: KeptPlan = const { KeptPlan::new() };
}

/// When a new memory of type `kind` expires by its type's default_ttl (None: never), or 22023
/// when there is no such type.
fn memory_type_default_expiry(kind: &[u8]) -> Option<pg_sys::Datum> {
    let kind = String::from_utf8_lossy(kind);
    let (known, expiry) = spi::connect(|spi| {
        let found = spi.execute_kept(
            &MEMORY_TYPE_EXPIRY,
            || {
                format!(
                    "SELECT pg_catalog.now() OPERATOR(pg_catalog.+) t.default_ttl
                       FROM {SCHEMA}.memory_types t WHERE t.name OPERATOR(pg_catalog.=) $1"
                )
            },
            &[pg_sys::TEXTOID],
            &[arg(kind.as_ref())],
            Effect::Reads,
        );
        // (a timestamptz is passed by value)
        (found.count() > 0, found.datum(0, 1))
    });
    if !known {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("unknown memory type \"{}\"", kind.chars().take(64).collect::<String>()),
            Some("the types are listed in memory_types; an administrator adds one with define_memory_type(name, description)"),
        )
    }
    expiry
}

crate::fmgr::guarded_trigger_entry!(
    pg_finfo_derive_row_fields_guarded,
    derive_row_fields_guarded,
    derive_row_fields,
    "derive_row_fields()"
);

thread_local! {
    static AUDIT_MEMORIES: KeptPlan = const { KeptPlan::new() };
    static AUDIT_MEMORIES_ROWTYPE: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
    static AUDIT_EDGES: KeptPlan = const { KeptPlan::new() };
    static AUDIT_EDGES_ROWTYPE: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
}

/// A row as a composite datum of its table's row type (NULL for no row).
unsafe fn composite(tuple: pg_sys::HeapTuple, desc: pg_sys::TupleDesc) -> Option<pg_sys::Datum> {
    // SAFETY: a valid tuple of the relation described by `desc`.
    (!tuple.is_null()).then(|| unsafe { pg_sys::heap_copy_tuple_as_datum(tuple, desc) })
}

unsafe fn log_memory_change(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: the guarded entry point checked that PostgreSQL called this as a trigger.
    unsafe {
        let trigger = (*fcinfo).context.cast::<pg_sys::TriggerData>();
        let event = (*trigger).tg_event;
        let operation = event & pg_sys::TRIGGER_EVENT_OPMASK;
        if event & pg_sys::TRIGGER_EVENT_ROW == 0 || event & pg_sys::TRIGGER_EVENT_TIMINGMASK != pg_sys::TRIGGER_EVENT_AFTER {
            raise(
                PgSqlErrorCode::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
                "log_memory_change() must be an AFTER row trigger".into(),
                None,
            );
        }
        let relation = (*trigger).tg_relation;
        let desc = (*relation).rd_att;
        let rowtype = (*(*relation).rd_rel).reltype;
        let table = CStr::from_ptr((*(*relation).rd_rel).relname.data.as_ptr());
        let (kept, kept_rowtype, table_name) = match table.to_bytes() {
            b"memories" => (&AUDIT_MEMORIES, &AUDIT_MEMORIES_ROWTYPE, "memories"),
            b"memory_edges" => (&AUDIT_EDGES, &AUDIT_EDGES_ROWTYPE, "memory_edges"),
            other => raise(
                PgSqlErrorCode::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
                format!("log_memory_change() audits memories and memory_edges, not {}", String::from_utf8_lossy(other)),
                None,
            ),
        };
        let (old, new, operation_name) = match operation {
            pg_sys::TRIGGER_EVENT_INSERT => (std::ptr::null_mut(), (*trigger).tg_trigtuple, "INSERT"),
            pg_sys::TRIGGER_EVENT_UPDATE => ((*trigger).tg_trigtuple, (*trigger).tg_newtuple, "UPDATE"),
            pg_sys::TRIGGER_EVENT_DELETE => ((*trigger).tg_trigtuple, std::ptr::null_mut(), "DELETE"),
            _ => raise(
                PgSqlErrorCode::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
                "log_memory_change() must be an INSERT, UPDATE or DELETE trigger".into(),
                None,
            ),
        };
        let current = if new.is_null() { old } else { new };
        let value = |tuple: pg_sys::HeapTuple, name: &CStr| attribute(tuple, desc, name).and_then(|a| a.value);
        // derive_row_fields() has just resolved the acting user into the row; resolve it again
        // only where the row does not carry it
        let acting = match operation_name {
            "INSERT" => uuid_value(value(new, c"created_by")),
            "UPDATE" if table_name == "memories" => uuid_value(value(new, c"updated_by")),
            _ => identity::current_memory_user(),
        };
        let row_id = value(current, c"id");
        let subject = value(current, c"created_by");
        // an expired memory's content ends with it (see sql/audit.sql)
        let redact = operation_name == "DELETE"
            && table_name == "memories"
            && value(old, c"expires_at").is_some_and(|expires| {
                pg_sys::Datum::from(pg_sys::GetCurrentTransactionStartTimestamp()).value() as i64 >= expires.value() as i64
            });

        // a table re-created (DROP and CREATE EXTENSION in this backend) has a new row type
        if kept_rowtype.get() != rowtype {
            kept.with(KeptPlan::forget);
            kept_rowtype.set(rowtype);
        }
        let (uuid, text) = (pg_sys::UUIDOID, pg_sys::TEXTOID);
        spi::connect(|spi| {
            spi.execute_kept(
                kept,
                || {
                    format!(
                        "INSERT INTO {SCHEMA}.audit_log (table_name, operation, row_id, old_row, new_row, acting_user,
                                                         subject_user, db_role, txid)
                         VALUES ('{table_name}', $1, $2,
                                 {old_row}, {new_row},
                                 $5, $6, {SCHEMA}.acting_db_role(), pg_catalog.txid_current())",
                        old_row = audited_row("$3", "$7"),
                        new_row = audited_row("$4", "false")
                    )
                },
                &[text, uuid, rowtype, rowtype, uuid, uuid, pg_sys::BOOLOID],
                &[arg(operation_name), row_id, composite(old, desc), composite(new, desc), arg(acting), subject, arg(redact)],
                Effect::Writes,
            );
        });
        pg_sys::Datum::from(0usize)
    }
}

crate::fmgr::guarded_trigger_entry!(
    pg_finfo_log_memory_change_guarded,
    log_memory_change_guarded,
    log_memory_change,
    "log_memory_change()"
);

thread_local! {
    static AUDIT_AND_QUEUE_NEW_MEMORY: KeptPlan = const { KeptPlan::new() };
    static AUDIT_AND_QUEUE_NEW_MEMORIES: KeptPlan = const { KeptPlan::new() };
    static NEW_MEMORIES_ROWTYPE: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
}

/// Audit rows written by one statement of memories_inserted(): at most this many rows, and the
/// batch ends once its rows add up to this many bytes.
const AUDIT_ROWS_PER_STATEMENT: usize = 1000;
const AUDIT_BYTES_PER_STATEMENT: usize = 64 << 20;

/// A statement with more than this many messages sends one summary per session.
const EVENTS_PER_MESSAGE_UP_TO: usize = 100;

/// What memories_inserted() needs of one new row.
struct NewMemory {
    id: pgrx::Uuid,
    kind: String,
    session: Option<pgrx::Uuid>,
    position: Option<i64>,
    role: Option<String>,
    created_at: Option<pg_sys::Datum>,
}

impl NewMemory {
    /// The payload announcing this new memory.
    fn insert_event(&self) -> String {
        JsonObject::new()
            .text("op", Some("INSERT"))
            .text("table", Some("memories"))
            .text("kind", Some(&self.kind))
            .text("id", Some(&self.id.to_string()))
            .text("session_id", self.session.map(|s| s.to_string()).as_deref())
            .number("position", self.position)
            .text("role", self.role.as_deref())
            .timestamptz("created_at", self.created_at)
            .finish()
    }
}

/// JSON text of a string, escaped exactly as PostgreSQL's escape_json() does.
fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A JSON object as json_build_object(...)::text writes it: `{"k" : v, "k2" : v2}`.
struct JsonObject(String);

impl JsonObject {
    fn new() -> Self {
        JsonObject(String::with_capacity(256))
    }
    fn key(&mut self, key: &str) -> &mut String {
        self.0.push_str(if self.0.is_empty() { "{" } else { ", " });
        json_string(&mut self.0, key);
        self.0.push_str(" : ");
        &mut self.0
    }
    fn text(&mut self, key: &str, value: Option<&str>) -> &mut Self {
        match value {
            Some(v) => json_string(self.key(key), v),
            None => self.key(key).push_str("null"),
        }
        self
    }
    fn number(&mut self, key: &str, value: Option<i64>) -> &mut Self {
        let text = value.map_or("null".to_string(), |v| v.to_string());
        self.key(key).push_str(&text);
        self
    }
    fn timestamptz(&mut self, key: &str, value: Option<pg_sys::Datum>) -> &mut Self {
        match value {
            // SAFETY: a timestamptz datum; JsonEncodeDateTime pallocs its result when given no
            // buffer and formats in the session's time zone, as json_build_object() does.
            Some(v) => unsafe {
                let encoded = pg_sys::JsonEncodeDateTime(std::ptr::null_mut(), v, pg_sys::TIMESTAMPTZOID, std::ptr::null());
                let text = CStr::from_ptr(encoded).to_string_lossy().into_owned();
                pg_sys::pfree(encoded.cast());
                json_string(self.key(key), &text);
            },
            None => self.key(key).push_str("null"),
        }
        self
    }
    fn finish(&mut self) -> String {
        self.0.push('}');
        std::mem::take(&mut self.0)
    }
}

/// The channel a session's change events go to: chat_updates_<session id without dashes>.
pub fn chat_channel(session: &pgrx::Uuid) -> String {
    let mut channel = String::from("chat_updates_");
    for byte in session.as_bytes() {
        channel.push_str(&format!("{byte:02x}"));
    }
    channel
}

/// Is memoriesdb.global_events anything but 'off'?
fn global_events() -> bool {
    // SAFETY: reads a (possibly undefined) custom setting; missing_ok returns NULL.
    unsafe {
        let value = pg_sys::GetConfigOption(c"memoriesdb.global_events".as_ptr(), true, false);
        value.is_null() || CStr::from_ptr(value).to_bytes() != b"off"
    }
}

/// The erasable parts of an audited memories row (sql/audit.sql: audit_erasable_text()).
const ERASABLE_KEYS: &str = "content,content_embedding,_metadata";

/// An audit row's jsonb of the memories row `row` (SQL): the row without search_tsv — and when
/// `redacted` (SQL; `j.v` is the row as jsonb) without its erasable content either, marked
/// content_redacted (content_hash kept).
fn audited_row(row: &str, redacted: &str) -> String {
    format!(
        "(SELECT CASE WHEN {redacted}
                      THEN (j.v OPERATOR(pg_catalog.-) '{{search_tsv,{ERASABLE_KEYS}}}'::pg_catalog.text[])
                           OPERATOR(pg_catalog.||) '{{\"content_redacted\": true}}'::pg_catalog.jsonb
                      ELSE j.v OPERATOR(pg_catalog.-) 'search_tsv'::pg_catalog.text END
            FROM (SELECT pg_catalog.to_jsonb({row}) AS v) j)"
    )
}

/// The new_row of a new memory's audit row, for the memories row `row` (SQL): redacted for a
/// memory written with an expiry — its content was declared temporary from the start, so the
/// audit log never holds it, and the sweep has nothing to erase. (expires_at is read from the
/// jsonb: a catalog older than the library has no such column.)
fn new_memory_audited_row(row: &str) -> String {
    audited_row(row, "pg_catalog.jsonb_typeof(j.v OPERATOR(pg_catalog.->) 'expires_at') OPERATOR(pg_catalog.=) 'string'")
}

/// Write the audit rows of `rows` (new memories, composite datums of `rowtype`, in the order
/// they were inserted) and the queue rows `queue` (row number, id, content hash) among them.
fn audit_and_queue(spi: &spi::Connection, rowtype: pg_sys::Oid, rows: &mut [pg_sys::Datum], queue: &[(usize, pgrx::Uuid, Option<String>)]) {
    if let [row] = rows {
        // an append: one row, one lean statement
        let (id, hash) = queue.first().map_or((None, None), |(_, id, hash)| (Some(*id), hash.clone()));
        spi.execute_kept(
            &AUDIT_AND_QUEUE_NEW_MEMORY,
            || {
                format!(
                    "WITH queued AS (
                        INSERT INTO {SCHEMA}.embedding_schedule (memory_id, content_hash)
                        SELECT $1, $2 WHERE $1 IS NOT NULL)
                     INSERT INTO {SCHEMA}.audit_log (table_name, operation, row_id, old_row, new_row, acting_user,
                                                     subject_user, db_role, txid)
                     VALUES ('memories', 'INSERT', ($3).id, NULL,
                             {audited_row},
                             ($3).created_by, ($3).created_by, {SCHEMA}.acting_db_role(), pg_catalog.txid_current())",
                    audited_row = new_memory_audited_row("$3")
                )
            },
            &[pg_sys::UUIDOID, pg_sys::TEXTOID, rowtype],
            &[arg(id), arg(hash), Some(*row)],
            Effect::Writes,
        );
        return;
    }
    let (ids, hashes): (Vec<_>, Vec<_>) = queue.iter().map(|(_, id, hash)| (*id, hash.clone())).unzip();
    // SAFETY: a catalog lookup of the row type's array type; an array of composite datums of
    // `rowtype` (varlena, aligned as double).
    let (row_array_type, row_array) = unsafe {
        let array = pg_sys::construct_array(rows.as_mut_ptr(), rows.len() as i32, rowtype, -1, false, pg_sys::TYPALIGN_DOUBLE as _);
        (pg_sys::get_array_type(rowtype), pg_sys::Datum::from(array))
    };
    spi.execute_kept(
        &AUDIT_AND_QUEUE_NEW_MEMORIES,
        || {
            format!(
                "WITH queued AS (
                    INSERT INTO {SCHEMA}.embedding_schedule (memory_id, content_hash)
                    SELECT q.id, q.hash
                      FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2)) AS q(id, hash))
                 INSERT INTO {SCHEMA}.audit_log (table_name, operation, row_id, old_row, new_row, acting_user,
                                                 subject_user, db_role, txid)
                 SELECT 'memories', 'INSERT', (n.r).id, NULL,
                        {audited_row},
                        (n.r).created_by, (n.r).created_by, {SCHEMA}.acting_db_role(), pg_catalog.txid_current()
                   FROM pg_catalog.generate_subscripts($3, 1) AS i
                  CROSS JOIN LATERAL (SELECT ($3)[i] AS r) n
                  ORDER BY i",
                audited_row = new_memory_audited_row("n.r")
            )
        },
        &[pg_sys::UUIDARRAYOID, pg_sys::TEXTARRAYOID, row_array_type],
        &[arg(ids), arg(hashes), Some(row_array)],
        Effect::Writes,
    );
}

unsafe fn memories_inserted(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: the guarded entry point checked that PostgreSQL called this as a trigger.
    let (memories, rowtype, desc, store, queue) = unsafe {
        let trigger = (*fcinfo).context.cast::<pg_sys::TriggerData>();
        let event = (*trigger).tg_event;
        let store = (*trigger).tg_newtable;
        if event & pg_sys::TRIGGER_EVENT_ROW != 0
            || event & pg_sys::TRIGGER_EVENT_OPMASK != pg_sys::TRIGGER_EVENT_INSERT
            || store.is_null()
        {
            raise(
                PgSqlErrorCode::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
                "memories_inserted() must be an AFTER INSERT statement trigger with REFERENCING NEW TABLE".into(),
                None,
            );
        }
        let desc = (*(*trigger).tg_relation).rd_att;
        let rowtype = (*(*(*trigger).tg_relation).rd_rel).reltype;
        let slot = pg_sys::MakeSingleTupleTableSlot(desc, &pg_sys::TTSOpsMinimalTuple);
        let mut memories = Vec::new();
        // (row number, id, content hash) of the new memories with content, to embed
        let mut queue: Vec<(usize, pgrx::Uuid, Option<String>)> = Vec::new();
        pg_sys::tuplestore_rescan(store);
        while pg_sys::tuplestore_gettupleslot(store, true, false, slot) {
            let mut should_free = false;
            let tuple = pg_sys::ExecFetchSlotHeapTuple(slot, false, &mut should_free);
            let value = |name: &CStr| attribute(tuple, desc, name).and_then(|a| a.value);
            let text = |name: &CStr| value(name).map(|d| String::from_utf8_lossy(text_bytes(d)).into_owned());
            let id = uuid_value(value(c"id")).expect("memories.id is NOT NULL");
            // (the size without detoasting: a large content is not read here)
            if value(c"content").is_some_and(|d| pg_sys::toast_raw_datum_size(d) > pg_sys::VARHDRSZ) {
                queue.push((memories.len(), id, text(c"content_hash")));
            }
            memories.push(NewMemory {
                id,
                kind: text(c"kind").unwrap_or_default(),
                session: uuid_value(value(c"session_id")),
                position: value(c"position").and_then(|d| i64::from_datum(d, false)),
                role: text(c"role"),
                created_at: value(c"_created_at"),
            });
            if should_free {
                pg_sys::heap_freetuple(tuple);
            }
        }
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        (memories, rowtype, desc, store, queue)
    };

    // The audit rows of the new memories (in the order they were inserted) and their queue rows,
    // the same audit row log_memory_change() writes for an UPDATE or DELETE, its jsonb made by
    // to_jsonb() from the row as it was stored: one lean statement for a one-row INSERT (an
    // append), else one per batch of at most 1,000 rows and about 64 MiB, the rows copied into
    // a memory context emptied after each batch (memory stays bounded whatever the statement
    // inserted; the transition table itself spills to disk).
    // (a table re-created by DROP and CREATE EXTENSION in this backend has a new row type)
    if NEW_MEMORIES_ROWTYPE.get() != rowtype {
        AUDIT_AND_QUEUE_NEW_MEMORIES.with(KeptPlan::forget);
        AUDIT_AND_QUEUE_NEW_MEMORY.with(KeptPlan::forget);
        NEW_MEMORIES_ROWTYPE.set(rowtype);
    }
    let queued = !queue.is_empty();
    spi::connect(|spi| {
        // SAFETY: the trigger's transition table, read again from the start, each row copied as a
        // composite datum of `rowtype` into a context of our own that is reset after its batch
        // has been written (nothing of a batch is used after that).
        unsafe {
            let batch_context = pg_sys::AllocSetContextCreateExtended(
                pg_sys::CurrentMemoryContext,
                c"memories_inserted() audit rows".as_ptr(),
                pg_sys::ALLOCSET_DEFAULT_MINSIZE as usize,
                pg_sys::ALLOCSET_DEFAULT_INITSIZE as usize,
                pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
            );
            let slot = pg_sys::MakeSingleTupleTableSlot(desc, &pg_sys::TTSOpsMinimalTuple);
            let mut batch: Vec<pg_sys::Datum> = Vec::new();
            let (mut bytes, mut first) = (0usize, 0usize);
            let mut queue = queue.as_slice();
            pg_sys::tuplestore_rescan(store);
            loop {
                let more = pg_sys::tuplestore_gettupleslot(store, true, false, slot);
                if more {
                    let caller_context = pg_sys::MemoryContextSwitchTo(batch_context);
                    let mut should_free = false;
                    let tuple = pg_sys::ExecFetchSlotHeapTuple(slot, false, &mut should_free);
                    let row = pg_sys::heap_copy_tuple_as_datum(tuple, desc);
                    pg_sys::MemoryContextSwitchTo(caller_context);
                    bytes += pgrx::varlena::varsize_any(row.cast_mut_ptr());
                    batch.push(row);
                }
                let full = batch.len() >= AUDIT_ROWS_PER_STATEMENT || bytes >= AUDIT_BYTES_PER_STATEMENT;
                if !batch.is_empty() && (full || !more) {
                    let end = first + batch.len();
                    let in_batch = queue.iter().take_while(|(row, ..)| *row < end).count();
                    audit_and_queue(spi, rowtype, &mut batch, &queue[..in_batch]);
                    queue = &queue[in_batch..];
                    first = end;
                    batch.clear();
                    bytes = 0;
                    pg_sys::MemoryContextReset(batch_context);
                }
                if !more {
                    break;
                }
            }
            pg_sys::ExecDropSingleTupleTableSlot(slot);
            pg_sys::MemoryContextDelete(batch_context);
        }
    });

    let global = global_events();
    let mut events: Vec<(Option<String>, Option<String>)> = Vec::new();
    let mut messages: Vec<&NewMemory> = memories.iter().filter(|m| m.kind == "message").collect();
    let by_session_then_position =
        |a: &&NewMemory, b: &&NewMemory| (a.session.is_none(), a.session.map(|s| *s.as_bytes()), a.position.is_none(), a.position)
            .cmp(&(b.session.is_none(), b.session.map(|s| *s.as_bytes()), b.position.is_none(), b.position));
    if messages.len() <= EVENTS_PER_MESSAGE_UP_TO {
        messages.sort_by(by_session_then_position);
        for m in &messages {
            let payload = m.insert_event();
            // (a message without a session gets a NULL channel: NOTIFY refuses it, the relay skips it)
            events.push((m.session.as_ref().map(chat_channel), Some(payload.clone())));
            if global {
                events.push((Some("memoriesdb_events".into()), Some(payload)));
            }
        }
        if global {
            for s in memories.iter().filter(|m| m.kind == "session") {
                events.push((Some("memoriesdb_events".into()), Some(s.insert_event())));
            }
        }
    } else {
        // one summary per session: (session, count, first position, last position)
        let mut summaries: std::collections::BTreeMap<Option<[u8; 16]>, (Option<pgrx::Uuid>, i64, Option<i64>, Option<i64>)> =
            Default::default();
        for m in &messages {
            let entry = summaries.entry(m.session.map(|s| *s.as_bytes())).or_insert((m.session, 0, None, None));
            entry.1 += 1;
            entry.2 = match (entry.2, m.position) { (Some(a), Some(b)) => Some(a.min(b)), (a, b) => a.or(b) };
            entry.3 = match (entry.3, m.position) { (Some(a), Some(b)) => Some(a.max(b)), (a, b) => a.or(b) };
        }
        // sessions in uuid order, a NULL session last (as ORDER BY does)
        let mut ordered: Vec<_> = summaries.into_values().collect();
        ordered.sort_by_key(|(session, ..)| (session.is_none(), session.map(|s| *s.as_bytes())));
        for (session, count, first, last) in ordered {
            let payload = JsonObject::new()
                .text("op", Some("BULK_INSERT"))
                .text("table", Some("memories"))
                .text("kind", Some("message"))
                .text("session_id", session.map(|s| s.to_string()).as_deref())
                .number("count", Some(count))
                .number("first_position", first)
                .number("last_position", last)
                .finish();
            events.push((session.as_ref().map(chat_channel), Some(payload.clone())));
            if global {
                events.push((Some("memoriesdb_events".into()), Some(payload)));
            }
        }
    }
    if queued {
        events.push((Some("memoriesdb_embedding_queue".into()), Some(String::new())));
    }
    let (channels, payloads): (Vec<_>, Vec<_>) = events.into_iter().unzip();
    crate::events::emit(channels, payloads);
    pg_sys::Datum::from(0usize)
}

crate::fmgr::guarded_trigger_entry!(
    pg_finfo_memories_inserted_guarded,
    memories_inserted_guarded,
    memories_inserted,
    "memories_inserted()"
);

// A database still on the 0.1.0 catalog, between installing this library and ALTER EXTENSION
// memoriesdb UPDATE, calls its hash trigger function update_content_hash() by this symbol. It
// gets derive_row_fields(), which sets the same hash (and the provenance and embedding fields
// that 0.1.0's own triggers then set to the same values).
crate::fmgr::guarded_trigger_entry!(
    pg_finfo_update_content_hash_guarded,
    update_content_hash_guarded,
    derive_row_fields,
    "update_content_hash()"
);
