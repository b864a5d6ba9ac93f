//! Ranking by importance and recency in the searches, and the access tracking recency counts
//! from, on a real cluster: ordinary roles under row-level security, a worker folding the log,
//! a client idling in a transaction.

use memoriesdb_integration_tests::{count, error_shape, expect_error, TestDb};
use postgres::Client;
use std::time::Duration;
use uuid::Uuid;

/// A memory of alice's with this content, importance and embedding, written `age_days` ago
/// (backdated by the administrator: nobody else can change when a memory was written).
fn memory(alice: &mut Client, admin: &mut Client, content: &str, importance: Option<f32>, embedding: &str, age_days: f64) -> Uuid {
    let id: Uuid = alice
        .query_one(
            "INSERT INTO memories (kind, content, importance, content_embedding)
             VALUES ('memory', $1, $2, $3::text::vector) RETURNING id",
            &[&content, &importance, &embedding],
        )
        .unwrap()
        .get(0);
    admin
        .batch_execute(&format!(
            "SET session_replication_role = replica;
             UPDATE memoriesdb.memories SET _created_at = now() - interval '{age_days} days' WHERE id = '{id}';
             RESET session_replication_role"
        ))
        .unwrap();
    id
}

/// (id, relevance, importance, recency, score) of a search's rows, in its order.
type Ranked = Vec<(Uuid, f64, f32, f64, f64)>;

fn ranked(c: &mut Client, sql: &str) -> Ranked {
    c.query(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {}", error_shape(&e, &[])))
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1.0)
}

/// Every row's score is its relevance scaled as documented, and the rows are in score order.
fn assert_scored(rows: &Ranked, importance_weight: f64, recency_weight: f64, what: &str) {
    for (id, relevance, importance, recency, score) in rows {
        let expected = relevance.max(0.0)
            * (1.0 - importance_weight + importance_weight * f64::from(*importance))
            * (1.0 - recency_weight + recency_weight * recency);
        assert!(close(*score, expected), "{what}: {id}: score {score}, expected {expected}");
        assert!((0.0..=1.0).contains(recency), "{what}: recency {recency}");
    }
    assert!(rows.windows(2).all(|w| w[0].4 >= w[1].4), "{what}: not in score order: {rows:?}");
}

fn order(rows: &Ranked) -> Vec<Uuid> {
    rows.iter().map(|r| r.0).collect()
}

