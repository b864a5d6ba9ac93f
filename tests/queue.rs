//! The embedding queue under concurrency, as real workers use it.

use memoriesdb_integration_tests::TestDb;
use postgres::fallible_iterator::FallibleIterator;
use std::collections::HashSet;
use std::thread;
use std::time::Duration;
use uuid::Uuid;

#[test]
fn two_workers_never_get_the_same_item() {
    let db = TestDb::new();
    db.grant("memoriesdb_worker", &db.role);
    let mut setup = db.connect();
    setup
        .batch_execute("INSERT INTO memories (content) SELECT 'memory ' || g FROM generate_series(1, 400) g")
        .unwrap();
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let mut c = db.connect();
            thread::spawn(move || {
                let mut mine = Vec::new();
                loop {
                    // each claim is its own transaction; hold it briefly like a real worker would
                    let mut tx = c.transaction().unwrap();
                    let batch: Vec<(Uuid, String)> = tx
                        .query("SELECT memory_id, content_hash FROM claim_embedding_batch(7)", &[])
                        .unwrap()
                        .iter()
                        .map(|r| (r.get(0), r.get(1)))
                        .collect();
                    tx.commit().unwrap();
                    if batch.is_empty() {
                        break;
                    }
                    for (id, hash) in &batch {
                        let stored: bool = c
                            .query_one(
                                "SELECT store_embedding($1, '[0.1, 0.2, 0.3]', 'test-model', $2)",
                                &[id, hash],
                            )
                            .unwrap()
                            .get(0);
                        assert!(stored);
                    }
                    mine.extend(batch.into_iter().map(|(id, _)| id));
                }
                mine
            })
        })
        .collect();
    let results: Vec<Vec<Uuid>> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    let first: HashSet<_> = results[0].iter().collect();
    let second: HashSet<_> = results[1].iter().collect();
    assert_eq!(first.len(), results[0].len(), "a worker got an item twice");
    assert!(first.is_disjoint(&second), "two workers got the same item");
    assert_eq!(first.len() + second.len(), 400, "every item was handed out");
    assert!(!results[0].is_empty() && !results[1].is_empty(), "both workers should have had work");
    let done: i64 = setup
        .query_one("SELECT done FROM embedding_queue_status", &[])
        .unwrap()
        .get(0);
    assert_eq!(done, 400);
}

#[test]
fn an_expired_lease_makes_the_item_claimable_again() {
    let db = TestDb::new();
    db.grant("memoriesdb_worker", &db.role);
    let mut c = db.connect();
    c.batch_execute("INSERT INTO memories (content) VALUES ('x')").unwrap();
    let first = c.query("SELECT memory_id FROM claim_embedding_batch(1, interval '200 milliseconds')", &[]).unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(c.query("SELECT memory_id FROM claim_embedding_batch(1)", &[]).unwrap().len(), 0);
    thread::sleep(Duration::from_millis(400));
    let again = c.query("SELECT memory_id, attempts FROM claim_embedding_batch(1)", &[]).unwrap();
    assert_eq!(again.len(), 1, "a worker that died must not strand its items");
    assert_eq!(again[0].get::<_, i32>(1), 2);
}

#[test]
fn workers_are_woken_when_work_is_committed() {
    let db = TestDb::new();
    let mut worker = db.connect();
    let mut writer = db.connect();
    worker.batch_execute("LISTEN memoriesdb_embedding_queue").unwrap();
    let mut tx = writer.transaction().unwrap();
    tx.batch_execute("INSERT INTO memories (content) SELECT 'm' || g FROM generate_series(1, 50) g").unwrap();
    tx.rollback().unwrap();
    let mut notes = worker.notifications();
    assert!(notes.timeout_iter(Duration::from_millis(400)).next().unwrap().is_none(), "no wake-up for rolled-back work");
    drop(notes);
    writer.batch_execute("INSERT INTO memories (content) SELECT 'm' || g FROM generate_series(1, 50) g").unwrap();
    let mut notes = worker.notifications();
    let woken: Vec<_> = notes.timeout_iter(Duration::from_secs(2)).collect().unwrap();
    assert_eq!(woken.len(), 1, "one wake-up per transaction, however many items it queued");
}
