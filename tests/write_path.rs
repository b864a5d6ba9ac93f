//! One write path: a message appended through the API and the same message inserted as direct
//! DML derive the same rows — content hash, provenance, audit row, embedding queue entry and
//! change events — because both go through the same triggers (src/write_path.rs and the
//! statement trigger of sql/events.sql), whatever the caller supplies for derived columns.

use memoriesdb_integration_tests::{chat_channel, TestDb};
use postgres::fallible_iterator::FallibleIterator;
use postgres::Client;
use serde_json::Value;
use std::time::Duration;
use uuid::Uuid;

/// Notifications that arrive on `listener` within `wait`, as (channel, payload).
fn drain(listener: &mut Client, wait: Duration) -> Vec<(String, String)> {
    let mut got = Vec::new();
    let mut notifications = listener.notifications();
    let mut it = notifications.timeout_iter(wait);
    while let Some(n) = it.next().unwrap() {
        got.push((n.channel().to_string(), n.payload().to_string()));
    }
    got
}

/// A JSON object without the keys that name the particular row, session or moment.
fn without_identity(mut value: Value, keys: &[&str]) -> Value {
    if let Some(object) = value.as_object_mut() {
        for key in keys {
            object.remove(*key);
        }
    }
    value
}

const ROW_IDENTITY: &[&str] = &["id", "session_id", "_created_at", "_updated_at", "created_at"];

/// Everything the extension derived for one new message, with what identifies the row masked.
fn derived(admin: &mut Client, id: Uuid, events: &[(String, String)], session: Uuid) -> Vec<String> {
    let mut seen = Vec::new();
    let row = admin
        .query_one(
            "SELECT content_hash, created_by, updated_by, kind, role, _metadata::text, position,
                    content_embedding IS NULL AND embedding_model IS NULL, search_config::text
               FROM memoriesdb.memories WHERE id = $1",
            &[&id],
        )
        .unwrap();
    seen.push(format!(
        "row: hash={} created_by={:?} updated_by={:?} kind={} role={} metadata={} position={} no_embedding={} config={}",
        row.get::<_, String>(0),
        row.get::<_, Option<Uuid>>(1),
        row.get::<_, Option<Uuid>>(2),
        row.get::<_, String>(3),
        row.get::<_, String>(4),
        row.get::<_, String>(5),
        row.get::<_, i64>(6),
        row.get::<_, bool>(7),
        row.get::<_, String>(8)
    ));
    for audit in admin
        .query(
            "SELECT table_name, operation, acting_user, subject_user, db_role::text, old_row, new_row
               FROM memoriesdb.audit_log WHERE row_id = $1 ORDER BY id",
            &[&id],
        )
        .unwrap()
    {
        seen.push(format!(
            "audit: {} {} acting={:?} subject={:?} role={} old={:?} new={}",
            audit.get::<_, String>(0),
            audit.get::<_, String>(1),
            audit.get::<_, Option<Uuid>>(2),
            audit.get::<_, Option<Uuid>>(3),
            audit.get::<_, String>(4),
            audit.get::<_, Option<Value>>(5),
            without_identity(audit.get::<_, Value>(6), ROW_IDENTITY)
        ));
    }
    for queued in admin
        .query("SELECT content_hash, status, attempts FROM memoriesdb.embedding_schedule WHERE memory_id = $1", &[&id])
        .unwrap()
    {
        seen.push(format!(
            "queue: hash={} status={} attempts={}",
            queued.get::<_, String>(0),
            queued.get::<_, String>(1),
            queued.get::<_, i32>(2)
        ));
    }
    let own_channel = chat_channel(&session);
    for (channel, payload) in events {
        let channel = if *channel == own_channel { "chat_updates_<session>".to_string() } else { channel.clone() };
        let payload = if payload.is_empty() {
            String::new()
        } else {
            let value: Value = serde_json::from_str(payload).expect("event payloads are JSON");
            assert!(
                value.get("id").is_none_or(|v| v.as_str() == Some(&id.to_string())),
                "the event names the new message: {value}"
            );
            without_identity(value, ROW_IDENTITY).to_string()
        };
        seen.push(format!("event {channel}: {payload}"));
    }
    seen
}

