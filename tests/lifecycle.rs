//! Memory lifecycle: types, importance, expiry, retention and the sweep, as users and workers
//! meet them on a real cluster — ordinary roles under row-level security, a grantee, a
//! stranger, a worker, and a superuser connection.

use memoriesdb_integration_tests::{count, error_shape, expect_error, sqlstate, TestDb};
use postgres::Client;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;
use uuid::Uuid;

#[test]
fn types_are_checked_and_an_administrator_extends_them() {
    let db = TestDb::new();
    let mut alice = db.connect();
    let mut admin = db.admin();

    let builtin = count(&mut alice, "SELECT count(*) FROM memory_types WHERE builtin");
    assert_eq!(builtin, 10, "the built-in types");
    let unknown = expect_error(&mut alice, "INSERT INTO memories (kind, content) VALUES ('episode', 'x')", "22023");
    assert!(unknown.contains("unknown memory type \"episode\""), "{unknown}");
    // users cannot define types
    expect_error(&mut alice, "SELECT define_memory_type('episode')", "42501");

    // bad definitions: clear errors, nothing written
    for (sql, state) in [
        ("SELECT define_memory_type(NULL)", "22004"),
        ("SELECT define_memory_type('Episode')", "22023"),
        ("SELECT define_memory_type('episode', NULL, 1.5)", "22023"),
        ("SELECT define_memory_type('episode', NULL, 'NaN')", "22023"),
        ("SELECT define_memory_type('episode', NULL, NULL)", "22023"),
        ("SELECT define_memory_type('episode', NULL, 0.5, interval '-1 hour')", "22023"),
        ("SELECT define_memory_type('episode', NULL, 0.5, interval '0')", "22023"),
        ("SELECT define_memory_type('session', NULL, 0.5, interval '1 day')", "22023"),
    ] {
        expect_error(&mut admin, sql, state);
    }
    assert_eq!(count(&mut admin, "SELECT count(*) FROM memoriesdb.memory_type_definitions"), 0);

    let defined = admin
        .query_one(
            "SELECT name, description, default_importance, default_ttl::text, builtin
               FROM memoriesdb.define_memory_type('episode', 'something that happened', 0.6, interval '1 day')",
            &[],
        )
        .unwrap();
    assert_eq!(defined.get::<_, String>(1), "something that happened");
    assert_eq!(defined.get::<_, f32>(2), 0.6);
    assert_eq!(defined.get::<_, String>(3), "1 day");
    assert!(!defined.get::<_, bool>(4));
    // a built-in type's defaults change; its description stays when none is given
    let fact = admin
        .query_one("SELECT description, default_importance, builtin FROM memoriesdb.define_memory_type('fact', NULL, 0.95)", &[])
        .unwrap();
    assert!(fact.get::<_, String>(0).contains("confidence"));
    assert_eq!(fact.get::<_, f32>(1), 0.95);
    assert!(fact.get::<_, bool>(2));

    // the new type is usable at once, with its default expiry; an explicit expiry wins
    let rows = alice
        .query(
            "INSERT INTO memories (kind, content, expires_at)
             VALUES ('episode', 'we hiked', NULL), ('episode', 'we swam', '2999-01-01')
             RETURNING (expires_at - _created_at)::text",
            &[],
        )
        .unwrap();
    assert_eq!(rows[0].get::<_, String>(0), "1 day");
    assert_ne!(rows[1].get::<_, String>(0), "1 day");
    // importance in [0, 1]
    expect_error(&mut alice, "INSERT INTO memories (content, importance) VALUES ('x', 1.5)", "23514");
    expect_error(&mut alice, "INSERT INTO memories (content, importance) VALUES ('x', 'NaN')", "23514");
    alice.batch_execute("INSERT INTO memories (content, importance) VALUES ('matters', 0.9)").unwrap();
    // a memory's type never changes
    expect_error(&mut alice, "UPDATE memories SET kind = 'fact' WHERE content = 'matters'", "0A000");
    // the type filter of every search
    alice.batch_execute("INSERT INTO memories (kind, content) VALUES ('preference', 'likes green tea')").unwrap();
    assert_eq!(count(&mut alice, "SELECT count(*) FROM search_memories('tea', kind_filter => 'preference')"), 1);
    assert_eq!(count(&mut alice, "SELECT count(*) FROM search_memories('tea', kind_filter => 'fact')"), 0);
}

