//! The bad-input matrix, as an ordinary role through a real client: NULLs, malformed and unknown
//! ids, wrong types, huge and empty strings, invalid JSON, SQL-injection attempts, broken
//! vectors, out-of-range thresholds and limits, bad traversal and share arguments.
//!
//! Each case runs in its own transaction and either fails with the SQLSTATE the table names or
//! is accepted as documented (then a check confirms what was stored). No case may end in XX000
//! (an internal error, e.g. a Rust panic), and a failing case may leave nothing behind: the
//! counts of memories, edges, audit rows, sessions, shares and queue rows, and every session's
//! last_position, are compared before and after.

use memoriesdb_integration_tests::{error_shape, TestDb};
use postgres::types::ToSql;
use postgres::Client;
use serde_json::json;
use uuid::Uuid;

enum Param {
    Text(String),
    Json(serde_json::Value),
}

enum Expect {
    /// fails with one of these SQLSTATEs
    Fails(&'static [&'static str]),
    /// accepted; the check (run afterwards, with the same parameter if any) must return true
    Accepted(&'static str),
}

struct Case {
    sql: &'static str,
    param: Option<Param>,
    expect: Expect,
}

fn fails(sql: &'static str, codes: &'static [&'static str]) -> Case {
    Case {
        sql,
        param: None,
        expect: Expect::Fails(codes),
    }
}

fn accepted(sql: &'static str, check: &'static str) -> Case {
    Case {
        sql,
        param: None,
        expect: Expect::Accepted(check),
    }
}

fn with(mut case: Case, param: Param) -> Case {
    case.param = Some(param);
    case
}

fn text(s: impl Into<String>) -> Param {
    Param::Text(s.into())
}

fn cases() -> Vec<Case> {
    let one_mb_words = "word ".repeat(220_000);
    let huge_json = json!({ "blob": "x".repeat(1_100_000), "nested": {"a": [1, 2, 3]} });
    vec![
        // ---- NULLs
        fails("SELECT add_message_to_session(NULL, 'user', 'x')", &["22004"]),
        fails("SELECT add_message_to_session('{s}', NULL, 'x')", &["22023"]),
        fails("SELECT add_message_to_session('{s}', 'user', NULL)", &["22004"]),
        fails("SELECT create_session(NULL)", &["22004"]),
        fails("SELECT fork_session(NULL, 'branch')", &["22004"]),
        fails("SELECT fork_session('{s}', NULL)", &["22004"]),
        fails("SELECT * FROM get_formatted_conversation(NULL)", &["22004"]),
        fails("SELECT get_conversation_text(NULL)", &["22004"]),
        fails("SELECT * FROM search_memories(NULL)", &["22004"]),
        fails("SELECT * FROM vector_search(NULL)", &["22004"]),
        fails("SELECT * FROM hybrid_search(NULL, '[1,2,3]')", &["22004"]),
        // a NULL embedding asks the configured endpoint for one; this database has none (55000)
        fails("SELECT * FROM hybrid_search('x', NULL)", &["55000"]),
        fails("SELECT * FROM traverse_memory_graph(NULL)", &["22004"]),
        fails("SELECT add_edge(NULL, '{b}', 'relates_to')", &["22004"]),
        fails("SELECT add_edge('{a}', '{c}', NULL)", &["22023"]),
        fails("SELECT add_edge('{a}', '{c}', 'relates_to', NULL)", &["22023"]),
        fails("SELECT share_memory(NULL, '{bob}')", &["22004"]),
        fails("SELECT share_memory('{s}', '{bob}', NULL)", &["22004"]),
        fails("SELECT store_embedding(NULL, '[1,2,3]', 'model', 'hash')", &["22004"]),
        accepted("SELECT remove_edge(NULL, NULL, NULL)", "SELECT remove_edge(NULL, NULL, NULL) = false"),
        accepted("SELECT set_memory_user(NULL)", "SELECT current_memory_user() = '{me}'"),
        accepted("SELECT * FROM get_formatted_conversation('{s}', NULL)", "SELECT count(*) = 2 AND bool_and(metadata IS NULL) FROM get_formatted_conversation('{s}', NULL)"),
        // ---- malformed and unknown ids
        fails("SELECT add_message_to_session('not-a-uuid', 'user', 'x')", &["22P02"]),
        fails("SELECT add_message_to_session('{unknown}', 'user', 'x')", &["P0002"]),
        fails("SELECT add_message_to_session('{m1}', 'user', 'a message is not a session')", &["P0002"]),
        fails("SELECT * FROM get_formatted_conversation('{unknown}')", &["P0002"]),
        fails("SELECT get_conversation_text('{unknown}')", &["P0002"]),
        fails("SELECT fork_session('{unknown}', 'branch')", &["P0002"]),
        fails("SELECT fork_session('{s}', 'branch', parent_message_id => '{unknown}')", &["P0002"]),
        fails("SELECT fork_session('{s}', 'branch', '{\"parent_message_id\": \"msg123\"}')", &["22023"]),
        fails("SELECT fork_session('{s}', 'branch', '{\"parent_message_id\": 42}')", &["22023"]),
        fails("SELECT * FROM traverse_memory_graph('{unknown}')", &["P0002"]),
        fails("SELECT add_edge('{a}', '{unknown}', 'relates_to')", &["P0002"]),
        fails("SELECT share_memory('{unknown}', '{bob}')", &["P0002"]),
        fails("SELECT share_memory('{s}', '{unknown}')", &["P0002"]),
        fails("SELECT * FROM search_memories('x', session_id => '{unknown}')", &["P0002"]),
        fails("SELECT * FROM vector_search('[1,2,3]', session_id => '{unknown}')", &["P0002"]),
        fails("SELECT set_memory_user('{unknown}')", &["42501"]),
        fails("SELECT set_config('app.current_user', 'msg123', true); SELECT create_session('as nobody')", &["22023"]),
        // ---- wrong types
        fails("SELECT create_session(123)", &["42883"]),
        fails("SELECT add_message_to_session('{s}', 'user', 'x', 'not json')", &["22P02"]),
        fails("SELECT * FROM search_memories('x', lim => 'ten')", &["22P02"]),
        fails("SELECT * FROM vector_search('[1,2,x]')", &["22P02"]),
        fails("SELECT * FROM vector_search(ARRAY[1,2,3])", &["42883"]),
        fails("SELECT * FROM traverse_memory_graph('{a}', 'belongs_to')", &["22P02"]),
        fails("SELECT add_edge('{a}', '{c}', 'relates_to', 'heavy')", &["22P02"]),
        fails("SELECT share_memory('{s}', '{bob}', 'maybe')", &["22P02"]),
        fails("SELECT * FROM search_memories('x', config => 'english; DROP TABLE memories')", &["42602", "42704"]),
        // ---- huge and empty strings
        with(
            accepted("SELECT create_session($1)", "SELECT EXISTS (SELECT 1 FROM memories WHERE kind = 'session' AND content = $1)"),
            text("t".repeat(1_500_000)),
        ),
        with(
            accepted(
                "SELECT add_message_to_session('{s}', 'user', $1)",
                "SELECT EXISTS (SELECT 1 FROM memories WHERE content = $1 AND content_hash = encode(sha256(convert_to($1, 'UTF8')), 'hex'))",
            ),
            text("é".repeat(1_100_000)),
        ),
        with(fails("SELECT add_message_to_session('{s}', $1, 'x')", &["22001"]), text("r".repeat(1_048_577))),
        with(fails("SELECT add_edge('{a}', '{c}', $1)", &["22023"]), text("r".repeat(1_048_577))),
        with(fails("SELECT store_embedding('{a}', '[1,2,3]', $1, 'hash')", &["22023"]), text("m".repeat(1_048_577))),
        // queries over 10,000 characters are refused up front (parsing them would take seconds)
        with(fails("SELECT * FROM search_memories($1)", &["22023"]), text(one_mb_words)),
        with(fails("SELECT * FROM search_memories($1)", &["22023"]), text("word ".repeat(20_000))),
        with(fails("SELECT * FROM search_memories($1)", &["22023"]), text("y".repeat(2_000_000))),
        with(
            accepted("SELECT * FROM search_memories($1)", "SELECT count(*) = 0 FROM search_memories($1)"),
            text("word ".repeat(2_000)),
        ),
        with(
            accepted("SELECT add_message_to_session('{s}', 'user', 'big metadata', $1)", "SELECT EXISTS (SELECT 1 FROM memories WHERE _metadata = $1)"),
            Param::Json(huge_json),
        ),
        with(fails("SELECT add_message_to_session('{s}', 'user', $1)", &["22021"]), text("nul \u{0} byte")),
        accepted("SELECT create_session('')", "SELECT EXISTS (SELECT 1 FROM memories WHERE kind = 'session' AND content = '')"),
        accepted("SELECT add_message_to_session('{s}', 'system', '')", "SELECT EXISTS (SELECT 1 FROM memories WHERE session_id = '{s}' AND content = '' AND role = 'system')"),
        fails("SELECT add_message_to_session('{s}', '', 'x')", &["22023"]),
        fails("SELECT add_message_to_session('{s}', E' \\t\\n', 'x')", &["22023"]),
        fails("SELECT add_edge('{a}', '{c}', '')", &["22023"]),
        accepted("SELECT * FROM search_memories('')", "SELECT count(*) = 0 FROM search_memories('')"),
        // ---- invalid JSON
        fails("SELECT create_session('t', '{bad')", &["22P02"]),
        fails("SELECT create_session('t', 'null')", &["22023"]),
        fails("SELECT add_message_to_session('{s}', 'user', 'x', '[1, 2]')", &["22023"]),
        fails("SELECT fork_session('{s}', 't', '\"a string\"')", &["22023"]),
        fails("SELECT * FROM search_memories('x', metadata_filter => '{bad')", &["22P02"]),
        fails("SELECT add_edge('{a}', '{c}', 'relates_to', 1.0, '[]')", &["22023"]),
        fails("INSERT INTO memories (content, _metadata) VALUES ('x', '[]')", &["23514"]),
        // ---- SQL injection: stored verbatim, never executed
        with(
            accepted(
                "SELECT create_session($1)",
                "SELECT EXISTS (SELECT 1 FROM memories WHERE kind = 'session' AND content = $1) AND to_regclass('memories') IS NOT NULL",
            ),
            text("x'); DROP TABLE memories; --"),
        ),
        with(
            accepted("SELECT fork_session('{s}', $1)", "SELECT EXISTS (SELECT 1 FROM memories WHERE kind = 'session' AND content = $1) AND to_regclass('memory_edges') IS NOT NULL"),
            text("$$; DROP TABLE memory_edges; $$"),
        ),
        with(
            accepted("SELECT add_message_to_session('{s}', $1, 'injected role')", "SELECT EXISTS (SELECT 1 FROM memories WHERE role = $1) AND (SELECT count(*) FROM memories) > 5"),
            text("user'; DELETE FROM memories; --"),
        ),
        with(
            accepted("SELECT add_message_to_session('{s}', 'user', 'injected metadata', $1)", "SELECT EXISTS (SELECT 1 FROM memories WHERE _metadata = $1) AND to_regclass('users') IS NOT NULL"),
            Param::Json(json!({"note": "'; DROP TABLE users; --", "'); DELETE FROM memories; --": "$$ || pg_sleep(10) || $$"})),
        ),
        with(
            // the words are searched for, and find the title stored verbatim above
            accepted(
                "SELECT * FROM search_memories($1)",
                "SELECT to_regclass('memories') IS NOT NULL AND bool_or(content = 'x''); DROP TABLE memories; --') FROM search_memories($1)",
            ),
            text("'; DROP TABLE memories; --"),
        ),
        with(
            accepted("SELECT * FROM vector_search('[1,2,3]', -1, 10, NULL, $1)", "SELECT count(*) = 0 FROM vector_search('[1,2,3]', -1, 10, NULL, $1)"),
            text("' OR 1=1 --"),
        ),
        with(
            accepted("SELECT * FROM traverse_memory_graph('{a}', ARRAY[$1])", "SELECT count(*) = 1 FROM traverse_memory_graph('{a}', ARRAY[$1])"),
            text("x'; DROP TABLE memories; --"),
        ),
        with(fails("SELECT add_edge('{a}', '{c}', $1)", &["22023"]), text("x'; DROP TABLE memory_edges; --")),
        // ---- vectors
        fails("SELECT * FROM vector_search('[NaN,1,2]')", &["22000"]),
        fails("SELECT * FROM vector_search('[Infinity,1,2]')", &["22000"]),
        fails("SELECT * FROM vector_search('[-Infinity,1,2]')", &["22000"]),
        fails("SELECT * FROM vector_search('[]')", &["22000"]),
        fails("SELECT * FROM vector_search('[0,0,0]')", &["22023"]),
        fails("SELECT store_embedding('{a}', '[NaN]', 'model', 'hash')", &["22000"]),
        fails("SELECT store_embedding('{a}', '[0,0]', 'model', 'hash')", &["22023"]),
        fails("SELECT store_embedding('{a}', array_fill(1::real, ARRAY[16001])::vector, 'model', 'hash')", &["54000"]),
        fails("UPDATE memories SET content_embedding = '[1,NaN,3]' WHERE id = '{a}'", &["22000"]),
        accepted("SELECT * FROM vector_search('[1,2]', -1)", "SELECT count(*) = 0 FROM vector_search('[1,2]', -1)"),
        accepted("SELECT * FROM hybrid_search('node', '[1,2,3,4]')", "SELECT count(*) = 3 AND bool_and(vector_rank IS NULL) FROM hybrid_search('node', '[1,2,3,4]')"),
        // ---- text queries and configurations
        fails("SELECT * FROM search_memories(repeat('-', 40) || 'x')", &["22023"]),
        fails("SELECT * FROM hybrid_search(repeat('-', 40) || 'x', '[1,2,3]')", &["22023"]),
        fails("SELECT * FROM search_memories(repeat('x', 10001))", &["22023"]),
        fails("SELECT * FROM search_memories('x', config => 0)", &["22023"]),
        fails("SELECT * FROM search_memories(NULL)", &["22004"]),
        accepted("SELECT * FROM search_memories(repeat('é', 10000))", "SELECT count(*) = 0 FROM search_memories(repeat('é', 10000))"),
        // a set-returning function called in the select list
        accepted("SELECT search_memories('node')", "SELECT count(*) = 3 FROM (SELECT search_memories('node')) x"),
        // a statement per embedding dimension is kept, at most 64 of them: 100 dimensions in
        // one session empty the set and prepare again, with the same answers
        accepted(
            "SELECT count(*) FROM (SELECT vector_search(array_fill(1::real, ARRAY[d])::vector, -1) FROM generate_series(1, 100) d) x",
            "SELECT count(*) = 1 FROM (SELECT vector_search(array_fill(1::real, ARRAY[d])::vector, -1) FROM generate_series(1, 100) d) x",
        ),
        // ---- thresholds
        fails("SELECT * FROM vector_search('[1,2,3]', 1.5)", &["22023"]),
        fails("SELECT * FROM vector_search('[1,2,3]', -1.5)", &["22023"]),
        fails("SELECT * FROM vector_search('[1,2,3]', 'NaN')", &["22023"]),
        fails("SELECT * FROM vector_search('[1,2,3]', 'Infinity')", &["22023"]),
        fails("SELECT * FROM vector_search('[1,2,3]', '-Infinity')", &["22023"]),
        accepted("SELECT * FROM vector_search('[1,2,3]', NULL)", "SELECT count(*) = 1 FROM vector_search('[1,2,3]', NULL)"),
        // ---- limits
        fails("SELECT * FROM search_memories('x', lim => 0)", &["22023"]),
        fails("SELECT * FROM search_memories('x', lim => -1)", &["22023"]),
        fails("SELECT * FROM search_memories('x', lim => 10001)", &["22023"]),
        fails("SELECT * FROM vector_search('[1,2,3]', lim => 2147483647)", &["22023"]),
        fails("SELECT * FROM hybrid_search('x', '[1,2,3]', lim => 0)", &["22023"]),
        fails("SELECT * FROM hybrid_search('x', '[1,2,3]', candidates => 0)", &["22023"]),
        fails("SELECT * FROM hybrid_search('x', '[1,2,3]', rrf_k => 0)", &["22023"]),
        fails("SELECT * FROM hybrid_search('x', '[1,2,3]', text_weight => -1)", &["22023"]),
        fails("SELECT * FROM hybrid_search('x', '[1,2,3]', text_weight => 'NaN')", &["22023"]),
        fails("SELECT * FROM hybrid_search('x', '[1,2,3]', vector_weight => 'NaN')", &["22023"]),
        fails("SELECT * FROM hybrid_search('x', '[1,2,3]', vector_weight => 'Infinity')", &["22023"]),
        accepted("SELECT * FROM search_memories('node', lim => NULL)", "SELECT count(*) = 3 FROM search_memories('node', lim => NULL)"),
        fails("SELECT * FROM claim_embedding_batch(0)", &["22023"]),
        fails("SELECT * FROM claim_embedding_batch(100000)", &["22023"]),
        fails("SELECT * FROM claim_embedding_batch(10, '-1 second')", &["22023"]),
        fails("SELECT fail_embedding('{a}', 'x', 0)", &["22023"]),
        // sealing is for auditors and workers only
        fails("SELECT seal_audit_log(-1)", &["42501"]),
        // ---- traversal
        fails("SELECT * FROM traverse_memory_graph('{a}', NULL, 'sideways')", &["22023"]),
        fails("SELECT * FROM traverse_memory_graph('{a}', NULL, '')", &["22023"]),
        fails("SELECT * FROM traverse_memory_graph('{a}', NULL, 'OUTGOING')", &["22023"]),
        fails("SELECT * FROM traverse_memory_graph('{a}', NULL, 'both', -1)", &["22023"]),
        fails("SELECT * FROM traverse_memory_graph('{a}', NULL, 'both', 1001)", &["22023"]),
        fails("SELECT * FROM traverse_memory_graph('{a}', NULL, 'both', 3, 0)", &["22023"]),
        fails("SELECT * FROM traverse_memory_graph('{a}', NULL, 'both', 3, 1000001)", &["22023"]),
        fails("SELECT * FROM traverse_memory_graph('{a}', ARRAY[NULL]::text[])", &["22004", "22023"]),
        fails("SELECT * FROM traverse_memory_graph('{a}', ARRAY['relates_to', NULL])", &["22004", "22023"]),
        accepted("SELECT * FROM traverse_memory_graph('{a}', ARRAY[]::text[])", "SELECT count(*) = 1 FROM traverse_memory_graph('{a}', ARRAY[]::text[])"),
        accepted("SELECT * FROM traverse_memory_graph('{a}', NULL, NULL, NULL, NULL)", "SELECT count(*) = 3 FROM traverse_memory_graph('{a}', NULL, NULL, NULL, NULL)"),
        accepted("SELECT * FROM traverse_memory_graph('{a}', NULL, 'both', 0)", "SELECT count(*) = 1 FROM traverse_memory_graph('{a}', NULL, 'both', 0)"),
        // ---- edges
        fails("SELECT add_edge('{a}', '{a}', 'relates_to')", &["23514"]),
        fails("SELECT add_edge('{c}', '{a}', 'relates_to')", &["23514"]),
        fails("SELECT add_edge('{a}', '{c}', 'relates_to', 'NaN')", &["22023"]),
        fails("SELECT add_edge('{a}', '{c}', 'relates_to', 'Infinity')", &["22023"]),
        fails("SELECT add_edge('{a}', '{c}', 'Not A Relation')", &["22023"]),
        // ---- sharing
        fails("SELECT share_memory('{a}', '{me}')", &["22023"]),
        fails("SELECT share_memory('{a}', '{unknown}')", &["P0002"]),
        accepted("SELECT revoke_share('{unknown}', '{unknown}')", "SELECT revoke_share('{unknown}', '{unknown}') = false"),
        accepted("SELECT share_memory('{m1}', '{bob}')", "SELECT EXISTS (SELECT 1 FROM memory_shares WHERE memory_id = '{m1}' AND grantee = '{bob}' AND NOT can_write)"),
        // ---- privileges and table constraints
        fails("SELECT create_user('x')", &["42501"]),
        fails("SELECT * FROM verify_audit_chain()", &["42501"]),
        fails("SELECT create_vector_index(3)", &["42501"]),
        fails("INSERT INTO memories (kind, content) VALUES ('Bad Kind!', 'x')", &["22023"]),
        fails("INSERT INTO memories (content) VALUES (NULL)", &["23502"]),
        // messages are written through the API only (a direct one could jam the session's positions)
        fails("INSERT INTO memories (kind, content, session_id, position, role) VALUES ('message', 'x', '{s}', 1, 'user')", &["42501"]),
        // session rows are written only through the conversation functions
        fails("UPDATE memory_sessions SET last_position = -1 WHERE id = '{s}'", &["42501"]),
    ]
}

/// Everything a failing call must leave as it was.
fn state(admin: &mut Client) -> String {
    admin
        .query_one(
            "SELECT concat_ws(' ',
                'memories', (SELECT count(*) FROM memories),
                'edges', (SELECT count(*) FROM memory_edges),
                'audit', (SELECT count(*) FROM audit_log), (SELECT max(id) FROM audit_log),
                'sessions', (SELECT count(*) FROM memory_sessions),
                'last_positions', (SELECT string_agg(id || '=' || last_position, ',' ORDER BY id) FROM memory_sessions),
                'shares', (SELECT count(*) FROM memory_shares), (SELECT count(*) FROM memory_share_segments),
                'queues', (SELECT count(*) FROM embedding_schedule), (SELECT count(*) FROM vindexing_schedule),
                'users', (SELECT count(*) FROM users),
                'embedding', (SELECT md5(string_agg(id || ':' || coalesce(content_embedding::text, ''), ',' ORDER BY id)) FROM memories))",
            &[],
        )
        .unwrap()
        .get(0)
}

