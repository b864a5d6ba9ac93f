//! The memories read rule does not stop the indexes from driving the plans.
//!
//! The rule is applied by the memories_read policy (transcripts, direct queries) and, as an
//! ordinary condition, by the search functions that run as the extension owner (src/search.rs);
//! both are made from its one definition (src/policies.rs).
//! These tests read the plans PostgreSQL actually runs — of the statements inside the search and
//! transcript functions too, through auto_explain's nested-statement logging — as an ordinary
//! user, and check that the GIN (full text), HNSW (vector) and B-tree (transcript) indexes drive
//! them and that no visibility function is called per row (the rule is written as conditions
//! the planner sees, not hidden in a function call). Sequential scans are disabled, so a plan
//! can only be without the index if the rule stops the planner from using it.

use memoriesdb_integration_tests::postgres::{Client, Config, NoTls};
use memoriesdb_integration_tests::TestDb;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// A superuser connection that logs the plan of every statement it runs, nested ones included,
/// as NOTICEs collected into `plans`, and then acts as the test's ordinary role (SET ROLE: the
/// acting user and row-level security are that role's).
fn explaining_connection(db: &TestDb) -> (Client, Arc<Mutex<Vec<String>>>) {
    let plans = Arc::new(Mutex::new(Vec::new()));
    let sink = plans.clone();
    let url = db.url_for_db("postgres", &db.name, "");
    let mut config = Config::from_str(&url).unwrap();
    config.notice_callback(move |notice| sink.lock().unwrap().push(notice.message().to_string()));
    let mut client = config.connect(NoTls).unwrap();
    client
        .batch_execute(&format!(
            "LOAD 'auto_explain';
             SET auto_explain.log_min_duration = 0;
             SET auto_explain.log_nested_statements = on;
             SET auto_explain.log_level = notice;
             SET enable_seqscan = off;
             SET ROLE {}",
            db.role
        ))
        .unwrap();
    (client, plans)
}

/// The plans logged while running `sql`, as one text.
fn plans_while(client: &mut Client, plans: &Arc<Mutex<Vec<String>>>, sql: &str) -> String {
    plans.lock().unwrap().clear();
    client.batch_execute(sql).unwrap();
    plans.lock().unwrap().join("\n-----\n")
}

