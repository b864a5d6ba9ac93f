//! Multi-tenancy as real clients meet it: two users, each through their own connections, as
//! ordinary non-superuser roles. Forced row-level security on every table, identity assertion
//! only for trusted roles, explicit sharing, and an audit log that can be trusted.
//!
//! The matrix tests collect every problem they find and report them all at once, so that one
//! leak does not hide the next.

use memoriesdb_integration_tests::{error_shape, sqlstate, TestDb};
use postgres::types::ToSql;
use postgres::{Client, NoTls, Transaction};
use std::collections::{BTreeMap, BTreeSet};
use uuid::Uuid;

/// The tables whose rows belong to tenants (memory_graph_clock carries no data).
const TENANT_TABLES: [&str; 9] = [
    "memories",
    "memory_sessions",
    "memory_edges",
    "audit_log",
    "users",
    "embedding_schedule",
    "vindexing_schedule",
    "memory_shares",
    "memory_share_segments",
];

/// Problems found by a matrix test, reported together at the end.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn check(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            self.0.push(what.into());
        }
    }

    fn assert_none(self, title: &str) {
        assert!(
            self.0.is_empty(),
            "{title}: {} problem(s):\n  - {}",
            self.0.len(),
            self.0.join("\n  - ")
        );
    }
}

/// An error as "SQLSTATE | message | detail | hint" (postgres::Error's Display says only "db error").
fn es(e: &postgres::Error) -> String {
    error_shape(e, &[])
}