/// Everything a user could read a memory through, as (what, how many rows mention `marker`).
fn sightings(c: &mut Client, marker: &str, session: Uuid, fork: Uuid, memory: Uuid) -> Vec<(String, i64)> {
    let checks: Vec<(&str, String)> = vec![
        ("select", format!("SELECT count(*) FROM memories WHERE content LIKE '%{marker}%'")),
        ("transcript", format!("SELECT count(*) FROM get_formatted_conversation('{session}') WHERE content LIKE '%{marker}%'")),
        ("fork transcript", format!("SELECT count(*) FROM get_formatted_conversation('{fork}') WHERE content LIKE '%{marker}%'")),
        ("page", format!("SELECT count(*) FROM get_conversation_page('{session}') WHERE content LIKE '%{marker}%'")),
        (
            "text",
            format!("SELECT (position('{marker}' IN get_conversation_text('{session}')) > 0)::int::bigint"),
        ),
        ("search", format!("SELECT count(*) FROM search_memories('{marker}')")),
        ("search in session", format!("SELECT count(*) FROM search_memories('{marker}', session_id => '{fork}')")),
        (
            "vector",
            format!("SELECT count(*) FROM vector_search('[1,0,0]', 0.5, 100) WHERE content LIKE '%{marker}%'"),
        ),
        (
            "hybrid",
            format!("SELECT count(*) FROM hybrid_search('{marker}', '[1,0,0]', 100) WHERE content LIKE '%{marker}%'"),
        ),
        (
            "graph",
            format!(
                "SELECT count(*) FROM traverse_memory_graph('{session}', direction => 'incoming', max_depth => 2)
                  WHERE memory_id = '{memory}'"
            ),
        ),
        ("graph view", format!("SELECT count(*) FROM memory_graph_edges WHERE source_id = '{memory}' OR target_id = '{memory}'")),
    ];
    checks
        .into_iter()
        .map(|(what, sql)| (what.to_string(), c.query_one(&sql, &[]).unwrap_or_else(|e| panic!("{sql}: {}", error_shape(&e, &[]))).get(0)))
        .collect()
}

#[test]
fn an_expired_memory_is_gone_at_once_from_every_read_for_everyone() {
    let db = TestDb::new();
    let mut alice = db.connect();
    let (bob_role, bob) = db.extra_role("bob");
    let mut bob_client = db.connect_as(&bob_role);
    let mut admin = db.admin();

    let session: Uuid = alice.query_one("SELECT create_session('trip')", &[]).unwrap().get(0);
    let message: Uuid = alice
        .query_one("SELECT add_message_to_session($1, 'user', 'the zanzibar plan')", &[&session])
        .unwrap()
        .get(0);
    alice.execute("SELECT add_message_to_session($1, 'assistant', 'noted')", &[&session]).unwrap();
    alice.execute("UPDATE memories SET content_embedding = '[1,0,0]' WHERE id = $1", &[&message]).unwrap();
    let fork: Uuid = alice.query_one("SELECT fork_session($1, 'trip, take two')", &[&session]).unwrap().get(0);
    let note: Uuid = alice.query_one("INSERT INTO memories (content) VALUES ('about zanzibar') RETURNING id", &[]).unwrap().get(0);
    alice.execute("SELECT add_edge($1, $2, 'about')", &[&note, &message]).unwrap();
    alice.execute("SELECT share_memory($1, $2)", &[&session, &bob]).unwrap();

    let before = sightings(&mut alice, "zanzibar", session, fork, message);
    assert!(before.iter().all(|(_, n)| *n > 0), "everything shows the message before it expires: {before:?}");
    assert!(count(&mut bob_client, &format!("SELECT count(*) FROM get_formatted_conversation('{session}')")) == 2);

    // it expires in a moment: no sweep has run when the reads look again
    alice.execute("UPDATE memories SET expires_at = now() + interval '300 milliseconds' WHERE id = $1", &[&message]).unwrap();
    thread::sleep(Duration::from_millis(400));
    for (who, client) in [("alice", &mut alice), ("superuser", &mut admin)] {
        client.batch_execute("SET search_path = public, memoriesdb").unwrap();
        let after = sightings(client, "zanzibar", session, fork, message);
        for (what, n) in after {
            // the free note still mentions zanzibar: only the message must be gone
            let expected = match what.as_str() {
                "search" | "hybrid" if who == "alice" || who == "superuser" => 1,
                "select" => 1,
                _ => 0,
            };
            if who == "superuser" && ["select", "graph", "graph view"].contains(&what.as_str()) {
                // a superuser's direct reads (the graph's view too) bypass row-level security;
                // transcripts and searches filter expired memories for every role
                continue;
            }
            assert_eq!(n, expected, "{who}: {what} still shows the expired message");
        }
    }
    assert_eq!(count(&mut bob_client, &format!("SELECT count(*) FROM get_formatted_conversation('{session}')")), 1);
    // it can be neither shared, forked at, nor changed any more
    expect_error(&mut alice, &format!("SELECT share_memory('{message}', '{bob}')"), "P0002");
    let fork_at = alice
        .execute("SELECT fork_session($1, 'at the gone message', '{}', $2)", &[&session, &message])
        .expect_err("forking at an expired message");
    assert_eq!(sqlstate(&fork_at), "P0002", "{}", error_shape(&fork_at, &[]));
    assert_eq!(alice.execute("UPDATE memories SET expires_at = NULL WHERE id = $1", &[&message]).unwrap(), 0);
    // a fork made now starts at the latest message that has not expired
    let later: Uuid = alice.query_one("SELECT fork_session($1, 'later')", &[&session]).unwrap().get(0);
    assert_eq!(count(&mut alice, &format!("SELECT count(*) FROM get_formatted_conversation('{later}')")), 1);
}