#[test]
fn the_read_rule_is_inlined_and_the_indexes_drive_search_transcript_and_policy_plans() {
    let db = TestDb::new();
    let mut app = db.connect();
    let session: Uuid = app.query_one("SELECT create_session('plans')", &[]).unwrap().get(0);
    app.query(
        "SELECT add_messages_to_session($1, (SELECT jsonb_agg(jsonb_build_object('role', 'user', 'content', 'note ' || i || ' about the harbour'))
                                               FROM generate_series(1, 200) i))",
        &[&session],
    )
    .unwrap();
    let mut admin = db.admin();
    // embeddings of 384 dimensions (the static plan of vector_search) and their HNSW index
    admin
        .batch_execute(&format!(
            "SELECT memoriesdb.create_vector_index(384);
             UPDATE memoriesdb.memories
                SET content_embedding = (SELECT array_agg(sin(position * d))::vector FROM generate_series(1, 384) d),
                    embedding_model = 'test'
              WHERE session_id = '{session}';
             -- and two passages each, as for content longer than the model reads
             INSERT INTO memoriesdb.memory_chunks (memory_id, chunk_index, start_char, end_char, content_hash, embedding, embedding_model)
             SELECT m.id, c, c * 5, c * 5 + 10, m.content_hash,
                    (SELECT array_agg(sin(m.position * d + c))::vector FROM generate_series(1, 384) d), 'test'
               FROM memoriesdb.memories m, generate_series(0, 1) c
              WHERE m.session_id = '{session}';
             ANALYZE memoriesdb.memories;
             ANALYZE memoriesdb.memory_chunks;"
        ))
        .unwrap();
    let query_vector = "(SELECT array_agg(sin(7 * d))::vector FROM generate_series(1, 384) d)";
    let (mut client, plans) = explaining_connection(&db);

    let cases = [
        ("search_memories (GIN)", "SELECT * FROM memoriesdb.search_memories('harbour')".to_string(), "memories_search"),
        (
            "search_memories in a session (B-tree per lineage segment)",
            format!("SELECT * FROM memoriesdb.search_memories('harbour', '{session}')"),
            "memories_session_position",
        ),
        ("vector_search (HNSW)", format!("SELECT * FROM memoriesdb.vector_search({query_vector}, 0.0)"), "memories_embedding_hnsw_384"),
        (
            "vector_search, the passages of long memories (HNSW)",
            format!("SELECT * FROM memoriesdb.vector_search({query_vector}, 0.0)"),
            "memory_chunks_embedding_hnsw_384",
        ),
        ("hybrid_search, its full-text ranking (GIN)", format!("SELECT * FROM memoriesdb.hybrid_search('harbour', {query_vector})"), "memories_search"),
        (
            "hybrid_search, its vector ranking (HNSW)",
            format!("SELECT * FROM memoriesdb.hybrid_search('harbour', {query_vector})"),
            "memories_embedding_hnsw_384",
        ),
        (
            "hybrid_search, its vector ranking of passages (HNSW)",
            format!("SELECT * FROM memoriesdb.hybrid_search('harbour', {query_vector})"),
            "memory_chunks_embedding_hnsw_384",
        ),
        (
            "get_formatted_conversation (B-tree)",
            format!("SELECT * FROM memoriesdb.get_formatted_conversation('{session}')"),
            "memories_session_position",
        ),
        (
            "a query under the memories_read policy (B-tree)",
            format!("SELECT id FROM memoriesdb.memories WHERE session_id = '{session}' AND position <= 5"),
            "memories_session_position",
        ),
    ];
    let mut problems = Vec::new();
    for (what, sql, index) in cases {
        let plan = plans_while(&mut client, &plans, &sql);
        if plan.is_empty() {
            problems.push(format!("{what}: no plan was logged"));
            continue;
        }
        // (a check made once per call, such as whether a session is listed for the caller, is
        // a statement of its own; what must not happen is a call per memory row)
        for statement in plan.split("\n-----\n").filter(|p| p.contains(" on memories ")) {
            if let Some(call) = ["memory_visible_to(", "session_visible_to(", "session_listed_for("].iter().find(|f| statement.contains(*f)) {
                problems.push(format!("{what}: a visibility function ({call}...) is called in a plan reading memories:\n{statement}"));
            }
        }
        if !plan.contains(index) {
            problems.push(format!("{what}: no index scan on {index}:\n{plan}"));
        }
    }
    // and the rule still decides: another user finds nothing through any of them
    let (other_role, _) = db.extra_role("other");
    let mut other = db.connect_as(&other_role);
    let found: i64 = other.query_one("SELECT count(*) FROM memoriesdb.search_memories('harbour')", &[]).unwrap().get(0);
    let seen: i64 = other.query_one("SELECT count(*) FROM memoriesdb.memories", &[]).unwrap().get(0);
    let near: i64 =
        other.query_one(&format!("SELECT count(*) FROM memoriesdb.vector_search({query_vector}, -1.0)"), &[]).unwrap().get(0);
    if (found, seen, near) != (0, 0, 0) {
        problems.push(format!("another user sees {found} search hits, {seen} rows, {near} vector hits"));
    }
    // the passages reach the owner through vector search, each memory once
    let (hits, memories): (i64, i64) = app
        .query_one(&format!("SELECT count(*), count(DISTINCT id) FROM memoriesdb.vector_search({query_vector}, -1.0, 500)"), &[])
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    if (hits, memories) != (200, 200) {
        problems.push(format!("the owner's vector search returns {hits} rows of {memories} memories, not 200 of 200"));
    }
    let mine: i64 = app.query_one("SELECT count(*) FROM memoriesdb.search_memories('harbour', lim => 500)", &[]).unwrap().get(0);
    if mine != 200 {
        problems.push(format!("the owner finds {mine} of 200 messages"));
    }
    assert!(problems.is_empty(), "{} problem(s):\n{}", problems.len(), problems.join("\n\n"));
}

/// The ids `sql` returns (its first column), as a set.
fn ids(client: &mut Client, sql: &str) -> std::collections::BTreeSet<Uuid> {
    client.query(sql, &[]).unwrap().iter().map(|r| r.get::<_, Uuid>(0)).collect()
}