#[test]
fn a_message_appended_through_the_api_and_inserted_directly_derives_the_same_rows() {
    let db = TestDb::new();
    let mut app = db.connect();
    let through_api: Uuid = app.query_one("SELECT create_session('through the API')", &[]).unwrap().get(0);
    let direct: Uuid = app.query_one("SELECT create_session('direct DML')", &[]).unwrap().get(0);
    let mut listener = db.admin();
    listener
        .batch_execute(&format!(
            "LISTEN {}; LISTEN {}; LISTEN memoriesdb_events; LISTEN memoriesdb_embedding_queue",
            chat_channel(&through_api),
            chat_channel(&direct)
        ))
        .unwrap();
    drain(&mut listener, Duration::from_millis(300));

    // Both writes by the same role (an administrator acting as the user, so that direct DML may
    // write a message), each in its own transaction.
    let mut admin = db.admin();
    let mut t = admin.transaction().unwrap();
    t.query("SELECT memoriesdb.set_memory_user($1)", &[&db.user]).unwrap();
    let api_id: Uuid = t
        .query_one(
            "SELECT memoriesdb.add_message_to_session($1, 'user', 'the same words', '{\"k\": [1, 2.50]}')",
            &[&through_api],
        )
        .unwrap()
        .get(0);
    t.commit().unwrap();
    let api_events = drain(&mut listener, Duration::from_secs(2));

    let mut t = admin.transaction().unwrap();
    t.query("SELECT memoriesdb.set_memory_user($1)", &[&db.user]).unwrap();
    // derived columns supplied by the caller are replaced, never trusted
    let forged_user = Uuid::new_v4();
    let dml_id: Uuid = t
        .query_one(
            "INSERT INTO memoriesdb.memories (kind, content, _metadata, session_id, position, role,
                                              content_hash, created_by, updated_by)
             VALUES ('message', 'the same words', '{\"k\": [1, 2.50]}', $1, 1, 'user', 'forged', $2, $2)
             RETURNING id",
            &[&direct, &forged_user],
        )
        .unwrap()
        .get(0);
    t.execute("UPDATE memoriesdb.memory_sessions SET last_position = 1 WHERE id = $1", &[&direct]).unwrap();
    t.commit().unwrap();
    let dml_events = drain(&mut listener, Duration::from_secs(2));

    let api = derived(&mut admin, api_id, &api_events, through_api);
    let dml = derived(&mut admin, dml_id, &dml_events, direct);
    assert!(api.iter().any(|l| l.starts_with("audit: memories INSERT")), "the API write is audited: {api:#?}");
    assert!(api.iter().any(|l| l.starts_with("queue: ")), "the API write is queued for embedding: {api:#?}");
    assert!(api.iter().any(|l| l.starts_with("event chat_updates_<session>: ")), "the API write sends its event: {api:#?}");
    assert!(
        api[0].contains(&format!("created_by=Some({})", db.user)) && !api[0].contains("forged"),
        "provenance is the acting user: {}",
        api[0]
    );
    assert_eq!(api, dml, "the API and direct DML derive different rows");

    // and an UPDATE of content re-derives the same way on both
    for id in [api_id, dml_id] {
        let mut t = admin.transaction().unwrap();
        t.query("SELECT memoriesdb.set_memory_user($1)", &[&db.user]).unwrap();
        t.execute("UPDATE memoriesdb.memories SET content = 'other words', content_hash = 'forged' WHERE id = $1", &[&id])
            .unwrap();
        t.commit().unwrap();
    }
    let after: Vec<(String, Option<Uuid>)> = admin
        .query("SELECT content_hash, updated_by FROM memoriesdb.memories WHERE id = ANY($1) ORDER BY id", &[&vec![api_id, dml_id]])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(after[0], after[1]);
    assert_eq!(after[0].1, Some(db.user));
    assert_ne!(after[0].0, "forged");
}

/// The fields a client (a driver, the hub) uses to tell one error from another.
fn error_fields(err: &postgres::Error) -> (String, Option<String>, Option<String>, Option<String>) {
    let db = err.as_db_error().unwrap_or_else(|| panic!("not a database error: {err}"));
    (
        db.code().code().to_string(),
        db.schema().map(str::to_string),
        db.table().map(str::to_string),
        db.constraint().map(str::to_string),
    )
}

