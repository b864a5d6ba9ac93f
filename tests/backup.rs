//! Backup: a pg_dump -Fc of a database with real data (sessions, forks, messages, edges, shares,
//! an embedding with its vector index, audit rows of which some are sealed), restored into a
//! fresh database with the documented procedure:
//!
//!   pg_restore --section=pre-data                    -d new dump
//!   pg_restore --section=data --disable-triggers     -d new dump   (as the superuser postgres)
//!   pg_restore --section=post-data                   -d new dump
//!   psql -d new -c "SELECT memoriesdb.restore_vector_indexes()"   (pg_dump skips indexes on extension tables)
//!   psql -d new -c "ALTER DATABASE new SET search_path = ..."      (pg_dump keeps no database settings)
//!
//! must be an identical copy that verifies and keeps working.

use memoriesdb_integration_tests::{admin_host_port, TestDb};
use postgres::{Client, NoTls};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use uuid::Uuid;

/// Every table whose rows pg_dump carries (registered with pg_extension_config_dump).
const TABLES: [&str; 10] = [
    "users",
    "memories",
    "memory_sessions",
    "memory_edges",
    "audit_log",
    "memory_shares",
    "memory_share_segments",
    "embedding_schedule",
    "vindexing_schedule",
    "vector_indexes",
];

/// (row count, md5 of every row's text, generated columns excluded, in primary-key order).
fn checksum(c: &mut Client, table: &str) -> (i64, String) {
    let r = c
        .query_one(
            "SELECT (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) FROM pg_attribute a
                      WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''),
                    (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY array_position(i.indkey::int2[], a.attnum))
                       FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
                      WHERE i.indrelid = $1::text::regclass AND i.indisprimary)",
            &[&table],
        )
        .unwrap();
    let (columns, key): (String, String) = (r.get(0), r.get(1));
    let r = c
        .query_one(
            &format!("SELECT count(*), md5(coalesce(string_agg(ROW({columns})::text, E'\\n' ORDER BY {key}), '')) FROM {table}"),
            &[],
        )
        .unwrap();
    (r.get(0), r.get(1))
}

fn checksums(c: &mut Client) -> BTreeMap<&'static str, (i64, String)> {
    c.batch_execute("SET TimeZone = 'UTC'").unwrap();
    TABLES.iter().map(|t| (*t, checksum(c, t))).collect()
}

/// The restored database; dropped at the end, also when the test fails.
struct Restored<'a> {
    db: &'a TestDb,
    name: String,
    dump: PathBuf,
}

impl Drop for Restored<'_> {
    fn drop(&mut self) {
        let _ = self
            .db
            .admin()
            .batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
        let _ = std::fs::remove_file(&self.dump);
    }
}

impl Restored<'_> {
    fn connect(&self, role: &str) -> Client {
        Client::connect(&self.db.url_for_db(role, &self.name, ""), NoTls).unwrap()
    }
}

/// Runs a PostgreSQL client program as the postgres OS user against the test cluster.
fn as_postgres(program: &str, args: &[&str], stdout_to: Option<&PathBuf>) {
    let (host, port) = admin_host_port();
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "postgres", "--", program, "-h", &host, "-p", &port, "-U", "postgres"])
        .args(args);
    if let Some(path) = stdout_to {
        cmd.stdout(std::fs::File::create(path).unwrap());
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Dump `db` and restore it into a fresh database with the documented three-step procedure.
fn dump_and_restore(db: &TestDb) -> Restored<'_> {
    let dump = std::env::temp_dir().join(format!("{}.dump", db.name));
    let restored = Restored {
        db,
        name: format!("{}_restored", db.name),
        dump,
    };
    as_postgres("pg_dump", &["-Fc", "-d", &db.name], Some(&restored.dump));
    db.admin().batch_execute(&format!("CREATE DATABASE {}", restored.name)).unwrap();
    let file = restored.dump.to_str().unwrap().to_string();
    as_postgres("pg_restore", &["--section=pre-data", "-d", &restored.name, &file], None);
    as_postgres(
        "pg_restore",
        &["--section=data", "--disable-triggers", "-d", &restored.name, &file],
        None,
    );
    as_postgres("pg_restore", &["--section=post-data", "-d", &restored.name, &file], None);
    as_postgres(
        "psql",
        &[
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &restored.name,
            "-c",
            "SELECT memoriesdb.restore_vector_indexes()",
            "-c",
            &format!("ALTER DATABASE {} SET search_path = \"$user\", public, memoriesdb", restored.name),
        ],
        None,
    );
    restored
}

