//! Crash safety: a cluster of this test's own is killed with SIGKILL (postmaster and every
//! backend, as the OOM killer or a power cut would) while four writers append messages. After
//! crash recovery every acknowledged write is there with exactly its audit row, and the data is
//! consistent: no orphans, no gaps in positions, hashes verify, and writes work again.
//!
//! The cluster is started with scripts/lib.sh (as the scripts do) on a free port, and removed at
//! the end, also when the test fails. The shared test cluster is never touched.

use postgres::{Client, NoTls};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use uuid::Uuid;

fn lib_sh() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts/lib.sh")
        .canonicalize()
        .expect("scripts/lib.sh")
}

/// Runs `script` in bash after sourcing scripts/lib.sh; returns its standard output.
fn lib(script: &str) -> String {
    try_lib(script).unwrap_or_else(|e| panic!("{e}"))
}

fn try_lib(script: &str) -> Result<String, String> {
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(". '{}' && {script}", lib_sh().display()))
        .output()
        .expect("run bash");
    if !out.status.success() {
        return Err(format!(
            "`{script}` failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8(out.stdout).unwrap())
}

/// (state, parent pid) of a process, from /proc/<pid>/stat; None when it is gone.
fn proc_stat(pid: i32) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ..."; comm may contain spaces and parentheses
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

fn children_of(parent: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| matches!(proc_stat(*pid), Some((_, ppid)) if ppid == parent))
        .collect()
}

fn gone(pid: i32) -> bool {
    matches!(proc_stat(pid), None | Some(('Z', _)))
}

fn signal(sig: &str, pid: i32) {
    let _ = Command::new("kill").arg(sig).arg(pid.to_string()).status();
}

/// A throwaway cluster of this test's own; stopped and removed on drop.
struct Cluster {
    root: PathBuf,
    dir: PathBuf,
    port: u16,
}

impl Cluster {
    fn create() -> Cluster {
        let root = PathBuf::from(format!("/tmp/memoriesdb-crash-test-{}", std::process::id()));
        let dir = root.join("cluster");
        let mut cluster = Cluster { root, dir, port: 0 };
        cluster.start();
        cluster
    }

    /// Start (or restart, which runs crash recovery) on a free port. Other clusters come and go on
    /// this machine, so a port found free can be taken before the server binds it: then try the
    /// next one.
    fn start(&mut self) {
        let mut failures = Vec::new();
        for attempt in 0..5u32 {
            let base = 56000 + (std::process::id() * 7 + attempt * 131) % 3000;
            self.port = lib(&format!("free_port {base}")).trim().parse().expect("free_port prints a port");
            match try_lib(&format!("cluster_start '{}' {}", self.dir.display(), self.port)) {
                Ok(_) => return,
                Err(e) => failures.push(e),
            }
        }
        panic!("the crash-test cluster did not start:\n{}", failures.join("\n"));
    }

    fn connect(&self, user: &str, db: &str) -> Client {
        Client::connect(&format!("host=localhost port={} user={user} dbname={db}", self.port), NoTls)
            .unwrap_or_else(|e| panic!("connect to the crash-test cluster as {user}: {e}"))
    }

    /// Is `pid` a live postmaster running on this cluster's data directory?
    fn is_our_postmaster(&self, pid: i32) -> bool {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        !gone(pid) && cmdline.contains("postgres") && cmdline.contains(self.dir.to_str().unwrap())
    }

    fn postmaster_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.dir.join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// SIGKILL the postmaster and all its children. Everything is stopped first (SIGSTOP), so that
    /// the postmaster cannot fork a new backend between listing its children and killing it and no
    /// process can react to another's death. Returns how many processes were killed.
    fn kill9(&self) -> usize {
        let postmaster = self.postmaster_pid().expect("postmaster.pid names the postmaster");
        assert!(
            self.is_our_postmaster(postmaster),
            "pid {postmaster} is not this cluster's postmaster"
        );
        signal("-STOP", postmaster);
        let children = children_of(postmaster);
        // freeze the backends too, so that none can react to the postmaster's death: all die at once
        for child in &children {
            signal("-STOP", *child);
        }
        signal("-KILL", postmaster);
        for child in &children {
            signal("-KILL", *child);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(gone(postmaster) && children.iter().all(|c| gone(*c))) {
            assert!(Instant::now() < deadline, "the killed processes did not exit");
            thread::sleep(Duration::from_millis(50));
        }
        // A dead postmaster that nobody has reaped yet still looks alive to the new one, which
        // then refuses to start. Give init a moment to reap it; if it stays a zombie, its lock
        // files are stale (the process is dead) and are removed, as an administrator would.
        let deadline = Instant::now() + Duration::from_secs(10);
        while proc_stat(postmaster).is_some() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        if proc_stat(postmaster).is_some() {
            eprintln!("the killed postmaster {postmaster} was not reaped: removing its stale lock files");
            let _ = std::fs::remove_file(self.dir.join("postmaster.pid"));
            let _ = std::fs::remove_file(self.dir.join(format!(".s.PGSQL.{}.lock", self.port)));
        }
        children.len() + 1
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // if a test failed while the cluster was down, leftover processes are ours to end
        // (the pid file may be stale: act on the pid only while it is this cluster's postmaster)
        if let Some(pid) = self.postmaster_pid().filter(|pid| self.is_our_postmaster(*pid)) {
            if !gone(pid) {
                let _ = Command::new("bash")
                    .arg("-c")
                    .arg(format!(". '{}' && cluster_stop '{}'", lib_sh().display(), self.dir.display()))
                    .status();
            }
            if !gone(pid) && self.is_our_postmaster(pid) {
                for child in children_of(pid) {
                    signal("-KILL", child);
                }
                signal("-KILL", pid);
            }
        }
        let _ = Command::new("bash")
            .arg("-c")
            .arg(format!(
                ". '{}' && cluster_stop '{}' remove",
                lib_sh().display(),
                self.dir.display()
            ))
            .status();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn count(c: &mut Client, sql: &str, params: &[&(dyn postgres::types::ToSql + Sync)]) -> i64 {
    c.query_one(sql, params).unwrap_or_else(|e| panic!("{sql}: {e:?}")).get(0)
}

fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

#[derive(Default)]
struct Acknowledged {
    messages: Vec<Uuid>,
    edges: Vec<Uuid>,
    interrupted_by: Option<String>,
}

#[test]
fn acknowledged_writes_survive_a_sigkill_of_the_whole_cluster() {
    let mut cluster = Cluster::create();
    let db = "memoriesdb_crash";
    let role = "memoriesdb_crash_writer";
    {
        let mut admin = cluster.connect("postgres", "postgres");
        admin.batch_execute(&format!("CREATE DATABASE {db}")).unwrap();
        admin
            .batch_execute(&format!("DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN NOSUPERUSER"))
            .unwrap();
        let mut admin = cluster.connect("postgres", db);
        admin
            .batch_execute(&format!(
                "CREATE EXTENSION memoriesdb CASCADE; ALTER DATABASE {db} SET search_path = \"$user\", public, memoriesdb;
                 GRANT memoriesdb_user TO {role}"
            ))
            .unwrap();
        admin.query_one("SELECT memoriesdb.create_user('crash writer', $1::name)", &[&role]).unwrap();
    }
    let mut setup = cluster.connect(role, db);
    let sessions: Vec<Uuid> = (0..2)
        .map(|i| {
            setup
                .query_one("SELECT create_session($1)", &[&format!("crash session {i}")])
                .unwrap()
                .get(0)
        })
        .collect();
    // a fork, so that crash recovery also meets a branch whose positions continue the parent's
    setup
        .query_one("SELECT add_message_to_session($1, 'user', 'before the fork')", &[&sessions[0]])
        .unwrap();
    let fork: Uuid = setup
        .query_one("SELECT fork_session($1, 'crash fork')", &[&sessions[0]])
        .unwrap()
        .get(0);
    let targets = [sessions[0], sessions[1], fork, sessions[1]];
    drop(setup);

    // four writers in autocommit; a write counts only once the server has acknowledged it
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let mut c = cluster.connect(role, db);
            let session = targets[w];
            let stop = stop.clone();
            thread::spawn(move || {
                let mut acked = Acknowledged::default();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let r = c.query_one(
                        "SELECT add_message_to_session($1, 'user', $2)",
                        &[&session, &format!("writer {w} message {i}")],
                    );
                    match r {
                        Ok(row) => acked.messages.push(row.get(0)),
                        Err(e) => {
                            acked.interrupted_by = Some(describe(&e));
                            break;
                        }
                    }
                    // now and then an edge between two of this writer's messages (older -> newer)
                    if i % 5 == 0 && acked.messages.len() >= 2 {
                        let (a, b) = (acked.messages[acked.messages.len() - 2], acked.messages[acked.messages.len() - 1]);
                        match c.query_one("SELECT add_edge($1, $2, 'follows')", &[&b, &a]) {
                            Ok(row) => acked.edges.push(row.get(0)),
                            Err(e) => {
                                acked.interrupted_by = Some(describe(&e));
                                break;
                            }
                        }
                    }
                }
                acked
            })
        })
        .collect();
    thread::sleep(Duration::from_secs(2));
    let killed = cluster.kill9();
    // a writer the crash did not interrupt would loop for ever: stop it after a while (it then
    // reports no interruption, which fails the test below)
    let watchdog = {
        let stop = stop.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_secs(15));
            stop.store(true, Ordering::Relaxed);
        })
    };
    let results: Vec<Acknowledged> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    drop(watchdog);
    let messages: Vec<Uuid> = results.iter().flat_map(|r| r.messages.iter().copied()).collect();
    let edges: Vec<Uuid> = results.iter().flat_map(|r| r.edges.iter().copied()).collect();
    eprintln!(
        "killed {killed} processes; {} acknowledged messages, {} acknowledged edges; writers stopped by: {:?}",
        messages.len(),
        edges.len(),
        results.iter().map(|r| r.interrupted_by.clone()).collect::<Vec<_>>()
    );
    assert!(
        results.iter().all(|r| r.interrupted_by.is_some()),
        "every writer was still writing when the cluster died"
    );
    assert!(
        results.iter().all(|r| r.messages.len() >= 5),
        "every writer had acknowledged writes before the crash"
    );
    assert!(!edges.is_empty());

    // crash recovery
    cluster.start();
    let mut admin = cluster.connect("postgres", db);

    // every acknowledged write is there
    assert_eq!(
        count(&mut admin, "SELECT count(*) FROM memories WHERE id = ANY($1)", &[&messages]),
        messages.len() as i64
    );
    assert_eq!(
        count(&mut admin, "SELECT count(*) FROM memory_edges WHERE id = ANY($1)", &[&edges]),
        edges.len() as i64
    );

    // audit rows match the changes one to one
    let checks: [(&str, &str); 12] = [
        (
            "memories without exactly one INSERT audit row",
            "SELECT count(*) FROM memories m
              WHERE (SELECT count(*) FROM audit_log a WHERE a.table_name = 'memories' AND a.operation = 'INSERT' AND a.row_id = m.id) <> 1",
        ),
        (
            "edges without exactly one INSERT audit row",
            "SELECT count(*) FROM memory_edges e
              WHERE (SELECT count(*) FROM audit_log a WHERE a.table_name = 'memory_edges' AND a.operation = 'INSERT' AND a.row_id = e.id) <> 1",
        ),
        (
            "audit rows without their row",
            "SELECT count(*) FROM audit_log a
              WHERE NOT (a.table_name = 'memories' AND EXISTS (SELECT 1 FROM memories m WHERE m.id = a.row_id))
                AND NOT (a.table_name = 'memory_edges' AND EXISTS (SELECT 1 FROM memory_edges e WHERE e.id = a.row_id))",
        ),
        ("audit rows that are not INSERTs (the workload only inserted)", "SELECT count(*) FROM audit_log WHERE operation <> 'INSERT'"),
        ("memories whose hash does not verify", "SELECT count(*) FROM verify_memory_integrity()"),
        (
            "edges with a missing endpoint",
            "SELECT count(*) FROM memory_edges e
              WHERE NOT EXISTS (SELECT 1 FROM memories m WHERE m.id = e.source_id)
                 OR NOT EXISTS (SELECT 1 FROM memories m WHERE m.id = e.target_id)",
        ),
        (
            "messages without their session",
            "SELECT count(*) FROM memories m WHERE m.session_id IS NOT NULL
                AND NOT EXISTS (SELECT 1 FROM memory_sessions s WHERE s.id = m.session_id)",
        ),
        (
            "messages that are not exactly once belongs_to their session in the memory graph",
            "SELECT count(*) FROM memories m WHERE m.kind = 'message'
                AND (SELECT count(*) FROM memory_graph_edges e
                      WHERE e.source_id = m.id AND e.relation = 'belongs_to' AND e.target_id = m.session_id) <> 1",
        ),
        (
            "sessions without their session row, or session rows without their memory",
            "SELECT (SELECT count(*) FROM memories m WHERE m.kind = 'session' AND NOT EXISTS (SELECT 1 FROM memory_sessions s WHERE s.id = m.id))
                  + (SELECT count(*) FROM memory_sessions s WHERE NOT EXISTS (SELECT 1 FROM memories m WHERE m.id = s.id AND m.kind = 'session'))",
        ),
        (
            "sessions whose own positions are not exactly fork_position+1 .. last_position",
            "SELECT count(*) FROM memory_sessions s
              WHERE (SELECT count(*) FROM memories m WHERE m.session_id = s.id) <> s.last_position - s.fork_position
                 OR (SELECT count(DISTINCT m.position) FROM memories m WHERE m.session_id = s.id) <> s.last_position - s.fork_position
                 OR coalesce((SELECT min(m.position) FROM memories m WHERE m.session_id = s.id), s.fork_position + 1) <> s.fork_position + 1
                 OR coalesce((SELECT max(m.position) FROM memories m WHERE m.session_id = s.id), s.last_position) <> s.last_position",
        ),
        (
            "memories with content that are not in the embedding queue",
            "SELECT count(*) FROM memories m WHERE m.content <> ''
                AND NOT EXISTS (SELECT 1 FROM embedding_schedule q WHERE q.memory_id = m.id AND q.content_hash = m.content_hash)",
        ),
        (
            "messages not attributed to the writer",
            "SELECT count(*) FROM memories m WHERE m.created_by IS NULL OR m.created_by IS DISTINCT FROM m.updated_by",
        ),
    ];
    let mut problems = Vec::new();
    for (what, sql) in checks {
        let n = count(&mut admin, sql, &[]);
        if n != 0 {
            problems.push(format!("{n} {what}"));
        }
    }
    let total_audit = count(&mut admin, "SELECT count(*) FROM audit_log", &[]);
    let rows = count(
        &mut admin,
        "SELECT (SELECT count(*) FROM memories) + (SELECT count(*) FROM memory_edges)",
        &[],
    );
    if total_audit != rows {
        problems.push(format!("{total_audit} audit rows for {rows} memories and edges"));
    }
    // each branch's transcript is gap-free: positions 1..n
    for s in [sessions[0], sessions[1], fork] {
        let r = admin
            .query_one(
                "SELECT count(*), coalesce(max(position), 0), count(DISTINCT position) FROM get_formatted_conversation($1)",
                &[&s],
            )
            .unwrap();
        let (n, max, distinct): (i64, i64, i64) = (r.get(0), r.get(1), r.get(2));
        if !(n == max && n == distinct && n > 0) {
            problems.push(format!("transcript of {s}: {n} messages, max position {max}, {distinct} distinct"));
        }
    }
    assert!(problems.is_empty(), "after crash recovery:\n  - {}", problems.join("\n  - "));

    // the audit chain can be sealed and verifies
    let sealed: i64 = admin.query_one("SELECT seal_audit_log()", &[]).unwrap().get(0);
    assert_eq!(sealed, total_audit);
    let r = admin
        .query_one("SELECT intact, sealed_rows FROM verify_audit_chain()", &[])
        .unwrap();
    assert_eq!((r.get::<_, bool>(0), r.get::<_, i64>(1)), (true, total_audit));

    // and writes work again, continuing where the acknowledged ones left off
    let mut c = cluster.connect(role, db);
    for s in [sessions[0], sessions[1], fork] {
        let last = count(&mut c, "SELECT last_position FROM memory_sessions WHERE id = $1", &[&s]);
        let id: Uuid = c
            .query_one("SELECT add_message_to_session($1, 'user', 'after recovery')", &[&s])
            .unwrap()
            .get(0);
        let pos = count(&mut c, "SELECT position FROM memories WHERE id = $1", &[&id]);
        assert_eq!(pos, last + 1);
    }
    let fresh: Uuid = c.query_one("SELECT create_session('after recovery')", &[]).unwrap().get(0);
    c.query_one("SELECT add_message_to_session($1, 'user', 'hello again')", &[&fresh])
        .unwrap();
    // one audit row for each row those writes added
    let rows_after = count(
        &mut admin,
        "SELECT (SELECT count(*) FROM memories) + (SELECT count(*) FROM memory_edges)",
        &[],
    );
    assert!(rows_after >= rows + 5);
    assert_eq!(
        count(&mut admin, "SELECT count(*) FROM audit_log", &[]),
        total_audit + (rows_after - rows)
    );
    drop(c);
    drop(admin);
}