/// An error raised by a statement the Rust functions run reaches the client exactly as
/// PostgreSQL raised it: SQLSTATE, message, detail, schema, table, constraint and CONTEXT — also
/// from a trigger the statement fires (a second Rust function below the first), and also to a
/// PL/pgSQL caller that catches it, whose session then goes on working.
#[test]
fn errors_raised_inside_the_rust_write_path_keep_every_field() {
    let db = TestDb::new();
    let mut admin = db.admin();
    // rules an administrator might add
    admin
        .batch_execute(
            "ALTER TABLE memoriesdb.memories ADD CONSTRAINT content_fits CHECK (pg_catalog.length(content) < 40);
             ALTER TABLE memoriesdb.audit_log ADD CONSTRAINT no_forbidden_words
                 CHECK (new_row->>'content' IS DISTINCT FROM 'forbidden');",
        )
        .unwrap();
    let mut app = db.connect();
    let session: Uuid = app.query_one("SELECT create_session('errors')", &[]).unwrap().get(0);
    let long = "x".repeat(50);

    // the row violates a check of memories: the INSERT add_message_to_session() runs
    let err = app.query_one("SELECT add_message_to_session($1, 'user', $2)", &[&session, &long]).unwrap_err();
    assert_eq!(
        error_fields(&err),
        ("23514".into(), Some("memoriesdb".into()), Some("memories".into()), Some("content_fits".into())),
        "{err:?}"
    );
    let db_error = err.as_db_error().unwrap();
    assert_eq!(db_error.message(), "new row for relation \"memories\" violates check constraint \"content_fits\"");
    assert!(db_error.detail().is_some_and(|d| d.starts_with("Failing row contains")), "{db_error:?}");
    assert!(db_error.where_().is_some_and(|w| w.contains("INSERT INTO")), "CONTEXT names the statement: {db_error:?}");
    // the same violation by direct DML carries the same fields
    let mut t = admin.transaction().unwrap();
    t.query("SELECT memoriesdb.set_memory_user($1)", &[&db.user]).unwrap();
    let direct = t
        .query(
            "INSERT INTO memoriesdb.memories (kind, content, session_id, position, role) VALUES ('message', $2, $1, 1, 'user')",
            &[&session, &long],
        )
        .unwrap_err();
    t.rollback().unwrap();
    assert_eq!(error_fields(&direct), error_fields(&err));

    // the audit row (written by the audit trigger, Rust below Rust) violates a check of audit_log
    let err = app.query_one("SELECT add_message_to_session($1, 'user', 'forbidden')", &[&session]).unwrap_err();
    assert_eq!(
        error_fields(&err),
        ("23514".into(), Some("memoriesdb".into()), Some("audit_log".into()), Some("no_forbidden_words".into())),
        "{err:?}"
    );

    // a PL/pgSQL caller catches it with every field, and the session goes on working
    app.batch_execute(
        "CREATE FUNCTION pg_temp.try_append(s uuid, words text) RETURNS text LANGUAGE plpgsql AS $$
         DECLARE c text; t text; state text;
         BEGIN
             PERFORM add_message_to_session(s, 'user', words);
             RETURN 'appended';
         EXCEPTION WHEN OTHERS THEN
             GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, c = CONSTRAINT_NAME, t = TABLE_NAME;
             RETURN state || ' ' || t || '.' || c;
         END $$",
    )
    .unwrap();
    let caught: String = app.query_one("SELECT pg_temp.try_append($1, $2)", &[&session, &long]).unwrap().get(0);
    assert_eq!(caught, "23514 memories.content_fits");
    let appended: String = app.query_one("SELECT pg_temp.try_append($1, 'fine')", &[&session]).unwrap().get(0);
    assert_eq!(appended, "appended");
    let positions: Vec<i64> = app
        .query("SELECT position FROM memoriesdb.memories WHERE session_id = $1 ORDER BY position", &[&session])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(positions, vec![1], "failed appends took no position");
}