struct Data {
    session: Uuid,
    #[allow(dead_code)]
    fork: Uuid,
    bob_role: String,
    bob: Uuid,
    auditor: String,
}

/// Sessions, a fork, messages by two users, edges, shares (one read-write, used), an embedding
/// with its HNSW index, an update and a delete, audit rows sealed and unsealed.
fn populate(db: &TestDb) -> Data {
    let (bob_role, bob) = db.extra_role("bob");
    let (worker, _) = db.extra_role("worker");
    db.grant("memoriesdb_worker", &worker);
    let (auditor, _) = db.extra_role("auditor");
    db.grant("memoriesdb_auditor", &auditor);
    let mut a = db.connect();
    let mut b = db.connect_as(&bob_role);
    let session: Uuid = a
        .query_one("SELECT create_session('backup me', '{\"k\": [1, 2]}')", &[])
        .unwrap()
        .get(0);
    let mut msgs = Vec::new();
    for i in 0..5 {
        let m: Uuid = a
            .query_one(
                "SELECT add_message_to_session($1, $2, $3, $4)",
                &[
                    &session,
                    &"user",
                    &format!("message {i} with 'quotes' and ünïcode"),
                    &serde_json::json!({"i": i}),
                ],
            )
            .unwrap()
            .get(0);
        msgs.push(m);
    }
    let fork: Uuid = a
        .query_one(
            "SELECT fork_session($1, 'the fork', parent_message_id => $2)",
            &[&session, &msgs[2]],
        )
        .unwrap()
        .get(0);
    a.query_one("SELECT add_message_to_session($1, 'assistant', 'in the fork')", &[&fork])
        .unwrap();
    let free: Uuid = a
        .query_one("INSERT INTO memories (content) VALUES ('a free memory') RETURNING id", &[])
        .unwrap()
        .get(0);
    a.query_one(
        "SELECT add_edge($1, $2, 'relates_to', 0.5, '{\"why\": \"test\"}')",
        &[&free, &msgs[0]],
    )
    .unwrap();
    a.query_one("SELECT add_edge($1, $2, 'mentions')", &[&free, &msgs[4]]).unwrap();
    a.execute("SELECT share_memory($1, $2)", &[&session, &bob]).unwrap();
    a.execute("SELECT share_memory($1, $2, true)", &[&fork, &bob]).unwrap();
    b.query_one("SELECT add_message_to_session($1, 'user', 'bob was invited')", &[&fork])
        .unwrap();
    let mut w = db.connect_as(&worker);
    let stored: bool = w
        .query_one(
            "SELECT store_embedding(id, '[0.1, 0.2, 0.3]', 'test-model', content_hash) FROM memories WHERE id = $1",
            &[&free],
        )
        .unwrap()
        .get(0);
    assert!(stored);
    assert_eq!(
        w.query_one("SELECT process_vindexing()", &[]).unwrap().get::<_, i32>(0),
        1,
        "the HNSW index for 3 dimensions is built"
    );
    // audit rows: sealed ones, then an update and a delete that stay unsealed
    let mut aud = db.connect_as(&auditor);
    let sealed: i64 = aud.query_one("SELECT seal_audit_log()", &[]).unwrap().get(0);
    assert!(sealed > 10);
    a.execute("UPDATE memories SET _metadata = '{\"edited\": true}' WHERE id = $1", &[&msgs[1]])
        .unwrap();
    a.query_one("SELECT remove_edge($1, $2, 'mentions')", &[&free, &msgs[4]]).unwrap();
    let unsealed: i64 = aud.query_one("SELECT unsealed_rows FROM verify_audit_chain()", &[]).unwrap().get(0);
    assert!(unsealed >= 2);
    Data {
        session,
        fork,
        bob_role,
        bob,
        auditor,
    }
}