#[test]
fn importance_and_recency_reorder_every_search_and_default_to_relevance_alone() {
    let db = TestDb::new();
    let mut alice = db.connect();
    let mut admin = db.admin();
    // equally relevant to the text query; nearest to [1,0,0] in the order listed
    let fresh_trivial = memory(&mut alice, &mut admin, "the launch date is friday", Some(0.1), "[1, 0, 0]", 0.0);
    let old_vital = memory(&mut alice, &mut admin, "the launch date is monday", Some(1.0), "[1, 0.1, 0]", 20.0);
    let day_old = memory(&mut alice, &mut admin, "the launch date is sunday", None, "[1, 0.2, 0]", 1.0);
    // (an entity: hybrid_search's vector ranking would find it too, far behind; the searches
    // below ask for memories only)
    let unrelated = memory(&mut alice, &mut admin, "lunch at noon", Some(1.0), "[0, 1, 0]", 0.0);
    admin
        .batch_execute(&format!(
            "SET session_replication_role = replica; UPDATE memoriesdb.memories SET kind = 'entity' WHERE id = '{unrelated}'"
        ))
        .unwrap();

    let text = |options: &str| {
        format!("SELECT id, rank::float8, importance, recency, score FROM search_memories('launch date', kind_filter => 'memory'{options})")
    };
    let vector = |options: &str| {
        format!("SELECT id, similarity, importance, recency, score FROM vector_search('[1, 0, 0]', 0.5, kind_filter => 'memory'{options})")
    };
    let hybrid = |options: &str| {
        format!("SELECT id, fused_score, importance, recency, score FROM hybrid_search('launch date', '[1, 0, 0]', kind_filter => 'memory'{options})")
    };

    // by default: relevance alone (score = relevance), as before ranking existed
    for (what, sql) in [("text", text("")), ("vector", vector("")), ("hybrid", hybrid(""))] {
        let rows = ranked(&mut alice, &sql);
        assert_eq!(rows.len(), 3, "{what}: {rows:?}");
        assert!(!order(&rows).contains(&unrelated), "{what}");
        assert_scored(&rows, 0.0, 0.0, what);
        for (_, relevance, ..) in &rows {
            let score = rows.iter().find(|r| r.1 == *relevance).unwrap().4;
            assert!(close(score, relevance.max(0.0)), "{what}: default score is the relevance");
        }
        // the importance a memory has, or its type's default (memory: 0.5)
        let importance_of = |id: Uuid| rows.iter().find(|r| r.0 == id).unwrap().2;
        assert_eq!((importance_of(fresh_trivial), importance_of(old_vital), importance_of(day_old)), (0.1, 1.0, 0.5), "{what}");
    }
    let by_similarity = order(&ranked(&mut alice, &vector("")));
    assert_eq!(by_similarity, vec![fresh_trivial, old_vital, day_old]);

    // importance first: the vital memory leads everywhere
    for (what, sql) in [
        ("text", text(", importance_weight => 1")),
        ("vector", vector(", importance_weight => 1")),
        ("hybrid", hybrid(", importance_weight => 1")),
    ] {
        let rows = ranked(&mut alice, &sql);
        assert_scored(&rows, 1.0, 0.0, what);
        assert_eq!(rows[0].0, old_vital, "{what}: {rows:?}");
        assert_eq!(rows.last().unwrap().0, fresh_trivial, "{what}: {rows:?}");
    }

    // recency with a one-day half-life: 0.5 after a day, about 0 after twenty
    for (what, sql) in [
        ("text", text(", recency_weight => 1, half_life => '1 day'")),
        ("vector", vector(", recency_weight => 1, half_life => '1 day'")),
        ("hybrid", hybrid(", recency_weight => 1, half_life => '1 day'")),
    ] {
        let rows = ranked(&mut alice, &sql);
        assert_scored(&rows, 0.0, 1.0, what);
        assert_eq!(order(&rows), vec![fresh_trivial, day_old, old_vital], "{what}");
        let recency_of = |id: Uuid| rows.iter().find(|r| r.0 == id).unwrap().3;
        assert!((recency_of(day_old) - 0.5).abs() < 0.01, "{what}: {}", recency_of(day_old));
        assert!(recency_of(fresh_trivial) > 0.99 && recency_of(old_vital) < 1e-5, "{what}: {rows:?}");
    }

    // half weights mix them: each factor between 1 - w and 1
    let rows = ranked(&mut alice, &text(", importance_weight => 0.5, recency_weight => 0.5, half_life => '7 days'"));
    assert_scored(&rows, 0.5, 0.5, "mixed");

    // the ranking orders the best `candidates` by relevance: by default lim for a vector search
    // (re-ordered only), 5 x lim for full text; a memory that would not make lim by relevance
    // alone is lifted from a wider pool
    let rows = ranked(&mut alice, &vector(", lim => 1"));
    assert_eq!(order(&rows), vec![fresh_trivial]);
    let rows = ranked(&mut alice, &vector(", lim => 1, importance_weight => 1"));
    assert_eq!(order(&rows), vec![fresh_trivial], "vector search: lim candidates by default");
    let rows = ranked(&mut alice, &vector(", lim => 1, importance_weight => 1, candidates => 3"));
    assert_eq!(order(&rows), vec![old_vital]);
    let rows = ranked(&mut alice, &text(", lim => 1, importance_weight => 1"));
    assert_eq!(order(&rows), vec![old_vital], "full text: 5 x lim candidates by default");
    let rows = ranked(&mut alice, &text(", lim => 1, importance_weight => 1, candidates => 1"));
    assert_eq!(rows.len(), 1);
    let rows = ranked(&mut alice, &hybrid(", lim => 1, importance_weight => 1"));
    assert_eq!(order(&rows), vec![old_vital], "hybrid: every candidate of both rankings");

    // semantic_search has the same options (checked before it needs an endpoint)
    expect_error(&mut alice, "SELECT * FROM semantic_search('launch', importance_weight => 2)", "22023");
}