#[test]
fn a_sessions_retention_sets_its_messages_expiry_and_only_its_owner_changes_it() {
    let db = TestDb::new();
    let mut alice = db.connect();
    let (bob_role, bob) = db.extra_role("bob");
    let (_, carol) = db.extra_role("carol");
    let mut bob_client = db.connect_as(&bob_role);
    let _ = carol;

    let session: Uuid = alice.query_one("SELECT create_session('scratch')", &[]).unwrap().get(0);
    alice.execute("SELECT add_message_to_session($1, 'user', 'old one')", &[&session]).unwrap();
    alice.execute("SELECT share_memory($1, $2, true)", &[&session, &bob]).unwrap();

    // bad input and other users
    for (sql, state) in [
        ("SELECT set_session_retention(NULL, interval '1 hour')", "22004"),
        (&*format!("SELECT set_session_retention('{session}', interval '-1 hour')"), "22023"),
        (&*format!("SELECT set_session_retention('{session}', interval '0')"), "22023"),
        (&*format!("SELECT set_session_retention('{}', interval '1 hour')", Uuid::new_v4()), "P0002"),
    ] {
        expect_error(&mut alice, sql, state);
    }
    expect_error(&mut bob_client, &format!("SELECT set_session_retention('{session}', interval '1 hour')"), "42501");
    let (stranger_role, _) = db.extra_role("stranger");
    let mut stranger = db.connect_as(&stranger_role);
    expect_error(&mut stranger, &format!("SELECT set_session_retention('{session}', interval '1 hour')"), "P0002");
    assert_eq!(count(&mut alice, "SELECT count(*) FROM memories WHERE expires_at IS NOT NULL"), 0, "nothing half-done");

    // new messages (anyone's) live for the session's message_ttl; existing ones on request
    let changed: i64 = alice
        .query_one("SELECT set_session_retention($1, interval '1 hour')", &[&session])
        .unwrap()
        .get(0);
    assert_eq!(changed, 0);
    alice.execute("SELECT add_message_to_session($1, 'user', 'new one')", &[&session]).unwrap();
    bob_client
        .execute("SELECT add_messages_to_session($1, '[{\"role\": \"user\", \"content\": \"bob''s\"}]')", &[&session])
        .unwrap();
    let ttls: Vec<(String, Option<String>)> = alice
        .query("SELECT content, (expires_at - _created_at)::text FROM memories WHERE session_id = $1 ORDER BY position", &[&session])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        ttls,
        vec![("old one".into(), None), ("new one".into(), Some("01:00:00".into())), ("bob's".into(), Some("01:00:00".into()))]
    );
    let changed: i64 = alice
        .query_one("SELECT set_session_retention($1, interval '2 hours', true)", &[&session])
        .unwrap()
        .get(0);
    assert_eq!(changed, 3);
    // a fork keeps its parent's retention
    let fork: Uuid = alice.query_one("SELECT fork_session($1, 'branch')", &[&session]).unwrap().get(0);
    alice.execute("SELECT add_message_to_session($1, 'user', 'in the fork')", &[&fork]).unwrap();
    let ttl: String = alice
        .query_one("SELECT (expires_at - _created_at)::text FROM memories WHERE session_id = $1", &[&fork])
        .unwrap()
        .get(0);
    assert_eq!(ttl, "02:00:00");
    // back to the message type's default, which an administrator may set
    alice.execute("SELECT set_session_retention($1, NULL)", &[&session]).unwrap();
    db.admin().batch_execute("SELECT memoriesdb.define_memory_type('message', NULL, 0.3, interval '30 minutes')").unwrap();
    alice.execute("SELECT add_message_to_session($1, 'user', 'default ttl')", &[&session]).unwrap();
    let ttl: String = alice
        .query_one("SELECT (expires_at - _created_at)::text FROM memories WHERE content = 'default ttl'", &[])
        .unwrap()
        .get(0);
    assert_eq!(ttl, "00:30:00");
    // a session never expires by itself
    expect_error(&mut alice, &format!("UPDATE memories SET expires_at = now() WHERE id = '{session}'"), "22023");
}

