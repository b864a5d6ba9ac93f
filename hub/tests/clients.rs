//! Real clients against a real hub: the specification's Python example (websocket-client) run
//! unmodified, a Python chat client, psql's NOTIFY reaching a WebSocket subscriber, and the demo
//! page in headless Chromium (two browser contexts).
//!
//! Tools come from scripts/setup.sh: the Python venv (MEMORIESDB_HUB_PYTHON, default
//! /var/lib/memoriesdb/hub-venv/bin/python) and hub/e2e/node_modules (npm ci). A missing tool
//! fails the test; nothing is skipped.

mod support;

use serde_json::json;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;
use support::*;

fn python() -> String {
    std::env::var("MEMORIESDB_HUB_PYTHON").unwrap_or_else(|_| "/var/lib/memoriesdb/hub-venv/bin/python".into())
}

fn clients_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

fn show(output: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Run a blocking command off the async runtime.
async fn run(mut command: Command) -> Output {
    tokio::task::spawn_blocking(move || command.output().expect("run command")).await.unwrap()
}

/// `url` (a connection string for the test database) reached through the Unix socket instead
/// (works inside a network namespace).
async fn socket_url(db: &TestDb, url: &str) -> String {
    let sql = db.client().await;
    let dirs: String = sql.query_one("SHOW unix_socket_directories", &[]).await.unwrap().get(0);
    let dir = dirs.split(',').next().unwrap().trim().to_string();
    let user = url_value(url, "user").unwrap();
    format!("host={dir} port={} user={user} dbname={}", db.pg_port(), db.name)
}

#[tokio::test]
async fn the_specifications_python_example_runs_unmodified() {
    let db = TestDb::new().await;
    let mut command = Command::new(clients_dir().join("in_netns.sh"));
    command
        .arg(HUB_BIN)
        .arg(socket_url(&db, &db.hub_url().await).await)
        // the example runs forever (run_forever); give it 5 seconds, unbuffered so that its
        // output survives the timeout's SIGTERM
        .args(["timeout", "5", &python(), "-u"])
        .arg(clients_dir().join("spec_python_client.py"));
    let output = run(command).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(124), "killed by the timeout, not failed: {}", show(&output));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"Connected to WebSocket server"), "{}", show(&output));
    assert!(
        lines.contains(&"Received: {'channel': 'updates', 'payload': {'content': 'Hello from Python!'}}"),
        "the example receives its own message on 'updates': {}",
        show(&output)
    );
    assert!(!stdout.contains("Error:"), "{}", show(&output));
}

#[tokio::test]
async fn python_chat_client_with_websocket_client() {
    let db = TestDb::new().await;
    let hub = HubProcess::start(&db.hub_url().await, &[]).await;
    let mut command = Command::new(python());
    command.arg(clients_dir().join("chat_client.py")).arg(format!("ws://127.0.0.1:{}", hub.port));
    let output = run(command).await;
    assert!(output.status.success(), "{}", show(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("python chat client: OK"), "{}", show(&output));
}

#[tokio::test]
async fn psql_notify_reaches_a_websocket_subscriber() {
    let db = TestDb::new().await;
    let hub = HubProcess::start(&db.hub_url().await, &[]).await;
    let mut client = WsClient::connect(&hub.ws_url("?c=chan")).await;
    let mut command = Command::new("psql");
    command.args(["-X", "-v", "ON_ERROR_STOP=1", &db.url(), "-c", "NOTIFY chan, 'x'"]);
    let output = run(command).await;
    assert!(output.status.success(), "{}", show(&output));
    assert_eq!(client.delivery("chan").await, json!("x"));

    // and the extension's own NOTIFY from a psql session
    let mut command = Command::new("psql");
    command.args([
        "-X",
        "-v",
        "ON_ERROR_STOP=1",
        &db.url(),
        "-c",
        "SELECT memoriesdb.add_message_to_session(memoriesdb.create_session('from psql'), 'user', 'hello')",
    ]);
    client.subscribe(&["memoriesdb_events"]).await;
    let output = run(command).await;
    assert!(output.status.success(), "{}", show(&output));
    let event = client.delivery("memoriesdb_events").await;
    assert_eq!(event["kind"], "session");
    let event = client.delivery("memoriesdb_events").await;
    assert_eq!((event["kind"].as_str(), event["position"].as_i64()), (Some("message"), Some(1)));
}

#[tokio::test]
async fn demo_page_in_headless_chromium_two_tabs() {
    let db = TestDb::new().await;
    // an embedding endpoint, so that the page's search box searches by words and meaning
    let endpoint = memoriesdb_integration_tests::embedding_endpoint::Stub::start(std::sync::Arc::new(|_: &str| {
        Some(memoriesdb_integration_tests::embedding_endpoint::http(
            "200 OK",
            r#"{"data":[{"embedding":[0.1,0.2,0.3]}],"model":"stub"}"#,
        ))
    }));
    db.client()
        .await
        .batch_execute(&format!("ALTER DATABASE {} SET memoriesdb.embedding_url = '{}'", db.name, endpoint.url()))
        .await
        .unwrap();
    let hub = HubProcess::start(&db.hub_url().await, &[]).await;
    let e2e = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("e2e");
    assert!(
        e2e.join("node_modules/playwright-core").is_dir(),
        "hub/e2e/node_modules missing: scripts/setup.sh runs npm ci there"
    );
    let mut command = Command::new("node");
    command
        .current_dir(&e2e)
        .args(["--test", "--test-reporter=spec", "chat.test.mjs"])
        .env("HUB_URL", format!("http://127.0.0.1:{}", hub.port));
    let output = tokio::time::timeout(Duration::from_secs(120), run(command)).await.expect("browser test finished");
    assert!(output.status.success(), "{}\nhub log:\n{}", show(&output), hub.log_text());
}