#[test]
fn malformed_calls_fail_cleanly_or_are_accepted_as_documented() {
    let db = TestDb::new();
    let (_, bob) = db.extra_role("bob");
    // the queue functions are for workers only: their cases run as a worker role
    let (worker_role, _) = db.extra_role("worker");
    db.grant("memoriesdb_worker", &worker_role);
    let mut worker = db.connect_as(&worker_role);
    let worker_only = ["store_embedding(", "claim_embedding_batch(", "fail_embedding("];
    let mut c = db.connect();
    let mut admin = db.admin();
    let s: Uuid = c.query_one("SELECT create_session('bad input target')", &[]).unwrap().get(0);
    let m1: Uuid = c
        .query_one("SELECT add_message_to_session($1, 'user', 'one')", &[&s])
        .unwrap()
        .get(0);
    c.query_one("SELECT add_message_to_session($1, 'assistant', 'two')", &[&s]).unwrap();
    let fork: Uuid = c
        .query_one("SELECT fork_session($1, 'fork at one', parent_message_id => $2)", &[&s, &m1])
        .unwrap()
        .get(0);
    let node = |c: &mut Client, content: &str| -> Uuid {
        c.query_one("INSERT INTO memories (content) VALUES ($1) RETURNING id", &[&content])
            .unwrap()
            .get(0)
    };
    let (a, b, cc) = (node(&mut c, "node a"), node(&mut c, "node b"), node(&mut c, "node c"));
    c.query_one("SELECT add_edge($1, $2, 'relates_to')", &[&a, &b]).unwrap();
    c.query_one("SELECT add_edge($1, $2, 'relates_to')", &[&b, &cc]).unwrap();
    c.execute("UPDATE memories SET content_embedding = '[1,2,3]' WHERE id = $1", &[&a])
        .unwrap();
    let unknown = Uuid::new_v4();
    let fill = |sql: &str| -> String {
        sql.replace("{s}", &s.to_string())
            .replace("{m1}", &m1.to_string())
            .replace("{fork}", &fork.to_string())
            .replace("{a}", &a.to_string())
            .replace("{b}", &b.to_string())
            .replace("{c}", &cc.to_string())
            .replace("{me}", &db.user.to_string())
            .replace("{bob}", &bob.to_string())
            .replace("{unknown}", &unknown.to_string())
    };

    let cases = cases();
    assert!(cases.len() >= 50, "the matrix has {} cases", cases.len());
    let mut problems = Vec::new();
    let mut summary = Vec::new();
    for case in &cases {
        let sql = fill(case.sql);
        let shown = if sql.len() > 110 {
            format!("{}...", &sql[..sql.char_indices().nth(100).map(|(i, _)| i).unwrap_or(sql.len())])
        } else {
            sql.clone()
        };
        let param: Option<&(dyn ToSql + Sync)> = match &case.param {
            None => None,
            Some(Param::Text(t)) => Some(t),
            Some(Param::Json(j)) => Some(j),
        };
        let before = state(&mut admin);
        let started = std::time::Instant::now();
        let caller = if worker_only.iter().any(|f| sql.contains(f)) { &mut worker } else { &mut c };
        caller.batch_execute("BEGIN").unwrap();
        let result = match param {
            None => caller.batch_execute(&sql),
            Some(p) => caller.execute(sql.as_str(), &[p]).map(|_| ()),
        };
        caller.batch_execute(if result.is_ok() { "COMMIT" } else { "ROLLBACK" }).unwrap();
        let outcome = match &result {
            Ok(()) => "accepted".to_string(),
            Err(e) => {
                let mut shape = error_shape(e, &[s, m1, fork, a, b, cc, unknown, bob, db.user]).replace('\n', " ");
                if shape.len() > 160 {
                    shape = format!(
                        "{}...",
                        &shape[..shape.char_indices().nth(150).map(|(i, _)| i).unwrap_or(shape.len())]
                    );
                }
                shape
            }
        };
        let elapsed = started.elapsed();
        summary.push(format!("{shown}\n      -> {outcome} ({} ms)", elapsed.as_millis()));
        // one tenant's malformed call must not occupy a backend for long: rejecting or accepting
        // bad input is cheap (every case here takes milliseconds when handled up front)
        if elapsed > std::time::Duration::from_secs(10) {
            problems.push(format!("{shown}: took {elapsed:?} (budget 10 s) -> {outcome}"));
        }
        if let Err(e) = &result {
            let code = e.code().map(|c| c.code().to_string()).unwrap_or_else(|| "(no SQLSTATE)".into());
            if code == "XX000" {
                problems.push(format!("{shown}: internal error XX000 (a panic?): {outcome}"));
            }
            let after = state(&mut admin);
            if after != before {
                problems.push(format!("{shown}: a failed call changed the state:\n      {before}\n      {after}"));
            }
            match &case.expect {
                Expect::Fails(codes) if codes.contains(&code.as_str()) => {}
                Expect::Fails(codes) => problems.push(format!("{shown}: expected SQLSTATE {codes:?}, got {outcome}")),
                Expect::Accepted(_) => problems.push(format!("{shown}: expected to be accepted, got {outcome}")),
            }
        } else {
            match &case.expect {
                Expect::Fails(codes) => problems.push(format!("{shown}: expected SQLSTATE {codes:?}, but it was accepted")),
                Expect::Accepted(check) => {
                    let check = fill(check);
                    let ok = match param {
                        None => c.query_one(check.as_str(), &[]),
                        Some(p) => c.query_one(check.as_str(), &[p]),
                    };
                    match ok {
                        Ok(row) if row.get::<_, Option<bool>>(0) == Some(true) => {}
                        Ok(_) => problems.push(format!("{shown}: accepted, but the check failed: {check}")),
                        Err(e) => problems.push(format!("{shown}: accepted, but the check errored: {}", error_shape(&e, &[]))),
                    }
                }
            }
        }
        // the connection is still usable and nothing is left open
        let alive: i32 = c.query_one("SELECT 1", &[]).unwrap().get(0);
        assert_eq!(alive, 1);
    }
    eprintln!("{} cases:\n  {}", cases.len(), summary.join("\n  "));
    assert!(
        problems.is_empty(),
        "{} of {} cases went wrong:\n  - {}",
        problems.len(),
        cases.len(),
        problems.join("\n  - ")
    );
}

