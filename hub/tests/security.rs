//! The hub's own security boundaries: it never works as a database role that bypasses row-level
//! security, it refuses weak JWT secrets, nobody publishes on the database's own channels, and
//! a page that rebinds its DNS name to the hub's address is turned away.

mod support;

use memoriesdb_hub::auth::sign_hs256;
use serde_json::json;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::*;

const SECRET: &str = "0123456789abcdef0123456789abcdef"; // exactly the 32-byte minimum

fn token(user: &str, read: &[&str], write: &[&str]) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 600;
    sign_hs256(SECRET.as_bytes(), &json!({"sub": user, "exp": exp, "channels": {"read": read, "write": write}}))
}

fn assert_refused(result: (Option<i32>, String), must_mention: &[&str]) {
    let (code, stderr) = result;
    assert!(code.is_some_and(|c| c != 0), "exit code {code:?}; stderr:\n{stderr}");
    for words in must_mention {
        assert!(stderr.contains(words), "the message mentions {words:?}:\n{stderr}");
    }
}

// --- 13: the hub bypasses row security --------------------------------------------------------

#[tokio::test]
async fn authenticated_hub_refuses_a_role_that_bypasses_row_security() {
    let db = TestDb::new().await;
    let superuser = db.url();
    assert_refused(
        refused_start(&["--database-url", &superuser, "--jwt-secret", SECRET], &[]),
        &["\"postgres\"", "superuser", "row-level security", "GRANT memoriesdb_user", "memoriesdb_trusted"],
    );

    // BYPASSRLS without superuser is the same hole
    let bypass = db.role_url("bypass", &["memoriesdb_trusted"]).await;
    let role = url_value(&bypass, "user").unwrap();
    db.client().await.batch_execute(&format!("ALTER ROLE {role} BYPASSRLS")).await.unwrap();
    assert_refused(
        refused_start(&["--database-url", &bypass, "--jwt-secret", SECRET], &[]),
        &[&format!("\"{role}\""), "BYPASSRLS"],
    );
    // and the escape hatch of anonymous mode is no way around it
    assert_refused(
        refused_start(&["--database-url", &superuser, "--jwt-secret", SECRET, "--allow-anonymous-superuser"], &[]),
        &["--allow-anonymous-superuser applies only without authentication"],
    );

    // an ordinary role, trusted to assert its tokens' users, is what works
    let hub_role = db.role_url("hub", &["memoriesdb_trusted"]).await;
    let hub = HubProcess::start(&hub_role, &["--jwt-secret", SECRET]).await;
    let user: String = db.client().await.query_one("SELECT memoriesdb.create_user('u')::text", &[]).await.unwrap().get(0);
    let user = user.as_str();
    let mut client = WsClient::connect(&hub.ws_url(&format!("?token={}", token(user, &["*"], &[])))).await;
    assert_eq!(client.ok(json!({"method": "ping"})).await, json!("pong"));
}

#[tokio::test]
async fn anonymous_hub_refuses_a_superuser_unless_told_it_is_a_demo() {
    let db = TestDb::new().await;
    assert_refused(
        refused_start(&["--database-url", &db.url()], &[]),
        &["\"postgres\"", "superuser", "memoriesdb.create_user", "--allow-anonymous-superuser"],
    );
    let hub = HubProcess::start(&db.url(), &["--allow-anonymous-superuser"]).await;
    assert!(hub.log_text().contains("--allow-anonymous-superuser"), "the hub warns:\n{}", hub.log_text());
    let mut client = WsClient::connect(&hub.ws_url("")).await;
    assert_eq!(client.ok(json!({"method": "ping"})).await, json!("pong"));
}

