//! Upgrade: the last release listed in sql/releases, built from its recorded commit by
//! scripts/test.sh, upgraded in place to this tree's version.
//!
//! The test runs a cluster of its own, as an administrator would live through a package upgrade:
//!   1. initialised and started from the previous release's PostgreSQL tree (its memoriesdb.so
//!      and SQL scripts); ordinary roles write sessions, messages, a batch, forks (one by a
//!      grantee), shares, free memories and edges; the audit chain is sealed;
//!   2. stopped and started from this build's tree (new library, all SQL scripts): the previous
//!      release's catalog must keep working on the new library until the update (reads and a
//!      write);
//!   3. `ALTER EXTENSION memoriesdb UPDATE` lands on this tree's default version;
//!   4. the upgraded catalog equals a fresh install's in another database, object by object
//!      (functions with bodies, settings and grants; tables, columns, constraints, indexes,
//!      triggers, policies, views, types, comments, extension membership);
//!   5. every transcript, count, content hash and the sealed audit chain are as before the
//!      update, the chain seals on and verifies, and the upgraded database takes new writes.
//!
//! Environment (set by scripts/test.sh): MEMORIESDB_UPGRADE_FROM (the release's version) and
//! MEMORIESDB_UPGRADE_OLD_PGBIN / MEMORIESDB_UPGRADE_NEW_PGBIN (the bin directories of the two
//! PostgreSQL trees). Without them the test fails: it is never skipped silently.

use memoriesdb_integration_tests::postgres::{Client, NoTls};
use std::path::{Path, PathBuf};
use std::process::Command;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: the upgrade test runs through scripts/test.sh, which builds the previous release")
    })
}

/// A throwaway cluster owned by the postgres user, started from one PostgreSQL tree or another.
struct Cluster {
    dir: PathBuf,
    port: u16,
    running: Option<PathBuf>,
}

fn postgres_runs(bin: &Path, args: &[&str]) {
    let status = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bin)
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
    assert!(status.success(), "{} {:?} failed: {status}", bin.display(), args);
}