#[test]
fn the_sweep_deletes_what_expired_with_what_hangs_off_it_and_keeps_the_audit_chain_without_the_content() {
    let db = TestDb::new();
    let mut alice = db.connect();
    let (worker_role, worker_user) = db.extra_role("worker");
    db.grant("memoriesdb_worker", &worker_role);
    let mut worker = db.connect_as(&worker_role);
    let (bob_role, bob) = db.extra_role("bob");
    let mut admin = db.admin();

    let session: Uuid = alice.query_one("SELECT create_session('s')", &[]).unwrap().get(0);
    let doomed: Uuid = alice
        .query_one("SELECT add_message_to_session($1, 'user', 'secret launch code 1234')", &[&session])
        .unwrap()
        .get(0);
    let kept: Uuid = alice.query_one("SELECT add_message_to_session($1, 'user', 'keep me')", &[&session]).unwrap().get(0);
    // a fork made at the doomed message, a share and an edge hanging off it
    let fork: Uuid = alice
        .query_one("SELECT fork_session($1, 'f', '{}', $2)", &[&session, &doomed])
        .unwrap()
        .get(0);
    alice.execute("SELECT add_message_to_session($1, 'user', 'fork''s own')", &[&fork]).unwrap();
    alice.execute("SELECT share_memory($1, $2)", &[&doomed, &bob]).unwrap();
    let note: Uuid = alice.query_one("INSERT INTO memories (content) VALUES ('note') RETURNING id", &[]).unwrap().get(0);
    alice.execute("SELECT add_edge($1, $2, 'about')", &[&note, &doomed]).unwrap();
    let free: Uuid = alice
        .query_one("INSERT INTO memories (content, expires_at) VALUES ('free and gone', now() + interval '200 ms') RETURNING id", &[])
        .unwrap()
        .get(0);
    // (the message's expiry is set as a user would; both have expired when the sweep runs)
    alice.execute("UPDATE memories SET expires_at = now() + interval '200 ms' WHERE id = $1", &[&doomed]).unwrap();
    thread::sleep(Duration::from_millis(300));

    // users may not sweep; a worker may
    expect_error(&mut alice, "SELECT sweep_expired_memories()", "42501");
    expect_error(&mut worker, "SELECT sweep_expired_memories(0)", "22023");
    expect_error(&mut worker, "SELECT sweep_expired_memories(NULL)", "22023");
    let swept: i64 = worker.query_one("SELECT sweep_expired_memories()", &[]).unwrap().get(0);
    assert_eq!(swept, 2);
    assert_eq!(worker.query_one("SELECT sweep_expired_memories()", &[]).unwrap().get::<_, i64>(0), 0);

    for (what, sql) in [
        ("memories", format!("SELECT count(*) FROM memoriesdb.memories WHERE id IN ('{doomed}', '{free}')")),
        ("edges", format!("SELECT count(*) FROM memoriesdb.memory_edges WHERE target_id = '{doomed}'")),
        ("shares", format!("SELECT count(*) FROM memoriesdb.memory_shares WHERE memory_id = '{doomed}'")),
        ("queue", format!("SELECT count(*) FROM memoriesdb.embedding_schedule WHERE memory_id IN ('{doomed}', '{free}')")),
    ] {
        assert_eq!(count(&mut admin, &sql), 0, "{what} of swept memories remain");
    }
    assert_eq!(count(&mut admin, &format!("SELECT count(*) FROM memoriesdb.memories WHERE id IN ('{kept}', '{note}')")), 2);
    // the fork keeps its fork point and its own message
    let (fork_position, fork_message): (i64, Option<Uuid>) = admin
        .query_one("SELECT fork_position, fork_message_id FROM memoriesdb.memory_sessions WHERE id = $1", &[&fork])
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!((fork_position, fork_message), (1, None));
    let transcript: Vec<String> = alice
        .query("SELECT content FROM get_formatted_conversation($1)", &[&fork])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(transcript, vec!["fork's own".to_string()]);

    // the deletions are audited, without the content; the chain seals and verifies
    let audited = admin
        .query(
            "SELECT old_row::text, old_row ? 'content', old_row->>'content_redacted', old_row->>'content_hash'
               FROM memoriesdb.audit_log WHERE operation = 'DELETE' AND table_name = 'memories' ORDER BY id",
            &[],
        )
        .unwrap();
    assert_eq!(audited.len(), 2);
    for row in &audited {
        let text: String = row.get(0);
        assert!(!text.contains("launch code") && !text.contains("free and gone"), "content in the audit log: {text}");
        assert!(!row.get::<_, bool>(1));
        assert_eq!(row.get::<_, Option<String>>(2).as_deref(), Some("true"));
        assert_eq!(row.get::<_, Option<String>>(3).map(|h| h.len()), Some(64));
    }
    // what went with them is audited as the triggers would have: the edge and the share
    for (table, row) in [("memory_edges", None), ("memory_shares", Some(doomed))] {
        let sql = format!(
            "SELECT count(*) FROM memoriesdb.audit_log WHERE table_name = '{table}' AND operation = 'DELETE'
                AND acting_user = '{worker_user}' AND db_role = '{worker_role}' {}",
            row.map(|r| format!("AND row_id = '{r}' AND old_row->>'grantee' = '{bob}'")).unwrap_or_default()
        );
        assert_eq!(count(&mut admin, &sql), 1, "{table}: {sql}");
    }
    let any_content = count(
        &mut admin,
        "SELECT count(*) FROM memoriesdb.audit_log
          WHERE operation = 'DELETE' AND (old_row::text LIKE '%launch code%' OR old_row::text LIKE '%free and gone%')",
    );
    assert_eq!(any_content, 0);
    admin.batch_execute("SELECT memoriesdb.seal_audit_log()").unwrap();
    let intact: bool = admin.query_one("SELECT intact FROM memoriesdb.verify_audit_chain()", &[]).unwrap().get(0);
    assert!(intact);
    // a memory deleted before it expired keeps its content in the audit log, as before
    alice.execute("SELECT delete_memory($1)", &[&note]).unwrap();
    assert_eq!(
        count(&mut admin, &format!("SELECT count(*) FROM memoriesdb.audit_log WHERE row_id = '{note}' AND old_row->>'content' = 'note'")),
        1
    );
    let _ = bob_role;
}

