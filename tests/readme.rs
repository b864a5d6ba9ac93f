//! The README's SQL examples, as a user meets them: every ```sql block, in order, through real
//! psql, against a fresh database named `memoriesdb` (the name the examples use). Blocks that an
//! administrator runs (they create the extension, roles or grants, or say so in their first
//! line) run as the superuser; every other block runs as an ordinary role that was granted
//! memoriesdb_user — plus memoriesdb_worker and memoriesdb_auditor, which the embedding and
//! audit blocks say they need — and mapped to a user, the way the README tells an administrator
//! to set one up. psql variables (`\gset`) carry from block to block, as when pasting.

use memoriesdb_integration_tests::admin_host_port;
use memoriesdb_integration_tests::embedding_endpoint::{http, Stub};
use std::sync::Arc;
use postgres::{Client, NoTls};
use std::process::Command;

const DATABASE: &str = "memoriesdb";
const README_ROLE: &str = "memoriesdb_readme_user";
/// Roles the README's examples create (cluster-wide, dropped afterwards).
const EXAMPLE_ROLES: [&str; 4] = ["app_role", "alice_app", "app", "memoriesdb_hub"];

/// The ```sql blocks of the README, with the line each starts on.
fn sql_blocks(readme: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (number, line) in readme.lines().enumerate() {
        match (&mut current, line.trim_start()) {
            (None, fence) if fence.starts_with("```sql") => current = Some((number + 2, String::new())),
            (Some(_), fence) if fence.starts_with("```") => blocks.push(current.take().unwrap()),
            (Some((_, text)), _) => {
                text.push_str(line);
                text.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

fn for_an_administrator(block: &str) -> bool {
    block.lines().next().is_some_and(|first| first.contains("as an administrator"))
        || ["CREATE EXTENSION", "CREATE ROLE", "ALTER DATABASE", "GRANT "].iter().any(|k| block.contains(k))
}

fn admin() -> Client {
    let url = std::env::var("MEMORIESDB_TEST_ADMIN_URL").expect("MEMORIESDB_TEST_ADMIN_URL");
    Client::connect(&url, NoTls).expect("connect as admin")
}

fn clean_up(admin: &mut Client) {
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")).unwrap();
    for role in EXAMPLE_ROLES.iter().chain([&README_ROLE]) {
        admin.batch_execute(&format!("DROP ROLE IF EXISTS {role}")).unwrap();
    }
}

struct CleanUp;
impl Drop for CleanUp {
    fn drop(&mut self) {
        clean_up(&mut admin());
    }
}

#[test]
fn every_sql_example_in_the_readme_runs_as_documented() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let blocks = sql_blocks(&readme);
    assert!(blocks.len() >= 10, "found only {} sql blocks in the README", blocks.len());

    // the README's embedding endpoint (the embedder run.sh starts) is, here, an endpoint of the
    // test's that answers like it, with the README's 3-dimensional vectors
    let endpoint = Stub::start(Arc::new(|_: &str| {
        Some(http("200 OK", r#"{"data":[{"embedding":[0.3,0.1,0.9],"index":0}],"model":"all-MiniLM-L6-v2"}"#))
    }));

    let mut admin = admin();
    clean_up(&mut admin);
    let _clean_up = CleanUp;
    admin.batch_execute(&format!("CREATE DATABASE {DATABASE}")).unwrap();

    // One psql session for the whole README; between blocks it switches between the superuser
    // and the README's ordinary role. After a block that changes the database's settings it
    // reconnects, as a user would open a new session (psql variables survive \connect).
    let mut script = String::from("\\set ON_ERROR_STOP on\n");
    let mut set_up = false;
    let mut starts = Vec::new(); // (line in the script, README line, runs as)
    for (readme_line, block) in &blocks {
        let as_admin = for_an_administrator(block);
        if !as_admin && !set_up {
            // what the README's "Installing into a database" tells an administrator to do for a role
            script.push_str(&format!(
                "CREATE ROLE {README_ROLE} LOGIN;\nGRANT memoriesdb_user, memoriesdb_worker, memoriesdb_auditor TO {README_ROLE};\n\
                 SELECT memoriesdb.create_user('readme', '{README_ROLE}') AS readme_user \\gset\n"
            ));
            set_up = true;
        }
        let switch = if as_admin { "RESET ROLE;\n".to_string() } else { format!("SET ROLE {README_ROLE};\n") };
        script.push_str(&switch);
        starts.push((script.lines().count() + 1, *readme_line, if as_admin { "the superuser" } else { README_ROLE }));
        script.push_str(&block.replace("http://127.0.0.1:5003", &format!("http://127.0.0.1:{}", endpoint.port)));
        script.push_str("RESET ROLE;\n");
        if block.contains("ALTER DATABASE") {
            script.push_str(&format!("\\connect {DATABASE}\n"));
        }
    }
    let path = std::env::temp_dir().join(format!("memoriesdb-readme-{}.sql", std::process::id()));
    std::fs::write(&path, &script).unwrap();
    let (host, port) = admin_host_port();
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--", "psql", "-X", "-h", &host, "-p", &port, "-U", "postgres", "-d", DATABASE])
        .args(["-f", path.to_str().unwrap()])
        .output()
        .expect("run psql");
    let _ = std::fs::remove_file(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || stderr.contains("ERROR") {
        // name the README block the first error came from
        let failed_line = stderr
            .lines()
            .find(|l| l.contains("ERROR"))
            .and_then(|l| l.split(':').nth(2))
            .and_then(|n| n.trim().parse::<usize>().ok())
            .unwrap_or(0);
        let block = starts.iter().rev().find(|(start, _, _)| *start <= failed_line);
        panic!(
            "a README example failed (block starting at README.md line {}, run as {}):\n{stderr}",
            block.map(|b| b.1).unwrap_or(0),
            block.map(|b| b.2).unwrap_or("?")
        );
    }
    // and they did what they say: a few spot checks of what the examples left behind
    let mut db = Client::connect(&format!("host={host} port={port} user=postgres dbname={DATABASE}"), NoTls).unwrap();
    let transcripts: i64 = db
        .query_one("SELECT count(*) FROM memoriesdb.memories WHERE kind = 'message'", &[])
        .unwrap()
        .get(0);
    assert!(transcripts >= 5, "the examples wrote {transcripts} messages");
    let embedded: i64 = db
        .query_one("SELECT count(*) FROM memoriesdb.memories WHERE embedding_model = 'all-MiniLM-L6-v2'", &[])
        .unwrap()
        .get(0);
    assert_eq!(embedded, 1, "the embedding pipeline example stored its embedding");
    assert!(endpoint.request_count() >= 3, "the plain-words examples asked the endpoint for query embeddings");
}