#[test]
fn every_search_shows_each_user_exactly_what_the_read_policy_shows() {
    // alice: a session (6 messages) and a fork of it at message 3 (2 more), shared with bob; a
    // free memory shared with carol. bob: a fork of the shared fork (2 messages). carol: a free
    // memory of her own. A worker reads everything; dave, nothing.
    let db = TestDb::new();
    let mut alice = db.connect();
    let (bob_role, bob) = db.extra_role("bob");
    let (carol_role, carol) = db.extra_role("carol");
    let (worker_role, _) = db.extra_role("worker");
    db.grant("memoriesdb_worker", &worker_role);
    let (dave_role, _) = db.extra_role("dave");
    let session: Uuid = alice.query_one("SELECT create_session('harbour plans')", &[]).unwrap().get(0);
    let mut third = None;
    for i in 1..=6 {
        let id: Uuid = alice
            .query_one("SELECT add_message_to_session($1, 'user', 'harbour note ' || $2::int)", &[&session, &i])
            .unwrap()
            .get(0);
        if i == 3 {
            third = Some(id);
        }
    }
    let fork: Uuid = alice
        .query_one("SELECT fork_session($1, 'harbour fork', '{}', $2)", &[&session, &third.unwrap()])
        .unwrap()
        .get(0);
    for i in 1..=2 {
        alice.query_one("SELECT add_message_to_session($1, 'user', 'harbour fork note ' || $2::int)", &[&fork, &i]).unwrap();
    }
    alice.execute("SELECT share_memory($1, $2)", &[&fork, &bob]).unwrap();
    let free: Uuid = alice.query_one("INSERT INTO memories (content) VALUES ('harbour free memory') RETURNING id", &[]).unwrap().get(0);
    alice.execute("SELECT share_memory($1, $2)", &[&free, &carol]).unwrap();
    let mut bob_client = db.connect_as(&bob_role);
    let bobs_fork: Uuid = bob_client.query_one("SELECT fork_session($1, 'harbour bob fork')", &[&fork]).unwrap().get(0);
    for i in 1..=2 {
        bob_client
            .query_one("SELECT add_message_to_session($1, 'user', 'harbour bob note ' || $2::int)", &[&bobs_fork, &i])
            .unwrap();
    }
    let mut carol_client = db.connect_as(&carol_role);
    carol_client.execute("INSERT INTO memories (content) VALUES ('harbour carol memory')", &[]).unwrap();
    // every memory gets an embedding of 3 dimensions
    db.admin()
        .batch_execute(
            "UPDATE memoriesdb.memories
                SET content_embedding = ARRAY[1 + sin(length(content)), cos(length(content)), 0.5]::vector,
                    embedding_model = 'test'",
        )
        .unwrap();

    let query_vector = "'[1, 0.2, 0.5]'::vector";
    let mut expected_counts = Vec::new();
    let mut problems = Vec::new();
    for (who, mut client) in [
        ("alice", db.connect()),
        ("bob", db.connect_as(&bob_role)),
        ("carol", db.connect_as(&carol_role)),
        ("a worker", db.connect_as(&worker_role)),
        ("dave", db.connect_as(&dave_role)),
    ] {
        // what the memories_read policy lets the user read directly
        let by_policy = ids(&mut client, "SELECT id FROM memories WHERE search_tsv @@ websearch_to_tsquery('english', 'harbour')");
        let with_embedding = ids(&mut client, "SELECT id FROM memories WHERE content_embedding IS NOT NULL");
        let text = ids(&mut client, "SELECT id FROM search_memories('harbour', lim => 10000)");
        let vector = ids(&mut client, &format!("SELECT id FROM vector_search({query_vector}, -1, 10000)"));
        let hybrid = ids(&mut client, &format!("SELECT id FROM hybrid_search('harbour', {query_vector}, lim => 10000, candidates => 10000)"));
        if text != by_policy {
            problems.push(format!("{who}: search_memories found {} memories, the policy shows {}", text.len(), by_policy.len()));
        }
        if vector != with_embedding {
            problems.push(format!("{who}: vector_search found {}, the policy shows {}", vector.len(), with_embedding.len()));
        }
        if hybrid != by_policy.union(&with_embedding).cloned().collect() {
            problems.push(format!("{who}: hybrid_search found {}", hybrid.len()));
        }
        expected_counts.push((who, by_policy.len()));
    }
    // bob, in the branch he was shared: search and transcript agree with the policy too
    let transcript = ids(&mut bob_client, &format!("SELECT message_id FROM get_formatted_conversation('{fork}')"));
    let in_branch = ids(&mut bob_client, &format!("SELECT id FROM search_memories('harbour note', '{fork}', lim => 10000)"));
    if transcript.len() != 5 || !in_branch.is_subset(&transcript) || in_branch.len() != 5 {
        problems.push(format!("bob in the shared fork: transcript {}, search {} (both should be 5)", transcript.len(), in_branch.len()));
    }
    // and the rule decides something: dave sees nothing, a worker everything, the others less
    assert_eq!(expected_counts[4], ("dave", 0), "{expected_counts:?}");
    let counts: std::collections::BTreeMap<_, _> = expected_counts.into_iter().collect();
    assert!(counts["a worker"] > counts["alice"] && counts["alice"] > counts["bob"] && counts["bob"] > counts["carol"], "{counts:?}");
    assert!(problems.is_empty(), "{} problem(s):\n{}", problems.len(), problems.join("\n"));
}