/// Appends with and without a time to live run while sweeps run: at the end nothing that had not
/// expired is gone, everything that expired is gone, and no reader ever saw an expired message.
#[test]
fn sweeping_under_concurrent_appends_loses_nothing_unexpired() {
    let db = TestDb::new();
    let (worker_role, _) = db.extra_role("worker");
    db.grant("memoriesdb_worker", &worker_role);
    let mut alice = db.connect();
    let lasting: Uuid = alice.query_one("SELECT create_session('lasting')", &[]).unwrap().get(0);
    let fleeting: Uuid = alice.query_one("SELECT create_session('fleeting')", &[]).unwrap().get(0);
    alice.execute("SELECT set_session_retention($1, interval '50 milliseconds')", &[&fleeting]).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let sweeper = {
        let stop = stop.clone();
        let mut worker = db.connect_as(&worker_role);
        thread::spawn(move || {
            let mut swept = 0i64;
            while !stop.load(Ordering::SeqCst) {
                swept += worker.query_one("SELECT sweep_expired_memories(50)", &[]).unwrap().get::<_, i64>(0);
            }
            swept
        })
    };
    let reader = {
        let stop = stop.clone();
        let mut reader = db.connect();
        thread::spawn(move || {
            let mut looks = 0;
            while !stop.load(Ordering::SeqCst) {
                let stale: i64 = reader
                    .query_one(
                        "SELECT count(*) FROM get_formatted_conversation($1) t
                           JOIN memoriesdb.memories m ON m.id = t.message_id
                          WHERE m.expires_at <= clock_timestamp() - interval '20 milliseconds'",
                        &[&fleeting],
                    )
                    .unwrap()
                    .get(0);
                assert_eq!(stale, 0, "a transcript showed an expired message");
                looks += 1;
            }
            looks
        })
    };
    const ROUNDS: i64 = 300;
    for i in 0..ROUNDS {
        alice.execute("SELECT add_message_to_session($1, 'user', $2)", &[&lasting, &format!("lasting {i}")]).unwrap();
        alice.execute("SELECT add_message_to_session($1, 'user', $2)", &[&fleeting, &format!("fleeting {i}")]).unwrap();
    }
    thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::SeqCst);
    let swept_concurrently = sweeper.join().unwrap();
    let looks = reader.join().unwrap();
    assert!(looks > 0);
    let mut admin = db.admin();
    let rest: i64 = admin.query_one("SELECT memoriesdb.sweep_expired_memories()", &[]).unwrap().get(0);
    assert_eq!(swept_concurrently + rest, ROUNDS, "every fleeting message swept exactly once");
    assert_eq!(count(&mut admin, &format!("SELECT count(*) FROM memoriesdb.memories WHERE session_id = '{lasting}'")), ROUNDS);
    assert_eq!(count(&mut admin, &format!("SELECT count(*) FROM memoriesdb.memories WHERE session_id = '{fleeting}'")), 0);
    assert!(swept_concurrently > 0, "the sweeps ran while messages were appended");
}

