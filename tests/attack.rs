//! The attack suite: what a hostile tenant, a careless client or a poisoned session can try
//! against the trust boundary, each as the reviewer who broke it did (ordinary login roles on a
//! real cluster), each asserting that the promise holds. One test per defect of the trust-boundary
//! review (issue 10), named after it; the catalog tests keep new functions and grants honest.

use memoriesdb_integration_tests::{chat_channel, error_shape, sqlstate, TestDb};
use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, IsolationLevel};
use std::collections::BTreeSet;
use std::sync::{Arc, Barrier};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The functions memoriesdb_user may execute: the README's API plus the predicates PostgreSQL
/// itself evaluates as the caller (policies, column defaults, invoker functions). Anything else
/// the extension defines must be internal. Keep in step with sql/finalize.sql and the README.
const USER_FUNCTIONS: &[&str] = &[
    // the API
    "add_edge",
    "add_message_to_session",
    "add_messages_to_session",
    "add_session_summary",
    "content_sha256",
    "create_session",
    "current_memory_user",
    "delete_memory",
    "delete_session",
    "embed_text",
    "estimate_tokens",
    "facts",
    "forget_user",
    "fork_session",
    "get_context",
    "get_conversation_page",
    "get_conversation_text",
    "get_formatted_conversation",
    "get_recent_messages",
    "get_session",
    "hybrid_search",
    "list_sessions",
    "remember_fact",
    "remove_edge",
    "revoke_share",
    "search_memories",
    "semantic_search",
    "session_channel",
    "session_lineage",
    "set_memory_user",
    "set_retention_policy",
    "set_session_retention",
    "share_memory",
    "traverse_memory_graph",
    "uuid_generate_v7",
    "vector_search",
    "verify_memory_integrity",
    // evaluated as the caller: policies, defaults, invoker functions above
    "acting_db_role",
    "acting_role_bypasses_rls",
    "acting_role_is",
    "default_search_config",
    "metadata_object",
    "require_durable_search_config",
    "require_session",
    "search_limit",
    "searchable_text",
    "session_statistics_rows",
    "user_statistics_rows",
];

/// Extra functions for the specialised roles (members of memoriesdb_user).
/// SECURITY DEFINER functions written in Rust that pin no search_path: every statement they run
/// is fixed text naming everything schema-qualified, operators included (src/spi.rs), and a
/// pin would cost two search_path recomputations per call on the append path. Reviewed one by
/// one; search_path_poisoning_cannot_change_identity_or_visibility drives them under a poisoned
/// path.
const NATIVE_UNPINNED_DEFINERS: &[&str] =
    &[
        "add_message_to_session",
        "add_messages_to_session",
        "create_session",
        "fork_session",
        "log_memory_change",
        "memories_inserted",
        "seal_audit_log",
        "session_lineage",
        "verify_audit_chain",
    ];

const ROLE_FUNCTIONS: &[(&str, &[&str])] = &[
    (
        "memoriesdb_worker",
        &[
            "claim_embedding_batch",
            "create_vector_index",
            "apply_retention_policies",
            "fail_embedding",
            "fold_memory_accesses",
            "process_vindexing",
            "require_usable_embedding",
            "restore_vector_indexes",
            "retry_dead_embeddings",
            "seal_audit_log",
            "store_embedding",
            "store_embedding_chunks",
            "sweep_expired_memories",
        ],
    ),
    ("memoriesdb_auditor", &["seal_audit_log", "verify_audit_chain"]),
    ("memoriesdb_trusted", &["create_user", "user_exists"]),
];

