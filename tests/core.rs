//! Core behaviour as real clients see it: commit-time NOTIFY, the concurrent cycle race, audit
//! completeness, all through an ordinary non-superuser role and several connections.

use memoriesdb_integration_tests::{chat_channel, sqlstate, TestDb};
use postgres::fallible_iterator::FallibleIterator;
use postgres::Client;
use serde_json::Value;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;
use uuid::Uuid;

fn create_session(c: &mut Client, title: &str) -> Uuid {
    c.query_one("SELECT create_session($1)", &[&title]).unwrap().get(0)
}

fn add_message(c: &mut Client, session: Uuid, role: &str, content: &str) -> Uuid {
    c.query_one("SELECT add_message_to_session($1, $2, $3)", &[&session, &role, &content])
        .unwrap()
        .get(0)
}

/// Notifications that arrive on `listener` within `wait`, as (channel, parsed payload).
fn drain(listener: &mut Client, wait: Duration) -> Vec<(String, Value)> {
    let mut got = Vec::new();
    let mut notifications = listener.notifications();
    let mut it = notifications.timeout_iter(wait);
    while let Some(n) = it.next().unwrap() {
        got.push((n.channel().to_string(), serde_json::from_str(n.payload()).expect("payload is JSON")));
    }
    got
}

#[test]
fn message_events_are_delivered_on_commit_and_never_after_rollback() {
    let db = TestDb::new();
    let mut writer = db.connect();
    let mut listener = db.connect();
    let session = create_session(&mut writer, "events");
    let channel = chat_channel(&session);
    listener.batch_execute(&format!("LISTEN {channel}; LISTEN memoriesdb_events")).unwrap();
    // Events reach NOTIFY through the relay a few milliseconds after commit, so the session's
    // own announcement may still arrive now; let it, and check it is only that.
    for (_, early) in drain(&mut listener, Duration::from_millis(500)) {
        assert_eq!((early["kind"].as_str(), early["id"].as_str()), (Some("session"), Some(session.to_string().as_str())));
    }

    // rolled back: nothing arrives
    let mut tx = writer.transaction().unwrap();
    tx.query_one("SELECT add_message_to_session($1, 'user', 'never sent')", &[&session]).unwrap();
    tx.rollback().unwrap();
    assert!(drain(&mut listener, Duration::from_millis(500)).is_empty(), "a rollback must send no event");

    // committed: one event on the session channel and one on the global channel
    let id = add_message(&mut writer, session, "user", "secret text that must not travel in events");
    let events = drain(&mut listener, Duration::from_secs(2));
    assert_eq!(events.len(), 2, "{events:?}");
    let on_session: Vec<_> = events.iter().filter(|(c, _)| *c == channel).collect();
    assert_eq!(on_session.len(), 1, "{events:?}");
    let payload = &on_session[0].1;
    assert_eq!(payload["op"], "INSERT");
    assert_eq!(payload["table"], "memories");
    assert_eq!(payload["id"], id.to_string());
    assert_eq!(payload["session_id"], session.to_string());
    assert_eq!(payload["position"], 1);
    assert_eq!(payload["role"], "user");
    assert!(payload.get("created_at").is_some());
    for (_, p) in &events {
        assert!(!p.to_string().contains("secret text"), "events must not carry content: {p}");
    }
    assert!(events.iter().any(|(c, _)| c == "memoriesdb_events"));
}

#[test]
fn a_one_megabyte_message_commits_and_still_produces_its_event() {
    let db = TestDb::new();
    let mut writer = db.connect();
    let mut listener = db.connect();
    let session = create_session(&mut writer, "big");
    listener.batch_execute(&format!("LISTEN {}", chat_channel(&session))).unwrap();
    let content = "x".repeat(1024 * 1024);
    let id = add_message(&mut writer, session, "assistant", &content);
    let events = drain(&mut listener, Duration::from_secs(2));
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].1["id"], id.to_string());
    let row = writer
        .query_one("SELECT length(content), content_hash = encode(sha256(convert_to(content, 'UTF8')), 'hex') FROM memories WHERE id = $1", &[&id])
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 1024 * 1024);
    assert!(row.get::<_, bool>(1), "hash of the 1 MB message must verify");
}