#[test]
fn changes_of_importance_and_expiry_are_audited() {
    let db = TestDb::new();
    let mut alice = db.connect();
    let mut admin = db.admin();
    let id: Uuid = alice.query_one("INSERT INTO memories (content) VALUES ('m') RETURNING id", &[]).unwrap().get(0);
    alice.execute("UPDATE memories SET importance = 0.9 WHERE id = $1", &[&id]).unwrap();
    alice.execute("UPDATE memories SET expires_at = '2999-01-01' WHERE id = $1", &[&id]).unwrap();
    let changes: Vec<(Option<String>, Option<String>)> = admin
        .query(
            "SELECT new_row->>'importance', new_row->>'expires_at' FROM memoriesdb.audit_log
              WHERE row_id = $1 AND operation = 'UPDATE' ORDER BY id",
            &[&id],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert_eq!(changes[0].0.as_deref(), Some("0.9"));
    assert!(changes[1].1.as_deref().is_some_and(|t| t.starts_with("2999-01-01")));
}

#[test]
fn facts_are_reinforced_superseded_and_read_as_of_a_time() {
    let db = TestDb::new();
    let mut alice = db.connect();
    let (bob_role, _) = db.extra_role("bob");
    let mut bob = db.connect_as(&bob_role);

    let remember = |c: &mut Client, sql: &str| -> Uuid { c.query_one(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {}", error_shape(&e, &[]))).get(0) };
    let tea = remember(&mut alice, "SELECT remember_fact('Alice', 'alice prefers tea', 0.7)");
    // stating it again reinforces the same fact, with the higher confidence
    assert_eq!(remember(&mut alice, "SELECT remember_fact('alice', 'alice prefers tea', 0.9)"), tea);
    assert_eq!(remember(&mut alice, "SELECT remember_fact('alice', 'alice prefers tea', 0.5)"), tea);
    let (confidence, reinforcements): (f32, i32) = alice
        .query_one("SELECT confidence, reinforcements FROM facts('ALICE')", &[])
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!((confidence, reinforcements), (0.9, 3));
    let before: std::time::SystemTime = alice.query_one("SELECT now()", &[]).unwrap().get(0);
    thread::sleep(Duration::from_millis(20));

    // a new fact supersedes it: the old one stays readable as of an earlier time
    let coffee = remember(&mut alice, &format!("SELECT remember_fact('alice', 'alice switched to coffee', 0.8, supersedes => '{tea}')"));
    let now: Vec<String> = alice.query("SELECT statement FROM facts('alice')", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(now, vec!["alice switched to coffee"]);
    let then: Vec<String> =
        alice.query("SELECT statement FROM facts('alice', as_of => $1)", &[&before]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(then, vec!["alice prefers tea"]);
    let history = alice
        .query("SELECT fact_id, valid_to IS NOT NULL, superseded_by FROM facts('alice', include_superseded => true) ORDER BY created_at", &[])
        .unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!((history[0].get::<_, Uuid>(0), history[0].get::<_, bool>(1), history[0].get::<_, Option<Uuid>>(2)), (tea, true, Some(coffee)));
    assert_eq!((history[1].get::<_, Uuid>(0), history[1].get::<_, bool>(1)), (coffee, false));
    // searches return only facts valid now
    assert_eq!(count(&mut alice, "SELECT count(*) FROM search_memories('tea')"), 0);
    assert_eq!(count(&mut alice, "SELECT count(*) FROM search_memories('coffee', kind_filter => 'fact')"), 1);
    // stating the superseded fact again makes a new, current one
    let tea_again = remember(&mut alice, "SELECT remember_fact('alice', 'alice prefers tea', 0.6)");
    assert_ne!(tea_again, tea);

    // with a source message
    let session: Uuid = alice.query_one("SELECT create_session('chat')", &[]).unwrap().get(0);
    let message: Uuid = alice.query_one("SELECT add_message_to_session($1, 'user', 'I live in Lyon')", &[&session]).unwrap().get(0);
    let lyon = remember(&mut alice, &format!("SELECT remember_fact('alice', 'alice lives in Lyon', 0.95, '{message}')"));
    let source: Option<Uuid> = alice.query_one("SELECT source_message FROM facts() WHERE fact_id = $1", &[&lyon]).unwrap().get(0);
    assert_eq!(source, Some(message));

    // bad input and other users: clear errors, nothing written
    let facts_before = count(&mut alice, "SELECT count(*) FROM memory_facts");
    for (sql, state) in [
        ("SELECT remember_fact('alice', 'x', 1.5)".to_string(), "22023"),
        ("SELECT remember_fact('alice', 'x', -0.1)".to_string(), "22023"),
        ("SELECT remember_fact('alice', 'x', 'NaN')".to_string(), "22023"),
        ("SELECT remember_fact('alice', 'x', NULL)".to_string(), "22023"),
        ("SELECT remember_fact(NULL, 'x')".to_string(), "22004"),
        ("SELECT remember_fact('alice', NULL)".to_string(), "22004"),
        ("SELECT remember_fact('  ', 'x')".to_string(), "22023"),
        ("SELECT remember_fact('alice', '   ')".to_string(), "22023"),
        ("SELECT remember_fact('alice', 'x', metadata => '[1]')".to_string(), "22023"),
        (format!("SELECT remember_fact('alice', 'x', supersedes => '{tea}')"), "22023"),
        (format!("SELECT remember_fact('alice', 'x', supersedes => '{}')", Uuid::new_v4()), "P0002"),
        (format!("SELECT remember_fact('alice', 'x', source_message => '{}')", Uuid::new_v4()), "P0002"),
    ] {
        expect_error(&mut alice, &sql, state);
    }
    // bob can neither see alice's facts, nor supersede them, nor cite her messages
    assert_eq!(count(&mut bob, "SELECT count(*) FROM facts()"), 0);
    assert_eq!(count(&mut bob, "SELECT count(*) FROM memory_facts"), 0);
    expect_error(&mut bob, &format!("SELECT remember_fact('alice', 'alice likes nothing', supersedes => '{coffee}')"), "P0002");
    expect_error(&mut bob, &format!("SELECT remember_fact('alice', 'alice said so', source_message => '{message}')"), "P0002");
    // the same statement by bob is bob's own fact
    let bobs = remember(&mut bob, "SELECT remember_fact('alice', 'alice lives in Lyon', 0.5)");
    assert_ne!(bobs, lyon);
    assert_eq!(count(&mut alice, "SELECT count(*) FROM memory_facts"), facts_before);
    assert_eq!(count(&mut alice, "SELECT reinforcements::bigint FROM facts() WHERE statement = 'alice lives in Lyon'"), 1);
    // facts are not written directly
    expect_error(
        &mut alice,
        &format!("INSERT INTO memory_facts (memory_id, subject, confidence) VALUES ('{lyon}', 'x', 1)"),
        "42501",
    );
}

/// The same fact stated by many connections at once is one fact, reinforced once per statement.
#[test]
fn the_same_fact_stated_concurrently_is_one_fact() {
    let db = TestDb::new();
    const CLIENTS: usize = 8;
    let barrier = Arc::new(std::sync::Barrier::new(CLIENTS));
    let ids: Vec<Uuid> = (0..CLIENTS)
        .map(|_| {
            let mut c = db.connect();
            let barrier = barrier.clone();
            thread::spawn(move || {
                barrier.wait();
                c.query_one("SELECT remember_fact('bob', 'bob is allergic to peanuts', 0.9)", &[]).unwrap().get::<_, Uuid>(0)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    let mut alice = db.connect();
    assert_eq!(count(&mut alice, "SELECT reinforcements::bigint FROM facts('bob')"), CLIENTS as i64);
    assert_eq!(count(&mut alice, "SELECT count(*) FROM memories WHERE kind = 'fact'"), 1);
}

/// remove_memories() (the sweep's and the erasures' deletion) and forget_user() run with
/// session_replication_role = replica and do by hand what the foreign keys to memories, sessions
/// and users and the delete triggers would do (sql/erasure.sql). This holds those lists to the
/// catalog: a new foreign key or delete trigger must be handled there.
#[test]
fn the_sweep_handles_every_foreign_key_to_memories_and_every_delete_trigger() {
    let db = TestDb::new();
    let mut admin = db.admin();
    let rows = |admin: &mut Client, sql: &str| -> Vec<String> {
        let mut v: Vec<String> = admin.query(sql, &[]).unwrap().iter().map(|r| r.get(0)).collect();
        v.sort();
        v
    };
    let foreign_keys_to = |admin: &mut Client, table: &str| {
        rows(
            admin,
            &format!(
                "SELECT (SELECT r.relname::text FROM pg_class r WHERE r.oid = c.conrelid) || '.' || a.attname || ' ' || c.confdeltype::text
                   FROM pg_constraint c
                   JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
                  WHERE c.contype = 'f' AND c.confrelid = 'memoriesdb.{table}'::regclass"
            ),
        )
    };
    let foreign_keys = foreign_keys_to(&mut admin, "memories");
    // (confdeltype: c = cascade, n = set null, r = restrict)
    let handled = [
        "embedding_schedule.memory_id c",
        "memory_access.memory_id c",
        "memory_chunks.memory_id c",
        "memory_edges.source_id c",
        "memory_edges.target_id c",
        "memory_facts.memory_id c",
        "memory_facts.source_message n",
        "memory_facts.superseded_by n",
        "memory_sessions.fork_message_id n",
        "memory_sessions.id c",
        "memory_shares.memory_id c",
        "memory_summaries.memory_id c",
        "vindexing_schedule.memory_id c",
    ];
    assert_eq!(foreign_keys, handled.iter().map(|s| s.to_string()).collect::<Vec<_>>(), "foreign keys to memories");
    let sweep: String = admin
        .query_one("SELECT prosrc FROM pg_proc WHERE oid = 'memoriesdb.remove_memories'::regproc", &[])
        .unwrap()
        .get(0);
    let handles = |source: &str, fk: &str, what: &str| {
        let (table, column) = fk.split_once(' ').unwrap().0.split_once('.').unwrap();
        assert!(
            source.contains(&format!("@extschema@.{table}")) || source.contains(&format!("memoriesdb.{table}")),
            "{what} does not touch {table}"
        );
        assert!(source.contains(column), "{what} does not handle {table}.{column}");
    };
    for fk in handled {
        handles(&sweep, fk, "remove_memories()");
    }
    // sessions it deletes: what refers to them (forks are detached: parent_id)
    let to_sessions = [
        "memories.session_id c",
        "memory_sessions.parent_id r",
        "memory_share_segments.session_id c",
        "memory_summaries.session_id c",
    ];
    assert_eq!(foreign_keys_to(&mut admin, "memory_sessions"), to_sessions.map(String::from).to_vec(), "foreign keys to sessions");
    for fk in to_sessions {
        handles(&sweep, fk, "remove_memories()");
    }
    // users forget_user() deletes: what refers to them
    let forget: String = admin
        .query_one("SELECT prosrc FROM pg_proc WHERE oid = 'memoriesdb.forget_user'::regproc", &[])
        .unwrap()
        .get(0);
    let to_users = [
        "memories.created_by a",
        "memories.updated_by a",
        "memory_access.user_id c",
        "memory_edges.created_by a",
        "memory_facts.owner_id a",
        "memory_retention_policies.user_id c",
        "memory_sessions.owner_id a",
        "memory_shares.granted_by c",
        "memory_shares.grantee c",
    ];
    assert_eq!(foreign_keys_to(&mut admin, "users"), to_users.map(String::from).to_vec(), "foreign keys to users");
    for fk in to_users {
        handles(&forget, fk, "forget_user()");
    }
    // the user triggers that fire on deleting from the tables the sweep deletes from
    let triggers = rows(
        &mut admin,
        "SELECT (SELECT r.relname::text FROM pg_class r WHERE r.oid = t.tgrelid) || ' ' || t.tgname
           FROM pg_trigger t
          WHERE NOT t.tgisinternal AND (t.tgtype & 8) <> 0
            AND t.tgrelid IN ('memoriesdb.memories'::regclass, 'memoriesdb.memory_edges'::regclass,
                              'memoriesdb.memory_shares'::regclass, 'memoriesdb.memory_share_segments'::regclass,
                              'memoriesdb.memory_chunks'::regclass, 'memoriesdb.embedding_schedule'::regclass,
                              'memoriesdb.vindexing_schedule'::regclass, 'memoriesdb.memory_facts'::regclass,
                              'memoriesdb.memory_access'::regclass, 'memoriesdb.memory_summaries'::regclass,
                              'memoriesdb.memory_sessions'::regclass)",
    );
    assert_eq!(
        triggers,
        vec![
            // its audit row: written by the sweep, without content
            "memories memories_05_protect_forked_history".to_string(),
            "memories memories_50_audit".to_string(),
            "memory_edges memory_edges_50_audit".to_string(),
            "memory_shares memory_shares_50_audit".to_string(),
        ],
        "delete triggers: the sweep writes their audit rows itself (and deletes only expired messages and free memories, \
         which protect_forked_history lets go)"
    );
}

/// An expired memory's deletion writes the same audit row whether the row trigger writes it (a
/// user deleting it) or the sweep does (set-based, with the triggers off).
#[test]
fn the_sweep_audits_a_deletion_exactly_as_the_trigger_does() {
    let db = TestDb::new();
    let mut alice = db.connect();
    let mut admin = db.admin();
    let insert = "INSERT INTO memories (kind, content, _metadata, importance, expires_at, valid_from)
                  VALUES ('preference', 'likes jazz', '{\"k\": [1, \"two\"]}', 0.25, now() + interval '150 ms', '2020-01-01')
                  RETURNING id";
    let by_user: Uuid = alice.query_one(insert, &[]).unwrap().get(0);
    let by_sweep: Uuid = alice.query_one(insert, &[]).unwrap().get(0);
    alice.execute("UPDATE memories SET content_embedding = '[1,2,3]', embedding_model = 'm' WHERE id IN ($1, $2)", &[&by_user, &by_sweep]).unwrap();
    thread::sleep(Duration::from_millis(200));
    // (delete_memory cannot see it any more; the owner's direct delete needs the row: a superuser's does not)
    admin.execute("DELETE FROM memoriesdb.memories WHERE id = $1", &[&by_user]).unwrap();
    assert_eq!(admin.query_one("SELECT memoriesdb.sweep_expired_memories()", &[]).unwrap().get::<_, i64>(0), 1);
    let audit = |admin: &mut Client, id: &Uuid| -> serde_json::Value {
        let mut row: serde_json::Value = admin
            .query_one("SELECT old_row FROM memoriesdb.audit_log WHERE row_id = $1 AND operation = 'DELETE'", &[id])
            .unwrap()
            .get(0);
        let object = row.as_object_mut().unwrap();
        assert_eq!(object.remove("id"), Some(serde_json::Value::String(id.to_string())));
        for key in ["_created_at", "_updated_at", "expires_at"] {
            assert!(object.remove(key).is_some(), "{key} missing");
        }
        row
    };
    let (trigger_row, sweep_row) = (audit(&mut admin, &by_user), audit(&mut admin, &by_sweep));
    assert_eq!(trigger_row, sweep_row);
    assert_eq!(trigger_row["content_redacted"], serde_json::Value::Bool(true));
    assert!(trigger_row.get("content").is_none() && trigger_row.get("content_embedding").is_none());
}