#[tokio::test]
async fn a_role_first_seen_after_a_database_outage_is_checked_then() {
    let db = TestDb::new().await;
    let proxy = PgProxy::start(db.pg_port()).await;
    proxy.sever();
    // the hub starts while the database is unreachable (it cannot see its role yet) ...
    let mut hub =
        HubProcess::spawn(&via_port(&db.url(), proxy.port), &["--jwt-secret", SECRET, "--reconnect-max-backoff", "200ms"]);
    let deadline = Instant::now() + WAIT;
    while http_get(hub.port, "/healthz").await.is_err() {
        assert!(Instant::now() < deadline, "hub did not start; log:\n{}", hub.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ... and stops with the refusal as soon as it can
    proxy.restore().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let code = loop {
        // polled without blocking: the proxy runs on this test's runtime
        if let Some(code) = hub.wait_exit(Duration::ZERO) {
            break code;
        }
        assert!(Instant::now() < deadline, "the hub did not exit with an error code; log:\n{}", hub.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_ne!(code, 0, "log:\n{}", hub.log_text());
    assert!(hub.log_text().contains("refusing to run as database role \"postgres\""), "{}", hub.log_text());
}

#[tokio::test]
async fn an_anonymous_hub_acts_as_the_user_its_role_maps_to() {
    let db = TestDb::new().await;
    let (hub_role, demo) = db.mapped_role_url("hub", "demo").await;
    let hub = HubProcess::start(&hub_role, &[]).await;
    // alice, another tenant of the same database
    let sql = db.client().await;
    let alice: String = sql.query_one("SELECT memoriesdb.create_user('alice')::text", &[]).await.unwrap().get(0);
    sql.batch_execute(&format!("BEGIN; SELECT memoriesdb.set_memory_user('{alice}')")).await.unwrap();
    let private: uuid::Uuid = sql.query_one("SELECT memoriesdb.create_session('alice private')", &[]).await.unwrap().get(0);
    sql.batch_execute("COMMIT").await.unwrap();

    let mut client = WsClient::connect(&hub.ws_url("")).await;
    let own = client.ok(json!({"action": "create_session", "title": "demo's own"})).await;
    let sessions = client.ok(json!({"action": "list_sessions"})).await;
    let titles: Vec<&str> = sessions["sessions"].as_array().unwrap().iter().map(|s| s["title"].as_str().unwrap()).collect();
    assert_eq!(titles, ["demo's own"], "alice's session is not listed");
    for request in [
        json!({"action": "get_transcript", "session_id": private}),
        json!({"action": "send_message", "session_id": private, "content": "sneaky"}),
        json!({"action": "fork_session", "session_id": private, "title": "stolen"}),
    ] {
        let reply = client.request(request.clone()).await;
        assert_eq!(reply["error"]["code"], "not_found", "{request}: {reply}");
    }
    let owner: String = sql
        .query_one(
            "SELECT created_by::text FROM memoriesdb.memories WHERE id = $1::text::uuid",
            &[&own["session_id"].as_str().unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, demo, "written as the role's user");
}

#[tokio::test]
async fn nobody_publishes_on_the_databases_own_channels() {
    let db = TestDb::new().await;
    let hub = HubProcess::start(&db.hub_url().await, &[]).await;
    let mut client = WsClient::connect(&hub.ws_url("")).await;
    let session = client.ok(json!({"action": "create_session", "title": "chat"})).await;
    let chat = session["channel"].as_str().unwrap().to_string();
    // reading them stays allowed
    client.subscribe(&[&chat, "memoriesdb_events", "memoriesdb_internal"]).await;

    let shouted = chat.to_uppercase();
    let forged = json!({"op": "INSERT", "id": "01a21f10-a1fa-729b-9207-651564608c0c", "position": 99});
    for channel in [chat.as_str(), "memoriesdb_events", "memoriesdb_internal", "MemoriesDB_Events", shouted.as_str()] {
        let reply = client.request(json!({"method": "pub", "params": {"channel": channel, "content": forged}})).await;
        assert_eq!(reply["error"]["code"], "forbidden", "{channel}: {reply}");
        assert_eq!(reply["method"], "pub");
        assert!(reply["error"]["message"].as_str().unwrap().contains("reserved"), "{reply}");
    }
    // without an id the refusal is not silent either
    client.send(json!({"method": "pub", "params": {"channel": chat, "content": forged}})).await;
    client.expect("the refusal", |v| v["error"]["code"] == "forbidden").await;
    client.no_delivery(&chat, Duration::from_millis(300)).await;
    client.no_delivery("memoriesdb_internal", Duration::from_millis(10)).await;

    // the connection is fine, other channels work, and the database's own events still arrive
    client.subscribe(&["updates"]).await;
    client.publish("updates", json!("ok")).await;
    assert_eq!(client.delivery("updates").await["content"], "ok");
    client.ok(json!({"action": "send_message", "session_id": session["session_id"], "content": "real"})).await;
    assert_eq!(client.delivery(&chat).await["position"], 1);
}

#[tokio::test]
async fn a_token_cannot_open_the_reserved_channels_either() {
    let db = TestDb::new().await;
    let hub_role = db.role_url("hub", &["memoriesdb_trusted"]).await;
    let hub = HubProcess::start(&hub_role, &["--jwt-secret", SECRET]).await;
    let user: String = db.client().await.query_one("SELECT memoriesdb.create_user('u')::text", &[]).await.unwrap().get(0);
    let mut client = WsClient::connect(&hub.ws_url(&format!("?token={}", token(&user, &["*"], &["*"])))).await;
    for channel in ["chat_updates_0190abcd000070008000000000000001", "memoriesdb_events"] {
        let reply = client.request(json!({"method": "pub", "params": {"channel": channel, "content": 1}})).await;
        assert_eq!(reply["error"]["code"], "forbidden", "{channel}: {reply}");
    }
    client.publish("updates", json!("allowed")).await;
}

// --- 14: an empty JWT secret turns authentication on with forgeable tokens ---------------------

#[tokio::test]
async fn weak_jwt_secrets_refuse_to_start() {
    let dir = std::env::temp_dir().join(format!("memoriesdb-hub-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, content: &str| {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        path.to_str().unwrap().to_string()
    };
    let (empty, blank, short) = (file("empty", ""), file("blank", " \t\n\n"), file("short", "0123456789abcdef0123456789abcde\n"));
    let nowhere = format!("host=127.0.0.1 port={} user=nobody dbname=nothing", free_port());
    // (flags, environment)
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>);
    let cases: Vec<Case> = vec![
        (vec!["--jwt-secret", ""], vec![]),
        (vec!["--jwt-secret", "   "], vec![]),
        (vec![], vec![("MEMORIESDB_HUB_JWT_SECRET", "")]),
        (vec!["--jwt-secret-file", &empty], vec![]),
        (vec!["--jwt-secret-file", &blank], vec![]),
        (vec!["--jwt-secret-file", &short], vec![]),
        (vec!["--jwt-secret", "0123456789abcdef0123456789abcde"], vec![]),
        // an empty secret is not "authentication on" for the public-address guard
        (vec!["--host", "0.0.0.0", "--jwt-secret", ""], vec![]),
    ];
    for (args, env) in cases {
        let args = [&["--database-url", nowhere.as_str()], args.as_slice()].concat();
        let (code, stderr) = refused_start(&args, &env);
        assert!(code.is_some_and(|c| c != 0), "{args:?} {env:?}: exit {code:?}\n{stderr}");
        assert!(stderr.contains("at least 32 bytes"), "{args:?} {env:?}: the message says the minimum:\n{stderr}");
        assert!(!stderr.contains("0123456789abcdef"), "the secret is not echoed:\n{stderr}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

// --- 15: DNS rebinding --------------------------------------------------------------------------

async fn get_status(port: u16, host: &str, path: &str) -> u16 {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    http_request(port, &request).await.unwrap().0
}

#[tokio::test]
async fn an_anonymous_hub_answers_only_to_loopback_names() {
    let db = TestDb::new().await;
    let hub_url = db.hub_url().await;
    let hub = HubProcess::start(&hub_url, &[]).await;
    let port = hub.port;
    let rebind = format!("rebind.test:{port}");
    let rebind_origin = format!("http://rebind.test:{port}");

    // a page on rebind.test whose name now resolves to 127.0.0.1: its Origin matches its Host
    assert_eq!(upgrade_status(port, &rebind, "?c=updates", &[("Origin", &rebind_origin)]).await, 403);
    assert_eq!(upgrade_status(port, &rebind, "", &[]).await, 403);
    for path in ["/", "/metrics"] {
        assert_eq!(get_status(port, &rebind, path).await, 403, "{path}");
    }
    assert_eq!(get_status(port, &rebind, "/healthz").await, 200, "liveness shows nothing");

    // the hub's own names
    for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}"), format!("[::1]:{port}"), "127.0.0.1".into()] {
        let origin = format!("http://{host}");
        assert_eq!(upgrade_status(port, &host, "?c=updates", &[("Origin", &origin)]).await, 101, "{host}");
        assert_eq!(get_status(port, &host, "/").await, 200, "{host}");
    }

    // an operator can name more hosts
    let listed = HubProcess::start(&hub_url, &["--allowed-hosts", "rebind.test,other.test:1"]).await;
    let port = listed.port;
    let rebind = format!("rebind.test:{port}");
    assert_eq!(upgrade_status(port, &rebind, "", &[("Origin", &format!("http://{rebind}"))]).await, 101);
    assert_eq!(get_status(port, &rebind, "/").await, 200);
    assert_eq!(upgrade_status(port, &format!("other.test:{port}"), "", &[]).await, 403, "listed with another port");
    assert_eq!(upgrade_status(port, &format!("evil.test:{port}"), "", &[]).await, 403);

    // with authentication a rebinding page has no token; the list is enforced when given
    let trusted = db.role_url("trusted", &["memoriesdb_trusted"]).await;
    let authenticated = HubProcess::start(&trusted, &["--jwt-secret", SECRET, "--allowed-hosts", "hub.test"]).await;
    let port = authenticated.port;
    let user: String = db.client().await.query_one("SELECT memoriesdb.create_user('u')::text", &[]).await.unwrap().get(0);
    let query = format!("?token={}", token(&user, &["*"], &[]));
    assert_eq!(upgrade_status(port, &format!("hub.test:{port}"), &query, &[]).await, 101);
    assert_eq!(upgrade_status(port, &format!("rebind.test:{port}"), &query, &[]).await, 403);
}

// --- errors ---------------------------------------------------------------------------------------

#[tokio::test]
async fn constraint_violations_do_not_show_the_schema() {
    let db = TestDb::new().await;
    // a constraint the database enforces itself (the extension's functions validate their input
    // first, so its own constraints are hard to reach through the hub)
    db.client()
        .await
        .batch_execute("ALTER TABLE memoriesdb.memories ADD CONSTRAINT secret_rule_name CHECK (content <> 'forbidden')")
        .await
        .unwrap();
    let hub = HubProcess::start(&db.hub_url().await, &[]).await;
    let mut client = WsClient::connect(&hub.ws_url("")).await;
    let session = client.ok(json!({"action": "create_session", "title": "rules"})).await;
    let reply =
        client.request(json!({"action": "send_message", "session_id": session["session_id"], "content": "forbidden"})).await;
    assert_eq!(reply["error"]["code"], "invalid_argument", "{reply}");
    assert_eq!(reply["error"]["sqlstate"], "23514", "{reply}");
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(!message.contains("secret_rule_name") && !message.contains("memories"), "{message}");
}