#[test]
fn a_batch_sends_one_event_per_message_in_order_on_commit() {
    let db = TestDb::new();
    let mut writer = db.connect();
    let mut listener = db.connect();
    let session = create_session(&mut writer, "batch");
    let channel = chat_channel(&session);
    listener.batch_execute(&format!("LISTEN {channel}")).unwrap();

    let batch = r#"[{"role": "user", "content": "one"}, {"role": "assistant", "content": "two"}, {"role": "user", "content": "three"}]"#;
    let mut tx = writer.transaction().unwrap();
    tx.query("SELECT add_messages_to_session($1, $2::text::jsonb)", &[&session, &batch]).unwrap();
    tx.rollback().unwrap();
    assert!(drain(&mut listener, Duration::from_millis(500)).is_empty(), "a rolled-back batch must send no event");

    let ids: Vec<Uuid> = writer
        .query("SELECT add_messages_to_session($1, $2::text::jsonb)", &[&session, &batch])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let events = drain(&mut listener, Duration::from_secs(2));
    let seen: Vec<(String, i64, String)> = events
        .iter()
        .map(|(_, p)| (p["id"].as_str().unwrap_or_default().to_string(), p["position"].as_i64().unwrap_or(-1), p["role"].as_str().unwrap_or_default().to_string()))
        .collect();
    let expected: Vec<(String, i64, String)> = ids
        .iter()
        .zip([(1, "user"), (2, "assistant"), (3, "user")])
        .map(|(id, (position, role))| (id.to_string(), position, role.to_string()))
        .collect();
    assert_eq!(seen, expected, "one event per message, in position order: {events:?}");
}

#[test]
fn a_bulk_insert_sends_one_summary_per_session_not_one_event_per_row() {
    let db = TestDb::new();
    let mut writer = db.connect();
    let mut listener = db.connect();
    let session = create_session(&mut writer, "bulk");
    listener.batch_execute(&format!("LISTEN {}", chat_channel(&session))).unwrap();
    // (messages are written through the API: a direct INSERT could jam the session's positions)
    writer
        .execute(
            "SELECT add_messages_to_session($1, (SELECT jsonb_agg(jsonb_build_object('role', 'user', 'content', 'row ' || g))
                                                   FROM generate_series(1, 500) g))",
            &[&session],
        )
        .unwrap();
    let events = drain(&mut listener, Duration::from_secs(2));
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].1["op"], "BULK_INSERT");
    assert_eq!(events[0].1["count"], 500);
    assert_eq!(events[0].1["last_position"], 500);
}

