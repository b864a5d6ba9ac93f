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
             ANALYZE memoriesdb.memories;"
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
        ("vector_search (HNSW)", format!("SELECT * FROM memoriesdb.vector_search({query_vector}, 0.0)"), "hnsw"),
        ("hybrid_search, its full-text ranking (GIN)", format!("SELECT * FROM memoriesdb.hybrid_search('harbour', {query_vector})"), "memories_search"),
        ("hybrid_search, its vector ranking (HNSW)", format!("SELECT * FROM memoriesdb.hybrid_search('harbour', {query_vector})"), "hnsw"),
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
    let mine: i64 = app.query_one("SELECT count(*) FROM memoriesdb.search_memories('harbour', lim => 500)", &[]).unwrap().get(0);
    if mine != 200 {
        problems.push(format!("the owner finds {mine} of 200 messages"));
    }
    assert!(problems.is_empty(), "{} problem(s):\n{}", problems.len(), problems.join("\n\n"));
}