#[test]
fn a_dump_restored_with_the_documented_procedure_is_an_identical_working_copy() {
    let db = TestDb::new();
    let data = populate(&db);
    let mut old = db.admin();
    let before = checksums(&mut old);
    for (t, (n, _)) in &before {
        if !["vindexing_schedule"].contains(t) {
            assert!(*n > 0, "precondition: {t} has rows");
        }
    }
    let old_chain = old
        .query_one(
            "SELECT intact, sealed_rows, unsealed_rows, last_hash FROM verify_audit_chain()",
            &[],
        )
        .unwrap();
    assert!(old_chain.get::<_, bool>(0));

    let restored = dump_and_restore(&db);
    let mut new = restored.connect("postgres");
    let after = checksums(&mut new);
    let differing: Vec<_> = TABLES
        .iter()
        .filter(|t| before[*t] != after[*t])
        .map(|t| (t, &before[t], &after[t]))
        .collect();
    assert!(
        differing.is_empty(),
        "tables that differ after the round trip (table, before, after): {differing:?}"
    );

    // the audit chain verifies, with the same sealed rows and the same last hash
    let new_chain = new
        .query_one(
            "SELECT intact, sealed_rows, unsealed_rows, last_hash FROM verify_audit_chain()",
            &[],
        )
        .unwrap();
    assert_eq!(
        (
            new_chain.get::<_, bool>(0),
            new_chain.get::<_, i64>(1),
            new_chain.get::<_, i64>(2),
            new_chain.get::<_, Option<String>>(3)
        ),
        (
            true,
            old_chain.get::<_, i64>(1),
            old_chain.get::<_, i64>(2),
            old_chain.get::<_, Option<String>>(3)
        ),
        "verify_audit_chain() in the restored database"
    );

    // the API works in the restored database, as the same ordinary role
    let max_audit: i64 = new.query_one("SELECT max(id) FROM audit_log", &[]).unwrap().get(0);
    let audit_rows: i64 = new.query_one("SELECT count(*) FROM audit_log", &[]).unwrap().get(0);
    let last: i64 = new
        .query_one("SELECT last_position FROM memory_sessions WHERE id = $1", &[&data.session])
        .unwrap()
        .get(0);
    let mut alice = restored.connect(&db.role);
    assert_eq!(
        alice
            .query_one("SELECT current_memory_user()", &[])
            .unwrap()
            .get::<_, Option<Uuid>>(0),
        Some(db.user)
    );
    let m: Uuid = alice
        .query_one("SELECT add_message_to_session($1, 'user', 'after the restore')", &[&data.session])
        .unwrap()
        .get(0);
    let pos: i64 = alice
        .query_one("SELECT position FROM memories WHERE id = $1", &[&m])
        .unwrap()
        .get(0);
    assert_eq!(pos, last + 1, "positions continue");
    // one new audit row per row written (the message, and any stored edge it brings), numbered on
    let written: i64 = new
        .query_one(
            "SELECT (SELECT count(*) FROM memories WHERE id = $1) + (SELECT count(*) FROM memory_edges WHERE source_id = $1 OR target_id = $1)",
            &[&m],
        )
        .unwrap()
        .get(0);
    let r = new
        .query_one("SELECT count(*), min(id), max(id) FROM audit_log WHERE id > $1", &[&max_audit])
        .unwrap();
    assert_eq!(
        (r.get::<_, i64>(0), r.get::<_, Option<i64>>(1), r.get::<_, Option<i64>>(2)),
        (written, Some(max_audit + 1), Some(max_audit + written)),
        "audit ids continue without collision"
    );
    assert_eq!(
        new.query_one("SELECT count(*) FROM audit_log", &[]).unwrap().get::<_, i64>(0),
        audit_rows + written
    );
    let fork: Uuid = alice
        .query_one("SELECT fork_session($1, 'restored fork')", &[&data.session])
        .unwrap()
        .get(0);
    let t = alice
        .query("SELECT position FROM get_formatted_conversation($1)", &[&fork])
        .unwrap();
    assert_eq!(t.iter().map(|r| r.get::<_, i64>(0)).collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6]);
    assert_eq!(
        alice
            .query("SELECT * FROM vector_search('[0.1, 0.2, 0.3]', 0.99)", &[])
            .unwrap()
            .len(),
        1
    );
    // tenancy survives: bob sees what was shared with him, and no more
    let mut bob = restored.connect(&data.bob_role);
    let bob_sees: i64 = bob
        .query_one("SELECT count(*) FROM memories WHERE created_by <> $1", &[&data.bob])
        .unwrap()
        .get(0);
    let shared: i64 = bob
        .query_one("SELECT count(*) FROM get_formatted_conversation($1)", &[&data.session])
        .unwrap()
        .get(0);
    assert_eq!(
        shared, 6,
        "the shared session's transcript, including the message added after the restore"
    );
    assert_eq!(
        bob_sees,
        1 + 6 + 1 + 1,
        "the session and its 6 messages, the fork and its own message"
    );
    // and the chain keeps growing and verifying
    let mut aud = restored.connect(&data.auditor);
    aud.query_one("SELECT seal_audit_log()", &[]).unwrap();
    let r = aud
        .query_one("SELECT intact, unsealed_rows FROM verify_audit_chain()", &[])
        .unwrap();
    assert_eq!((r.get::<_, bool>(0), r.get::<_, i64>(1)), (true, 0));
}