/// Two transactions each add one edge of a 2-cycle. Under READ COMMITTED the second waits for
/// the first and then sees its edge; under REPEATABLE READ it cannot see it and must fail with a
/// serialization error. Either way at most one commits.
fn cycle_race(isolation: &str) -> (Result<(), String>, Result<(), String>) {
    let db = TestDb::new();
    let mut setup = db.connect();
    let a: Uuid = setup.query_one("INSERT INTO memories (content) VALUES ('a') RETURNING id", &[]).unwrap().get(0);
    let b: Uuid = setup.query_one("INSERT INTO memories (content) VALUES ('b') RETURNING id", &[]).unwrap().get(0);

    let barrier = Arc::new(Barrier::new(2));
    let run = |source: Uuid, target: Uuid, delay_commit: bool, barrier: Arc<Barrier>, mut c: Client, iso: String| {
        thread::spawn(move || -> Result<(), String> {
            c.batch_execute(&format!("BEGIN ISOLATION LEVEL {iso}")).unwrap();
            c.query_one("SELECT 1", &[]).unwrap(); // takes the snapshot under REPEATABLE READ
            barrier.wait();
            if !delay_commit {
                thread::sleep(Duration::from_millis(200)); // let the other insert first
            }
            let inserted = c.execute(
                "INSERT INTO memory_edges (source_id, target_id, relation) VALUES ($1, $2, 'related_to')",
                &[&source, &target],
            );
            match inserted {
                Err(e) => {
                    let code = sqlstate(&e);
                    c.batch_execute("ROLLBACK").unwrap();
                    Err(code)
                }
                Ok(_) => {
                    if delay_commit {
                        thread::sleep(Duration::from_millis(600)); // the other one is now waiting
                    }
                    c.batch_execute("COMMIT").map_err(|e| sqlstate(&e))
                }
            }
        })
    };
    let first = run(a, b, true, barrier.clone(), db.connect(), isolation.to_string());
    let second = run(b, a, false, barrier, db.connect(), isolation.to_string());
    let result = (first.join().unwrap(), second.join().unwrap());
    let edges: i64 = setup.query_one("SELECT count(*) FROM memory_edges", &[]).unwrap().get(0);
    assert_eq!(edges, 1, "exactly one of the two edges may exist; got {result:?}");
    result
}

#[test]
fn concurrent_transactions_cannot_close_a_cycle_read_committed() {
    let (first, second) = cycle_race("READ COMMITTED");
    assert_eq!(first, Ok(()));
    assert_eq!(second, Err("23514".to_string()), "the waiting writer must see the committed edge");
}

#[test]
fn concurrent_transactions_cannot_close_a_cycle_repeatable_read() {
    let (first, second) = cycle_race("REPEATABLE READ");
    assert_eq!(first, Ok(()));
    assert_eq!(second, Err("40001".to_string()), "a stale snapshot must fail with a serialization error");
}

