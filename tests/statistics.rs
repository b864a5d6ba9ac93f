//! Statistics views on a real cluster: each user sees their own figures, a grantee the sessions
//! shared with them, administrators everyone's, and only workers and administrators the store's.

use memoriesdb_integration_tests::{count, one, sqlstate, TestDb};
use postgres::Client;
use uuid::Uuid;

#[test]
fn everyone_sees_their_own_figures_and_administrators_and_workers_the_stores() {
    let db = TestDb::new();
    let mut alice = db.connect();
    let alice_user: Uuid = one(&mut alice, "SELECT current_memory_user()");
    let (bob_role, bob_user) = db.extra_role("bob");
    let mut bob = db.connect_as(&bob_role);
    let (stranger_role, _) = db.extra_role("stranger");
    let mut stranger = db.connect_as(&stranger_role);
    let (worker_role, _) = db.extra_role("worker");
    db.grant("memoriesdb_worker", &worker_role);
    let mut worker = db.connect_as(&worker_role);
    let mut admin = db.admin();

    // alice: a session of three messages, a fork of it with one more, a fact, an embedded memory
    // and one that expires; bob: two memories
    let session: Uuid = one(&mut alice, "SELECT create_session('stats')");
    for m in ["one", "two", "three"] {
        alice.execute("SELECT add_message_to_session($1, 'user', $2)", &[&session, &m]).unwrap();
    }
    let fork: Uuid = one(&mut alice, &format!("SELECT fork_session('{session}', 'fork')"));
    alice.execute("SELECT add_message_to_session($1, 'user', 'four')", &[&fork]).unwrap();
    alice.batch_execute("SELECT remember_fact('alice', 'alice counts', 0.9)").unwrap();
    alice
        .batch_execute(
            "INSERT INTO memories (content, content_embedding) VALUES ('embedded', '[1, 0, 0]');
             INSERT INTO memories (content, expires_at) VALUES ('fleeting', now() + interval '1 hour')",
        )
        .unwrap();
    bob.batch_execute("INSERT INTO memories (content) VALUES ('bob 1'), ('bob 2')").unwrap();

    let row = alice
        .query_one(
            "SELECT user_id, memories, sessions, messages, facts, by_kind, content_bytes, embedded, expiring,
                    messages_last_day, messages_last_week
               FROM user_statistics",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, Uuid>(0), alice_user);
    // 2 sessions, 4 messages, 1 fact, 2 memories
    assert_eq!(
        (row.get::<_, i64>(1), row.get::<_, i64>(2), row.get::<_, i64>(3), row.get::<_, i64>(4)),
        (9, 2, 4, 1)
    );
    assert_eq!(row.get::<_, serde_json::Value>(5), serde_json::json!({"session": 2, "message": 4, "fact": 1, "memory": 2}));
    let bytes = count(&mut alice, "SELECT sum(octet_length(content))::int8 FROM memories WHERE created_by = current_memory_user()");
    assert_eq!(row.get::<_, i64>(6), bytes);
    assert_eq!((row.get::<_, i64>(7), row.get::<_, i64>(8)), (1, 1), "embedded, expiring");
    assert_eq!((row.get::<_, i64>(9), row.get::<_, i64>(10)), (4, 4), "messages today, this week");

    // each user their own row only; a stranger with nothing has none; administrators everyone's
    assert_eq!(count(&mut alice, "SELECT count(*) FROM user_statistics"), 1);
    assert_eq!(count(&mut bob, "SELECT count(*) FROM user_statistics"), 1);
    assert_eq!(one::<Uuid>(&mut bob, "SELECT user_id FROM user_statistics"), bob_user);
    assert_eq!(count(&mut bob, "SELECT memories FROM user_statistics"), 2);
    assert_eq!(count(&mut stranger, "SELECT count(*) FROM user_statistics"), 0);
    assert_eq!(count(&mut admin, "SELECT count(*) FROM memoriesdb.user_statistics"), 2);

    // sessions: their own messages (a fork's, not those it inherits)
    let sessions: Vec<(Uuid, i64, i64)> = alice
        .query("SELECT session_id, messages, messages_last_day FROM session_statistics ORDER BY messages DESC", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(sessions, vec![(session, 3, 3), (fork, 1, 1)]);
    assert_eq!(count(&mut alice, &format!("SELECT fork_position FROM session_statistics WHERE session_id = '{fork}'")), 3);
    assert_eq!(count(&mut bob, "SELECT count(*) FROM session_statistics"), 0, "bob has no sessions");
    // a grantee sees a shared session's figures (as far as the share shows it); a stranger nothing
    alice.batch_execute(&format!("SELECT share_memory('{session}', '{bob_user}')")).unwrap();
    assert_eq!(count(&mut bob, &format!("SELECT messages FROM session_statistics WHERE session_id = '{session}'")), 3);
    assert_eq!(count(&mut bob, "SELECT count(*) FROM session_statistics"), 1);
    assert_eq!(count(&mut stranger, "SELECT count(*) FROM session_statistics"), 0);

    // the store: workers and administrators only
    let err = alice.query("SELECT * FROM memory_statistics", &[]).expect_err("users cannot read the store's figures");
    assert_eq!(sqlstate(&err), "42501");
    let store = |c: &mut Client| -> (i64, i64, i64, i64) {
        let r = c
            .query_one(
                "SELECT memories, users, expired_awaiting_sweep, expiring_within_day FROM memoriesdb.memory_statistics",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2), r.get(3))
    };
    let total = count(&mut admin, "SELECT count(*) FROM memoriesdb.memories");
    assert_eq!(store(&mut worker), (total, count(&mut admin, "SELECT count(*) FROM memoriesdb.users"), 0, 1));
    // an expired memory waits for the sweep, and is counted until it has run
    admin
        .batch_execute("UPDATE memoriesdb.memories SET expires_at = now() - interval '1 second' WHERE content = 'fleeting'")
        .unwrap();
    assert_eq!(store(&mut worker).2, 1);
    assert_eq!(store(&mut admin).3, 0);
    assert_eq!(count(&mut worker, "SELECT memoriesdb.sweep_expired_memories()"), 1);
    assert_eq!(store(&mut worker).2, 0);
    // the access log's backlog
    alice.batch_execute("SELECT * FROM search_memories('embedded')").unwrap();
    assert_eq!(count(&mut worker, "SELECT accesses_awaiting_fold FROM memoriesdb.memory_statistics"), 1);
}