/// The schema objects the extension does not create itself (the HNSW indexes that
/// create_vector_index() adds for each embedding dimension) must survive the round trip too:
/// vindexing_schedule says the index is done, so nothing would ever build it again.
#[test]
fn a_restored_database_has_the_same_indexes_triggers_and_policies() {
    let db = TestDb::new();
    populate(&db);
    let describe = |c: &mut Client| -> Vec<String> {
        c.query(
            "SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname = 'memoriesdb' AND tablename IN
                    ('memories', 'memory_sessions', 'memory_edges', 'audit_log', 'users', 'memory_shares',
                     'memory_share_segments', 'embedding_schedule', 'vindexing_schedule')
             UNION ALL
             SELECT 'trigger ' || tgrelid::regclass || ' ' || tgname || ' ' || tgenabled::text FROM pg_trigger WHERE NOT tgisinternal
             UNION ALL
             SELECT 'policy ' || tablename || ' ' || policyname || ' ' || cmd || ' ' || coalesce(qual, '') || ' ' || coalesce(with_check, '')
               FROM pg_policies WHERE schemaname = 'memoriesdb'
             UNION ALL
             SELECT 'rls ' || relname || ' ' || relrowsecurity::text || ' ' || relforcerowsecurity::text FROM pg_class
              WHERE relnamespace = 'memoriesdb'::regnamespace AND relkind = 'r'
             ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    };
    let before = describe(&mut db.admin());
    assert!(
        before.iter().any(|d| d.contains("memories_embedding_hnsw_3")),
        "precondition: the HNSW index exists"
    );
    let restored = dump_and_restore(&db);
    let after = describe(&mut restored.connect("postgres"));
    let lost: Vec<&String> = before.iter().filter(|d| !after.contains(d)).collect();
    let gained: Vec<&String> = after.iter().filter(|d| !before.contains(d)).collect();
    assert!(
        lost.is_empty() && gained.is_empty(),
        "schema objects lost by the round trip: {lost:?}; gained: {gained:?}"
    );
}