#[test]
fn audit_has_exactly_one_row_per_change_and_nothing_for_rolled_back_work() {
    let db = TestDb::new();
    let user = db.user;
    let mut c = db.connect();
    let session = create_session(&mut c, "audited"); // 1 memory
    for i in 0..10 {
        add_message(&mut c, session, "user", &format!("m{i}")); // 10 memories
    }
    let fork: Uuid = c.query_one("SELECT fork_session($1, 'branch')", &[&session]).unwrap().get(0); // 1 memory
    c.execute("UPDATE memories SET _metadata = '{\"k\": 1}' WHERE id = $1", &[&fork]).unwrap(); // 1 update
    let fact: Uuid = c.query_one("INSERT INTO memories (content) VALUES ('a fact') RETURNING id", &[]).unwrap().get(0); // 1
    c.query_one("SELECT add_edge($1, $2, 'mentioned_in')", &[&fact, &session]).unwrap(); // 1 edge
    assert!(c.query_one("SELECT remove_edge($1, $2, 'mentioned_in')", &[&fact, &session]).unwrap().get::<_, bool>(0)); // 1 delete
    // rolled back work leaves no audit rows
    let mut tx = c.transaction().unwrap();
    tx.query_one("SELECT add_message_to_session($1, 'user', 'gone')", &[&session]).unwrap();
    tx.rollback().unwrap();

    let counts: Vec<(String, String, i64)> = c
        .query("SELECT table_name, operation, count(*) FROM audit_log GROUP BY 1, 2 ORDER BY 1, 2", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let expected = vec![
        ("memories".to_string(), "INSERT".to_string(), 13),
        ("memories".to_string(), "UPDATE".to_string(), 1),
        ("memory_edges".to_string(), "DELETE".to_string(), 1),
        ("memory_edges".to_string(), "INSERT".to_string(), 1),
    ];
    assert_eq!(counts, expected);
    // every row attributed to the acting user and role, with a transaction id and both states
    let bad: i64 = c
        .query_one(
            "SELECT count(*) FROM audit_log
              WHERE acting_user IS DISTINCT FROM $1 OR db_role <> current_user OR txid IS NULL
                 OR (operation = 'UPDATE' AND (old_row IS NULL OR new_row IS NULL))
                 OR (operation = 'INSERT' AND (old_row IS NOT NULL OR new_row IS NULL))
                 OR (operation = 'DELETE' AND (old_row IS NULL OR new_row IS NOT NULL))",
            &[&user],
        )
        .unwrap()
        .get(0);
    assert_eq!(bad, 0);
    let update: Value = c
        .query_one("SELECT jsonb_build_array(old_row->'_metadata', new_row->'_metadata') FROM audit_log WHERE operation = 'UPDATE'", &[])
        .unwrap()
        .get(0);
    assert_eq!(update, serde_json::json!([{}, {"k": 1}]));
    // and the memories carry their creator
    let unattributed: i64 = c
        .query_one("SELECT count(*) FROM memories WHERE created_by IS DISTINCT FROM $1", &[&user])
        .unwrap()
        .get(0);
    assert_eq!(unattributed, 0);
}

#[test]
fn the_audit_log_cannot_be_changed_by_an_ordinary_role() {
    let db = TestDb::new();
    let mut c = db.connect();
    create_session(&mut c, "x");
    for sql in [
        "UPDATE audit_log SET operation = 'DELETE'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
        "INSERT INTO audit_log (table_name, operation, row_id, db_role, txid) VALUES ('memories', 'INSERT', gen_random_uuid(), 'x', 1)",
        "ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only",
    ] {
        let err = c.batch_execute(sql).expect_err(sql);
        assert_eq!(sqlstate(&err), "42501", "{sql}: {err}");
    }
    let n: i64 = db.admin().query_one("SELECT count(*) FROM audit_log", &[]).unwrap().get(0);
    assert_eq!(n, 1);
}

#[test]
fn concurrent_appends_to_one_session_get_consecutive_positions() {
    let db = TestDb::new();
    let mut c = db.connect();
    let session = create_session(&mut c, "busy");
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let mut conn = db.connect();
            thread::spawn(move || {
                for i in 0..50 {
                    add_message(&mut conn, session, "user", &format!("w{w}-{i}"));
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let row = c
        .query_one("SELECT count(*), min(position), max(position), count(DISTINCT position) FROM get_formatted_conversation($1)", &[&session])
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1), row.get::<_, i64>(2), row.get::<_, i64>(3)), (200, 1, 200, 200));
}

/// Events go through the outbox and a relay worker that exits after 2 s without work and is
/// restarted by the next writer. Bursts of concurrent writes separated by longer pauses exercise
/// that hand-over: every committed message must still produce exactly its event.
#[test]
fn no_event_is_lost_across_relay_restarts() {
    let db = TestDb::new();
    let mut setup = db.connect();
    let session = create_session(&mut setup, "bursts");
    let mut listener = db.connect();
    listener.batch_execute(&format!("LISTEN {}", chat_channel(&session))).unwrap();
    let mut expected = 0;
    for burst in 0..3 {
        let writers: Vec<_> = (0..3)
            .map(|w| {
                let mut c = db.connect();
                thread::spawn(move || {
                    for i in 0..20 {
                        add_message(&mut c, session, "user", &format!("burst {burst} writer {w} message {i}"));
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        expected += 60;
        thread::sleep(Duration::from_millis(2600)); // longer than the relay's idle exit
    }
    let events = drain(&mut listener, Duration::from_secs(3));
    let mut positions: Vec<i64> = events.iter().map(|(_, p)| p["position"].as_i64().unwrap()).collect();
    positions.sort();
    assert_eq!(positions, (1..=expected).collect::<Vec<i64>>(), "each message exactly once");
    let left: i64 = db.admin().query_one("SELECT count(*) FROM memory_event_outbox", &[]).unwrap().get(0);
    assert_eq!(left, 0, "the outbox is drained");
}