fn one(c: &mut Client, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Uuid {
    c.query_one(sql, params).unwrap_or_else(|e| panic!("{sql}: {}", es(&e))).get(0)
}

fn count(c: &mut Client, sql: &str, params: &[&(dyn ToSql + Sync)]) -> i64 {
    c.query_one(sql, params).unwrap_or_else(|e| panic!("{sql}: {}", es(&e))).get(0)
}

fn add_message(c: &mut Client, session: Uuid, role: &str, content: &str) -> Uuid {
    one(c, "SELECT add_message_to_session($1, $2, $3)", &[&session, &role, &content])
}

/// A session's transcript as (position, role, content, message id).
fn transcript(c: &mut Client, session: Uuid) -> Result<Vec<(i64, String, String, Uuid)>, postgres::Error> {
    Ok(c.query(
        "SELECT position, role, content, message_id FROM get_formatted_conversation($1)",
        &[&session],
    )?
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect())
}

fn ids(c: &mut Client, sql: &str, params: &[&(dyn ToSql + Sync)]) -> BTreeSet<Uuid> {
    c.query(sql, params)
        .unwrap_or_else(|e| panic!("{sql}: {}", es(&e)))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// A superuser's fingerprint of every tenant table: nothing may change it behind the owner's back.
fn snapshot(admin: &mut Client) -> BTreeMap<&'static str, (i64, String)> {
    TENANT_TABLES
        .iter()
        .map(|t| {
            let r = admin
                .query_one(
                    &format!("SELECT count(*), md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) FROM {t} x"),
                    &[],
                )
                .unwrap();
            (*t, (r.get(0), r.get(1)))
        })
        .collect()
}

/// Alice's world: a session with messages, a fork, a free memory with an embedding, edges,
/// embeddings stored by a worker (so both queues hold rows), shares with a third user (so the
/// share tables hold rows that do not concern bob) and the audit rows all of that wrote.
struct World {
    db: TestDb,
    alice: Uuid,
    bob: Uuid,
    bob_role: String,
    carol: Uuid,
    /// p[0], p[1]; fork point; p[2], p[3] (written after the fork)
    session: Uuid,
    p: Vec<Uuid>,
    /// forked from `session` at p[1]; its own message fork_msg is at position 3
    fork: Uuid,
    fork_msg: Uuid,
    /// a free memory with an embedding, with edges free -> p[0] and free -> session
    free: Uuid,
    edge: Uuid,
}

fn alices_world() -> World {
    let db = TestDb::new();
    let alice = db.user;
    let (bob_role, bob) = db.extra_role("bob");
    let (_, carol) = db.extra_role("carol");
    let (worker_role, _) = db.extra_role("worker");
    db.grant("memoriesdb_worker", &worker_role);
    let mut a = db.connect();
    let session = one(
        &mut a,
        "SELECT create_session('alice secret session', '{\"topic\": \"secret\"}')",
        &[],
    );
    let p0 = add_message(&mut a, session, "user", "alice secret alpha");
    let p1 = add_message(&mut a, session, "assistant", "alice secret bravo");
    let fork = one(
        &mut a,
        "SELECT fork_session($1, 'alice secret fork', parent_message_id => $2)",
        &[&session, &p1],
    );
    let fork_msg = add_message(&mut a, fork, "user", "alice secret charlie in the fork");
    let p2 = add_message(&mut a, session, "user", "alice secret delta after the fork");
    let p3 = add_message(&mut a, session, "assistant", "alice secret echo after the fork");
    let free = one(
        &mut a,
        "INSERT INTO memories (content, _metadata) VALUES ('alice secret free memory', '{\"topic\": \"secret\"}') RETURNING id",
        &[],
    );
    let edge = one(&mut a, "SELECT add_edge($1, $2, 'relates_to')", &[&free, &p0]);
    one(&mut a, "SELECT add_edge($1, $2, 'about')", &[&free, &session]);
    // embeddings, stored by a worker as the pipeline does (this also queues index work)
    let mut w = db.connect_as(&worker_role);
    for (id, v) in [(free, "[1,0,0]"), (p0, "[0.9,0.1,0]"), (p2, "[0.8,0.2,0]")] {
        let stored: bool = w
            .query_one(
                &format!("SELECT store_embedding(id, '{v}', 'test-model', content_hash) FROM memories WHERE id = $1"),
                &[&id],
            )
            .unwrap()
            .get(0);
        assert!(stored, "setup: the worker stores an embedding");
    }
    a.execute("SELECT share_memory($1, $2)", &[&session, &carol]).unwrap();
    a.execute("SELECT share_memory($1, $2)", &[&free, &carol]).unwrap();
    // every tenant table holds rows, so that "bob sees none of them" can fail
    let mut admin = db.admin();
    for t in TENANT_TABLES {
        let n = count(&mut admin, &format!("SELECT count(*) FROM {t}"), &[]);
        assert!(n > 0, "setup: {t} must hold rows");
    }
    World {
        db,
        alice,
        bob,
        bob_role,
        carol,
        session,
        p: vec![p0, p1, p2, p3],
        fork,
        fork_msg,
        free,
        edge,
    }
}

/// Runs `f` in a transaction that is always rolled back.
fn rolled_back<T>(c: &mut Client, f: impl FnOnce(&mut Transaction) -> Result<T, postgres::Error>) -> Result<T, postgres::Error> {
    let mut tx = c.transaction().unwrap();
    let result = f(&mut tx);
    tx.rollback().unwrap();
    result
}

// ---------------------------------------------------------------------------------------------
// 1. The cross-tenant matrix
// ---------------------------------------------------------------------------------------------

#[test]
fn bob_reads_none_of_alices_rows_through_any_table_view_or_function() {
    let w = alices_world();
    let mut bob = w.db.connect_as(&w.bob_role);
    let mut alice = w.db.connect();
    let mut p = Problems::default();

    // tables: bob has written nothing, so everything he sees would be alice's (or carol's)
    for t in TENANT_TABLES {
        let sql = if t == "users" {
            format!("SELECT count(*) FROM users WHERE id <> '{}'", w.bob)
        } else {
            format!("SELECT count(*) FROM {t}")
        };
        match bob.query_one(&sql, &[]) {
            Ok(r) => p.check(
                r.get::<_, i64>(0) == 0,
                format!("{sql}: bob sees {} row(s) that are not his", r.get::<_, i64>(0)),
            ),
            Err(e) => p.check(sqlstate(&e) == "42501", format!("{sql}: unexpected error {}", es(&e))),
        }
    }
    let own_user = count(&mut bob, "SELECT count(*) FROM users WHERE id = $1", &[&w.bob]);
    p.check(own_user == 1, format!("bob sees his own users row: {own_user}"));

    // views
    for (sql, alice_sees) in [
        ("SELECT count(*) FROM memory_graph", true),
        (&*format!("SELECT count(*) FROM memory_graph WHERE id = '{}'", w.free), true),
        (&*format!("SELECT count(*) FROM memory_graph WHERE id = '{}'", w.session), true),
        ("SELECT count(*) FROM embedding_coverage", true),
        (
            "SELECT count(*) FROM embedding_queue_status WHERE pending + processing + failed + dead + done > 0",
            false,
        ),
    ] {
        if alice_sees {
            let n = count(&mut alice, sql, &[]);
            assert!(n > 0, "precondition: alice sees rows through {sql}");
        }
        let n = count(&mut bob, sql, &[]);
        p.check(n == 0, format!("{sql}: bob gets {n} row(s)"));
    }

    // search, as both users: alice finds her rows, bob finds none
    for sql in [
        "SELECT count(*) FROM search_memories('secret')",
        "SELECT count(*) FROM search_memories('alice', kind_filter => 'message')",
        "SELECT count(*) FROM search_memories('secret', metadata_filter => '{\"topic\": \"secret\"}')",
        "SELECT count(*) FROM vector_search('[1,0,0]', -1)",
        "SELECT count(*) FROM vector_search('[1,0,0]', -1, 100, kind_filter => 'message')",
        "SELECT count(*) FROM hybrid_search('secret', '[1,0,0]')",
        "SELECT count(*) FROM hybrid_search('charlie', '[0,1,0]', 100)",
        "SELECT count(*) FROM list_sessions(10000)",
    ] {
        let n = count(&mut alice, sql, &[]);
        assert!(n > 0, "precondition: alice finds her rows with {sql}");
        match bob.query_one(sql, &[]) {
            Ok(r) => p.check(
                r.get::<_, i64>(0) == 0,
                format!("{sql}: bob finds {} of alice's rows", r.get::<_, i64>(0)),
            ),
            Err(e) => p.check(false, format!("{sql}: bob gets an error instead of no rows: {}", es(&e))),
        }
    }
    // the worker API gives bob nothing to work on
    // (nothing at all: it is a worker's function)
    let claimed = bob.query("SELECT * FROM claim_embedding_batch(100)", &[]);
    p.check(
        claimed.as_ref().err().map(sqlstate).as_deref() == Some("42501"),
        format!("claim_embedding_batch as bob: {:?}", claimed.map(|rows| rows.len()).map_err(|e| es(&e))),
    );

    // Functions given one of alice's ids must fail exactly as they fail for an id that does not
    // exist (P0002), so that bob cannot even tell that the id exists.
    let missing = Uuid::new_v4();
    let cases: Vec<(&str, Uuid)> = vec![
        ("SELECT * FROM get_formatted_conversation($1)", w.session),
        ("SELECT * FROM get_formatted_conversation($1, true)", w.fork),
        ("SELECT get_conversation_text($1)", w.session),
        ("SELECT get_conversation_text($1)", w.fork),
        ("SELECT * FROM search_memories('secret', session_id => $1)", w.session),
        ("SELECT * FROM search_memories('secret', session_id => $1)", w.fork),
        ("SELECT * FROM vector_search('[1,0,0]', -1, 10, $1)", w.session),
        ("SELECT * FROM hybrid_search('secret', '[1,0,0]', session_id => $1)", w.fork),
        ("SELECT fork_session($1, 'bob forks alice')", w.session),
        ("SELECT fork_session($1, 'bob forks alice')", w.fork),
        ("SELECT * FROM traverse_memory_graph($1)", w.free),
        ("SELECT * FROM traverse_memory_graph($1, NULL, 'both', 5)", w.p[0]),
        (
            "SELECT * FROM traverse_memory_graph($1, ARRAY['belongs_to'], 'incoming')",
            w.session,
        ),
        ("SELECT add_message_to_session($1, 'user', 'bob was here')", w.session),
        ("SELECT add_message_to_session($1, 'user', 'bob was here')", w.fork),
        (r#"SELECT add_messages_to_session($1, '[{"role": "user", "content": "bob was here"}]')"#, w.session),
        ("SELECT add_messages_to_session($1, '[]')", w.fork),
        ("SELECT share_memory($1, $2::uuid)", w.free),
        ("SELECT share_memory($1, $2::uuid, true)", w.session),
        ("SELECT store_embedding($1, '[1,0,0]', 'bob-model', 'x')", w.free),
        ("SELECT fail_embedding($1, 'bob says it failed')", w.free),
        ("SELECT require_session($1)", w.session),
        ("SELECT * FROM get_session($1)", w.session),
        ("SELECT * FROM get_session($1)", w.fork),
        ("SELECT * FROM get_conversation_page($1)", w.session),
        ("SELECT * FROM get_conversation_page($1, 1, 1, true)", w.fork),
    ];
    for (sql, alices) in cases {
        let run = |c: &mut Client, id: Uuid| -> Result<u64, postgres::Error> {
            if sql.contains("$2") {
                c.execute(sql, &[&id, &w.bob])
            } else {
                c.execute(sql, &[&id])
            }
        };
        let real = run(&mut bob, alices);
        let fake = run(&mut bob, missing);
        match (real, fake) {
            (Err(r), Err(f)) => {
                // the workers' functions refuse bob before they look at any id
                let expected = if sql.contains("_embedding(") { "42501" } else { "P0002" };
                p.check(
                    sqlstate(&r) == expected,
                    format!("{sql} with alice's id: expected {expected}, got {}", es(&r)),
                );
                p.check(
                    error_shape(&r, &[alices]) == error_shape(&f, &[missing]),
                    format!(
                        "{sql}: alice's id fails differently from a missing id:\n      {}\n      {}",
                        error_shape(&r, &[alices]),
                        error_shape(&f, &[missing])
                    ),
                );
            }
            (r, f) => p.check(false, format!("{sql}: alice's id -> {r:?}, missing id -> {f:?} (both must fail)")),
        }
    }
    // Helpers that answer for any id: alice's ids must get the same answer as missing ones.
    let other_missing = Uuid::new_v4();
    for (sql, alices) in [("SELECT count(*) FROM session_lineage($1)", vec![w.fork])] {
        let ask = |c: &mut Client, ids: &[Uuid]| -> Result<i64, String> {
            let params: Vec<&(dyn ToSql + Sync)> = ids.iter().map(|i| i as &(dyn ToSql + Sync)).collect();
            c.query_one(sql, &params).map(|r| r.get(0)).map_err(|e| error_shape(&e, ids))
        };
        let real = ask(&mut bob, &alices);
        let fake = ask(&mut bob, &[missing, other_missing][..alices.len()]);
        p.check(real == fake, format!("{sql}: alice's ids -> {real:?}, missing ids -> {fake:?}"));
    }
    // and alice herself gets her data through the same calls
    assert_eq!(transcript(&mut alice, w.fork).unwrap().len(), 3);
    assert!(alice.query("SELECT * FROM traverse_memory_graph($1)", &[&w.free]).unwrap().len() >= 3);
    p.assert_none("bob reading alice's data");
}

#[test]
fn bob_changes_none_of_alices_rows_by_update_or_delete() {
    let w = alices_world();
    let mut bob = w.db.connect_as(&w.bob_role);
    let mut admin = w.db.admin();
    // one of alice's queue items is dead, so that retry_dead_embeddings() has something to revive
    admin
        .execute("UPDATE embedding_schedule SET status = 'dead' WHERE memory_id = $1", &[&w.p[1]])
        .unwrap();
    let before = snapshot(&mut admin);
    let mut p = Problems::default();
    let alice = w.alice.to_string();
    let bob_id = w.bob.to_string();
    // Ok(0): the statement runs and touches nothing; Err(42501): bob lacks the privilege
    let statements: Vec<String> = vec![
        "UPDATE memories SET content = 'pwned by bob'".into(),
        format!(
            "UPDATE memories SET content = 'pwned by bob', created_by = '{bob_id}' WHERE id = '{}'",
            w.free
        ),
        format!(
            "UPDATE memories SET _metadata = '{{\"owned\": true}}' WHERE session_id = '{}'",
            w.session
        ),
        format!("UPDATE memories SET content_embedding = '[0,0,1]' WHERE id = '{}'", w.free),
        format!("DELETE FROM memories WHERE id = '{}'", w.p[0]),
        "DELETE FROM memories".into(),
        "UPDATE memory_sessions SET last_position = last_position + 100".into(),
        format!("UPDATE memory_sessions SET owner_id = '{bob_id}' WHERE id = '{}'", w.session),
        "DELETE FROM memory_sessions".into(),
        "UPDATE memory_edges SET weight = 42".into(),
        format!("DELETE FROM memory_edges WHERE id = '{}'", w.edge),
        "DELETE FROM memory_edges".into(),
        format!("UPDATE users SET name = 'pwned' WHERE id = '{alice}'"),
        format!("UPDATE users SET db_role = current_user WHERE id = '{alice}'"),
        "UPDATE users SET _metadata = '{\"pwned\": true}'".into(),
        "DELETE FROM users".into(),
        format!("UPDATE memory_shares SET grantee = '{bob_id}'"),
        "UPDATE memory_shares SET can_write = true".into(),
        "DELETE FROM memory_shares".into(),
        format!("UPDATE memory_share_segments SET grantee = '{bob_id}'"),
        "UPDATE memory_share_segments SET visible_upto = 1000000, can_write = true".into(),
        "DELETE FROM memory_share_segments".into(),
        "UPDATE embedding_schedule SET status = 'dead'".into(),
        "DELETE FROM embedding_schedule".into(),
        "UPDATE vindexing_schedule SET status = 'dead'".into(),
        "DELETE FROM vindexing_schedule".into(),
        "UPDATE audit_log SET operation = 'DELETE'".into(),
        "DELETE FROM audit_log".into(),
        "TRUNCATE audit_log".into(),
    ];
    for sql in &statements {
        match bob.execute(sql.as_str(), &[]) {
            Ok(n) => p.check(n == 0, format!("{sql}: changed {n} row(s)")),
            Err(e) => p.check(sqlstate(&e) == "42501", format!("{sql}: expected 0 rows or 42501, got {}", es(&e))),
        }
    }
    // the API's delete functions
    let removed: bool = bob
        .query_one("SELECT remove_edge($1, $2, 'relates_to')", &[&w.free, &w.p[0]])
        .unwrap()
        .get(0);
    p.check(!removed, "remove_edge of alice's edge returned true");
    let revoked: bool = bob
        .query_one("SELECT revoke_share($1, $2)", &[&w.session, &w.carol])
        .unwrap()
        .get(0);
    p.check(!revoked, "revoke_share of alice's share with carol returned true");
    // a worker's function: bob may not even call it
    let revived = bob.query_one("SELECT retry_dead_embeddings()", &[]);
    p.check(
        revived.as_ref().err().map(sqlstate).as_deref() == Some("42501"),
        format!("retry_dead_embeddings() as bob: {:?}", revived.map(|r| r.get::<_, i64>(0)).map_err(|e| es(&e))),
    );
    let after = snapshot(&mut admin);
    for t in TENANT_TABLES {
        p.check(before[t] == after[t], format!("{t} changed: {:?} -> {:?}", before[t], after[t]));
    }
    p.assert_none("bob updating and deleting alice's data");
}

/// What bob creates inside one (rolled-back) transaction for the write cases below.
struct BobsThings {
    m: Uuid,
    m2: Uuid,
    edge: Uuid,
    session: Uuid,
    bare: Uuid,
}

fn bobs_things(tx: &mut Transaction) -> BobsThings {
    let q = |tx: &mut Transaction, sql: &str| -> Uuid { tx.query_one(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {}", es(&e))).get(0) };
    let m = q(tx, "INSERT INTO memories (content) VALUES ('bob memory') RETURNING id");
    let m2 = q(tx, "INSERT INTO memories (content) VALUES ('bob memory 2') RETURNING id");
    let edge = q(tx, &format!("SELECT add_edge('{m}', '{m2}', 'relates_to')"));
    let session = q(tx, "SELECT create_session('bob session')");
    q(tx, &format!("SELECT add_message_to_session('{session}', 'user', 'bob message')"));
    // a session memory without its memory_sessions row yet
    let bare = q(tx, "INSERT INTO memories (kind, content) VALUES ('session', 'bare') RETURNING id");
    BobsThings {
        m,
        m2,
        edge,
        session,
        bare,
    }
}

fn fill(sql: &str, b: &BobsThings, w: &World) -> String {
    sql.replace("{m}", &b.m.to_string())
        .replace("{m2}", &b.m2.to_string())
        .replace("{edge}", &b.edge.to_string())
        .replace("{session}", &b.session.to_string())
        .replace("{bare}", &b.bare.to_string())
        .replace("{bob}", &w.bob.to_string())
        .replace("{alice}", &w.alice.to_string())
        .replace("{carol}", &w.carol.to_string())
}

#[test]
fn bobs_writes_into_alices_data_fail_and_reveal_nothing() {
    let w = alices_world();
    let mut bob = w.db.connect_as(&w.bob_role);
    let mut admin = w.db.admin();
    let before = snapshot(&mut admin);
    let mut p = Problems::default();

    // Forbidden writes: each must fail (42501: privilege or row-level security policy).
    // `pre` runs first in the same transaction; $1 is one of alice's ids.
    let forbidden: Vec<(&str, &str, Uuid)> = vec![
        ("", "INSERT INTO memories (kind, content, session_id, position, role) VALUES ('message', 'bob', $1, 99, 'user')", w.session),
        ("", "INSERT INTO memories (kind, content, session_id, position, role) VALUES ('message', 'bob', $1, 99, 'user')", w.fork),
        ("", "INSERT INTO memory_sessions (id, owner_id) VALUES ($1, '{bob}')", w.free),
        ("", "INSERT INTO memory_sessions (id, owner_id) VALUES ($1, '{alice}')", w.free),
        ("", "INSERT INTO memory_shares (memory_id, grantee, can_write, granted_by) VALUES ($1, '{bob}', true, '{bob}')", w.session),
        ("", "INSERT INTO memory_shares (memory_id, grantee, can_write, granted_by) VALUES ($1, '{bob}', true, '{alice}')", w.session),
        ("", "INSERT INTO memory_shares (memory_id, grantee, can_write, granted_by) VALUES ($1, '{carol}', true, '{bob}')", w.free),
        (
            "",
            "INSERT INTO memory_share_segments (grantee, session_id, visible_upto, shared_memory, can_write) VALUES ('{bob}', $1, 1000000, $1, true)",
            w.session,
        ),
        // bob shares his own session with carol, then widens that share to alice's session
        (
            "SELECT share_memory('{session}', '{carol}')",
            "INSERT INTO memory_share_segments (grantee, session_id, visible_upto, shared_memory, can_write) VALUES ('{carol}', $1, 1000000, '{session}', true)",
            w.session,
        ),
        (
            "SELECT share_memory('{session}', '{carol}')",
            "UPDATE memory_share_segments SET session_id = $1 WHERE shared_memory = '{session}'",
            w.session,
        ),
        // bob shares his own memory with carol, then points that share at alice's session
        (
            "SELECT share_memory('{m}', '{carol}')",
            "UPDATE memory_shares SET memory_id = $1 WHERE memory_id = '{m}'",
            w.session,
        ),
        ("", "INSERT INTO embedding_schedule (memory_id, content_hash) VALUES ($1, 'x')", w.free),
        ("", "INSERT INTO vindexing_schedule (target, dimensions, memory_id) VALUES ('vector_index', 7, $1)", w.free),
        ("", "INSERT INTO users (name) VALUES ('bob''s second self')", w.free),
        ("", "INSERT INTO audit_log (table_name, operation, row_id, db_role, txid) VALUES ('memories', 'DELETE', $1, 'x', 1)", w.free),
        ("", "SELECT set_memory_user($1)", w.alice),
        ("", "SELECT set_memory_user($1, false)", w.alice),
    ];
    for (pre, sql, id) in &forbidden {
        let result = rolled_back(&mut bob, |tx| {
            let b = bobs_things(tx);
            if !pre.is_empty() {
                tx.batch_execute(&fill(pre, &b, &w)).unwrap_or_else(|e| panic!("{pre}: {}", es(&e)));
            }
            let sql = fill(sql, &b, &w);
            // params need a statement that takes $1; the users insert has none
            if sql.contains("$1") {
                tx.execute(sql.as_str(), &[id])
            } else {
                tx.execute(sql.as_str(), &[])
            }
        });
        match result {
            Ok(n) => p.check(
                false,
                format!("{sql} [$1 = alice's {id}]: succeeded ({n} row(s)) but must fail with 42501"),
            ),
            Err(e) => p.check(sqlstate(&e) == "42501", format!("{sql}: expected 42501, got {}", es(&e))),
        }
    }

    // Writes that name one of alice's ids must fail exactly like the same write naming an id
    // that does not exist: same SQLSTATE, same message, apart from the id.
    let missing = Uuid::new_v4();
    let oracles: Vec<(&str, Uuid, Option<&str>)> = vec![
        ("INSERT INTO memory_edges (source_id, target_id, relation) VALUES ('{m}', $1, 'relates_to')", w.free, Some("23503")),
        ("INSERT INTO memory_edges (source_id, target_id, relation) VALUES ('{m}', $1, 'relates_to')", w.session, Some("23503")),
        ("INSERT INTO memory_edges (source_id, target_id, relation) VALUES ($1, '{m}', 'relates_to')", w.p[0], Some("23503")),
        ("UPDATE memory_edges SET target_id = $1 WHERE id = '{edge}'", w.free, Some("23503")),
        ("UPDATE memory_edges SET source_id = $1 WHERE id = '{edge}'", w.fork_msg, Some("23503")),
        ("SELECT add_edge('{m}', $1, 'relates_to')", w.free, Some("P0002")),
        ("SELECT add_edge($1, '{m}', 'relates_to')", w.p[1], Some("P0002")),
        ("SELECT fork_session('{session}', 'bob fork', parent_message_id => $1)", w.p[0], Some("P0002")),
        ("SELECT fork_session('{session}', 'bob fork', jsonb_build_object('parent_message_id', $1::uuid::text))", w.fork_msg, Some("P0002")),
        ("SELECT share_memory($1, '{carol}')", w.session, Some("P0002")),
        // moving his own memory into alice's session
        ("UPDATE memories SET kind = 'message', session_id = $1, position = 1000, role = 'user' WHERE id = '{m}'", w.session, None),
        ("UPDATE memories SET kind = 'message', session_id = $1, position = 1, role = 'user' WHERE id = '{m}'", w.session, None),
        // making one of alice's memories a session of his, or hanging his session under hers
        ("INSERT INTO memory_sessions (id, owner_id) VALUES ($1, '{bob}')", w.p[0], None),
        (
            "INSERT INTO memory_sessions (id, owner_id, parent_id, depth, fork_position, last_position) VALUES ('{bare}', '{bob}', $1, 1, 0, 0)",
            w.session,
            None,
        ),
        ("UPDATE memory_sessions SET parent_id = $1, depth = 1 WHERE id = '{session}'", w.session, None),
        ("INSERT INTO memory_shares (memory_id, grantee, can_write, granted_by) VALUES ($1, '{carol}', false, '{bob}')", w.fork, None),
    ];
    for (sql, alices, code) in &oracles {
        let attempt = |c: &mut Client, id: Uuid| -> (Result<u64, postgres::Error>, Vec<Uuid>) {
            let mut named = vec![id];
            let r = rolled_back(c, |tx| {
                let b = bobs_things(tx);
                named.extend([b.m, b.m2, b.edge, b.session, b.bare]);
                tx.execute(fill(sql, &b, &w).as_str(), &[&id])
            });
            (r, named)
        };
        let (real, real_ids) = attempt(&mut bob, *alices);
        let (fake, fake_ids) = attempt(&mut bob, missing);
        match (&real, &fake) {
            (Err(r), Err(f)) => {
                if let Some(code) = code {
                    p.check(sqlstate(r) == *code, format!("{sql} with alice's id: expected {code}, got {r}"));
                }
                let (rs, fs) = (error_shape(r, &real_ids), error_shape(f, &fake_ids));
                p.check(
                    rs == fs,
                    format!("{sql}: alice's id fails differently from a missing id:\n      {rs}\n      {fs}"),
                );
            }
            _ => p.check(
                false,
                format!(
                    "{sql}: alice's id -> {}, missing id -> {} (both must fail, alike)",
                    real.as_ref()
                        .map(|n| format!("succeeded, {n} row(s)"))
                        .unwrap_or_else(|e| error_shape(e, &real_ids)),
                    fake.as_ref()
                        .map(|n| format!("succeeded, {n} row(s)"))
                        .unwrap_or_else(|e| error_shape(e, &fake_ids)),
                ),
            ),
        }
    }
    let after = snapshot(&mut admin);
    for t in TENANT_TABLES {
        p.check(before[t] == after[t], format!("{t} changed: {:?} -> {:?}", before[t], after[t]));
    }
    p.assert_none("bob writing into alice's data");
}

// ---------------------------------------------------------------------------------------------
// Sharing
// ---------------------------------------------------------------------------------------------

#[test]
fn sharing_a_fork_shows_exactly_its_branch_until_revoked() {
    let w = alices_world();
    let mut alice = w.db.connect();
    let mut bob = w.db.connect_as(&w.bob_role);
    let mut admin = w.db.admin();
    let mut p = Problems::default();
    let fork_transcript = transcript(&mut alice, w.fork).unwrap();
    let contents: Vec<&str> = fork_transcript.iter().map(|t| t.2.as_str()).collect();
    assert_eq!(
        contents,
        ["alice secret alpha", "alice secret bravo", "alice secret charlie in the fork"]
    );
    assert_eq!(count(&mut bob, "SELECT count(*) FROM memories", &[]), 0);

    // read-only share of the fork
    alice.execute("SELECT share_memory($1, $2)", &[&w.fork, &w.bob]).unwrap();
    let seen = transcript(&mut bob, w.fork);
    p.check(
        seen.as_ref().ok() == Some(&fork_transcript),
        format!("bob's transcript of the shared fork: {seen:?}"),
    );
    let text_a: String = alice.query_one("SELECT get_conversation_text($1)", &[&w.fork]).unwrap().get(0);
    let text_b = bob
        .query_one("SELECT get_conversation_text($1)", &[&w.fork])
        .map(|r| r.get::<_, String>(0));
    p.check(text_b.as_ref().ok() == Some(&text_a), format!("bob's text of the fork: {text_b:?}"));
    // exactly the fork and the messages its branch shows; nothing the parent wrote later
    let visible = ids(&mut bob, "SELECT id FROM memories", &[]);
    let expected: BTreeSet<Uuid> = [w.fork, w.p[0], w.p[1], w.fork_msg].into();
    p.check(visible == expected, format!("bob sees memories {visible:?}, expected {expected:?}"));
    let later = count(
        &mut bob,
        "SELECT count(*) FROM memories WHERE id = ANY($1)",
        &[&vec![w.p[2], w.p[3], w.session, w.free]],
    );
    p.check(
        later == 0,
        format!("bob sees {later} of the parent's later messages, the parent or the free memory"),
    );
    // the shared fork's own session row, not its parent's: that one would show how far alice
    // went on in the parent after the fork (its last_position)
    let rows = ids(&mut bob, "SELECT id FROM memory_sessions", &[]);
    p.check(rows == [w.fork].into(), format!("bob sees memory_sessions rows {rows:?}, expected only the fork"));
    let lineage = ids(&mut bob, "SELECT lineage_session_id FROM session_lineage($1)", &[&w.fork]);
    p.check(
        lineage == [w.fork, w.session].into(),
        format!("session_lineage of the shared fork as bob: {lineage:?}"),
    );
    let private = one(&mut alice, "SELECT create_session('alice private')", &[]);
    let unrelated = count(&mut bob, "SELECT count(*) FROM session_lineage($1)", &[&private]);
    p.check(unrelated == 0, format!("session_lineage of alice's private session returned {unrelated} rows to bob"));
    // through the parent's id bob gets at most the shared prefix
    if let Ok(parent) = transcript(&mut bob, w.session) {
        p.check(
            parent.iter().all(|t| t.3 == w.p[0] || t.3 == w.p[1]),
            format!("bob reads the parent beyond the fork point: {parent:?}"),
        );
    }
    // search finds what is shared and nothing else
    let found = ids(&mut bob, "SELECT id FROM search_memories('secret', lim => 100)", &[]);
    p.check(found == expected, format!("search_memories('secret') as bob: {found:?}"));
    let found = ids(&mut bob, "SELECT id FROM search_memories('secret', session_id => $1)", &[&w.fork]);
    let branch: BTreeSet<Uuid> = [w.p[0], w.p[1], w.fork_msg].into();
    p.check(found == branch, format!("search_memories in the fork as bob: {found:?}"));
    let found = ids(&mut bob, "SELECT id FROM search_memories('delta OR echo', lim => 100)", &[]);
    p.check(found.is_empty(), format!("search finds the parent's later messages: {found:?}"));
    let found = ids(&mut bob, "SELECT id FROM vector_search('[1,0,0]', -1, 100)", &[]);
    p.check(
        found == [w.p[0]].into(),
        format!("vector_search as bob: {found:?} (only the shared p0 has an embedding)"),
    );
    let found = ids(&mut bob, "SELECT id FROM hybrid_search('charlie', '[1,0,0]', 100)", &[]);
    p.check(found == [w.p[0], w.fork_msg].into(), format!("hybrid_search as bob: {found:?}"));

    // read-only: appending fails with 42501 and writes nothing
    let last_before = count(&mut admin, "SELECT last_position FROM memory_sessions WHERE id = $1", &[&w.fork]);
    match bob.query_one("SELECT add_message_to_session($1, 'user', 'bob tries')", &[&w.fork]) {
        Ok(_) => p.check(false, "bob appended to a read-only share"),
        Err(e) => {
            p.check(sqlstate(&e) == "42501", format!("read-only append: expected 42501, got {}", es(&e)));
            let msg = e.as_db_error().map(|d| d.message().to_string()).unwrap_or_default();
            p.check(
                msg.contains("shared with you read-only"),
                format!("read-only append message: {msg}"),
            );
        }
    }
    match bob.query(r#"SELECT add_messages_to_session($1, '[{"role": "user", "content": "bob tries a batch"}]')"#, &[&w.fork]) {
        Ok(_) => p.check(false, "bob appended a batch to a read-only share"),
        Err(e) => p.check(sqlstate(&e) == "42501", format!("read-only batch append: expected 42501, got {}", es(&e))),
    }
    p.check(
        count(&mut admin, "SELECT last_position FROM memory_sessions WHERE id = $1", &[&w.fork]) == last_before,
        "a failed append moved last_position",
    );

    // read-write: bob appends; alice, the owner, sees his message in her transcript
    alice.execute("SELECT share_memory($1, $2, true)", &[&w.fork, &w.bob]).unwrap();
    let bobs_msg: Option<Uuid> = match bob.query_one("SELECT add_message_to_session($1, 'user', 'bob writes into the fork')", &[&w.fork]) {
        Ok(r) => Some(r.get(0)),
        Err(e) => {
            p.check(false, format!("append with can_write failed: {}", es(&e)));
            None
        }
    };
    if let Some(m) = bobs_msg {
        let row = admin
            .query_one("SELECT position, created_by, session_id FROM memories WHERE id = $1", &[&m])
            .unwrap();
        p.check(
            (row.get::<_, i64>(0), row.get::<_, Uuid>(1), row.get::<_, Uuid>(2)) == (4, w.bob, w.fork),
            "bob's message is at position 4 of the fork, created by bob",
        );
        let bobs_view = transcript(&mut bob, w.fork).unwrap_or_default();
        p.check(
            bobs_view.iter().map(|t| t.0).collect::<Vec<_>>() == [1, 2, 3, 4],
            format!("bob's transcript after appending: {bobs_view:?}"),
        );
        let owners_view = transcript(&mut alice, w.fork).unwrap();
        p.check(
            owners_view.iter().map(|t| t.3).collect::<Vec<_>>() == [w.p[0], w.p[1], w.fork_msg, m],
            format!(
                "alice (the owner) must see bob's message in her fork's transcript; she sees positions {:?}",
                owners_view.iter().map(|t| t.0).collect::<Vec<_>>()
            ),
        );
    }
    // can_write on the fork does not make the parent writable
    let parent_append = bob.query_one("SELECT add_message_to_session($1, 'user', 'bob tries the parent')", &[&w.session]);
    p.check(parent_append.is_err(), "bob appended to the parent of the fork shared with him");
    // the parent is not listed for bob: every function that takes it as a session answers alike
    for sql in [
        "SELECT * FROM get_formatted_conversation($1)",
        "SELECT * FROM search_memories('secret', session_id => $1)",
        "SELECT * FROM vector_search('[1,0,0]', -1, 10, $1)",
        "SELECT * FROM hybrid_search('secret', '[1,0,0]', session_id => $1)",
    ] {
        match bob.query(sql, &[&w.session]) {
            Ok(rows) => p.check(false, format!("{sql} with the fork's parent: {} row(s), expected P0002", rows.len())),
            Err(e) => p.check(
                sqlstate(&e) == "P0002" && es(&e).contains("does not exist"),
                format!("{sql} with the fork's parent: expected P0002 \"does not exist\", got {}", es(&e)),
            ),
        }
    }

    // revoke: bob's very next statement sees none of alice's rows again
    let revoked: bool = alice.query_one("SELECT revoke_share($1, $2)", &[&w.fork, &w.bob]).unwrap().get(0);
    assert!(revoked);
    let alices_rows = count(
        &mut bob,
        "SELECT count(*) FROM memories WHERE created_by IS DISTINCT FROM $1",
        &[&w.bob],
    );
    p.check(
        alices_rows == 0,
        format!("after revoke bob still sees {alices_rows} of alice's memories"),
    );
    let conv = transcript(&mut bob, w.fork);
    p.check(
        matches!(&conv, Err(e) if sqlstate(e) == "P0002"),
        format!("after revoke get_formatted_conversation: {conv:?}"),
    );
    let found = ids(&mut bob, "SELECT id FROM search_memories('secret OR alice', lim => 100)", &[]);
    p.check(found.is_empty(), format!("after revoke search finds {found:?}"));
    let found = ids(&mut bob, "SELECT id FROM vector_search('[1,0,0]', -1, 100)", &[]);
    p.check(found.is_empty(), format!("after revoke vector_search finds {found:?}"));
    for t in ["memory_shares", "memory_share_segments"] {
        let n = count(&mut bob, &format!("SELECT count(*) FROM {t}"), &[]);
        p.check(n == 0, format!("after revoke bob sees {n} row(s) of {t}"));
    }
    let n = count(&mut bob, "SELECT count(*) FROM memory_sessions", &[]);
    p.check(n == 0, format!("after revoke bob sees {n} of alice's sessions"));
    let append = bob.query_one("SELECT add_message_to_session($1, 'user', 'bob after revoke')", &[&w.fork]);
    p.check(
        matches!(&append, Err(e) if sqlstate(e) == "P0002"),
        format!("after revoke append: {append:?}"),
    );
    p.assert_none("sharing a fork");
}

/// The consequence of the share tables accepting rows bob writes himself: knowing the id of
/// alice's session (ids travel in events, logs, URLs) bob would read and write her conversation.
#[test]
fn bob_cannot_share_alices_session_with_himself() {
    let w = alices_world();
    let mut bob = w.db.connect_as(&w.bob_role);
    let mut admin = w.db.admin();
    let last_before = count(&mut admin, "SELECT last_position FROM memory_sessions WHERE id = $1", &[&w.session]);
    let grant = bob.execute(
        "INSERT INTO memory_shares (memory_id, grantee, can_write, granted_by) VALUES ($1, $2, true, $2)",
        &[&w.session, &w.bob],
    );
    let segment = bob.execute(
        "INSERT INTO memory_share_segments (grantee, session_id, visible_upto, shared_memory, can_write)
         VALUES ($2, $1, 9223372036854775807, $1, true)",
        &[&w.session, &w.bob],
    );
    let read = transcript(&mut bob, w.session);
    let write = bob.query_one("SELECT add_message_to_session($1, 'assistant', 'injected by bob')", &[&w.session]);
    let last_after = count(&mut admin, "SELECT last_position FROM memory_sessions WHERE id = $1", &[&w.session]);
    let read_contents: Vec<String> = read.as_ref().map(|t| t.iter().map(|m| m.2.clone()).collect()).unwrap_or_default();
    assert!(
        grant.is_err() && segment.is_err() && read_contents.is_empty() && write.is_err() && last_after == last_before,
        "bob granted himself alice's session: share insert {:?}, segment insert {:?}; he then read {:?} and appended {:?} \
         (alice's last_position {last_before} -> {last_after})",
        grant.map_err(|e| es(&e)),
        segment.map_err(|e| es(&e)),
        read_contents,
        write.map(|r| r.get::<_, Uuid>(0)).map_err(|e| es(&e)),
    );
}

/// Events: any role can LISTEN on any channel, so what the global channel carries reaches every
/// tenant. Bob must learn nothing about alice's writes from it (not even ids, which the rest of
/// the API takes care never to confirm).
#[test]
fn bob_learns_nothing_about_alices_writes_from_events() {
    use postgres::fallible_iterator::FallibleIterator;
    let w = alices_world();
    // NOTIFY ignores privileges, so a shared database keeps ids off the global channel with this
    // setting (SECURITY.md); per-session channels need the session id, which bob does not have.
    w.db.admin()
        .batch_execute(&format!("ALTER DATABASE {} SET memoriesdb.global_events = off", w.db.name))
        .unwrap();
    let mut alice = w.db.connect();
    let mut bob = w.db.connect_as(&w.bob_role);
    bob.batch_execute("LISTEN memoriesdb_events").unwrap();
    let s = one(&mut alice, "SELECT create_session('alice private')", &[]);
    let m = add_message(&mut alice, s, "user", "alice private message");
    let mut notes = bob.notifications();
    let got: Vec<String> = notes
        .timeout_iter(std::time::Duration::from_millis(1500))
        .map(|n| Ok(n.payload().to_string()))
        .collect()
        .unwrap();
    let leaked: Vec<&String> = got
        .iter()
        .filter(|p| p.contains(&s.to_string()) || p.contains(&m.to_string()))
        .collect();
    assert!(
        leaked.is_empty(),
        "bob, listening on memoriesdb_events, received alice's ids: {leaked:?}"
    );
}

#[test]
fn sharing_a_session_shows_its_transcript_but_not_its_forks() {
    let w = alices_world();
    let mut alice = w.db.connect();
    let mut bob = w.db.connect_as(&w.bob_role);
    alice.execute("SELECT share_memory($1, $2)", &[&w.session, &w.bob]).unwrap();
    let expected = transcript(&mut alice, w.session).unwrap();
    assert_eq!(expected.iter().map(|t| t.3).collect::<Vec<_>>(), w.p);
    assert_eq!(transcript(&mut bob, w.session).unwrap(), expected);
    let visible = ids(&mut bob, "SELECT id FROM memories", &[]);
    let mut want: BTreeSet<Uuid> = w.p.iter().copied().collect();
    want.insert(w.session);
    assert_eq!(
        visible, want,
        "bob sees the session and its messages, not the fork, its message or the free memory"
    );
    let conv = transcript(&mut bob, w.fork);
    assert!(
        matches!(&conv, Err(e) if sqlstate(e) == "P0002"),
        "the fork is not shared: {conv:?}"
    );
    // messages alice adds later are shared too (the share is the session, not a snapshot)
    let later = add_message(&mut alice, w.session, "user", "alice secret foxtrot");
    assert_eq!(transcript(&mut bob, w.session).unwrap().last().map(|t| t.3), Some(later));
    // a fork bob makes of the shared session is his and sees the shared transcript
    let bobs_fork = one(&mut bob, "SELECT fork_session($1, 'bob''s fork')", &[&w.session]);
    add_message(&mut bob, bobs_fork, "user", "bob continues");
    let bt = transcript(&mut bob, bobs_fork).unwrap();
    assert_eq!(bt.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6]);
    // alice revokes: bob's fork keeps only what is his
    alice.query_one("SELECT revoke_share($1, $2)", &[&w.session, &w.bob]).unwrap();
    let bt = transcript(&mut bob, bobs_fork).unwrap();
    assert_eq!(bt.iter().map(|t| t.2.as_str()).collect::<Vec<_>>(), ["bob continues"]);
    assert_eq!(
        count(&mut bob, "SELECT count(*) FROM memories WHERE created_by <> $1", &[&w.bob]),
        0
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Identity spoofing and trusted identity assertion
// ---------------------------------------------------------------------------------------------

/// What an identity-spoofing bob can reach: every read must fail (42501 or P0002) or return
/// none of alice's rows; every write must fail or be bob's own.
fn spoof_probe(c: &mut Client, w: &World, how: &str, in_transaction: Option<&str>, p: &mut Problems) {
    let reads: Vec<String> = vec![
        format!("SELECT count(*) FROM memories WHERE created_by = '{}'", w.alice),
        "SELECT count(*) FROM memories".into(),
        format!("SELECT count(*) FROM memory_sessions WHERE owner_id = '{}'", w.alice),
        format!("SELECT count(*) FROM memory_edges WHERE created_by = '{}'", w.alice),
        format!(
            "SELECT count(*) FROM audit_log WHERE subject_user = '{0}' OR acting_user = '{0}'",
            w.alice
        ),
        format!("SELECT count(*) FROM users WHERE id = '{}'", w.alice),
        "SELECT count(*) FROM memory_shares".into(),
        "SELECT count(*) FROM search_memories('secret')".into(),
        "SELECT count(*) FROM vector_search('[1,0,0]', -1)".into(),
        format!("SELECT count(*) FROM get_formatted_conversation('{}')", w.session),
        format!("SELECT count(*) FROM traverse_memory_graph('{}')", w.free),
        format!("SELECT count(*) FROM memory_graph WHERE id = '{}'", w.free),
        format!("SELECT count(*) FROM (SELECT current_memory_user() AS u) x WHERE u = '{}'", w.alice),
    ];
    let writes: Vec<String> = vec![
        format!("SELECT create_session('spoofed session ({how})')"),
        format!("INSERT INTO memories (content) VALUES ('spoofed memory ({how})')"),
        format!("SELECT add_message_to_session('{}', 'user', 'spoofed message ({how})')", w.session),
        format!("SELECT add_edge('{}', '{}', 'spoofed')", w.free, w.p[3]),
        format!("SELECT share_memory('{}', '{}')", w.session, w.bob),
    ];
    for sql in &reads {
        match spoof_run(c, sql, in_transaction) {
            Ok(n) => p.check(n == 0, format!("[{how}] {sql}: bob gets {n}")),
            Err(e) => p.check(
                ["42501", "P0002"].contains(&sqlstate(&e).as_str()),
                format!("[{how}] {sql}: unexpected error {}", es(&e)),
            ),
        }
    }
    for sql in &writes {
        // a write may fail (42501 as an impostor; P0002 or 23503 for alice's invisible ids) or
        // succeed as bob himself; the caller checks afterwards that nothing is alice's
        if let Err(e) = spoof_run(c, sql, in_transaction) {
            p.check(
                ["42501", "P0002", "23503"].contains(&sqlstate(&e).as_str()),
                format!("[{how}] {sql}: unexpected error {}", es(&e)),
            );
        }
    }
}

/// Runs one probe statement, in autocommit or in its own transaction that first runs `set`;
/// returns the count for "SELECT count" statements, 0 otherwise.
fn spoof_run(c: &mut Client, sql: &str, in_transaction: Option<&str>) -> Result<i64, postgres::Error> {
    let exec = |c: &mut Client| {
        if sql.starts_with("SELECT count") {
            c.query_one(sql, &[]).map(|r| r.get(0))
        } else {
            c.execute(sql, &[]).map(|_| 0)
        }
    };
    match in_transaction {
        None => exec(c),
        Some(set) => {
            c.batch_execute("BEGIN").unwrap();
            c.batch_execute(set).unwrap();
            let r = exec(c);
            c.batch_execute(if r.is_ok() { "COMMIT" } else { "ROLLBACK" }).unwrap();
            r
        }
    }
}

#[test]
fn an_untrusted_role_cannot_act_as_another_user() {
    let w = alices_world();
    let mut admin = w.db.admin();
    let alices_before = count(&mut admin, "SELECT count(*) FROM memories WHERE created_by = $1", &[&w.alice]);
    let snapshot_before = snapshot(&mut admin);
    let mut p = Problems::default();
    let alice = w.alice.to_string();

    // SET (session level)
    let mut bob = w.db.connect_as(&w.bob_role);
    bob.batch_execute(&format!("SET app.\"current_user\" = '{alice}'")).unwrap();
    spoof_probe(&mut bob, &w, "SET", None, &mut p);
    bob.batch_execute("RESET app.\"current_user\"").unwrap();

    // SET LOCAL inside a transaction
    spoof_probe(
        &mut bob,
        &w,
        "SET LOCAL",
        Some(&format!("SET LOCAL app.\"current_user\" = '{alice}'")),
        &mut p,
    );
    // set_config, session-wide and transaction-local
    bob.query_one("SELECT set_config('app.current_user', $1, false)", &[&alice])
        .unwrap();
    spoof_probe(&mut bob, &w, "set_config", None, &mut p);
    bob.query_one("SELECT set_config('app.current_user', '', false)", &[]).unwrap();
    spoof_probe(
        &mut bob,
        &w,
        "set_config local",
        Some(&format!("SELECT set_config('app.current_user', '{alice}', true)")),
        &mut p,
    );

    // set_memory_user refuses outright
    for sql in [
        "SELECT set_memory_user($1)",
        "SELECT set_memory_user($1, false)",
        "SELECT set_memory_user($1, true)",
    ] {
        let r = bob.query_one(sql, &[&w.alice]);
        p.check(matches!(&r, Err(e) if sqlstate(e) == "42501"), format!("{sql} as bob: {r:?}"));
    }
    spoof_probe(&mut bob, &w, "after set_memory_user", None, &mut p);
    let me: Option<Uuid> = bob.query_one("SELECT current_memory_user()", &[]).unwrap().get(0);
    p.check(me == Some(w.bob), format!("bob is still bob: {me:?}"));
    drop(bob);

    // ALTER ROLE ... SET by the superuser, then bob reconnects
    admin
        .batch_execute(&format!("ALTER ROLE {} SET app.\"current_user\" = '{alice}'", w.bob_role))
        .unwrap();
    let mut bob = w.db.connect_as(&w.bob_role);
    let setting: String = bob.query_one("SELECT current_setting('app.current_user')", &[]).unwrap().get(0);
    assert_eq!(setting, alice, "precondition: the role setting is in effect");
    spoof_probe(&mut bob, &w, "ALTER ROLE SET", None, &mut p);
    drop(bob);
    admin.batch_execute(&format!("ALTER ROLE {} RESET ALL", w.bob_role)).unwrap();

    // a startup option (PGOPTIONS)
    let url =
        w.db.url_for_db(&w.bob_role, &w.db.name, &format!("options='-c app.current_user={alice}'"));
    let mut bob = Client::connect(&url, NoTls).unwrap();
    let setting: String = bob.query_one("SELECT current_setting('app.current_user')", &[]).unwrap().get(0);
    assert_eq!(setting, alice, "precondition: the startup option is in effect");
    spoof_probe(&mut bob, &w, "startup option", None, &mut p);
    drop(bob);

    // nothing was written as alice, and alice's data is untouched apart from bob's own rows
    let alices_after = count(&mut admin, "SELECT count(*) FROM memories WHERE created_by = $1", &[&w.alice]);
    p.check(
        alices_after == alices_before,
        format!("alice's memories: {alices_before} -> {alices_after}"),
    );
    let spoofed = count(
        &mut admin,
        "SELECT count(*) FROM memories WHERE content LIKE 'spoofed%' AND created_by IS DISTINCT FROM $1",
        &[&w.bob],
    );
    p.check(spoofed == 0, format!("{spoofed} spoofed memories are not attributed to bob"));
    let acting = count(
        &mut admin,
        "SELECT count(*) FROM audit_log WHERE db_role = $1 AND acting_user IS DISTINCT FROM $2",
        &[&w.bob_role, &w.bob],
    );
    p.check(acting == 0, format!("{acting} audit rows of bob's role name another acting user"));
    let after = snapshot(&mut admin);
    for t in ["memory_sessions", "memory_shares", "memory_share_segments", "users"] {
        // bob may have created his own sessions; alice's must be unchanged
        if t == "memory_sessions" {
            let n = count(
                &mut admin,
                "SELECT count(*) FROM memory_sessions WHERE owner_id IS DISTINCT FROM $1 AND owner_id IS DISTINCT FROM $2",
                &[&w.alice, &w.bob],
            );
            p.check(n == 0, format!("{n} sessions owned by neither alice nor bob"));
        } else {
            p.check(snapshot_before[t] == after[t], format!("{t} changed"));
        }
    }
    p.assert_none("identity spoofing by an untrusted role");
}

#[test]
fn a_trusted_role_switches_users_per_transaction_without_carry_over() {
    let db = TestDb::new();
    let alice = db.user;
    let (_bob_role, bob) = db.extra_role("bob");
    let app = db.unmapped_role("app");
    db.grant("memoriesdb_trusted", &app);
    // some rows of each user to start with
    let mut a = db.connect();
    a.batch_execute("INSERT INTO memories (content) SELECT 'alice ' || g FROM generate_series(1, 3) g")
        .unwrap();
    let mut admin = db.admin();
    let mut expected: BTreeMap<Uuid, i64> = BTreeMap::new();
    expected.insert(alice, 3);
    expected.insert(bob, 0);

    let mut c = db.connect_as(&app);
    let set = c.prepare("SELECT set_memory_user($1, true)").unwrap();
    let read = c
        .prepare("SELECT count(*), count(*) FILTER (WHERE created_by IS DISTINCT FROM $1), current_memory_user() FROM memories")
        .unwrap();
    let insert = c
        .prepare("INSERT INTO memories (content) VALUES ($1) RETURNING created_by, updated_by")
        .unwrap();
    let outside = c.prepare("SELECT count(*), current_memory_user() FROM memories").unwrap();
    let started = std::time::Instant::now();
    for i in 0..1000 {
        let user = if i % 2 == 0 { alice } else { bob };
        c.batch_execute("BEGIN").unwrap();
        let asserted: Uuid = c.query_one(&set, &[&user]).unwrap().get(0);
        assert_eq!(asserted, user);
        let r = c.query_one(&read, &[&user]).unwrap();
        let (mine, others, acting): (i64, i64, Option<Uuid>) = (r.get(0), r.get(1), r.get(2));
        assert_eq!(
            (mine, others, acting),
            (expected[&user], 0, Some(user)),
            "transaction {i} as {user}"
        );
        let r = c.query_one(&insert, &[&format!("tx {i}")]).unwrap();
        assert_eq!(
            (r.get::<_, Uuid>(0), r.get::<_, Uuid>(1)),
            (user, user),
            "transaction {i} writes as {user}"
        );
        c.batch_execute("COMMIT").unwrap();
        *expected.get_mut(&user).unwrap() += 1;
        let r = c.query_one(&outside, &[]).unwrap();
        let (n, acting): (i64, Option<Uuid>) = (r.get(0), r.get(1));
        assert_eq!(
            (n, acting),
            (0, None),
            "after transaction {i} the asserted user must not carry over"
        );
    }
    let elapsed = started.elapsed();
    eprintln!("1000 alternating-user transactions through one connection: {elapsed:?}");
    // a rolled-back assertion does not carry over either
    c.batch_execute("BEGIN").unwrap();
    c.query_one(&set, &[&alice]).unwrap();
    c.batch_execute("ROLLBACK").unwrap();
    assert_eq!(c.query_one(&outside, &[]).unwrap().get::<_, i64>(0), 0);
    // as the superuser sees it
    for (user, n) in &expected {
        assert_eq!(
            count(&mut admin, "SELECT count(*) FROM memories WHERE created_by = $1", &[user]),
            *n
        );
    }
    let wrong = count(
        &mut admin,
        "SELECT count(*) FROM audit_log a JOIN memories m ON m.id = a.row_id
          WHERE a.db_role = $1 AND (a.acting_user IS DISTINCT FROM m.created_by OR a.subject_user IS DISTINCT FROM m.created_by)",
        &[&app],
    );
    assert_eq!(wrong, 0, "audit rows attribute each write to the user asserted for its transaction");
    assert_eq!(
        count(&mut admin, "SELECT count(*) FROM audit_log WHERE db_role = $1", &[&app]),
        1000
    );
}

// ---------------------------------------------------------------------------------------------
// 3. The catalog: every table of the extension has forced row-level security
// ---------------------------------------------------------------------------------------------

#[test]
fn every_table_of_the_extension_has_forced_row_level_security() {
    let db = TestDb::new();
    let mut c = db.connect();
    let tables: Vec<(String, bool, bool)> = c
        .query(
            "SELECT c.oid::regclass::text, c.relrowsecurity, c.relforcerowsecurity
               FROM pg_depend d
               JOIN pg_extension e ON e.oid = d.refobjid AND d.refclassid = 'pg_extension'::regclass
               JOIN pg_class c ON c.oid = d.objid AND d.classid = 'pg_class'::regclass
              WHERE e.extname = 'memoriesdb' AND d.deptype = 'e' AND c.relkind IN ('r', 'p')
              ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    eprintln!("tables of extension memoriesdb (name, rowsecurity, forcerowsecurity):");
    for t in &tables {
        eprintln!("  {t:?}");
    }
    assert!(!tables.is_empty(), "found no tables belonging to extension memoriesdb");
    // the tenant tables are among them (the query really finds the extension's tables)
    for t in TENANT_TABLES {
        assert!(
            tables.iter().any(|(name, _, _)| name == t),
            "{t} is not listed as a table of the extension"
        );
    }
    let unprotected: Vec<_> = tables.iter().filter(|(_, rls, force)| !rls || !force).collect();
    assert!(
        unprotected.is_empty(),
        "tables without enabled and forced row-level security: {unprotected:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. An audit you can trust
// ---------------------------------------------------------------------------------------------

#[test]
fn provenance_is_the_acting_user_whatever_the_caller_supplies() {
    let w = alices_world();
    let mut alice = w.db.connect();
    let mut bob = w.db.connect_as(&w.bob_role);
    let app = w.db.unmapped_role("app");
    w.db.grant("memoriesdb_trusted", &app);
    let mut admin = w.db.admin();

    // alice claims bob wrote it
    let r = alice
        .query_one(
            "INSERT INTO memories (content, created_by, updated_by) VALUES ('claims to be bob''s', $1, $1) RETURNING id, created_by, updated_by",
            &[&w.bob],
        )
        .unwrap();
    let x: Uuid = r.get(0);
    assert_eq!(
        (r.get::<_, Uuid>(1), r.get::<_, Uuid>(2)),
        (w.alice, w.alice),
        "INSERT with caller-supplied provenance"
    );
    let r = alice
        .query_one(
            "UPDATE memories SET content = 'edited', created_by = $2, updated_by = $2, _created_at = '2000-01-01' WHERE id = $1
             RETURNING created_by, updated_by, _created_at > now() - interval '1 hour'",
            &[&x, &w.bob],
        )
        .unwrap();
    assert_eq!(
        (r.get::<_, Uuid>(0), r.get::<_, Uuid>(1), r.get::<_, bool>(2)),
        (w.alice, w.alice, true),
        "UPDATE with caller-supplied provenance"
    );
    // edges
    let r = alice
        .query_one(
            "INSERT INTO memory_edges (source_id, target_id, relation, created_by) VALUES ($1, $2, 'relates_to', $3) RETURNING created_by",
            &[&x, &w.p[1], &w.bob],
        )
        .unwrap();
    assert_eq!(r.get::<_, Uuid>(0), w.alice, "edge INSERT with caller-supplied created_by");
    let r = alice
        .query_one(
            "UPDATE memory_edges SET created_by = $2, weight = 2 WHERE id = $1 RETURNING created_by",
            &[&w.edge, &w.bob],
        )
        .unwrap();
    assert_eq!(r.get::<_, Uuid>(0), w.alice, "edge UPDATE with caller-supplied created_by");
    // a session's owner cannot be forged or given away
    let r = alice.execute("UPDATE memory_sessions SET owner_id = $2 WHERE id = $1", &[&w.session, &w.bob]);
    assert_eq!(r.map_err(|e| sqlstate(&e)), Err("42501".to_string()), "giving a session away");
    let r = alice.execute("INSERT INTO memory_sessions (id, owner_id) VALUES ($1, $2)", &[&x, &w.bob]);
    assert_eq!(
        r.map_err(|e| sqlstate(&e)),
        Err("42501".to_string()),
        "a session row owned by someone else"
    );

    // bob edits alice's memory shared with him for writing, and claims alice did it
    alice.execute("SELECT share_memory($1, $2, true)", &[&w.free, &w.bob]).unwrap();
    let r = bob
        .query_one(
            "UPDATE memories SET _metadata = '{\"edited\": \"bob\"}', created_by = $2, updated_by = $3 WHERE id = $1 RETURNING created_by, updated_by",
            &[&w.free, &w.bob, &w.alice],
        )
        .unwrap();
    assert_eq!(
        (r.get::<_, Uuid>(0), r.get::<_, Uuid>(1)),
        (w.alice, w.bob),
        "a shared write keeps the creator and records the editor"
    );
    let r = admin
        .query_one(
            "SELECT acting_user, subject_user, db_role::text, new_row->>'updated_by', new_row->>'created_by'
               FROM audit_log WHERE row_id = $1 AND operation = 'UPDATE' ORDER BY id DESC LIMIT 1",
            &[&w.free],
        )
        .unwrap();
    assert_eq!(
        (
            r.get::<_, Uuid>(0),
            r.get::<_, Uuid>(1),
            r.get::<_, String>(2),
            r.get::<_, String>(3),
            r.get::<_, String>(4)
        ),
        (w.bob, w.alice, w.bob_role.clone(), w.bob.to_string(), w.alice.to_string())
    );

    // a trusted application acting as alice, claiming bob
    let mut c = w.db.connect_as(&app);
    c.batch_execute("BEGIN").unwrap();
    c.query_one("SELECT set_memory_user($1)", &[&w.alice]).unwrap();
    let r = c
        .query_one(
            "INSERT INTO memories (content, created_by, updated_by) VALUES ('via app', $1, $1) RETURNING id, created_by, updated_by",
            &[&w.bob],
        )
        .unwrap();
    let via: Uuid = r.get(0);
    assert_eq!((r.get::<_, Uuid>(1), r.get::<_, Uuid>(2)), (w.alice, w.alice));
    c.batch_execute("COMMIT").unwrap();
    let r = admin
        .query_one(
            "SELECT acting_user, subject_user, db_role::text FROM audit_log WHERE row_id = $1",
            &[&via],
        )
        .unwrap();
    assert_eq!(
        (r.get::<_, Uuid>(0), r.get::<_, Uuid>(1), r.get::<_, String>(2)),
        (w.alice, w.alice, app.clone())
    );
    // every audit row of alice's own role names alice as the acting user
    let wrong = count(
        &mut admin,
        "SELECT count(*) FROM audit_log WHERE db_role = $1 AND acting_user IS DISTINCT FROM $2",
        &[&w.db.role, &w.alice],
    );
    assert_eq!(wrong, 0);
}

#[test]
fn the_audit_log_is_immutable_for_every_non_superuser() {
    let w = alices_world();
    let (auditor, _) = w.db.extra_role("auditor");
    w.db.grant("memoriesdb_auditor", &auditor);
    let (worker, _) = w.db.extra_role("worker2");
    w.db.grant("memoriesdb_worker", &worker);
    let trusted = w.db.unmapped_role("app");
    w.db.grant("memoriesdb_trusted", &trusted);
    let mut admin = w.db.admin();
    let before = snapshot(&mut admin)["audit_log"].clone();
    let mut p = Problems::default();
    for role in [w.db.role.clone(), w.bob_role.clone(), auditor, worker, trusted] {
        let mut c = w.db.connect_as(&role);
        let visible = count(&mut c, "SELECT count(*) FROM audit_log", &[]);
        for sql in [
            "UPDATE audit_log SET new_row = '{}'",
            "UPDATE audit_log SET chain_hash = 'forged' WHERE id = (SELECT min(id) FROM audit_log)",
            "DELETE FROM audit_log",
            "DELETE FROM audit_log WHERE id = (SELECT max(id) FROM audit_log)",
            "TRUNCATE audit_log",
            "ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only",
            "ALTER TABLE audit_log DISABLE TRIGGER ALL",
            "ALTER TABLE audit_log NO FORCE ROW LEVEL SECURITY",
            "DROP TRIGGER audit_log_append_only ON audit_log",
        ] {
            match c.batch_execute(sql) {
                Ok(()) => p.check(false, format!("{role} ({visible} visible rows): {sql} succeeded")),
                Err(e) => p.check(sqlstate(&e) == "42501", format!("{role}: {sql}: expected 42501, got {}", es(&e))),
            }
        }
    }
    let after = snapshot(&mut admin)["audit_log"].clone();
    p.check(before == after, "the audit log changed");
    p.assert_none("audit_log immutability");
}

#[test]
fn audit_rows_are_visible_to_the_users_they_concern_and_to_auditors() {
    let w = alices_world();
    let mut alice = w.db.connect();
    let mut bob = w.db.connect_as(&w.bob_role);
    let (auditor, _) = w.db.extra_role("auditor");
    w.db.grant("memoriesdb_auditor", &auditor);
    let mut admin = w.db.admin();
    // bob's own work, and bob's edit of a memory alice shared with him for writing
    let bs = one(&mut bob, "SELECT create_session('bob session')", &[]);
    add_message(&mut bob, bs, "user", "bob one");
    alice.execute("SELECT share_memory($1, $2, true)", &[&w.free, &w.bob]).unwrap();
    assert_eq!(
        bob.execute("UPDATE memories SET _metadata = '{\"by\": \"bob\"}' WHERE id = $1", &[&w.free])
            .unwrap(),
        1
    );

    let all: BTreeSet<i64> = admin
        .query("SELECT id FROM audit_log", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let concern_bob: BTreeSet<i64> = admin
        .query("SELECT id FROM audit_log WHERE subject_user = $1 OR acting_user = $1", &[&w.bob])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let concern_alice: BTreeSet<i64> = admin
        .query("SELECT id FROM audit_log WHERE subject_user = $1 OR acting_user = $1", &[&w.alice])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        !concern_bob.is_empty() && concern_bob.len() < all.len(),
        "precondition: some but not all rows concern bob"
    );
    let seen = |c: &mut Client| -> BTreeSet<i64> { c.query("SELECT id FROM audit_log", &[]).unwrap().iter().map(|r| r.get(0)).collect() };
    assert_eq!(seen(&mut bob), concern_bob, "bob sees exactly the audit rows concerning him");
    assert_eq!(seen(&mut alice), concern_alice, "alice sees exactly the audit rows concerning her");
    // the row of bob's edit concerns both
    let edit: i64 = admin
        .query_one(
            "SELECT id FROM audit_log WHERE row_id = $1 AND operation = 'UPDATE' AND acting_user = $2",
            &[&w.free, &w.bob],
        )
        .unwrap()
        .get(0);
    assert!(concern_bob.contains(&edit) && concern_alice.contains(&edit));
    let mut aud = w.db.connect_as(&auditor);
    assert_eq!(seen(&mut aud), all, "an auditor sees every audit row");
    // the auditor role confers no access to content
    assert_eq!(count(&mut aud, "SELECT count(*) FROM memories", &[]), 0);
}

/// Seal as an auditor until nothing is left unsealed (sealing skips transactions newer than the
/// oldest running one anywhere in the cluster), then return verify_audit_chain()'s row.
fn seal_all(aud: &mut Client) -> (bool, i64, i64, Option<i64>, Option<String>) {
    for _ in 0..50 {
        aud.query_one("SELECT seal_audit_log()", &[]).unwrap();
        let r = aud.query_one("SELECT unsealed_rows FROM verify_audit_chain()", &[]).unwrap();
        if r.get::<_, i64>(0) == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    verify(aud)
}

fn verify(c: &mut Client) -> (bool, i64, i64, Option<i64>, Option<String>) {
    let r = c
        .query_one(
            "SELECT intact, sealed_rows, unsealed_rows, first_broken_position, problem FROM verify_audit_chain()",
            &[],
        )
        .unwrap();
    (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))
}

#[test]
fn a_sealed_audit_chain_verifies_and_exposes_a_changed_row() {
    let w = alices_world();
    let (auditor, _) = w.db.extra_role("auditor");
    w.db.grant("memoriesdb_auditor", &auditor);
    let mut aud = w.db.connect_as(&auditor);
    let mut admin = w.db.admin();
    // an ordinary role may not run the verification
    let denied = w.db.connect().query_one("SELECT * FROM verify_audit_chain()", &[]);
    assert_eq!(denied.map(|_| ()).map_err(|e| sqlstate(&e)), Err("42501".to_string()));

    let total = count(&mut admin, "SELECT count(*) FROM audit_log", &[]);
    let (intact, sealed, unsealed, broken, problem) = seal_all(&mut aud);
    assert_eq!((intact, sealed, unsealed, broken, problem), (true, total, 0, None, None));
    let last_hash: String = aud.query_one("SELECT last_hash FROM verify_audit_chain()", &[]).unwrap().get(0);
    assert_eq!(last_hash.len(), 64);
    // positions are 1..total, in (transaction, id) order
    let r = admin
        .query_one(
            "SELECT min(chain_position), max(chain_position), count(DISTINCT chain_position) FROM audit_log",
            &[],
        )
        .unwrap();
    assert_eq!((r.get::<_, i64>(0), r.get::<_, i64>(1), r.get::<_, i64>(2)), (1, total, total));

    // more work, sealed later, extends the chain
    let mut alice = w.db.connect();
    add_message(&mut alice, w.session, "user", "after the first seal");
    let total = count(&mut admin, "SELECT count(*) FROM audit_log", &[]);
    assert_eq!(seal_all(&mut aud), (true, total, 0, None, None));

    // a superuser tampers with one sealed row (the append-only trigger lets superusers through)
    let k = total / 2;
    assert!(k >= 2);
    let changed = admin
        .execute(
            "UPDATE audit_log SET new_row = jsonb_set(new_row, '{content}', '\"tampered\"') WHERE chain_position = $1",
            &[&k],
        )
        .unwrap();
    assert_eq!(changed, 1);
    let (intact, sealed, _, broken, problem) = verify(&mut aud);
    assert!(!intact, "a changed sealed row must break the chain");
    assert_eq!(broken, Some(k), "the first broken position is the changed row's: {problem:?}");
    assert_eq!(sealed, k - 1, "rows before the changed one still verify");
}

#[test]
fn a_sealed_audit_chain_exposes_a_removed_row() {
    let w = alices_world();
    let (auditor, _) = w.db.extra_role("auditor");
    w.db.grant("memoriesdb_auditor", &auditor);
    let mut aud = w.db.connect_as(&auditor);
    let mut admin = w.db.admin();
    let total = count(&mut admin, "SELECT count(*) FROM audit_log", &[]);
    assert_eq!(seal_all(&mut aud), (true, total, 0, None, None));
    let k = total / 2;
    assert!(k >= 2);
    assert_eq!(admin.execute("DELETE FROM audit_log WHERE chain_position = $1", &[&k]).unwrap(), 1);
    let (intact, sealed, _, broken, problem) = verify(&mut aud);
    assert!(!intact, "a removed sealed row must break the chain");
    assert_eq!(broken, Some(k), "the gap is reported at the removed row's position");
    assert_eq!(sealed, k - 1);
    let problem = problem.unwrap_or_default();
    assert!(
        problem.contains("missing") || problem.contains("removed"),
        "problem names the gap: {problem}"
    );
}

/// The chain hashes each row's canonical text. Verifying the very same rows must not depend on
/// the verifying session's settings (TimeZone is per client: PGTZ, ALTER ROLE, a driver default).
#[test]
fn audit_chain_verification_does_not_depend_on_the_session_time_zone() {
    let w = alices_world();
    let (auditor, _) = w.db.extra_role("auditor");
    w.db.grant("memoriesdb_auditor", &auditor);
    let mut aud = w.db.connect_as(&auditor);
    aud.batch_execute("SET TimeZone = 'UTC'").unwrap();
    let total = count(&mut w.db.admin(), "SELECT count(*) FROM audit_log", &[]);
    assert_eq!(seal_all(&mut aud), (true, total, 0, None, None));
    let mut p = Problems::default();
    for tz in ["Pacific/Kiritimati", "America/New_York", "Asia/Kolkata", "UTC"] {
        aud.batch_execute(&format!("SET TimeZone = '{tz}'")).unwrap();
        let got = verify(&mut aud);
        p.check(got.0 && got.1 == total, format!("verify_audit_chain() with TimeZone {tz}: {got:?}"));
    }
    // and sealing in another time zone gives a chain that verifies in UTC
    let mut alice = w.db.connect();
    add_message(&mut alice, w.session, "user", "sealed in Kolkata");
    aud.batch_execute("SET TimeZone = 'Asia/Kolkata'").unwrap();
    aud.query_one("SELECT seal_audit_log()", &[]).unwrap();
    aud.batch_execute("SET TimeZone = 'UTC'").unwrap();
    let got = verify(&mut aud);
    p.check(got.0, format!("a chain sealed in Asia/Kolkata, verified in UTC: {got:?}"));
    p.assert_none("time-zone independence of the audit chain");
}

/// current_memory_user() caches its answer and is invalidated by PostgreSQL's cache
/// invalidation callbacks, which can fire in the middle of its own catalog lookups. Writers
/// under a steady stream of relation, role-membership and users changes from another session
/// must neither fail nor be attributed to anyone else.
#[test]
fn identity_cache_survives_concurrent_catalog_and_users_changes() {
    let db = TestDb::new();
    let (other_role, _) = db.extra_role("churn");
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let (role, user) = db.extra_role(&format!("writer{w}"));
            let mut c = db.connect_as(&role);
            std::thread::spawn(move || {
                let session: Uuid = c.query_one("SELECT create_session('churn')", &[]).unwrap().get(0);
                for i in 0..150 {
                    add_message(&mut c, session, "user", &format!("message {i}"));
                }
                (session, user)
            })
        })
        .collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let stop = stop.clone();
        let mut admin = db.admin();
        std::thread::spawn(move || {
            let mut rounds = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                admin
                    .batch_execute(&format!(
                        "CREATE TABLE churn_t (x int); DROP TABLE churn_t; ANALYZE memory_sessions;
                         GRANT memoriesdb_worker TO {other_role}; REVOKE memoriesdb_worker FROM {other_role};
                         UPDATE users SET name = name WHERE db_role = '{other_role}'"
                    ))
                    .unwrap();
                rounds += 1;
            }
            rounds
        })
    };
    let written: Vec<(Uuid, Uuid)> = writers.into_iter().map(|w| w.join().expect("a writer failed")).collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = churn.join().unwrap();
    assert!(rounds > 0, "the churn ran");
    let mut admin = db.admin();
    for (session, user) in written {
        let row = admin
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE created_by = $2) FROM memories WHERE session_id = $1",
                &[&session, &user],
            )
            .unwrap();
        assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (150, 150), "session {session}");
    }
}