/// A new memory's audit row is written once per INSERT statement (with its queue row), in
/// batches of at most 1,000 rows and 64 MiB: statements of 2,500 rows and of 150 rows of 1 MB get
/// every audit and queue row, in the order the rows were inserted, each equal to what the row
/// itself says, and the sealed chain verifies.
#[test]
fn a_large_insert_audits_and_queues_every_row_in_order() {
    let db = TestDb::new();
    let mut app = db.connect();
    let me: Uuid = app.query_one("SELECT current_memory_user()", &[]).unwrap().get(0);
    app.execute(
        "INSERT INTO memories (content, _metadata)
         SELECT 'bulk ' || i, jsonb_build_object('i', i) FROM generate_series(1, 2500) i",
        &[],
    )
    .unwrap();
    let mut admin = db.admin();
    let row = admin
        .query_one(
            "SELECT count(*),
                    -- audit rows in insertion order: ids ascend with the rows' numbers
                    bool_and(prev_i IS NULL OR prev_i < i),
                    -- each audit row is the stored row, without search_tsv
                    bool_and(a.new_row = to_jsonb(m) - 'search_tsv'),
                    bool_and(a.acting_user = $1 AND a.subject_user = $1 AND a.operation = 'INSERT' AND a.old_row IS NULL),
                    count(DISTINCT a.txid)
               FROM (SELECT x.*, (x.new_row->'_metadata'->>'i')::int AS i,
                            lag((x.new_row->'_metadata'->>'i')::int) OVER (ORDER BY x.id) AS prev_i
                       FROM memoriesdb.audit_log x
                      WHERE x.table_name = 'memories' AND x.new_row->>'content' LIKE 'bulk %') a
               JOIN memoriesdb.memories m ON m.id = a.row_id",
            &[&me],
        )
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 2500, "one audit row per inserted row");
    assert!(row.get::<_, bool>(1), "audit rows follow the insertion order");
    assert!(row.get::<_, bool>(2), "each audit row holds the row as stored");
    assert!(row.get::<_, bool>(3), "acting and subject user, operation");
    assert_eq!(row.get::<_, i64>(4), 1, "all in the writer's transaction");
    let queued: i64 = admin
        .query_one(
            "SELECT count(*) FROM memoriesdb.embedding_schedule q JOIN memoriesdb.memories m ON m.id = q.memory_id
              WHERE m.content LIKE 'bulk %' AND q.content_hash = m.content_hash",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(queued, 2500, "every row queued for embedding, with its hash");
    // large rows end a batch early (64 MiB): 150 memories of 1 MB each that hardly compress (hex
    // digits: about 0.5 MB stored), so more than one batch
    app.execute(
        "INSERT INTO memories (content, _metadata)
         SELECT 'big ' || i || ' ' || (SELECT string_agg(md5(i || ':' || j), '') FROM generate_series(1, 31250) j),
                jsonb_build_object('i', i)
           FROM generate_series(1, 150) i",
        &[],
    )
    .unwrap();
    let big = admin
        .query_one(
            "SELECT count(*), bool_and(a.length > 1000000), bool_and(a.prev_i IS NULL OR a.prev_i < a.i)
               FROM (SELECT length(x.new_row->>'content') AS length, (x.new_row->'_metadata'->>'i')::int AS i,
                            lag((x.new_row->'_metadata'->>'i')::int) OVER (ORDER BY x.id) AS prev_i
                       FROM memoriesdb.audit_log x
                      WHERE x.table_name = 'memories' AND x.new_row->'_metadata' ? 'i'
                        AND x.row_id IN (SELECT id FROM memoriesdb.memories WHERE content LIKE 'big %')) a",
            &[],
        )
        .unwrap();
    assert_eq!(big.get::<_, i64>(0), 150, "every large row audited");
    assert!(big.get::<_, bool>(1) && big.get::<_, bool>(2), "whole, and in insertion order");
    admin.query_one("SELECT memoriesdb.seal_audit_log()", &[]).unwrap();
    let intact: bool = admin.query_one("SELECT intact FROM memoriesdb.verify_audit_chain()", &[]).unwrap().get(0);
    assert!(intact);
}

/// An embedding worker storing a memory's embedding is not a change of the memory: it writes no
/// audit row (it would hold the content twice over for every memory). Every other change is
/// audited: of the memory's content, metadata or configuration, also in one statement with an
/// embedding, and a change of the embedding by anyone but a worker (a user or a write grantee
/// could rank a memory first, or hide it from searches by model).
#[test]
fn a_worker_storing_an_embedding_writes_no_audit_row_but_every_other_change_does() {
    let db = TestDb::new();
    let mut app = db.connect();
    let mut admin = db.admin();
    let (worker_role, _) = db.extra_role("embedder");
    db.grant("memoriesdb_worker", &worker_role);
    let mut worker = db.connect_as(&worker_role);
    let id: Uuid = app.query_one("INSERT INTO memories (content) VALUES ('a note') RETURNING id", &[]).unwrap().get(0);
    let audited = |admin: &mut Client| -> Vec<String> {
        admin
            .query("SELECT operation FROM memoriesdb.audit_log WHERE row_id = $1 ORDER BY id", &[&id])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    assert_eq!(audited(&mut admin), ["INSERT"]);
    let hash: String = app.query_one("SELECT content_hash FROM memories WHERE id = $1", &[&id]).unwrap().get(0);
    let stored: bool = worker
        .query_one("SELECT memoriesdb.store_embedding($1, '[1,2,3]', 'model', $2)", &[&id, &hash])
        .unwrap()
        .get(0);
    assert!(stored);
    assert_eq!(audited(&mut admin), ["INSERT"], "the worker's store was audited");
    for change in [
        "UPDATE memories SET content_embedding = '[3,2,1]', embedding_model = 'mine' WHERE id = $1",
        "UPDATE memories SET _metadata = '{\"topic\": \"x\"}' WHERE id = $1",
        "UPDATE memories SET content = 'a new note' WHERE id = $1",
        "UPDATE memories SET content_embedding = '[1,1,1]', _metadata = '{}' WHERE id = $1",
        "UPDATE memories SET search_config = 'simple' WHERE id = $1",
    ] {
        app.execute(change, &[&id]).unwrap();
    }
    assert_eq!(audited(&mut admin), ["INSERT", "UPDATE", "UPDATE", "UPDATE", "UPDATE", "UPDATE"]);
    app.execute("SELECT delete_memory($1)", &[&id]).unwrap();
    assert_eq!(audited(&mut admin).last().map(String::as_str), Some("DELETE"));
}
