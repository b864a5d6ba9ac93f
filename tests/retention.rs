//! Retention on a real cluster: a session that keeps its last N messages (forks keep what they
//! inherit), and per-user policies by type, age and importance that delete or archive.

use memoriesdb_integration_tests::{count, expect_error, one, TestDb};
use postgres::Client;
use uuid::Uuid;

fn transcript(c: &mut Client, session: Uuid) -> Vec<i64> {
    c.query("SELECT position FROM get_formatted_conversation($1)", &[&session])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[test]
fn a_session_keeps_its_last_messages_and_its_forks_keep_what_they_inherit() {
    let db = TestDb::new();
    let mut alice = db.connect();
    let (bob_role, bob_user) = db.extra_role("bob");
    let mut bob = db.connect_as(&bob_role);
    let (worker_role, _) = db.extra_role("worker");
    db.grant("memoriesdb_worker", &worker_role);
    let mut worker = db.connect_as(&worker_role);

    let session: Uuid = one(&mut alice, "SELECT create_session('long talk')");
    for i in 1..=10 {
        alice.execute("SELECT add_message_to_session($1, 'user', $2)", &[&session, &format!("message {i}")]).unwrap();
    }
    // bob forks it at message 4 (shared with him)
    alice.batch_execute(&format!("SELECT share_memory('{session}', '{bob_user}')")).unwrap();
    let m4: Uuid = one(&mut alice, &format!("SELECT message_id FROM get_formatted_conversation('{session}') WHERE position = 4"));
    let fork: Uuid = one(&mut bob, &format!("SELECT fork_session('{session}', 'bob', '{{}}', '{m4}')"));
    bob.execute("SELECT add_message_to_session($1, 'user', 'bob 5')", &[&fork]).unwrap();

    expect_error(&mut alice, &format!("SELECT set_session_retention('{session}', NULL, keep_last => 0)"), "22023");
    expect_error(&mut alice, &format!("SELECT set_session_retention('{session}', interval '178000000 years')"), "22023");
    expect_error(&mut bob, &format!("SELECT set_session_retention('{session}', NULL, keep_last => 3)"), "42501");
    alice.batch_execute(&format!("SELECT set_session_retention('{session}', NULL, keep_last => 3)")).unwrap();
    // applied by the worker's job: messages 5, 6, 7 go; 1..4 stay (bob's fork inherits them); 8..10 are the last 3
    expect_error(&mut alice, "SELECT apply_retention_policies()", "42501");
    assert_eq!(count(&mut worker, "SELECT memoriesdb.apply_retention_policies()"), 3);
    assert_eq!(transcript(&mut alice, session), vec![1, 2, 3, 4, 8, 9, 10]);
    assert_eq!(transcript(&mut bob, fork), vec![1, 2, 3, 4, 5], "the fork's inherited messages are all there");
    assert_eq!(count(&mut worker, "SELECT memoriesdb.apply_retention_policies()"), 0, "nothing more to do");
    // new messages: positions go on; the oldest of the window leaves at the next run
    alice.execute("SELECT add_message_to_session($1, 'user', 'message 11')", &[&session]).unwrap();
    assert_eq!(count(&mut worker, "SELECT memoriesdb.apply_retention_policies()"), 1);
    assert_eq!(transcript(&mut alice, session), vec![1, 2, 3, 4, 9, 10, 11]);
    // the sweep then deletes what was trimmed, and the chain still verifies
    assert_eq!(count(&mut worker, "SELECT memoriesdb.sweep_expired_memories()"), 4);
    let mut admin = db.admin();
    admin.batch_execute("SELECT memoriesdb.seal_audit_log(NULL)").unwrap();
    assert!(one::<bool>(&mut admin, "SELECT intact FROM memoriesdb.verify_audit_chain()"));
    // a fork made later starts with the same keep_last
    let later: Uuid = one(&mut alice, &format!("SELECT fork_session('{session}', 'later')"));
    assert_eq!(count(&mut alice, &format!("SELECT keep_last::int8 FROM memory_sessions WHERE id = '{later}'")), 3);
}

#[test]
fn policies_keep_the_newest_the_young_and_the_important_and_delete_or_archive_the_rest() {
    let db = TestDb::new();
    let mut alice = db.connect();
    let (bob_role, _) = db.extra_role("bob");
    let mut bob = db.connect_as(&bob_role);
    let mut admin = db.admin();

    // alice: six notes (memories), written 1..6 days ago, one of them important; three entities
    for (i, importance) in [(1, None), (2, None), (3, Some(0.9f32)), (4, None), (5, None), (6, None)] {
        let id: Uuid = alice
            .query_one(
                "INSERT INTO memories (kind, content, importance) VALUES ('memory', $1, $2) RETURNING id",
                &[&format!("note {i}"), &importance],
            )
            .unwrap()
            .get(0);
        admin
            .batch_execute(&format!(
                "SET session_replication_role = replica;
                 UPDATE memoriesdb.memories SET _created_at = now() - interval '{i} days' WHERE id = '{id}';
                 RESET session_replication_role"
            ))
            .unwrap();
    }
    for i in 1..=3 {
        alice.execute("INSERT INTO memories (kind, content) VALUES ('entity', $1)", &[&format!("entity {i}")]).unwrap();
    }
    bob.batch_execute("INSERT INTO memories (kind, content) VALUES ('memory', 'bob note')").unwrap();

    for (sql, state) in [
        ("SELECT set_retention_policy('nonexistent', 1)", "22023"),
        ("SELECT set_retention_policy('session', 1)", "22023"),
        ("SELECT set_retention_policy('memory', 0)", "22023"),
        ("SELECT set_retention_policy('memory', max_age => '-1 day')", "22023"),
        // (a huge age once made apply_retention_policies() fail for every user: timestamp out of range)
        ("SELECT set_retention_policy('memory', max_age => '178000000 years')", "22023"),
        ("SELECT set_retention_policy('memory', 1, keep_if_importance => 1.5)", "22023"),
        ("SELECT set_retention_policy('memory', 1, action => 'shred')", "22023"),
        ("SELECT set_retention_policy(NULL, 1)", "22004"),
    ] {
        expect_error(&mut alice, sql, state);
    }
    // a superuser acting as nobody has no policies
    expect_error(&mut admin, "SELECT memoriesdb.set_retention_policy('memory', 1)", "42501");

    // notes: keep at most the newest 2, none older than 4 days, but always the important ones;
    // delete the rest
    assert!(one::<bool>(&mut alice, "SELECT set_retention_policy('memory', 2, interval '4 days', 0.8)"));
    // entities: archive all but the newest one
    assert!(one::<bool>(&mut alice, "SELECT set_retention_policy('entity', 1, action => 'archive')"));
    assert_eq!(count(&mut alice, "SELECT count(*) FROM memory_retention_policies"), 2);
    assert_eq!(count(&mut bob, "SELECT count(*) FROM memory_retention_policies"), 0, "alice's policies are hers");

    let worker_removed = count(&mut admin, "SELECT memoriesdb.apply_retention_policies()");
    // notes 3..6 are not among the newest 2 (4..6 also older than 4 days), but note 3 is
    // important: 4, 5 and 6 go; entities 1 and 2 are archived
    assert_eq!(worker_removed, 3 + 2);
    let notes: Vec<String> = alice
        .query("SELECT content FROM memories WHERE kind = 'memory' ORDER BY content", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(notes, vec!["note 1", "note 2", "note 3"]);
    // archived: still there, but no longer recalled
    assert_eq!(count(&mut alice, "SELECT count(*) FROM memories WHERE kind = 'entity'"), 3);
    assert_eq!(count(&mut alice, "SELECT count(*) FROM search_memories('entity')"), 1);
    // bob's note is not alice's policy's business
    assert_eq!(count(&mut bob, "SELECT count(*) FROM memories WHERE content = 'bob note'"), 1);
    assert_eq!(count(&mut admin, "SELECT memoriesdb.apply_retention_policies()"), 0);
    // lim bounds a run
    for i in 7..=9 {
        alice.execute("INSERT INTO memories (kind, content) VALUES ('entity', $1)", &[&format!("entity {i}")]).unwrap();
    }
    assert_eq!(count(&mut admin, "SELECT memoriesdb.apply_retention_policies(1)"), 1);
    // removing a policy
    assert!(!one::<bool>(&mut alice, "SELECT set_retention_policy('entity')"));
    assert_eq!(count(&mut alice, "SELECT count(*) FROM memory_retention_policies"), 1);
}