#[test]
fn ranking_options_are_checked() {
    let db = TestDb::new();
    let mut alice = db.connect();
    for call in [
        "search_memories('x'",
        "vector_search('[1, 0, 0]'",
        "hybrid_search('x', '[1, 0, 0]'",
        "semantic_search('x'",
    ] {
        for (options, state) in [
            ("importance_weight => 1.5", "22023"),
            ("importance_weight => -0.1", "22023"),
            ("recency_weight => 'NaN'", "22023"),
            ("recency_weight => 'Infinity'", "22023"),
            ("importance_weight => NULL", "22004"),
            ("recency_weight => NULL", "22004"),
            ("half_life => NULL", "22004"),
            ("half_life => '0 seconds'", "22023"),
            ("half_life => '-1 day'", "22023"),
            ("half_life => '1 month -31 days'", "22023"),
            // 12 months are 365.25 days to date_part('epoch'): zero, not 5.25 days (once 22012)
            ("half_life => '-1 year 365 days 6 hours'", "22023"),
            ("candidates => 0", "22023"),
            ("candidates => 10001", "22023"),
        ] {
            expect_error(&mut alice, &format!("SELECT * FROM {call}, {options})"), state);
        }
    }
    // fewer candidates than rows asked for
    expect_error(&mut alice, "SELECT * FROM search_memories('x', lim => 5, candidates => 4)", "22023");
    expect_error(&mut alice, "SELECT * FROM vector_search('[1, 0, 0]', lim => 5, candidates => 4)", "22023");
    // a tiny half-life and very old memories: recency 0, never an underflow error
    alice.batch_execute("INSERT INTO memories (kind, content) VALUES ('memory', 'ancient launch')").unwrap();
    let mut admin = db.admin();
    admin
        .batch_execute(
            "SET session_replication_role = replica;
             UPDATE memoriesdb.memories SET _created_at = '1990-01-01'",
        )
        .unwrap();
    let recency: f64 = alice
        .query_one("SELECT recency FROM search_memories('ancient', recency_weight => 1, half_life => '1 microsecond')", &[])
        .unwrap()
        .get(0);
    assert!(recency < 1e-300, "{recency}");
}