/// The extension reads and hashes text as UTF-8, so CREATE EXTENSION refuses a database in any
/// other encoding with a clear error (in one it would hash the same text differently and count
/// characters wrongly), and writes nothing.
#[test]
fn a_database_not_in_utf8_is_refused_at_create_extension() {
    let db = TestDb::new();
    let latin1 = format!("{}_latin1", db.name);
    let mut admin = db.admin();
    admin
        .batch_execute(&format!("CREATE DATABASE {latin1} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"))
        .unwrap();
    let refused = {
        let mut other = Client::connect(&db.url_for_db("postgres", &latin1, ""), postgres::NoTls).unwrap();
        let refused = other.batch_execute("CREATE EXTENSION memoriesdb CASCADE").unwrap_err();
        let installed: i64 =
            other.query_one("SELECT count(*) FROM pg_extension WHERE extname = 'memoriesdb'", &[]).unwrap().get(0);
        assert_eq!(installed, 0, "nothing is installed");
        refused
    };
    admin.batch_execute(&format!("DROP DATABASE {latin1} WITH (FORCE)")).unwrap();
    let db_error = refused.as_db_error().expect("a database error");
    assert_eq!(db_error.code().code(), "0A000", "{db_error:?}");
    assert_eq!(db_error.message(), "MemoriesDB needs a database encoded in UTF-8; this one is LATIN1");
}