impl Cluster {
    fn init(bin: &Path) -> Cluster {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = std::env::temp_dir().join(format!("memoriesdb-upgrade-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Command::new("chown").args(["postgres:postgres", dir.to_str().unwrap()]).status().unwrap();
        let data = dir.join("data");
        postgres_runs(
            &bin.join("initdb"),
            &["-D", data.to_str().unwrap(), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C.UTF-8", "-N"],
        );
        let conf = format!(
            "listen_addresses = 'localhost'\nport = {port}\nunix_socket_directories = '{}'\nfsync = off\n",
            dir.display()
        );
        let mut existing = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        existing.push_str(&conf);
        std::fs::write(data.join("postgresql.conf"), existing).unwrap();
        Cluster { dir, port, running: None }
    }

    fn start(&mut self, bin: &Path) {
        let data = self.dir.join("data");
        let log = self.dir.join("server.log");
        postgres_runs(
            &bin.join("pg_ctl"),
            &["-D", data.to_str().unwrap(), "-l", log.to_str().unwrap(), "-w", "-t", "60", "start"],
        );
        self.running = Some(bin.to_path_buf());
    }

    fn stop(&mut self) {
        if let Some(bin) = self.running.take() {
            let data = self.dir.join("data");
            postgres_runs(&bin.join("pg_ctl"), &["-D", data.to_str().unwrap(), "-m", "fast", "-w", "stop"]);
        }
    }

    fn connect(&self, user: &str, db: &str) -> Client {
        Client::connect(&format!("host=localhost port={} user={user} dbname={db}", self.port), NoTls)
            .unwrap_or_else(|e| panic!("connect as {user} to {db}: {e}"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(bin) = self.running.take() {
            let data = self.dir.join("data");
            let _ = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(bin.join("pg_ctl"))
                .args(["-D", data.to_str().unwrap(), "-m", "immediate", "-w", "stop"])
                .status();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

const DB: &str = "memoriesdb_upgraded";
const FRESH_DB: &str = "memoriesdb_fresh";

/// Every object of the extension, one (kind, name, definition) row each, in a stable order.
/// Grants are compared sorted, so that the order in which an upgrade script granted them does not
/// matter; column order among live columns does (an upgrade adds columns at the end, so a fresh
/// install must declare them there too).
const CATALOG: &str = r#"
WITH ns AS (SELECT n.oid FROM pg_catalog.pg_namespace n WHERE n.nspname = 'memoriesdb'),
     ext AS (SELECT e.oid FROM pg_catalog.pg_extension e WHERE e.extname = 'memoriesdb')
SELECT kind, name, definition FROM (
    SELECT 'schema' AS kind, n.nspname::text AS name,
           pg_catalog.pg_get_userbyid(n.nspowner)::text || ' acl=' ||
           coalesce((SELECT pg_catalog.string_agg(a::text, ',' ORDER BY a::text) FROM pg_catalog.unnest(n.nspacl) a), '') AS definition
      FROM pg_catalog.pg_namespace n WHERE n.oid = (SELECT oid FROM ns)
    UNION ALL
    SELECT 'extension', e.extname::text,
           'relocatable=' || e.extrelocatable || ' config=' ||
           coalesce((SELECT pg_catalog.string_agg(c.r::regclass::text || ':' || coalesce(c.w, ''), ',' ORDER BY c.r::regclass::text)
                       FROM ROWS FROM (pg_catalog.unnest(e.extconfig), pg_catalog.unnest(e.extcondition)) c(r, w)), '')
      FROM pg_catalog.pg_extension e WHERE e.oid = (SELECT oid FROM ext)
    UNION ALL
    SELECT 'member', pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid), ''
      FROM pg_catalog.pg_depend d
     WHERE d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.refobjid = (SELECT oid FROM ext) AND d.deptype = 'e'
    UNION ALL
    SELECT 'function', p.oid::regprocedure::text,
           pg_catalog.pg_get_functiondef(p.oid) || ' acl=' ||
           coalesce((SELECT pg_catalog.string_agg(a::text, ',' ORDER BY a::text) FROM pg_catalog.unnest(p.proacl) a), '')
      FROM pg_catalog.pg_proc p WHERE p.pronamespace = (SELECT oid FROM ns) AND p.prokind IN ('f', 'p')
    UNION ALL
    SELECT 'relation', c.relname::text,
           c.relkind::text || ' rls=' || c.relrowsecurity || ' force=' || c.relforcerowsecurity ||
           ' options=' || coalesce(c.reloptions::text, '') || ' persistence=' || c.relpersistence::text || ' acl=' ||
           coalesce((SELECT pg_catalog.string_agg(a::text, ',' ORDER BY a::text) FROM pg_catalog.unnest(c.relacl) a), '')
      FROM pg_catalog.pg_class c WHERE c.relnamespace = (SELECT oid FROM ns) AND c.relkind <> 'i'
    UNION ALL
    SELECT 'column', c.relname || '.' || a.attname,
           '#' || pg_catalog.row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum) || ' ' ||
           pg_catalog.format_type(a.atttypid, a.atttypmod) || ' notnull=' || a.attnotnull ||
           ' default=' || coalesce(pg_catalog.pg_get_expr(d.adbin, d.adrelid), '') ||
           ' generated=' || a.attgenerated::text || ' identity=' || a.attidentity::text || ' acl=' ||
           coalesce((SELECT pg_catalog.string_agg(x::text, ',' ORDER BY x::text) FROM pg_catalog.unnest(a.attacl) x), '')
      FROM pg_catalog.pg_attribute a
      JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
      LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
     WHERE c.relnamespace = (SELECT oid FROM ns) AND c.relkind IN ('r', 'p', 'v', 'm', 'c') AND a.attnum > 0 AND NOT a.attisdropped
    UNION ALL
    SELECT 'constraint', c.relname || '.' || k.conname, pg_catalog.pg_get_constraintdef(k.oid)
      FROM pg_catalog.pg_constraint k JOIN pg_catalog.pg_class c ON c.oid = k.conrelid
     WHERE c.relnamespace = (SELECT oid FROM ns)
    UNION ALL
    SELECT 'index', i.indexname::text, i.indexdef FROM pg_catalog.pg_indexes i WHERE i.schemaname = 'memoriesdb'
    UNION ALL
    SELECT 'trigger', c.relname || '.' || t.tgname, pg_catalog.pg_get_triggerdef(t.oid) || ' enabled=' || t.tgenabled::text
      FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
     WHERE c.relnamespace = (SELECT oid FROM ns) AND NOT t.tgisinternal
    UNION ALL
    SELECT 'policy', p.tablename || '.' || p.policyname,
           p.permissive || ' ' || p.roles::text || ' ' || p.cmd || ' USING ' || coalesce(p.qual, '') ||
           ' CHECK ' || coalesce(p.with_check, '')
      FROM pg_catalog.pg_policies p WHERE p.schemaname = 'memoriesdb'
    UNION ALL
    SELECT 'view', c.relname::text, pg_catalog.pg_get_viewdef(c.oid)
      FROM pg_catalog.pg_class c WHERE c.relnamespace = (SELECT oid FROM ns) AND c.relkind IN ('v', 'm')
    UNION ALL
    SELECT 'type', t.typname::text,
           t.typtype::text || coalesce(' enum=' || (SELECT pg_catalog.string_agg(e.enumlabel::text, ',' ORDER BY e.enumsortorder)
                                               FROM pg_catalog.pg_enum e WHERE e.enumtypid = t.oid), '') ||
           coalesce(' base=' || pg_catalog.format_type(t.typbasetype, t.typtypmod), '')
      FROM pg_catalog.pg_type t WHERE t.typnamespace = (SELECT oid FROM ns) AND t.typtype IN ('b', 'd', 'e', 'r', 'm')
    UNION ALL
    SELECT 'operator', o.oid::regoperator::text, o.oprcode::text
      FROM pg_catalog.pg_operator o WHERE o.oprnamespace = (SELECT oid FROM ns)
    UNION ALL
    SELECT 'comment', pg_catalog.pg_describe_object(d.classoid, d.objoid, d.objsubid), d.description
      FROM pg_catalog.pg_description d
     WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_depend x
                    WHERE x.refclassid = 'pg_catalog.pg_extension'::regclass AND x.refobjid = (SELECT oid FROM ext)
                      AND x.deptype = 'e' AND x.classid = d.classoid AND x.objid = d.objoid)
) objects
ORDER BY kind, name, definition
"#;

fn catalog(c: &mut Client) -> Vec<String> {
    // names print schema-qualified whatever the database's search_path
    c.batch_execute("SET search_path = pg_catalog").unwrap();
    c.query(CATALOG, &[])
        .unwrap()
        .iter()
        .map(|r| format!("{} {}: {}", r.get::<_, String>(0), r.get::<_, String>(1), r.get::<_, String>(2)))
        .collect()
}

/// What the data looks like to its users and to an administrator: every session's transcript as
/// its owner reads it, the grantee's view of a shared session, row counts, content hashes, the
/// integrity check and the sealed audit chain.
fn observe(cluster: &Cluster, sessions: &[(&str, uuid::Uuid)]) -> Vec<String> {
    let mut seen = Vec::new();
    for (role, session) in sessions {
        let text: String = cluster
            .connect(role, DB)
            .query_one("SELECT memoriesdb.get_conversation_text($1)", &[session])
            .unwrap()
            .get(0);
        seen.push(format!("{role} reads {session}: {text}"));
    }
    let mut admin = cluster.connect("postgres", DB);
    for table in [
        "users",
        "memories",
        "memory_sessions",
        "memory_edges",
        "memory_shares",
        "memory_share_segments",
        "audit_log",
        "embedding_schedule",
    ] {
        let n: i64 = admin.query_one(&format!("SELECT count(*) FROM memoriesdb.{table}"), &[]).unwrap().get(0);
        seen.push(format!("{table}: {n} rows"));
    }
    let hashes: String = admin
        .query_one("SELECT string_agg(id::text || '=' || content_hash, ',' ORDER BY id) FROM memoriesdb.memories", &[])
        .unwrap()
        .get(0);
    seen.push(format!("hashes: {hashes}"));
    let mismatches: i64 =
        admin.query_one("SELECT count(*) FROM memoriesdb.verify_memory_integrity()", &[]).unwrap().get(0);
    seen.push(format!("hash mismatches: {mismatches}"));
    // (the update re-seals the chain under version 2, rows not sealed yet included: its hashes
    // and length change, its verdict must not; audit_chain_history records the old chain's end)
    let chain = admin.query_one("SELECT intact FROM memoriesdb.verify_audit_chain()", &[]).unwrap();
    seen.push(format!("audit chain: intact={}", chain.get::<_, bool>(0)));
    seen
}

fn one_uuid(c: &mut Client, sql: &str, params: &[&(dyn memoriesdb_integration_tests::postgres::types::ToSql + Sync)]) -> uuid::Uuid {
    c.query_one(sql, params).unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
}

fn assert_same(what: &str, expected: &[String], actual: &[String]) {
    let missing: Vec<&String> = expected.iter().filter(|e| !actual.contains(e)).collect();
    let extra: Vec<&String> = actual.iter().filter(|a| !expected.contains(a)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what} differ\n--- only in the first ({}):\n{}\n+++ only in the second ({}):\n{}",
        missing.len(),
        missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n"),
        extra.len(),
        extra.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn the_previous_release_upgrades_in_place_to_a_catalog_equal_to_a_fresh_install_and_keeps_its_data() {
    let from = env("MEMORIESDB_UPGRADE_FROM");
    let old_bin = PathBuf::from(env("MEMORIESDB_UPGRADE_OLD_PGBIN"));
    let new_bin = PathBuf::from(env("MEMORIESDB_UPGRADE_NEW_PGBIN"));

    // 1. the previous release
    let mut cluster = Cluster::init(&old_bin);
    cluster.start(&old_bin);
    let mut admin = cluster.connect("postgres", "postgres");
    admin.batch_execute(&format!("CREATE DATABASE {DB}")).unwrap();
    let mut admin = cluster.connect("postgres", DB);
    admin
        .batch_execute(&format!(
            "CREATE EXTENSION memoriesdb VERSION '{from}' CASCADE;
             ALTER DATABASE {DB} SET search_path = \"$user\", public, memoriesdb;
             CREATE ROLE upgrade_alice LOGIN; CREATE ROLE upgrade_bob LOGIN;
             GRANT memoriesdb_user TO upgrade_alice, upgrade_bob;"
        ))
        .unwrap();
    let installed: String = admin
        .query_one("SELECT extversion FROM pg_extension WHERE extname = 'memoriesdb'", &[])
        .unwrap()
        .get(0);
    assert_eq!(installed, from, "the previous release's tree installs version {from}");
    let _alice_user = one_uuid(&mut admin, "SELECT memoriesdb.create_user('alice', 'upgrade_alice')", &[]);
    let bob_user = one_uuid(&mut admin, "SELECT memoriesdb.create_user('bob', 'upgrade_bob')", &[]);

    let mut alice = cluster.connect("upgrade_alice", DB);
    let main = one_uuid(&mut alice, "SELECT create_session('upgrade: main', '{\"tag\": \"before\"}')", &[]);
    let mut messages = Vec::new();
    for i in 1..=5 {
        let role = if i % 2 == 1 { "user" } else { "assistant" };
        messages.push(one_uuid(
            &mut alice,
            "SELECT add_message_to_session($1, $2, $3)",
            &[&main, &role, &format!("message {i} before the upgrade")],
        ));
    }
    alice
        .query(
            "SELECT add_messages_to_session($1, '[{\"role\": \"user\", \"content\": \"batch one\"},
                                                 {\"role\": \"assistant\", \"content\": \"batch two\", \"metadata\": {\"k\": 1}}]')",
            &[&main],
        )
        .unwrap();
    let fork = one_uuid(&mut alice, "SELECT fork_session($1, 'upgrade: fork at 3', '{}', $2)", &[&main, &messages[2]]);
    alice.query("SELECT add_message_to_session($1, 'user', 'on the fork')", &[&fork]).unwrap();
    alice.query("SELECT share_memory($1, $2)", &[&main, &bob_user]).unwrap();
    let fact = one_uuid(
        &mut alice,
        "INSERT INTO memories (kind, content) VALUES ('fact', 'alice prefers tea') RETURNING id",
        &[],
    );
    alice.query("SELECT add_edge($1, $2, 'mentioned_in')", &[&fact, &messages[0]]).unwrap();
    // a kind of the user's own: before memory types, any such name was accepted
    alice.query("INSERT INTO memories (kind, content) VALUES ('travel_note', 'alice flies on friday')", &[]).unwrap();
    let mut bob = cluster.connect("upgrade_bob", DB);
    let bobs_fork = one_uuid(&mut bob, "SELECT fork_session($1, 'upgrade: bob''s fork')", &[&main]);
    bob.query("SELECT add_message_to_session($1, 'user', 'bob on his fork')", &[&bobs_fork]).unwrap();
    drop((alice, bob));
    let sealed: i64 = admin.query_one("SELECT memoriesdb.seal_audit_log()", &[]).unwrap().get(0);
    assert!(sealed > 0, "the audit chain sealed the release's rows");
    drop(admin);

    let sessions = [
        ("upgrade_alice", main),
        ("upgrade_alice", fork),
        ("upgrade_bob", main),
        ("upgrade_bob", bobs_fork),
    ];
    let written = observe(&cluster, &sessions);
    assert!(written.iter().any(|l| l.contains("audit chain: intact=true")), "{written:?}");

    // 2. a package upgrade: the new library and scripts, then a restart
    cluster.stop();
    cluster.start(&new_bin);
    assert_same("the data read on the new library, before the update", &written, &observe(&cluster, &sessions));
    let mut alice = cluster.connect("upgrade_alice", DB);
    alice
        .query("SELECT add_message_to_session($1, 'user', 'written by the old catalog on the new library')", &[&main])
        .unwrap();
    drop(alice);
    let before_update = observe(&cluster, &sessions);
    assert!(before_update.iter().any(|l| l.contains("written by the old catalog on the new library")));

    // 3. the update
    let mut admin = cluster.connect("postgres", DB);
    let old_chain = admin
        .query_one("SELECT sealed_rows, last_hash FROM memoriesdb.verify_audit_chain()", &[])
        .unwrap();
    let (old_sealed, old_last_hash): (i64, String) = (old_chain.get(0), old_chain.get(1));
    let target: String = admin
        .query_one("SELECT default_version FROM pg_available_extensions WHERE name = 'memoriesdb'", &[])
        .unwrap()
        .get(0);
    if target != from {
        admin.batch_execute("ALTER EXTENSION memoriesdb UPDATE").unwrap();
    }
    let now: String = admin
        .query_one("SELECT extversion FROM pg_extension WHERE extname = 'memoriesdb'", &[])
        .unwrap()
        .get(0);
    assert_eq!(now, target, "ALTER EXTENSION memoriesdb UPDATE reaches this tree's version");

    // 4. the upgraded catalog equals a fresh install of this version
    cluster.connect("postgres", "postgres").batch_execute(&format!("CREATE DATABASE {FRESH_DB}")).unwrap();
    let mut fresh = cluster.connect("postgres", FRESH_DB);
    fresh.batch_execute("CREATE EXTENSION memoriesdb CASCADE").unwrap();
    let fresh_catalog = catalog(&mut fresh);
    let upgraded_catalog = catalog(&mut admin);
    assert!(fresh_catalog.len() > 200, "the catalog query sees the extension's objects: {}", fresh_catalog.len());
    assert_same(
        &format!(
            "a fresh install of {target} (first) and {from} upgraded to it (second): write the difference into sql/memoriesdb--{from}--{target}.sql;"
        ),
        &fresh_catalog,
        &upgraded_catalog,
    );

    // 5. the data survived, the chain goes on (re-sealed under version 2, the old chain's end on
    // record), and the upgraded database takes new writes
    assert_same("the data before and after the update", &before_update, &observe(&cluster, &sessions));
    let history = admin
        .query_one("SELECT from_version, to_version, sealed_rows, last_hash, intact FROM memoriesdb.audit_chain_history", &[])
        .unwrap();
    assert_eq!(
        (history.get::<_, i32>(0), history.get::<_, i32>(1), history.get::<_, i64>(2), history.get::<_, String>(3), history.get::<_, bool>(4)),
        (1, 2, old_sealed, old_last_hash, true),
        "the old chain's end is on record"
    );
    // (the update re-sealed every committed row, those written on the new library before it too)
    let unsealed: i64 = admin.query_one("SELECT unsealed_rows FROM memoriesdb.verify_audit_chain()", &[]).unwrap().get(0);
    assert_eq!(unsealed, 0, "the update sealed what was written before it");
    let mut alice = cluster.connect("upgrade_alice", DB);
    alice.query("SELECT add_message_to_session($1, 'assistant', 'after the update')", &[&fork]).unwrap();
    let sealed: i64 = admin.query_one("SELECT memoriesdb.seal_audit_log()", &[]).unwrap().get(0);
    assert!(sealed > 0, "the rows written after the update are sealed");
    let refork = one_uuid(&mut alice, "SELECT fork_session($1, 'upgrade: after', '{}', $2)", &[&main, &messages[1]]);
    let text: String = alice.query_one("SELECT get_conversation_text($1)", &[&refork]).unwrap().get(0);
    assert_eq!(text, "user: message 1 before the upgrade\nassistant: message 2 before the upgrade");
    let found: i64 = alice
        .query_one("SELECT count(*) FROM search_memories('tea')", &[])
        .unwrap()
        .get(0);
    assert_eq!(found, 1, "full-text search finds the fact written before the update");
    // the kinds in use became memory types: writing one more of them still works
    alice
        .query("INSERT INTO memories (kind, content) VALUES ('travel_note', 'alice flies back on sunday')", &[])
        .unwrap();
    let unknown = alice.query("INSERT INTO memories (kind, content) VALUES ('never_used', 'x')", &[]).unwrap_err();
    assert_eq!(memoriesdb_integration_tests::sqlstate(&unknown), "22023");
    let bob_sees: String = cluster
        .connect("upgrade_bob", DB)
        .query_one("SELECT get_conversation_text($1)", &[&bobs_fork])
        .unwrap()
        .get(0);
    assert!(bob_sees.ends_with("user: bob on his fork"), "{bob_sees}");
    let chain = admin.query_one("SELECT intact FROM memoriesdb.verify_audit_chain()", &[]).unwrap();
    assert!(chain.get::<_, bool>(0), "the audit chain verifies across the upgrade");
    drop((alice, admin, fresh));
    cluster.stop();
}