#[test]
fn searches_record_their_accesses_which_a_fold_counts_under_row_level_security() {
    let db = TestDb::new();
    let mut alice = db.connect();
    let mut admin = db.admin();
    let (bob_role, bob_user) = db.extra_role("bob");
    let mut bob = db.connect_as(&bob_role);
    let (worker_role, _) = db.extra_role("worker");
    db.grant("memoriesdb_worker", &worker_role);
    let mut worker = db.connect_as(&worker_role);

    let old = memory(&mut alice, &mut admin, "the quarterly report", None, "[1, 0, 0]", 10.0);
    let other = memory(&mut alice, &mut admin, "the quarterly budget", None, "[0, 1, 0]", 10.0);
    let log = |admin: &mut Client| count(admin, "SELECT count(*) FROM memoriesdb.memory_access_log");
    let recency_of_old = |alice: &mut Client| -> f64 {
        alice
            .query_one(
                "SELECT recency FROM search_memories('report', half_life => '1 day') WHERE id = $1",
                &[&old],
            )
            .unwrap()
            .get(0)
    };
    assert!(recency_of_old(&mut alice) < 0.001, "ten days old, half-life a day");
    // (the first search of a backend writes at once)
    assert_eq!(log(&mut admin), 1);

    // within the second: noted in the backend, not yet written
    alice.batch_execute("SELECT * FROM search_memories('quarterly')").unwrap();
    assert_eq!(log(&mut admin), 1);
    // in a read-only transaction: searches work, nothing is written
    std::thread::sleep(Duration::from_millis(1100));
    alice.batch_execute("BEGIN READ ONLY; SELECT * FROM search_memories('quarterly'); COMMIT").unwrap();
    assert_eq!(log(&mut admin), 1);
    // with tracking off: nothing noted
    alice.batch_execute("SET memoriesdb.track_access = off; SELECT * FROM search_memories('budget')").unwrap();
    assert_eq!(log(&mut admin), 1);
    // a superuser acting as nobody: no one's use to count
    admin.batch_execute("SELECT * FROM memoriesdb.search_memories('quarterly')").unwrap();
    assert_eq!(log(&mut admin), 1);
    // the next search a second later writes everything pending: 1 + 2 + 2 + its own 2
    alice.batch_execute("SET memoriesdb.track_access = on; SELECT * FROM vector_search('[1, 1, 0]', 0.5)").unwrap();
    assert_eq!(log(&mut admin), 7);

    // the log is the owner's alone; folding is a worker's job
    expect_error(&mut alice, "SELECT * FROM memory_access_log", "42501");
    expect_error(&mut alice, "SELECT fold_memory_accesses()", "42501");
    expect_error(&mut worker, "SELECT fold_memory_accesses(0)", "22023");
    assert_eq!(count(&mut worker, "SELECT fold_memory_accesses(5)"), 5, "at most lim");
    assert_eq!(count(&mut worker, "SELECT fold_memory_accesses()"), 2);
    assert_eq!(log(&mut admin), 0);
    let counts: Vec<(Uuid, i64)> = alice
        .query("SELECT memory_id, access_count FROM memory_access ORDER BY access_count DESC", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(counts, vec![(old, 4), (other, 3)]);
    // bob sees no counts of alice's memories, and cannot write any
    assert_eq!(count(&mut bob, "SELECT count(*) FROM memory_access"), 0);
    expect_error(&mut bob, &format!("INSERT INTO memory_access VALUES ('{old}', '{bob_user}', 1, now())"), "42501");

    // recency now counts from the last use
    assert!(recency_of_old(&mut alice) > 0.99);

    // a deleted memory's logged accesses are dropped by the fold (which returns how many it took
    // from the log); its count goes with it
    std::thread::sleep(Duration::from_millis(1100));
    alice.batch_execute("SELECT * FROM search_memories('budget')").unwrap();
    assert_eq!(log(&mut admin), 2, "the budget search, and the report search before it");
    admin.batch_execute(&format!("DELETE FROM memoriesdb.memories WHERE id = '{other}'")).unwrap();
    assert_eq!(count(&mut admin, "SELECT count(*) FROM memoriesdb.memory_access"), 1);
    assert_eq!(count(&mut worker, "SELECT fold_memory_accesses()"), 2);
    assert_eq!(count(&mut admin, "SELECT access_count FROM memoriesdb.memory_access"), 5);
}

#[test]
fn a_client_idling_in_a_transaction_after_a_search_holds_up_nobody() {
    let db = TestDb::new();
    let mut alice = db.connect();
    let mut admin = db.admin();
    let (bob_role, bob_user) = db.extra_role("bob");
    let mut bob = db.connect_as(&bob_role);
    let (worker_role, _) = db.extra_role("worker");
    db.grant("memoriesdb_worker", &worker_role);
    let mut worker = db.connect_as(&worker_role);
    let shared = memory(&mut alice, &mut admin, "the shared plan", None, "[1, 0, 0]", 0.0);
    alice.batch_execute(&format!("SELECT share_memory('{shared}', '{bob_user}')")).unwrap();

    // alice's search writes its accesses inside her transaction, which she leaves open
    alice.batch_execute("BEGIN; SELECT * FROM search_memories('plan')").unwrap();
    // bob's searches of the same memory, and folds, go on (a statement_timeout says if they wait)
    bob.batch_execute("SET statement_timeout = '5s'").unwrap();
    worker.batch_execute("SET statement_timeout = '5s'").unwrap();
    for _ in 0..3 {
        let found = count(&mut bob, "SELECT count(*) FROM search_memories('plan')");
        assert_eq!(found, 1);
        std::thread::sleep(Duration::from_millis(1050));
    }
    let folded = count(&mut worker, "SELECT fold_memory_accesses()");
    assert_eq!(folded, 3, "bob's three accesses; alice's are not committed");
    alice.batch_execute("COMMIT").unwrap();
    assert_eq!(count(&mut worker, "SELECT fold_memory_accesses()"), 1);
    // counted per user, and each sees only their own: what bob searched for is not alice's to know
    assert_eq!(count(&mut admin, &format!("SELECT sum(access_count)::int8 FROM memoriesdb.memory_access WHERE memory_id = '{shared}'")), 4);
    assert_eq!(count(&mut alice, "SELECT sum(access_count)::int8 FROM memory_access"), 1);
    assert_eq!(count(&mut bob, "SELECT sum(access_count)::int8 FROM memory_access"), 3);
    // and recency is the reader's own: bob's later uses do not make it recent for alice
    let last_use = |c: &mut Client| -> bool {
        c.query_one("SELECT last_accessed_at > now() - interval '1 minute' FROM memory_access", &[]).unwrap().get(0)
    };
    assert!(last_use(&mut alice) && last_use(&mut bob));
}