fn names(c: &mut Client, sql: impl AsRef<str>) -> BTreeSet<String> {
    let sql = sql.as_ref();
    c.query(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {}", error_shape(&e, &[]))).iter().map(|r| r.get(0)).collect()
}

fn set(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Defect 7 and the design change: no extension function is executable by PUBLIC, and
/// memoriesdb_user (and the specialised roles) can execute exactly the documented ones.
#[test]
fn catalog_no_function_is_executable_beyond_the_documented_api() {
    let db = TestDb::new();
    let mut admin = db.admin();
    let for_public = names(
        &mut admin,
        "SELECT p.proname::text FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(coalesce(p.proacl, pg_catalog.acldefault('f', p.proowner))) a
          WHERE p.pronamespace = 'memoriesdb'::regnamespace AND a.grantee = 0 AND a.privilege_type = 'EXECUTE'",
    );
    assert!(for_public.is_empty(), "functions executable by PUBLIC: {for_public:?}");

    let executable_by = |admin: &mut Client, role: &str| {
        names(
            admin,
            &format!(
                "SELECT p.proname::text FROM pg_catalog.pg_proc p
                  WHERE p.pronamespace = 'memoriesdb'::regnamespace
                    AND pg_catalog.has_function_privilege('{role}', p.oid, 'EXECUTE')"
            ),
        )
    };
    let user = executable_by(&mut admin, "memoriesdb_user");
    assert_eq!(user, set(USER_FUNCTIONS), "functions memoriesdb_user can execute (left) vs the documented list (right)");
    for (role, extra) in ROLE_FUNCTIONS {
        let expected: BTreeSet<String> = set(USER_FUNCTIONS).union(&set(extra)).cloned().collect();
        assert_eq!(executable_by(&mut admin, role), expected, "functions {role} can execute");
    }
    // and a role granted nothing cannot even reach the schema
    let outsider = db.outsider_role("outsider");
    let err = db.connect_as(&outsider).query_one("SELECT memoriesdb.create_session('x')", &[]).unwrap_err();
    assert_eq!(sqlstate(&err), "42501", "{}", error_shape(&err, &[]));
}

/// Defect 8 and the design change: no table grants UPDATE, DELETE or TRUNCATE (the privileges
/// LOCK TABLE ... IN ACCESS EXCLUSIVE MODE needs) to PUBLIC or to memoriesdb_user.
#[test]
fn catalog_no_table_grants_lock_capable_privileges_to_users() {
    let db = TestDb::new();
    let mut admin = db.admin();
    let lock_capable = names(
        &mut admin,
        "SELECT c.relname::text || ' ' || r.who || ' ' || p.privilege
           FROM pg_catalog.pg_class c,
                (VALUES ('memoriesdb_user'), ('public')) r(who),
                (VALUES ('UPDATE'), ('DELETE'), ('TRUNCATE')) p(privilege)
          WHERE c.relnamespace = 'memoriesdb'::regnamespace AND c.relkind IN ('r', 'v', 'm', 'p')
            AND pg_catalog.has_table_privilege(r.who, c.oid, p.privilege)",
    );
    assert!(lock_capable.is_empty(), "lock-capable table privileges: {lock_capable:?}");
}

/// Every function that runs SQL pins search_path to pg_catalog (so no caller-defined operator,
/// function or table can stand in for a built-in or an extension object) — or has a
/// SQL-standard body (BEGIN ATOMIC), which is parsed at install and resolves nothing at run
/// time — and no function still names the pgvector placeholder schema.
#[test]
fn catalog_every_sql_function_pins_search_path() {
    let db = TestDb::new();
    let mut admin = db.admin();
    let unpinned = names(
        &mut admin,
        "SELECT p.proname::text FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_language l ON l.oid = p.prolang
          WHERE p.pronamespace = 'memoriesdb'::regnamespace AND l.lanname IN ('sql', 'plpgsql')
            AND p.prosqlbody IS NULL
            AND NOT coalesce('search_path=pg_catalog, pg_temp' = ANY (p.proconfig), false)",
    );
    assert!(unpinned.is_empty(), "functions without SET search_path = pg_catalog, pg_temp: {unpinned:?}");
    let definer_unpinned = names(
        &mut admin,
        "SELECT p.proname::text FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_language l ON l.oid = p.prolang
          WHERE p.pronamespace = 'memoriesdb'::regnamespace AND p.prosecdef
            AND NOT coalesce('search_path=pg_catalog, pg_temp' = ANY (p.proconfig), false)
            AND NOT (l.lanname = 'c' AND p.proname::text = ANY (ARRAY[" .to_string()
            + &NATIVE_UNPINNED_DEFINERS.iter().map(|f| format!("'{f}'")).collect::<Vec<_>>().join(", ")
            + "]::text[]))",
    );
    assert!(
        definer_unpinned.is_empty(),
        "SECURITY DEFINER functions without a pinned search_path (only reviewed Rust entry points whose SQL is all schema-qualified may go without: NATIVE_UNPINNED_DEFINERS): {definer_unpinned:?}"
    );
    let placeholder = names(
        &mut admin,
        "SELECT p.proname::text FROM pg_catalog.pg_proc p
          WHERE p.pronamespace = 'memoriesdb'::regnamespace AND p.prosrc LIKE '%memoriesdb\\_pgvector%'",
    );
    assert!(placeholder.is_empty(), "functions still naming the pgvector placeholder: {placeholder:?}");
}

/// Defect 1: identity spoofing through search_path. A role with CREATE on a schema of its own
/// defines `=` operators that always answer true and a fake `users` table mapping its role to
/// alice, puts that schema first (before pg_catalog) and uses the API; then resets the path.
/// Neither during nor after may it act as, or read as, alice.
#[test]
fn search_path_poisoning_cannot_change_identity_or_visibility() {
    let db = TestDb::new();
    let (alice_role, alice) = db.extra_role("alice");
    let (bob_role, bob) = db.extra_role("bob");
    let mut a = db.connect_as(&alice_role);
    let secret_session: Uuid = a.query_one("SELECT create_session('alice secret session')", &[]).unwrap().get(0);
    a.query_one("SELECT add_message_to_session($1, 'user', 'alice secret message')", &[&secret_session]).unwrap();
    let secret_memory: Uuid =
        a.query_one("INSERT INTO memories (content) VALUES ('alice secret memory') RETURNING id", &[]).unwrap().get(0);
    let secret_message: Uuid =
        a.query_one("SELECT message_id FROM get_formatted_conversation($1)", &[&secret_session]).unwrap().get(0);
    // a session alice shares with bob: he may fork it, and his fork's lineage walks up to it
    let shared_session: Uuid = a.query_one("SELECT create_session('a shared conversation')", &[]).unwrap().get(0);
    a.query_one("SELECT add_message_to_session($1, 'user', 'shared message')", &[&shared_session]).unwrap();
    a.query_one("SELECT share_memory($1, $2, false)", &[&shared_session, &bob]).unwrap();

    db.admin().batch_execute(&format!("CREATE SCHEMA evil AUTHORIZATION {bob_role}")).unwrap();
    let mut b = db.connect_as(&bob_role);
    b.batch_execute(&format!(
        "CREATE FUNCTION evil.yes(oid, oid) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT true';
         CREATE FUNCTION evil.yes(name, name) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT true';
         CREATE FUNCTION evil.yes(uuid, uuid) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT true';
         CREATE FUNCTION evil.yes(text, text) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT true';
         CREATE FUNCTION evil.yes(bigint, bigint) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT true';
         CREATE FUNCTION evil.yes(name, text) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT true';
         CREATE OPERATOR evil.= (LEFTARG = oid, RIGHTARG = oid, FUNCTION = evil.yes);
         CREATE OPERATOR evil.= (LEFTARG = name, RIGHTARG = name, FUNCTION = evil.yes);
         CREATE OPERATOR evil.= (LEFTARG = uuid, RIGHTARG = uuid, FUNCTION = evil.yes);
         CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.yes);
         CREATE OPERATOR evil.= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = evil.yes);
         CREATE OPERATOR evil.= (LEFTARG = name, RIGHTARG = text, FUNCTION = evil.yes);
         CREATE OPERATOR evil.<= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = evil.yes);
         CREATE FUNCTION evil.yes(timestamptz, timestamptz) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT true';
         CREATE OPERATOR evil.> (LEFTARG = timestamptz, RIGHTARG = timestamptz, FUNCTION = evil.yes);
         CREATE FUNCTION evil.yes(integer, integer) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT true';
         CREATE OPERATOR evil.+ (LEFTARG = integer, RIGHTARG = integer, FUNCTION = evil.yes);
         CREATE FUNCTION evil.now() RETURNS timestamptz LANGUAGE sql IMMUTABLE AS 'SELECT ''-infinity''::timestamptz';
         CREATE TABLE evil.users (id uuid, name text, db_role name, _metadata jsonb);
         INSERT INTO evil.users VALUES ('{alice}', 'fake', '{bob_role}', '{{}}');
         CREATE TABLE evil.memories AS SELECT 'fake'::text AS content;
         CREATE TABLE evil.memory_sessions (id uuid, owner_id uuid, last_position bigint);"
    ))
    .unwrap();

    let mut problems = Vec::new();
    let mut check = |what: &str, ok: bool| {
        if !ok {
            problems.push(what.to_string());
        }
    };
    for path in ["evil, pg_catalog, public, memoriesdb", "evil, memoriesdb, pg_catalog", "pg_catalog, evil, memoriesdb"] {
        b.batch_execute(&format!("SET search_path = {path}")).unwrap();
        let me: Option<Uuid> = b.query_one("SELECT memoriesdb.current_memory_user()", &[]).unwrap().get(0);
        check(&format!("[{path}] current_memory_user() is bob"), me == Some(bob));
        let seen: Option<String> = b
            .query_one("SELECT pg_catalog.string_agg(content, '|') FROM memoriesdb.memories", &[])
            .unwrap()
            .get(0);
        check(&format!("[{path}] memories shows none of alice's: {seen:?}"), !seen.unwrap_or_default().contains("alice"));
        let transcript = b.query("SELECT * FROM memoriesdb.get_formatted_conversation($1)", &[&secret_session]);
        check(
            &format!("[{path}] alice's transcript is 'does not exist'"),
            transcript.as_ref().err().map(sqlstate).as_deref() == Some("P0002"),
        );
        let found = b
            .query("SELECT content FROM memoriesdb.search_memories('alice secret')", &[])
            .map(|rows| rows.len())
            .unwrap_or(0);
        check(&format!("[{path}] search finds none of alice's"), found == 0);
        let lineage = b.query("SELECT * FROM memoriesdb.session_lineage($1)", &[&secret_session]).map(|rows| rows.len());
        check(&format!("[{path}] session_lineage of alice's session is empty for bob: {lineage:?}"), matches!(lineage, Ok(0)));
        let forked = b.query_one("SELECT memoriesdb.fork_session($1, 'bob''s fork of alice')", &[&secret_session]);
        check(
            &format!("[{path}] bob's fork of alice's session: does not exist"),
            forked.as_ref().err().map(sqlstate).as_deref() == Some("P0002"),
        );
        let appended = b.query_one("SELECT memoriesdb.add_message_to_session($1, 'user', 'bob was here')", &[&secret_session]);
        check(&format!("[{path}] bob cannot append to alice's session"), appended.is_err());
        let walked = b.query("SELECT * FROM memoriesdb.traverse_memory_graph($1)", &[&secret_memory]);
        check(&format!("[{path}] traversal from alice's memory: does not exist"), walked.is_err());
        let shared = b.query_one("SELECT memoriesdb.share_memory($1, $2)", &[&secret_memory, &bob]);
        check(&format!("[{path}] bob cannot share alice's memory"), shared.is_err());
        let own: Uuid = b.query_one("SELECT memoriesdb.create_session('bob''s own')", &[]).unwrap().get(0);
        let appended_own = b.query_one("SELECT memoriesdb.add_message_to_session($1, 'user', 'bob''s own message')", &[&own]);
        check(&format!("[{path}] bob appends to his own session: {appended_own:?}"), appended_own.is_ok());
        let landed: i64 = db
            .admin()
            .query_one(
                "SELECT count(*) FROM memoriesdb.memories WHERE session_id = $1 AND position = 1 AND content = 'bob''s own message'",
                &[&own],
            )
            .unwrap()
            .get(0);
        check(&format!("[{path}] bob's message is at position 1 of his session"), landed == 1);
        let own_fork: Uuid = b.query_one("SELECT memoriesdb.fork_session($1, 'bob''s fork')", &[&own]).unwrap().get(0);
        let segments: Vec<(Uuid, i64)> = b
            .query("SELECT lineage_session_id, visible_upto FROM memoriesdb.session_lineage($1) ORDER BY generation", &[&own_fork])
            .unwrap()
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        check(
            &format!("[{path}] the lineage of bob's fork is the fork, then his session up to position 1: {segments:?}"),
            segments == vec![(own_fork, i64::MAX), (own, 1)],
        );
        // a fork at a named message: his own, and alice's secret one
        let own_message: Uuid =
            b.query_one("SELECT message_id FROM memoriesdb.get_formatted_conversation($1)", &[&own]).unwrap().get(0);
        let at_message = b.query_one("SELECT memoriesdb.fork_session($1, 'at his message', '{}', $2)", &[&own, &own_message]);
        check(&format!("[{path}] bob forks his session at his own message: {at_message:?}"), at_message.is_ok());
        let at_secret = b.query_one("SELECT memoriesdb.fork_session($1, 'at her message', '{}', $2)", &[&own, &secret_message]);
        check(
            &format!("[{path}] bob's fork at alice's secret message: does not exist"),
            at_secret.as_ref().err().map(sqlstate).as_deref() == Some("P0002"),
        );
        // a fork of the session alice shared with him walks up to it
        let shared_fork = b.query_one("SELECT memoriesdb.fork_session($1, 'fork of a shared session')", &[&shared_session]);
        let shared_segments: Vec<Uuid> = match &shared_fork {
            Ok(row) => b
                .query(
                    "SELECT lineage_session_id FROM memoriesdb.session_lineage($1) ORDER BY generation",
                    &[&row.get::<_, Uuid>(0)],
                )
                .unwrap()
                .iter()
                .map(|row| row.get(0))
                .collect(),
            Err(_) => Vec::new(),
        };
        check(
            &format!("[{path}] bob forks the shared session, and the fork's lineage reaches it: {shared_fork:?} {shared_segments:?}"),
            shared_segments.len() == 2 && shared_segments[1] == shared_session,
        );
        let owner: Option<Uuid> =
            b.query_one("SELECT created_by FROM memoriesdb.memories m WHERE m.id OPERATOR(pg_catalog.=) $1", &[&own]).unwrap().get(0);
        check(&format!("[{path}] a session bob creates is bob's"), owner == Some(bob));
    }
    b.batch_execute("RESET search_path").unwrap();
    let me: Option<Uuid> = b.query_one("SELECT current_memory_user()", &[]).unwrap().get(0);
    check("after RESET search_path, current_memory_user() is still bob", me == Some(bob));
    let seen: i64 = b
        .query_one(
            "SELECT count(*) FROM memories WHERE created_by = $1 AND id <> $2 AND session_id IS DISTINCT FROM $2",
            &[&alice, &shared_session],
        )
        .unwrap()
        .get(0);
    check("after RESET, none of alice's memories but the session she shared are visible", seen == 0);
    let audited: i64 = db
        .admin()
        .query_one("SELECT count(*) FROM memoriesdb.audit_log WHERE acting_user = $1 AND db_role = $2", &[&alice, &bob_role])
        .unwrap()
        .get(0);
    check("no audit row attributes bob's role's changes to alice", audited == 0);
    let alice_positions: i64 = db
        .admin()
        .query_one("SELECT last_position FROM memoriesdb.memory_sessions WHERE id = $1", &[&secret_session])
        .unwrap()
        .get(0);
    check("alice's session took no position from bob's appends", alice_positions == 1);
    assert!(problems.is_empty(), "search_path poisoning: {} problem(s):\n  - {}", problems.len(), problems.join("\n  - "));
}

/// Defect 8: no ordinary role may take locks that block other tenants: LOCK TABLE in any mode
/// stronger than ACCESS SHARE, row locks on the cycle-check row or on sessions.
#[test]
fn no_ordinary_role_can_lock_other_tenants_out() {
    let db = TestDb::new();
    let mut c = db.connect();
    let tables = [
        "memories",
        "users",
        "memory_edges",
        "memory_sessions",
        "memory_graph_clock",
        "embedding_schedule",
        "vindexing_schedule",
        "memory_shares",
        "memory_share_segments",
        "audit_log",
        "memory_event_outbox",
    ];
    let mut problems = Vec::new();
    for table in tables {
        for mode in ["ROW SHARE", "ROW EXCLUSIVE", "SHARE", "SHARE ROW EXCLUSIVE", "EXCLUSIVE", "ACCESS EXCLUSIVE"] {
            if mode == "ROW EXCLUSIVE" && (table == "memories" || table == "memory_edges") {
                continue; // what every INSERT takes anyway; it blocks no other tenant's writes
            }
            let mut t = c.transaction().unwrap();
            let r = t.batch_execute(&format!("LOCK TABLE memoriesdb.{table} IN {mode} MODE NOWAIT"));
            if r.as_ref().err().map(sqlstate).as_deref() != Some("42501") {
                problems.push(format!("LOCK {table} IN {mode} MODE: {:?}", r.map_err(|e| error_shape(&e, &[]))));
            }
            t.rollback().unwrap();
        }
    }
    for sql in [
        "SELECT * FROM memoriesdb.memory_graph_clock FOR UPDATE",
        "SELECT * FROM memoriesdb.memory_graph_clock FOR KEY SHARE",
        "SELECT * FROM memoriesdb.memory_sessions FOR UPDATE",
        "SELECT * FROM memoriesdb.users FOR UPDATE",
        "SELECT * FROM memoriesdb.memory_shares FOR SHARE",
    ] {
        let mut t = c.transaction().unwrap();
        let r = t.batch_execute(sql);
        if r.as_ref().err().map(sqlstate).as_deref() != Some("42501") {
            problems.push(format!("{sql}: {:?}", r.map_err(|e| error_shape(&e, &[]))));
        }
        t.rollback().unwrap();
    }
    assert!(problems.is_empty(), "lock denial of service: {} problem(s):\n  - {}", problems.len(), problems.join("\n  - "));
}

/// Defect 7: the internal helpers are not callable, and direct INSERTs cannot jam a session's
/// positions.
#[test]
fn internal_functions_are_not_callable_and_direct_inserts_cannot_jam_a_session() {
    let db = TestDb::new();
    let (alice_role, _alice) = db.extra_role("alice");
    let (bob_role, bob) = db.extra_role("bob");
    let mut a = db.connect_as(&alice_role);
    let session: Uuid = a.query_one("SELECT create_session('alice')", &[]).unwrap().get(0);
    a.query_one("SELECT add_message_to_session($1, 'user', 'one')", &[&session]).unwrap();
    a.query_one("SELECT share_memory($1, $2, true)", &[&session, &bob]).unwrap();
    let mut b = db.connect_as(&bob_role);
    let mut problems = Vec::new();
    for sql in [
        "SELECT memoriesdb.check_message_batch('[]')".to_string(),
        "SELECT memoriesdb.emit_events(ARRAY['chat_updates_x'], ARRAY['forged'])".to_string(),
        "SELECT memoriesdb.ensure_event_relay()".to_string(),
        "SELECT memoriesdb.derive_row_fields()".to_string(),
        "SELECT memoriesdb.prevent_cycles()".to_string(),
        format!("SELECT memoriesdb.memory_visible_to('{bob}', NULL, '{session}', 1, '{session}', NULL)"),
        format!("SELECT memoriesdb.session_visible_to('{bob}', '{session}')"),
    ] {
        let r = b.batch_execute(&sql);
        if r.as_ref().err().map(sqlstate).as_deref() != Some("42501") {
            problems.push(format!("{sql}: {:?}", r.map_err(|e| error_shape(&e, &[]))));
        }
    }
    // a write grantee (or anyone) inserting a message directly, at the next position or anywhere
    for position in [2i64, 3, 1000, i64::MAX] {
        let r = b.execute(
            "INSERT INTO memories (kind, content, session_id, position, role) VALUES ('message', 'jam', $1, $2, 'user')",
            &[&session, &position],
        );
        if r.as_ref().err().map(sqlstate).as_deref() != Some("42501") {
            problems.push(format!("direct message INSERT at {position}: {:?}", r.map_err(|e| error_shape(&e, &[]))));
        }
    }
    // the owner's next appends still work, at consecutive positions
    for expected in [2i64, 3] {
        let got: Result<i64, _> = a
            .query_one("SELECT add_message_to_session($1, 'user', 'next')", &[&session])
            .and_then(|r| a.query_one("SELECT position FROM memories WHERE id = $1", &[&r.get::<_, Uuid>(0)]))
            .map(|r| r.get(0));
        if got.as_ref().ok() != Some(&expected) {
            problems.push(format!("owner's append after the attempts: {:?}", got.map_err(|e| error_shape(&e, &[]))));
        }
    }
    assert!(problems.is_empty(), "internal API: {} problem(s):\n  - {}", problems.len(), problems.join("\n  - "));
}

/// Messages received on `listener` within `wait` whose channel is `channel`.
fn received(listener: &mut Client, channel: &str, want: usize, wait: Duration) -> usize {
    let deadline = Instant::now() + wait;
    let mut got = 0;
    let mut notifications = listener.notifications();
    while got < want && Instant::now() < deadline {
        let mut it = notifications.timeout_iter(deadline.saturating_duration_since(Instant::now()));
        match it.next() {
            Ok(Some(n)) if n.channel() == channel => got += 1,
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    got
}

/// Defect 2: a client idle in its transaction after a write, and a role holding advisory locks
/// on every key, freeze neither writers nor event delivery. (The relay used to wait for an
/// exclusive advisory lock behind the idle writer, and every later writer queued behind it.)
#[test]
fn an_idle_writer_or_advisory_locks_cannot_freeze_writes_or_events() {
    let db = TestDb::new();
    let (alice_role, _) = db.extra_role("alice");
    let (bob_role, _) = db.extra_role("bob");
    let mut a = db.connect_as(&alice_role);
    let alice_session: Uuid = a.query_one("SELECT create_session('alice')", &[]).unwrap().get(0);
    let mut b = db.connect_as(&bob_role);
    let bob_session: Uuid = b.query_one("SELECT create_session('bob')", &[]).unwrap().get(0);
    let mut listener = db.connect_as(&bob_role);
    let channel = chat_channel(&bob_session);
    listener.batch_execute(&format!("LISTEN {channel}")).unwrap();

    // the careless client: one write, then idle in its transaction
    a.batch_execute("BEGIN").unwrap();
    a.query_one("SELECT add_message_to_session($1, 'user', 'and then I went idle')", &[&alice_session]).unwrap();
    // the hostile one: every advisory lock the relay once used, exclusively, held open
    let mut hostile = db.connect_as(&alice_role);
    hostile
        .batch_execute(
            "BEGIN; SELECT pg_advisory_lock(1296318021, 1), pg_advisory_lock(1296318021, 2),
                           pg_advisory_xact_lock(1296318021, 1), pg_advisory_lock(1)",
        )
        .unwrap();
    // past the relay's idle exit (2 s), so that it tries to hand over while the writer idles
    thread::sleep(Duration::from_millis(2500));
    b.batch_execute("SET statement_timeout = '5s'").unwrap();
    for round in 0..2 {
        for i in 0..10 {
            let r = b.query_one("SELECT add_message_to_session($1, 'user', $2)", &[&bob_session, &format!("m{round}.{i}")]);
            assert!(r.is_ok(), "bob's write {round}.{i} stalled or failed: {:?}", r.map_err(|e| error_shape(&e, &[])));
        }
        let got = received(&mut listener, &channel, 10, Duration::from_secs(15));
        assert_eq!(got, 10, "bob's events in round {round} (of 10) while alice idles in her transaction");
        thread::sleep(Duration::from_millis(2500)); // and once more after another idle exit
    }
    a.batch_execute("COMMIT").unwrap();
    hostile.batch_execute("ROLLBACK").unwrap();
}

/// Defect 3: events NOTIFY cannot send (empty, NULL or over-long channel, a 9,000-byte
/// payload) are skipped by the relay; nobody but the extension can write them in the first place.
#[test]
fn an_event_the_relay_cannot_send_does_not_block_later_events() {
    let db = TestDb::new();
    let mut c = db.connect();
    let err = c.batch_execute("SELECT memoriesdb.emit_events(ARRAY[''], ARRAY['x'])").unwrap_err();
    assert_eq!(sqlstate(&err), "42501", "emit_events is internal: {}", error_shape(&err, &[]));
    let err = c.batch_execute("INSERT INTO memoriesdb.memory_event_outbox (channels, payloads) VALUES ('{x}', '{y}')").unwrap_err();
    assert_eq!(sqlstate(&err), "42501", "the outbox is the extension's: {}", error_shape(&err, &[]));

    let session: Uuid = c.query_one("SELECT create_session('poison')", &[]).unwrap().get(0);
    let mut listener = db.connect();
    let channel = chat_channel(&session);
    listener.batch_execute(&format!("LISTEN {channel}")).unwrap();
    // what an earlier release let anyone write: the poison, as only a superuser can now
    db.admin()
        .batch_execute(&format!(
            "INSERT INTO memoriesdb.memory_event_outbox (channels, payloads) VALUES
               (ARRAY[''], ARRAY['empty channel']),
               (ARRAY[NULL::text], ARRAY['null channel']),
               (ARRAY[repeat('c', 70)], ARRAY['long channel']),
               (ARRAY['{channel}'], ARRAY[repeat('p', 9000)]),
               (ARRAY['{channel}', ''], ARRAY['{{\"ok\": \"before\"}}', 'x'])"
        ))
        .unwrap();
    for i in 0..3 {
        c.query_one("SELECT add_message_to_session($1, 'user', $2)", &[&session, &format!("after the poison {i}")]).unwrap();
    }
    // the good event written with the poison, then the three messages
    assert_eq!(received(&mut listener, &channel, 4, Duration::from_secs(15)), 4, "events after the poison");
    let left: i64 = db.admin().query_one("SELECT count(*) FROM memoriesdb.memory_event_outbox", &[]).unwrap().get(0);
    assert_eq!(left, 0, "the relay consumed the poison rows instead of retrying them");
}

/// One repetition of a cycle race: `k` transactions each add one edge of the ring n0 -> n1 ->
/// ... -> n0 after `before` (per transaction, with its source as $1), at the same moment.
/// Returns whether the whole ring was committed.
fn race_once(db: &TestDb, clients: &mut [Client], setup: &mut Client, isolation: IsolationLevel, before: &str) -> bool {
    let k = clients.len();
    let nodes: Vec<Uuid> = setup
        .query("INSERT INTO memories (content) SELECT 'node ' || i FROM generate_series(1, $1) i RETURNING id", &[&(k as i32)])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let barrier = Arc::new(Barrier::new(k));
    thread::scope(|scope| {
        for (i, c) in clients.iter_mut().enumerate() {
            let (source, target) = (nodes[i], nodes[(i + 1) % k]);
            let barrier = barrier.clone();
            scope.spawn(move || {
                let mut t = c.build_transaction().isolation_level(isolation).start().unwrap();
                t.query_one("SELECT 1", &[]).unwrap(); // the snapshot, under REPEATABLE READ
                for statement in before.split(';').filter(|s| !s.trim().is_empty()) {
                    t.execute(statement, &[&source]).unwrap();
                }
                barrier.wait();
                let inserted = t.execute(
                    "INSERT INTO memory_edges (source_id, target_id, relation) VALUES ($1, $2, 'leads_to')",
                    &[&source, &target],
                );
                match inserted {
                    Ok(_) => {
                        let _ = t.commit();
                    }
                    Err(e) => {
                        let code = sqlstate(&e);
                        // refused (23514), or aborted by a serialization failure or a deadlock
                        // (the delete-and-reinsert variant locks rows both ways): no cycle either way
                        assert!(
                            ["23514", "40001", "40P01"].contains(&code.as_str()),
                            "unexpected error in a cycle race: {}",
                            error_shape(&e, &[])
                        );
                        let _ = t.rollback();
                    }
                }
            });
        }
    });
    let edges: i64 = db
        .admin()
        .query_one("SELECT count(*) FROM memoriesdb.memory_edges WHERE source_id = ANY($1)", &[&nodes])
        .unwrap()
        .get(0);
    edges as usize == k
}

fn cycles_committed(k: usize, isolation: IsolationLevel, before: &str, repetitions: usize) -> usize {
    let db = TestDb::new();
    // the delete-and-reinsert races deadlock by design; find out in 10 ms rather than 1 s
    db.admin().batch_execute(&format!("ALTER DATABASE {} SET deadlock_timeout = '10ms'", db.name)).unwrap();
    let mut setup = db.connect();
    let mut clients: Vec<Client> = (0..k).map(|_| db.connect()).collect();
    (0..repetitions).filter(|_| race_once(&db, &mut clients, &mut setup, isolation, before)).count()
}

const REPETITIONS: usize = 1000;
const UPDATE_FIRST: &str = "UPDATE memories SET content = content || ' touched' WHERE id = $1";
// Delete the source and insert it again under the same id: the new row is this transaction's,
// yet other transactions still see the old one.
const DELETE_THEN_REINSERT: &str = "SELECT delete_memory($1); INSERT INTO memories (id, content) VALUES ($1, 'again')";

/// Defect 4: 1,000 races of each kind, 0 cycles committed.
#[test]
fn cycle_races_plain() {
    assert_eq!(cycles_committed(2, IsolationLevel::ReadCommitted, "", REPETITIONS), 0);
}

#[test]
fn cycle_races_update_first() {
    assert_eq!(cycles_committed(2, IsolationLevel::ReadCommitted, UPDATE_FIRST, REPETITIONS), 0);
}

#[test]
fn cycle_races_three_nodes_update_first() {
    assert_eq!(cycles_committed(3, IsolationLevel::ReadCommitted, UPDATE_FIRST, REPETITIONS), 0);
}

#[test]
fn cycle_races_repeatable_read() {
    assert_eq!(cycles_committed(2, IsolationLevel::RepeatableRead, UPDATE_FIRST, REPETITIONS), 0);
}

#[test]
fn cycle_races_delete_then_reinsert() {
    assert_eq!(cycles_committed(2, IsolationLevel::ReadCommitted, DELETE_THEN_REINSERT, REPETITIONS), 0);
}

/// Defect 9: errors that pass through Rust carry a SQLSTATE, a message and a hint, never a
/// backtrace, even when whoever started the server had RUST_BACKTRACE=1 (as the test cluster's
/// starter may well have).
#[test]
fn errors_never_carry_a_rust_backtrace() {
    let db = TestDb::new();
    let mut c = db.connect();
    let a: Uuid = c.query_one("INSERT INTO memories (content) VALUES ('a') RETURNING id", &[]).unwrap().get(0);
    let b: Uuid = c.query_one("INSERT INTO memories (content) VALUES ('b') RETURNING id", &[]).unwrap().get(0);
    let d: Uuid = c.query_one("INSERT INTO memories (content) VALUES ('d') RETURNING id", &[]).unwrap().get(0);
    // a serialization failure raised inside prevent_cycles() (Rust) under REPEATABLE READ
    let mut stale = db.connect();
    let mut t = stale.build_transaction().isolation_level(IsolationLevel::RepeatableRead).start().unwrap();
    t.query_one("SELECT 1", &[]).unwrap();
    c.execute("INSERT INTO memory_edges (source_id, target_id, relation) VALUES ($1, $2, 'x')", &[&a, &b]).unwrap();
    let mut errors = vec![t
        .execute("INSERT INTO memory_edges (source_id, target_id, relation) VALUES ($1, $2, 'x')", &[&b, &d])
        .unwrap_err()];
    t.rollback().unwrap();
    // a cycle refusal, bad input to Rust functions, and a trigger function called directly by a superuser
    errors.push(c.execute("INSERT INTO memory_edges (source_id, target_id, relation) VALUES ($1, $2, 'x')", &[&b, &a]).unwrap_err());
    errors.push(c.query("SELECT * FROM traverse_memory_graph($1, direction => 'sideways')", &[&a]).unwrap_err());
    errors.push(c.batch_execute("SET app.\"current_user\" = 'not a uuid'; SELECT current_memory_user()").unwrap_err());
    c.batch_execute("RESET app.\"current_user\"").unwrap();
    errors.push(db.admin().batch_execute("SELECT memoriesdb.derive_row_fields()").unwrap_err());
    assert_eq!(sqlstate(&errors[0]), "40001", "{}", error_shape(&errors[0], &[]));
    // a trigger function called directly: refused as PL/pgSQL does it, not a panic (XX000)
    let direct = errors.last().unwrap();
    assert_eq!(sqlstate(direct), "0A000", "{}", error_shape(direct, &[]));
    for e in &errors {
        let shape = error_shape(e, &[]);
        assert!(
            !shape.contains("backtrace") && !shape.contains(".rs:") && !shape.contains("rust_begin_unwind"),
            "an error shows Rust internals: {shape}"
        );
    }
}

/// A transcript's message contents, in order, as `who` sees it.
fn contents(c: &mut Client, session: Uuid) -> Result<Vec<String>, String> {
    c.query("SELECT content FROM get_formatted_conversation($1)", &[&session])
        .map(|rows| rows.iter().map(|r| r.get(0)).collect())
        .map_err(|e| error_shape(&e, &[]))
}

/// Defect 5: only an owner grants access to its messages. A grantee who forks a shared session
/// and shares the fork shares its own messages only, so revoking the grantee takes away every
/// access derived from the grant; a read-only grantee cannot re-share the session itself.
#[test]
fn revoking_a_share_reaches_everything_derived_from_it() {
    let db = TestDb::new();
    let (alice_role, _) = db.extra_role("alice");
    let (bob_role, bob) = db.extra_role("bob");
    let (carol_role, carol) = db.extra_role("carol");
    let (mut a, mut b, mut c) = (db.connect_as(&alice_role), db.connect_as(&bob_role), db.connect_as(&carol_role));
    let s: Uuid = a.query_one("SELECT create_session('alice')", &[]).unwrap().get(0);
    for text in ["alice one", "alice two"] {
        a.query_one("SELECT add_message_to_session($1, 'user', $2)", &[&s, &text]).unwrap();
    }
    a.query_one("SELECT share_memory($1, $2)", &[&s, &bob]).unwrap();
    let reshare = b.query_one("SELECT share_memory($1, $2)", &[&s, &carol]);
    assert_eq!(reshare.as_ref().err().map(sqlstate).as_deref(), Some("42501"), "a read-only grantee re-shared: {reshare:?}");
    let f: Uuid = b.query_one("SELECT fork_session($1, 'bob''s fork')", &[&s]).unwrap().get(0);
    b.query_one("SELECT add_message_to_session($1, 'user', 'bob one')", &[&f]).unwrap();
    assert_eq!(contents(&mut b, f).unwrap(), ["alice one", "alice two", "bob one"], "bob's own fork, before the revocation");
    b.query_one("SELECT share_memory($1, $2)", &[&f, &carol]).unwrap();
    assert_eq!(contents(&mut c, f).unwrap(), ["bob one"], "carol gets bob's messages, not alice's");
    let alices: i64 = c.query_one("SELECT count(*) FROM memories WHERE content LIKE 'alice%'", &[]).unwrap().get(0);
    assert_eq!(alices, 0, "carol reads none of alice's messages through bob's share");

    let revoked: bool = a.query_one("SELECT revoke_share($1, $2)", &[&s, &bob]).unwrap().get(0);
    assert!(revoked);
    assert_eq!(contents(&mut b, f).unwrap(), ["bob one"], "after the revocation bob keeps only his own messages");
    assert_eq!(contents(&mut b, s).unwrap_err().split(" | ").next(), Some("P0002"), "alice's session is gone for bob");
    assert_eq!(contents(&mut c, f).unwrap(), ["bob one"], "and carol still sees only bob's");
    for (who, conn) in [("bob", &mut b), ("carol", &mut c)] {
        let n: i64 = conn.query_one("SELECT count(*) FROM memories WHERE content LIKE 'alice%'", &[]).unwrap().get(0);
        assert_eq!(n, 0, "{who} still reads alice's messages after the revocation");
    }
}

/// Defect 16: a grant, a change of can_write and a revocation are each audited, attributed to
/// the acting user, and sealed into the chain like data changes.
#[test]
fn sharing_and_revoking_are_audited() {
    let db = TestDb::new();
    let (alice_role, alice) = db.extra_role("alice");
    let (_, bob) = db.extra_role("bob");
    let mut a = db.connect_as(&alice_role);
    let s: Uuid = a.query_one("SELECT create_session('shared')", &[]).unwrap().get(0);
    a.query_one("SELECT share_memory($1, $2)", &[&s, &bob]).unwrap();
    a.query_one("SELECT share_memory($1, $2, true)", &[&s, &bob]).unwrap();
    a.query_one("SELECT revoke_share($1, $2)", &[&s, &bob]).unwrap();
    let rows = a
        .query(
            "SELECT operation, acting_user, subject_user, db_role::text, (new_row ->> 'can_write')::boolean, old_row ->> 'grantee'
               FROM audit_log WHERE table_name = 'memory_shares' AND row_id = $1 ORDER BY id",
            &[&s],
        )
        .unwrap();
    let got: Vec<(String, Option<Uuid>, Option<Uuid>, String, Option<bool>, Option<String>)> =
        rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5))).collect();
    let expected = vec![
        ("INSERT".to_string(), Some(alice), Some(alice), alice_role.clone(), Some(false), None),
        ("UPDATE".to_string(), Some(alice), Some(alice), alice_role.clone(), Some(true), Some(bob.to_string())),
        ("DELETE".to_string(), Some(alice), Some(alice), alice_role.clone(), None, Some(bob.to_string())),
    ];
    assert_eq!(got, expected, "the share's audit rows, as alice sees them");
    let mut admin = db.admin();
    admin.query_one("SELECT memoriesdb.seal_audit_log()", &[]).unwrap();
    let intact: bool = admin.query_one("SELECT intact FROM memoriesdb.verify_audit_chain()", &[]).unwrap().get(0);
    assert!(intact, "the chain verifies with the share rows sealed into it");
}

/// Defect 6: only text search configurations that outlive the session, and that pg_dump
/// restores, can be stored with a memory: not a temporary one, not one an ordinary role can drop.
#[test]
fn a_temporary_or_droppable_search_configuration_cannot_be_stored() {
    let db = TestDb::new();
    let (bob_role, _) = db.extra_role("bob");
    db.admin().batch_execute(&format!("CREATE SCHEMA bobs AUTHORIZATION {bob_role}")).unwrap();
    let mut b = db.connect_as(&bob_role);
    b.batch_execute(
        "CREATE TEXT SEARCH CONFIGURATION pg_temp.mine (COPY = simple);
         CREATE TEXT SEARCH CONFIGURATION bobs.mine (COPY = simple)",
    )
    .unwrap();
    let session: Uuid = b.query_one("SELECT create_session('configs')", &[]).unwrap().get(0);
    let mut problems = Vec::new();
    for (what, sql) in [
        ("a temporary configuration, directly", "INSERT INTO memories (content, search_config) VALUES ('x', 'pg_temp.mine')".to_string()),
        ("an ordinary role's configuration", "INSERT INTO memories (content, search_config) VALUES ('x', 'bobs.mine')".to_string()),
        ("a temporary configuration, by the setting", "SET memoriesdb.text_search_config = 'pg_temp.mine'; INSERT INTO memories (content) VALUES ('x')".to_string()),
        ("by the setting, through the API", format!("SET memoriesdb.text_search_config = 'pg_temp.mine'; SELECT add_message_to_session('{session}', 'user', 'x')")),
    ] {
        let r = b.batch_execute(&sql);
        if r.as_ref().err().map(sqlstate).as_deref() != Some("22023") {
            problems.push(format!("{what}: {:?}", r.map_err(|e| error_shape(&e, &[]))));
        }
        b.batch_execute("RESET memoriesdb.text_search_config").unwrap();
    }
    let id: Uuid = b.query_one("INSERT INTO memories (content) VALUES ('built-in') RETURNING id", &[]).unwrap().get(0);
    let r = b.execute("UPDATE memories SET search_config = 'pg_temp.mine' WHERE id = $1", &[&id]);
    if r.as_ref().err().map(sqlstate).as_deref() != Some("22023") {
        problems.push(format!("an UPDATE to a temporary configuration: {:?}", r.map_err(|e| error_shape(&e, &[]))));
    }
    b.execute("UPDATE memories SET search_config = 'simple', content = 'still editable' WHERE id = $1", &[&id]).unwrap();
    assert!(problems.is_empty(), "{} problem(s):\n  - {}", problems.len(), problems.join("\n  - "));
}

/// Defect 10: no content makes a write fail, and no query text or vector reaches an internal
/// error or a NaN similarity.
#[test]
fn no_content_fails_a_write_and_no_query_reaches_an_internal_error() {
    let db = TestDb::new();
    let mut c = db.connect();
    let session: Uuid = c.query_one("SELECT create_session('big')", &[]).unwrap().get(0);
    // lexemes that outgrow the text: hyphenated compounds (indexed whole and in parts) of 4-byte
    // characters, and letters that lowercasing lengthens; each overflowed the old 262,144-character
    // limit ("string is too long for tsvector", 54000)
    for (what, sql) in [
        ("4-byte compounds", "SELECT string_agg(chr(131072 + i) || chr(171072 + i) || '-' || chr(151072 + i) || chr(191072 + i), ' ') FROM generate_series(1, 60000) i"),
        ("lengthening letters", "SELECT string_agg(repeat(chr(570), 3) || i || '-' || repeat(chr(570), 3) || (i + 1), ' ') FROM generate_series(1, 30000) i"),
        ("CJK compounds", "SELECT string_agg(chr(19968 + (i % 20000)) || chr(19968 + (i / 20000 % 20000)) || '-' || chr(19968 + (i * 7 % 20000)), ' ') FROM generate_series(1, 70000) i"),
    ] {
        let content: String = c.query_one(sql, &[]).unwrap().get(0);
        let r = c.query_one("SELECT add_message_to_session($1, 'user', $2)", &[&session, &content]);
        assert!(r.is_ok(), "{what} ({} bytes) failed to commit: {:?}", content.len(), r.map_err(|e| error_shape(&e, &[])));
    }
    for (what, sql) in [
        ("10,000 minus signs", "SELECT * FROM search_memories(repeat('-', 10000))"),
        ("40 negations of a word", "SELECT * FROM search_memories(repeat('-', 40) || 'word')"),
        ("a near-zero query vector", "SELECT * FROM vector_search('[1e-30,1e-30,1e-30]')"),
        ("a near-zero query vector, hybrid", "SELECT * FROM hybrid_search('x', '[1e-30,1e-30,1e-30]')"),
    ] {
        let r = c.query(sql, &[]);
        assert_eq!(r.as_ref().err().map(sqlstate).as_deref(), Some("22023"), "{what}: {:?}", r.map(|x| x.len()).map_err(|e| error_shape(&e, &[])));
    }
    // nor can one be stored: pgvector would put it at distance 0 from every query
    for sql in [
        "INSERT INTO memories (content, content_embedding) VALUES ('tiny', '[1e-30,1e-30,1e-30]')",
        "INSERT INTO memories (content, content_embedding) VALUES ('zero', '[0,0,0]')",
    ] {
        let r = c.batch_execute(sql);
        assert_eq!(r.as_ref().err().map(sqlstate).as_deref(), Some("23514"), "{sql}: {:?}", r.map_err(|e| error_shape(&e, &[])));
    }
    c.batch_execute("INSERT INTO memories (content, content_embedding) VALUES ('real', '[1,1,1]'), ('other', '[1,-1,0]')").unwrap();
    let found: Vec<String> = c
        .query("SELECT content FROM vector_search('[1,1,1]', 0.99)", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(found, ["real"], "only the real match passes the 0.99 threshold");
}

/// An embedding whose similarity to a query is NaN (components near the largest float overflow
/// the cosine's products) takes no place in a search's result: a writer of a session cannot
/// crowd the real matches out of a search in it with such embeddings (an exact scan ordered by
/// similarity, highest first, sorts NaN before every number).
#[test]
fn embeddings_that_give_nan_cannot_crowd_out_a_search() {
    let db = TestDb::new();
    let mut c = db.connect();
    let s: Uuid = c.query_one("SELECT create_session('crowded')", &[]).unwrap().get(0);
    let good: Uuid = c.query_one("SELECT add_message_to_session($1, 'user', 'the real answer')", &[&s]).unwrap().get(0);
    c.execute("UPDATE memories SET content_embedding = '[1,1,1]' WHERE id = $1", &[&good]).unwrap();
    for i in 0..12 {
        let id: Uuid = c.query_one("SELECT add_message_to_session($1, 'user', $2)", &[&s, &format!("noise {i}")]).unwrap().get(0);
        c.execute("UPDATE memories SET content_embedding = '[3e38,3e38,3e38]' WHERE id = $1", &[&id]).unwrap();
    }
    let nan: bool = c.query_one("SELECT 'NaN'::float8 = ('[3e38,3e38,3e38]'::vector <=> '[1,1,1]'::vector)", &[]).unwrap().get(0);
    assert!(nan, "the noise's distance to the query is NaN");
    let mut problems = Vec::new();
    for (what, sql) in [
        ("vector_search in the session", "SELECT id FROM vector_search('[1,1,1]', -1, 5, $1)"),
        ("vector_search everywhere", "SELECT id FROM vector_search('[1,1,1]', -1, 5) WHERE $1::uuid IS NOT NULL"),
        ("hybrid_search in the session", "SELECT id FROM hybrid_search('answer', '[1,1,1]', 5, $1)"),
        ("hybrid_search, vector ranking only", "SELECT id FROM hybrid_search('zzz', '[1,1,1]', 5, $1) WHERE vector_rank IS NOT NULL"),
    ] {
        match c.query(sql, &[&s]) {
            Ok(rows) => {
                let ids: Vec<Uuid> = rows.iter().map(|r| r.get(0)).collect();
                if !ids.contains(&good) {
                    problems.push(format!("{what}: the real match is missing from {} row(s)", ids.len()));
                }
            }
            Err(e) => problems.push(format!("{what}: {}", error_shape(&e, &[]))),
        }
    }
    assert!(problems.is_empty(), "{} problem(s):\n  - {}", problems.len(), problems.join("\n  - "));
}

/// Defect 12: deleting a session with forks, or history a fork inherits, is refused with a clear
/// error (never a raw 23503, never a silent hole in a fork's transcript), also when another
/// user's fork holds it; deleting later messages works, and forking afterwards still does.
#[test]
fn deletes_never_break_a_fork() {
    let db = TestDb::new();
    let (alice_role, _) = db.extra_role("alice");
    let (bob_role, bob) = db.extra_role("bob");
    let mut a = db.connect_as(&alice_role);
    let s: Uuid = a.query_one("SELECT create_session('history')", &[]).unwrap().get(0);
    let m: Vec<Uuid> = ["one", "two", "three", "four"]
        .iter()
        .map(|t| a.query_one("SELECT add_message_to_session($1, 'user', $2)", &[&s, t]).unwrap().get(0))
        .collect();
    let f: Uuid = a.query_one("SELECT fork_session($1, 'fork at two', '{}', $2)", &[&s, &m[1]]).unwrap().get(0);
    let mut problems = Vec::new();
    let refused = |problems: &mut Vec<String>, who: &str, c: &mut Client, id: Uuid| {
        let r = c.query_one("SELECT delete_memory($1)", &[&id]);
        if r.as_ref().err().map(sqlstate).as_deref() != Some("2BP01") {
            problems.push(format!("{who} deleting {id}: {:?}", r.map(|r| r.get::<_, bool>(0)).map_err(|e| error_shape(&e, &[]))));
        }
    };
    refused(&mut problems, "alice, the session", &mut a, s);
    refused(&mut problems, "alice, a message before the fork point", &mut a, m[0]);
    refused(&mut problems, "alice, the fork point", &mut a, m[1]);
    let r = db.admin().execute("DELETE FROM memoriesdb.memories WHERE id = $1", &[&m[0]]);
    if r.as_ref().err().map(sqlstate).as_deref() != Some("2BP01") {
        problems.push(format!("a superuser's direct DELETE of inherited history: {:?}", r.map_err(|e| error_shape(&e, &[]))));
    }
    // another user cannot delete them at all (delete_memory runs as the owner, for the caller)
    let mut b0 = db.connect_as(&bob_role);
    let deleted: bool = b0.query_one("SELECT delete_memory($1)", &[&m[3]]).unwrap().get(0);
    assert!(!deleted, "bob deleted alice's message");
    let still: i64 = db.admin().query_one("SELECT count(*) FROM memoriesdb.memories WHERE id = $1", &[&m[3]]).unwrap().get(0);
    assert_eq!(still, 1);
    // the latest messages can go; a fork taken afterwards forks at the latest one left
    for id in [m[3], m[2]] {
        let deleted: bool = a.query_one("SELECT delete_memory($1)", &[&id]).unwrap().get(0);
        assert!(deleted);
    }
    let g: Uuid = a.query_one("SELECT fork_session($1, 'after the deletes')", &[&s]).unwrap().get(0);
    assert_eq!(contents(&mut a, g).unwrap(), ["one", "two"]);
    assert_eq!(contents(&mut a, f).unwrap(), ["one", "two"], "the fork's history is intact");
    // another user's fork holds the shared history too
    let t: Uuid = a.query_one("SELECT create_session('shared history')", &[]).unwrap().get(0);
    let first: Uuid = a.query_one("SELECT add_message_to_session($1, 'user', 'mine')", &[&t]).unwrap().get(0);
    a.query_one("SELECT share_memory($1, $2)", &[&t, &bob]).unwrap();
    let mut b = db.connect_as(&bob_role);
    b.query_one("SELECT fork_session($1, 'bob''s')", &[&t]).unwrap();
    refused(&mut problems, "alice, a session bob forked", &mut a, t);
    refused(&mut problems, "alice, a message bob's fork inherits", &mut a, first);
    // and once the forks are gone, everything can be deleted
    for fork in [g, f] {
        a.query_one("SELECT delete_memory($1)", &[&fork]).unwrap();
    }
    let deleted: bool = a.query_one("SELECT delete_memory($1)", &[&s]).unwrap().get(0);
    assert!(deleted, "the session, once its forks are gone");
    assert!(problems.is_empty(), "{} problem(s):\n  - {}", problems.len(), problems.join("\n  - "));
}

/// A real PgBouncer in transaction mode with one server connection, in front of the test
/// cluster; stopped when dropped.
struct Pooler {
    process: std::process::Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Pooler {
    fn start(db: &TestDb, roles: &[&str]) -> Pooler {
        let (host, pg_port) = memoriesdb_integration_tests::admin_host_port();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = std::env::temp_dir().join(format!("memoriesdb-pgbouncer-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let users: String = roles.iter().map(|r| format!("\"{r}\" \"\"\n")).collect();
        std::fs::write(dir.join("users.txt"), users).unwrap();
        std::fs::write(
            dir.join("pgbouncer.ini"),
            format!(
                "[databases]\n{name} = host={host} port={pg_port} dbname={name}\n\n[pgbouncer]\n\
                 listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\nauth_type = trust\n\
                 auth_file = {dir}/users.txt\npool_mode = transaction\ndefault_pool_size = 1\nmax_client_conn = 20\n\
                 server_reset_query =\nignore_startup_parameters = extra_float_digits\nlogfile = {dir}/pgbouncer.log\n",
                name = db.name,
                dir = dir.display()
            ),
        )
        .unwrap();
        Command::new("chown").args(["-R", "postgres:postgres", dir.to_str().unwrap()]).status().unwrap();
        // PgBouncer refuses to run as root
        let process = Command::new("runuser")
            .args(["-u", "postgres", "--", "pgbouncer", "-q", dir.join("pgbouncer.ini").to_str().unwrap()])
            .spawn()
            .expect("start pgbouncer (Debian package pgbouncer; scripts/setup.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "pgbouncer did not start: {:?}", std::fs::read_to_string(dir.join("pgbouncer.log")));
            thread::sleep(Duration::from_millis(50));
        }
        Pooler { process, port, dir }
    }

    fn connect(&self, db: &TestDb, role: &str) -> Client {
        Client::connect(&format!("host=127.0.0.1 port={} user={role} dbname={}", self.port, db.name), postgres::NoTls)
            .expect("connect through pgbouncer")
    }
}

impl Drop for Pooler {
    fn drop(&mut self) {
        let _ = Command::new("pkill").args(["-f", self.dir.join("pgbouncer.ini").to_str().unwrap()]).status();
        let _ = self.process.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The first column of the first row of a simple-protocol query (prepared statements do not
/// mix with transaction pooling), or the error's SQLSTATE.
fn simple_one(c: &mut Client, sql: &str) -> Result<Option<String>, String> {
    let messages = c.simple_query(sql).map_err(|e| sqlstate(&e))?;
    Ok(messages.iter().find_map(|m| match m {
        postgres::SimpleQueryMessage::Row(row) => Some(row.get(0).map(str::to_string)),
        _ => None,
    }).flatten())
}

/// Defect 17: behind a real PgBouncer in transaction mode with one server connection, an
/// identity one client asserts never reaches the next client's statements. Transaction-local
/// assertions work; a session-level one is refused (memoriesdb.allow_session_identity is off).
#[test]
fn identity_cannot_outlive_its_client_behind_a_transaction_pooler() {
    let db = TestDb::new();
    let (alice_role, alice) = db.extra_role("alice");
    db.connect_as(&alice_role).batch_execute("INSERT INTO memories (content) VALUES ('alice secret')").unwrap();
    let app = db.unmapped_role("app");
    db.grant("memoriesdb_trusted", &app);
    let pooler = Pooler::start(&db, &[&app]);
    let mut first = pooler.connect(&db, &app);
    let mut second = pooler.connect(&db, &app);
    let secret_count = "SELECT count(*) FROM memoriesdb.memories WHERE content = 'alice secret'";
    let pid_first = simple_one(&mut first, "SELECT pg_backend_pid()").unwrap();
    assert_eq!(simple_one(&mut second, "SELECT pg_backend_pid()").unwrap(), pid_first, "control: one server connection");

    // the documented, transaction-local form works, and ends with the transaction
    first.simple_query(&format!("BEGIN; SELECT memoriesdb.set_memory_user('{alice}')")).unwrap();
    assert_eq!(simple_one(&mut first, secret_count).unwrap().as_deref(), Some("1"), "control: the assertion works");
    first.simple_query("COMMIT").unwrap();
    assert_eq!(simple_one(&mut second, secret_count).unwrap().as_deref(), Some("0"), "the next client after a local assertion");

    // session-level forms are refused, and nothing of them reaches the other client
    let refused = simple_one(&mut first, &format!("SELECT memoriesdb.set_memory_user('{alice}', false)"));
    assert_eq!(refused, Err("42501".to_string()), "set_memory_user(id, false)");
    assert_eq!(simple_one(&mut second, secret_count).unwrap().as_deref(), Some("0"), "the next client after a refused assertion");
    first.simple_query(&format!("SET app.\"current_user\" = '{alice}'")).unwrap(); // a raw SET cannot be refused...
    let leaked = simple_one(&mut second, secret_count);
    assert!(leaked != Ok(Some("1".to_string())), "the next client read alice's row through the first client's SET");
    assert_eq!(leaked, Err("42501".to_string()), "...but it does not count: the next statement is refused, not run as alice");
    first.simple_query("RESET app.\"current_user\"").unwrap();
    assert_eq!(simple_one(&mut second, "SELECT memoriesdb.current_memory_user()").unwrap(), None, "the next client acts as nobody");
}

/// A worker reads every session (it embeds and indexes them) but may not branch another user's:
/// such a fork would hang under the owner's session where the owner can neither see nor delete
/// it, and would stop them deleting their own history. It gets "does not exist", as before the
/// fork moved to Rust. (Found by the attack review of the Rust fork_session.)
#[test]
fn a_worker_cannot_fork_another_users_session() {
    let db = TestDb::new();
    let (alice_role, _) = db.extra_role("alice");
    let (wendy_role, _) = db.extra_role("wendy");
    db.grant("memoriesdb_worker", &wendy_role);
    let mut a = db.connect_as(&alice_role);
    let diary: Uuid = a.query_one("SELECT create_session('private diary')", &[]).unwrap().get(0);
    let m1: Uuid = a.query_one("SELECT add_message_to_session($1, 'user', 'secret 1')", &[&diary]).unwrap().get(0);
    let m2: Uuid = a.query_one("SELECT add_message_to_session($1, 'user', 'secret 2')", &[&diary]).unwrap().get(0);
    let mut w = db.connect_as(&wendy_role);
    for (what, result) in [
        ("at the latest message", w.query_one("SELECT fork_session($1, 'worker fork')", &[&diary])),
        ("at a named message", w.query_one("SELECT fork_session($1, 'worker fork', '{}', $2)", &[&diary, &m1])),
    ] {
        let err = result.expect_err(&format!("a worker forked alice's session {what}"));
        assert_eq!(error_shape(&err, &[diary]), "P0002 | session <id> does not exist |  | ", "{what}");
    }
    let forks: i64 = db
        .admin()
        .query_one("SELECT count(*) FROM memoriesdb.memory_sessions WHERE parent_id = $1", &[&diary])
        .unwrap()
        .get(0);
    assert_eq!(forks, 0);
    let deleted: bool = a.query_one("SELECT delete_memory($1)", &[&m2]).unwrap().get(0);
    assert!(deleted, "alice can still delete her own history");
}

/// The default fork point must be a message the forking user can read, as a named one must:
/// carol, shared a fork that bob made of alice's session at m1 (and that has no messages of its
/// own), cannot fork it at alice's m1, which she cannot read.
#[test]
fn the_default_fork_point_is_one_the_caller_can_read() {
    let db = TestDb::new();
    let (alice_role, _) = db.extra_role("alice");
    let (bob_role, bob) = db.extra_role("bob");
    let (carol_role, carol) = db.extra_role("carol");
    let mut a = db.connect_as(&alice_role);
    let s: Uuid = a.query_one("SELECT create_session('alice')", &[]).unwrap().get(0);
    let m1: Uuid = a.query_one("SELECT add_message_to_session($1, 'user', 'one')", &[&s]).unwrap().get(0);
    a.query_one("SELECT add_message_to_session($1, 'user', 'two')", &[&s]).unwrap();
    a.query_one("SELECT share_memory($1, $2)", &[&s, &bob]).unwrap();
    let mut b = db.connect_as(&bob_role);
    let f0: Uuid = b.query_one("SELECT fork_session($1, 'bob at one', '{}', $2)", &[&s, &m1]).unwrap().get(0);
    b.query_one("SELECT share_memory($1, $2)", &[&f0, &carol]).unwrap();
    let mut c = db.connect_as(&carol_role);
    let err = c.query_one("SELECT fork_session($1, 'carol')", &[&f0]).expect_err("carol forked at a message she cannot read");
    assert_eq!(error_shape(&err, &[f0]), "22023 | position 1 is not a message of session <id> you can see |  | ");
}

/// Passages of long memories (memory_chunks) reach tenants only through the search functions:
/// a direct SELECT is refused — it could ORDER BY the embedding, and the HNSW index would rank
/// other tenants' passages before row-level security removed them — and a memory's passages are
/// deleted as soon as its content changes, even to nothing, so no embedding of text that is
/// gone stays behind.
#[test]
fn passages_are_reachable_only_through_search_and_go_with_their_content() {
    let db = TestDb::new();
    let mut app = db.connect();
    let mut admin = db.admin();
    let row = app
        .query_one("INSERT INTO memories (content) VALUES ('first part. second part.') RETURNING id, content_hash", &[])
        .unwrap();
    let (id, hash): (Uuid, String) = (row.get(0), row.get(1));
    let stored: bool = admin
        .query_one(
            "SELECT memoriesdb.store_embedding_chunks($1, $2, 'm', ARRAY['[1,0,0]', '[0,1,0]']::vector[], ARRAY[0, 12], ARRAY[11, 24])",
            &[&id, &hash],
        )
        .unwrap()
        .get(0);
    assert!(stored);
    let (other_role, _) = db.extra_role("other");
    let mut other = db.connect_as(&other_role);
    for (who, client) in [("the owner", &mut app), ("another tenant", &mut other)] {
        for sql in [
            "SELECT count(*) FROM memoriesdb.memory_chunks",
            "SELECT memory_id FROM memoriesdb.memory_chunks ORDER BY embedding <=> '[0,1,0]' LIMIT 1",
        ] {
            let err = client.query(sql, &[]).unwrap_err();
            assert_eq!(sqlstate(&err), "42501", "{who}: {sql}: {}", error_shape(&err, &[]));
        }
    }
    // through search: the owner finds the passage, with its offsets; the other tenant nothing
    let found = app.query("SELECT id, chunk_start, chunk_end FROM vector_search('[0,1,0]', 0.9)", &[]).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!((found[0].get::<_, Uuid>(0), found[0].get::<_, i32>(1), found[0].get::<_, i32>(2)), (id, 12, 24));
    let seen: i64 = other.query_one("SELECT count(*) FROM vector_search('[0,1,0]', -1)", &[]).unwrap().get(0);
    assert_eq!(seen, 0);
    // the content goes: so do its passages
    app.execute("UPDATE memories SET content = '' WHERE id = $1", &[&id]).unwrap();
    let left: i64 = admin.query_one("SELECT count(*) FROM memoriesdb.memory_chunks WHERE memory_id = $1", &[&id]).unwrap().get(0);
    assert_eq!(left, 0, "the passages of content that is gone stayed");
}
