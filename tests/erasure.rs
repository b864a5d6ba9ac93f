//! Erasure on a real cluster: forget_user and delete_session remove content everywhere,
//! including the audit log, whose chain still verifies and still detects tampering; other users'
//! forks keep their own messages with a marker; nobody erases someone else's data.

use memoriesdb_integration_tests::{count, expect_error, one, TestDb};
use postgres::Client;
use uuid::Uuid;

/// (intact, problem) of verify_audit_chain(), after sealing everything.
fn chain(admin: &mut Client) -> (bool, Option<String>) {
    admin.batch_execute("SELECT memoriesdb.seal_audit_log(NULL)").unwrap();
    let r = admin.query_one("SELECT intact, problem FROM memoriesdb.verify_audit_chain()", &[]).unwrap();
    (r.get(0), r.get(1))
}

/// Rows anywhere in the extension's tables (the audit log included) whose text contains `needle`.
fn traces(admin: &mut Client, needle: &str) -> Vec<String> {
    let tables: Vec<String> = admin
        .query(
            "SELECT c.oid::regclass::text FROM pg_class c
              WHERE c.relnamespace = 'memoriesdb'::regnamespace AND c.relkind = 'r'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut found = Vec::new();
    for table in tables {
        let n = count(admin, &format!("SELECT count(*) FROM {table} t WHERE t::text LIKE '%{needle}%'"));
        if n > 0 {
            found.push(format!("{table}: {n}"));
        }
    }
    found
}

#[test]
fn forgetting_a_user_removes_their_content_everywhere_and_the_chain_still_verifies() {
    let db = TestDb::new();
    let mut alice = db.connect();
    let alice_user: Uuid = one(&mut alice, "SELECT current_memory_user()");
    let (bob_role, bob_user) = db.extra_role("bob");
    let mut bob = db.connect_as(&bob_role);
    let mut admin = db.admin();

    // alice: a conversation shared with bob (who writes in it and forks it), a fact, a preference
    // with an embedding and metadata, an edge to one of bob's memories, a summary, accesses
    let session: Uuid = one(&mut alice, "SELECT create_session('alice secret plans')");
    alice.execute("SELECT add_message_to_session($1, 'user', 'alicesecret one')", &[&session]).unwrap();
    alice.execute("SELECT add_message_to_session($1, 'user', 'alicesecret two')", &[&session]).unwrap();
    alice.batch_execute(&format!("SELECT share_memory('{session}', '{bob_user}', true)")).unwrap();
    bob.execute("SELECT add_message_to_session($1, 'user', 'bob in alicesecret session')", &[&session]).unwrap();
    let fork: Uuid = one(&mut bob, &format!("SELECT fork_session('{session}', 'bob fork')"));
    bob.execute("SELECT add_message_to_session($1, 'user', 'bob own words')", &[&fork]).unwrap();
    alice.batch_execute("SELECT remember_fact('alice', 'alicesecret fact', 0.9)").unwrap();
    let preference: Uuid = one(
        &mut alice,
        "INSERT INTO memories (kind, content, _metadata, content_embedding)
         VALUES ('preference', 'alicesecret preference', '{\"note\": \"alicesecret metadata\"}', '[1, 0, 0]') RETURNING id",
    );
    let bobs: Uuid = one(&mut bob, "INSERT INTO memories (content) VALUES ('bob memory') RETURNING id");
    bob.batch_execute(&format!("SELECT share_memory('{bobs}', '{alice_user}')")).unwrap();
    alice
        .batch_execute(&format!(
            "SELECT add_edge('{preference}', '{bobs}', 'about', 1.0, '{{\"why\": \"alicesecret edge\"}}')"
        ))
        .unwrap();
    alice.batch_execute(&format!("SELECT add_session_summary('{session}', 'alicesecret summary', 2)")).unwrap();
    alice.batch_execute("SELECT * FROM search_memories('alicesecret')").unwrap();
    alice.batch_execute(&format!("UPDATE memories SET content = 'alicesecret edited' WHERE id = '{preference}'")).unwrap();
    admin.batch_execute("SELECT memoriesdb.fold_memory_accesses()").unwrap();
    // half the log sealed before the erasure, half after
    assert_eq!(chain(&mut admin), (true, None));
    assert!(!traces(&mut admin, "alicesecret").is_empty());

    // bob cannot erase alice; alice can erase herself
    expect_error(&mut bob, &format!("SELECT forget_user('{alice_user}')"), "42501");
    expect_error(&mut alice, &format!("SELECT forget_user('{}')", Uuid::new_v4()), "42501");
    expect_error(&mut admin, &format!("SELECT memoriesdb.forget_user('{}')", Uuid::new_v4()), "P0002");
    expect_error(&mut alice, "SELECT forget_user(NULL)", "22004");
    let removed = count(&mut alice, &format!("SELECT forget_user('{alice_user}')"));
    // session, 2 + 1 messages in it, fact, preference, summary
    assert_eq!(removed, 7);

    // nothing of alice's content is left anywhere, the audit log included
    assert_eq!(traces(&mut admin, "alicesecret"), Vec::<String>::new());
    assert_eq!(count(&mut admin, &format!("SELECT count(*) FROM memoriesdb.users WHERE id = '{alice_user}'")), 0);
    // the chain still verifies, and records the erasure
    assert_eq!(chain(&mut admin), (true, None));
    assert_eq!(
        count(&mut admin, &format!("SELECT count(*) FROM memoriesdb.audit_log WHERE table_name = 'users' AND row_id = '{alice_user}'")),
        1
    );
    assert!(count(&mut admin, "SELECT count(*) FROM memoriesdb.audit_log WHERE erased_at IS NOT NULL") > 0);

    // bob keeps his own memory and his fork's own message; the fork is marked
    assert_eq!(count(&mut bob, &format!("SELECT count(*) FROM memories WHERE id = '{bobs}'")), 1);
    let transcript: Vec<String> = bob
        .query(&format!("SELECT content FROM get_formatted_conversation('{fork}')"), &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(transcript, vec!["bob own words"]);
    let (parent, marked, fork_position): (Option<Uuid>, bool, i64) = {
        let r = bob
            .query_one(
                &format!("SELECT parent_id, inherited_erased_at IS NOT NULL, fork_position FROM memory_sessions WHERE id = '{fork}'"),
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!((parent, marked, fork_position), (None, true, 3));
    bob.execute("SELECT add_message_to_session($1, 'user', 'still going')", &[&fork]).unwrap();
    assert_eq!(count(&mut bob, &format!("SELECT max(position) FROM get_formatted_conversation('{fork}')")), 5);

    // tampering is still detected, in content and elsewhere
    let target: i64 = one(
        &mut admin,
        "SELECT chain_position FROM memoriesdb.audit_log WHERE erased_at IS NULL AND new_row ? 'content'
          AND chain_position IS NOT NULL ORDER BY chain_position LIMIT 1",
    );
    admin
        .batch_execute(&format!(
            "UPDATE memoriesdb.audit_log SET new_row = jsonb_set(new_row, '{{content}}', '\"forged\"') WHERE chain_position = {target}"
        ))
        .unwrap();
    let (intact, problem) = chain(&mut admin);
    assert!(!intact && problem.unwrap().contains("content"), "changed content is detected");
    admin
        .batch_execute(&format!(
            "UPDATE memoriesdb.audit_log SET new_row = jsonb_set(new_row, '{{content}}', to_jsonb('bob memory'::text))
              WHERE chain_position = {target}"
        ))
        .unwrap();
    // (restored: intact again only if it was bob's memory's row; either way a changed kept field is found)
    let erased: i64 = one(&mut admin, "SELECT min(chain_position) FROM memoriesdb.audit_log WHERE erased_at IS NOT NULL");
    admin
        .batch_execute(&format!("UPDATE memoriesdb.audit_log SET db_role = 'someone' WHERE chain_position = {erased}"))
        .unwrap();
    assert!(!chain(&mut admin).0, "a changed field of an erased row is detected");
}

#[test]
fn deleting_a_session_erases_it_and_its_owners_forks_and_detaches_other_users_forks() {
    let db = TestDb::new();
    let mut alice = db.connect();
    let (bob_role, bob_user) = db.extra_role("bob");
    let mut bob = db.connect_as(&bob_role);
    let mut admin = db.admin();
    let session: Uuid = one(&mut alice, "SELECT create_session('doomed talk')");
    for m in ["doomedword one", "doomedword two"] {
        alice.execute("SELECT add_message_to_session($1, 'user', $2)", &[&session, &m]).unwrap();
    }
    let own_fork: Uuid = one(&mut alice, &format!("SELECT fork_session('{session}', 'alice fork')"));
    alice.execute("SELECT add_message_to_session($1, 'user', 'doomedword in fork')", &[&own_fork]).unwrap();
    alice.batch_execute(&format!("SELECT share_memory('{session}', '{bob_user}')")).unwrap();
    let bobs_fork: Uuid = one(&mut bob, &format!("SELECT fork_session('{session}', 'bob fork')"));
    bob.execute("SELECT add_message_to_session($1, 'user', 'bob keeps this')", &[&bobs_fork]).unwrap();
    let kept: Uuid = one(&mut alice, "INSERT INTO memories (content) VALUES ('unrelated note') RETURNING id");
    assert_eq!(chain(&mut admin), (true, None));

    // only the owner; her own forks need cascade
    expect_error(&mut bob, &format!("SELECT delete_session('{session}')"), "42501");
    expect_error(&mut bob, &format!("SELECT delete_session('{}')", Uuid::new_v4()), "P0002");
    expect_error(&mut alice, &format!("SELECT delete_session('{session}')"), "2BP01");
    expect_error(&mut alice, "SELECT delete_session(NULL)", "22004");
    assert_eq!(count(&mut alice, &format!("SELECT count(*) FROM memories WHERE session_id = '{session}'")), 2, "nothing half-done");

    // session + 2 messages, her fork + 1 message
    assert_eq!(count(&mut alice, &format!("SELECT delete_session('{session}', cascade => true)")), 5);
    assert_eq!(traces(&mut admin, "doomedword"), Vec::<String>::new());
    assert_eq!(chain(&mut admin), (true, None));
    assert_eq!(count(&mut alice, &format!("SELECT count(*) FROM memories WHERE id = '{kept}'")), 1, "the rest stays");
    assert_eq!(count(&mut alice, &format!("SELECT count(*) FROM memory_sessions WHERE id IN ('{session}', '{own_fork}')")), 0);
    // bob's fork: his message, marked, a root now
    let r = bob
        .query_one(
            &format!("SELECT parent_id IS NULL, inherited_erased_at IS NOT NULL, depth FROM memory_sessions WHERE id = '{bobs_fork}'"),
            &[],
        )
        .unwrap();
    assert_eq!((r.get::<_, bool>(0), r.get::<_, bool>(1), r.get::<_, i32>(2)), (true, true, 0));
    assert_eq!(one::<String>(&mut bob, &format!("SELECT get_conversation_text('{bobs_fork}')")), "user: bob keeps this");
}

#[test]
fn an_expired_memorys_content_leaves_the_audit_log_with_it() {
    let db = TestDb::new();
    let mut alice = db.connect();
    let mut admin = db.admin();
    alice.batch_execute("INSERT INTO memories (content, _metadata) VALUES ('fleetingword', '{\"k\": \"fleetingmeta\"}')").unwrap();
    assert_eq!(chain(&mut admin), (true, None));
    admin
        .batch_execute("UPDATE memoriesdb.memories SET expires_at = now() - interval '1 second' WHERE content = 'fleetingword'")
        .unwrap();
    assert_eq!(count(&mut admin, "SELECT memoriesdb.sweep_expired_memories()"), 1);
    assert_eq!(traces(&mut admin, "fleeting"), Vec::<String>::new(), "not in its insert's audit row either");
    assert_eq!(chain(&mut admin), (true, None));

    // written with an expiry (here its session's message_ttl): never in the audit log at all
    let session: Uuid = one(&mut alice, "SELECT create_session('short lived')");
    alice.execute("SELECT set_session_retention($1, interval '1 hour')", &[&session]).unwrap();
    let message: Uuid = one(&mut alice, &format!("SELECT add_message_to_session('{session}', 'user', 'ephemeralword')"));
    alice
        .batch_execute("INSERT INTO memories (content, expires_at) VALUES ('ephemeralnote', now() + interval '1 day')")
        .unwrap();
    assert_eq!(traces(&mut admin, "ephemeral"), vec!["memories: 2".to_string()], "only the live rows");
    let audited: (bool, Option<bool>, Option<String>) = {
        let r = admin
            .query_one(
                &format!(
                    "SELECT new_row ? 'content', (new_row->>'content_redacted')::boolean, new_row->>'content_hash'
                       FROM memoriesdb.audit_log WHERE row_id = '{message}' AND operation = 'INSERT'"
                ),
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!((audited.0, audited.1), (false, Some(true)));
    assert_eq!(audited.2.as_deref(), Some(one::<String>(&mut alice, "SELECT content_sha256('ephemeralword')").as_str()));
    assert_eq!(chain(&mut admin), (true, None));
}

/// Ids are unique per table only, and a user chooses a new row's id: an edge whose id is another
/// user's memory's id must not let its deletion erase that memory's audit rows (an attack review
/// found it did: bob hid his own change of a memory shared with him, and erased a stranger's).
#[test]
fn an_edge_named_after_someone_elses_memory_erases_only_the_edges_audit_rows() {
    let db = TestDb::new();
    let mut alice = db.connect();
    let (bob_role, _) = db.extra_role("bob");
    let mut bob = db.connect_as(&bob_role);
    let mut admin = db.admin();
    let diary: Uuid = one(&mut alice, "INSERT INTO memories (content) VALUES ('alice private diary') RETURNING id");
    assert_eq!(chain(&mut admin), (true, None));
    let session: Uuid = one(&mut bob, "SELECT create_session('bob throwaway')");
    let m1: Uuid = one(&mut bob, &format!("SELECT add_message_to_session('{session}', 'user', 'm1')"));
    let m2: Uuid = one(&mut bob, &format!("SELECT add_message_to_session('{session}', 'user', 'm2')"));
    bob.batch_execute(&format!(
        "INSERT INTO memory_edges (id, source_id, target_id, relation) VALUES ('{diary}', '{m1}', '{m2}', 'related')"
    ))
    .unwrap();
    assert_eq!(count(&mut bob, &format!("SELECT delete_session('{session}')")), 3);
    let kept = count(
        &mut admin,
        &format!(
            "SELECT count(*) FROM memoriesdb.audit_log
              WHERE table_name = 'memories' AND row_id = '{diary}' AND erased_at IS NULL AND new_row ? 'content'"
        ),
    );
    assert_eq!(kept, 1, "alice's audit row keeps its content");
    assert_eq!(
        count(&mut admin, &format!("SELECT count(*) FROM memoriesdb.audit_log WHERE table_name = 'memory_edges' AND row_id = '{diary}' AND erased_at IS NOT NULL")),
        1,
        "bob's edge's own audit row is erased"
    );
    assert_eq!(chain(&mut admin), (true, None));
}
