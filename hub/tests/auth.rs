//! Authentication (HS256 JWT: user + channel globs, checked on upgrade and on every request,
//! expiry enforced during the connection) and the Origin allow-list.

mod support;

use memoriesdb_hub::auth::sign_hs256;
use serde_json::{json, Value};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::*;

/// HS256 secrets must be at least 32 bytes.
const SECRET: &str = "correct horse battery staple, salted";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn token(user: &str, lifetime_secs: i64, read: &[&str], write: &[&str]) -> String {
    sign_hs256(
        SECRET.as_bytes(),
        &json!({"sub": user, "exp": now() as i64 + lifetime_secs, "channels": {"read": read, "write": write}}),
    )
}

async fn upgrade_status(hub: &HubProcess, query: &str, headers: &[(&str, &str)]) -> u16 {
    support::upgrade_status(hub.port, &format!("127.0.0.1:{}", hub.port), query, headers).await
}

/// As in production: the hub's database role is no superuser, only trusted to assert users.
async fn authenticated_hub(db: &TestDb) -> HubProcess {
    let hub_role = db.role_url("hub", &["memoriesdb_trusted"]).await;
    HubProcess::start(&hub_role, &["--jwt-secret", SECRET]).await
}

#[tokio::test]
async fn upgrade_requires_a_valid_token() {
    let db = TestDb::new().await;
    let hub = authenticated_hub(&db).await;
    // a user that exists: tokens naming no user are refused (see tokens_for_users_that_do_not_exist_are_refused)
    let user: String = db.client().await.query_one("SELECT memoriesdb.create_user('u')::text", &[]).await.unwrap().get(0);
    let user = user.as_str();
    let good = token(user, 60, &["updates"], &[]);
    assert_eq!(upgrade_status(&hub, "", &[]).await, 401, "no token");
    assert_eq!(upgrade_status(&hub, "?token=garbage", &[]).await, 401);
    let forged = sign_hs256(b"wrong secret", &json!({"sub": user, "exp": now() + 60}));
    assert_eq!(upgrade_status(&hub, &format!("?token={forged}"), &[]).await, 401);
    let expired = token(user, -10, &["*"], &["*"]);
    assert_eq!(upgrade_status(&hub, &format!("?token={expired}"), &[]).await, 401);
    assert_eq!(upgrade_status(&hub, &format!("?token={good}&c=updates"), &[]).await, 101);
    assert_eq!(upgrade_status(&hub, &format!("?token={good}&c=secret"), &[]).await, 403, "channel not readable");
    let bearer = format!("Bearer {good}");
    assert_eq!(upgrade_status(&hub, "?c=updates", &[("Authorization", &bearer)]).await, 101);
}

#[tokio::test]
async fn every_request_is_checked_against_the_tokens_channels() {
    let db = TestDb::new().await;
    let hub = authenticated_hub(&db).await;
    let sql = db.client().await;
    let alice: String = sql.query_one("SELECT memoriesdb.create_user('alice')::text", &[]).await.unwrap().get(0);
    let mallory: String = sql.query_one("SELECT memoriesdb.create_user('mallory')::text", &[]).await.unwrap().get(0);

    let mut admin = WsClient::connect(&hub.ws_url(&format!("?token={}", token(&alice, 600, &["*"], &["*"])))).await;
    let open = admin.ok(json!({"action": "create_session", "title": "open"})).await;
    let closed = admin.ok(json!({"action": "create_session", "title": "closed"})).await;
    // alice shares both sessions with mallory, so the database would let mallory in: what keeps
    // mallory out of "closed" below is the token
    for session in [&open, &closed] {
        let id: uuid::Uuid = session["session_id"].as_str().unwrap().parse().unwrap();
        let mallory_id: uuid::Uuid = mallory.parse().unwrap();
        sql.batch_execute(&format!("BEGIN; SELECT memoriesdb.set_memory_user('{alice}')")).await.unwrap();
        sql.execute("SELECT memoriesdb.share_memory($1, $2, true)", &[&id, &mallory_id]).await.unwrap();
        sql.batch_execute("COMMIT").await.unwrap();
    }
    let open_channel = open["channel"].as_str().unwrap().to_string();
    let closed_channel = closed["channel"].as_str().unwrap().to_string();

    // mallory may read "updates" and the open session, write only the open session
    let mallory_token = token(&mallory, 600, &["updates", &open_channel], &[&open_channel]);
    let mut client = WsClient::connect(&hub.ws_url(&format!("?token={mallory_token}"))).await;
    client.subscribe(&["updates"]).await;
    let denied = client.request(json!({"method": "sub", "params": {"channels": ["updates", &closed_channel]}})).await;
    assert_eq!(denied["error"]["code"], "forbidden", "{denied}");
    let denied = client.request(json!({"method": "pub", "params": {"channel": "updates", "content": "x"}})).await;
    assert_eq!(denied["error"]["code"], "forbidden", "read does not imply write: {denied}");
    for request in [
        json!({"action": "send_message", "session_id": closed["session_id"], "content": "sneaky"}),
        json!({"action": "get_transcript", "session_id": closed["session_id"]}),
        json!({"action": "fork_session", "session_id": closed["session_id"], "title": "stolen"}),
    ] {
        let reply = client.request(request.clone()).await;
        assert_eq!(reply["error"]["code"], "forbidden", "{request}: {reply}");
    }
    let sessions = client.ok(json!({"action": "list_sessions"})).await;
    let titles: Vec<&str> = sessions["sessions"].as_array().unwrap().iter().map(|s| s["title"].as_str().unwrap()).collect();
    assert_eq!(titles, ["open"], "only readable sessions are listed");
    assert_eq!(
        sql.query_one("SELECT count(*) FROM memoriesdb.memories WHERE content = 'sneaky'", &[]).await.unwrap().get::<_, i64>(0),
        0
    );

    // allowed: the message is written as mallory (app.current_user from the token)
    client.subscribe(&[&open_channel]).await;
    let sent = client.ok(json!({"action": "send_message", "session_id": open["session_id"], "content": "signed"})).await;
    client.delivery(&open_channel).await;
    let message_id: uuid::Uuid = sent["message_id"].as_str().unwrap().parse().unwrap();
    let row = sql
        .query_one(
            "SELECT m.created_by::text, (SELECT acting_user::text FROM memoriesdb.audit_log a WHERE a.row_id = m.id AND a.operation = 'INSERT' LIMIT 1)
               FROM memoriesdb.memories m WHERE m.id = $1",
            &[&message_id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<String>>(0).as_deref(), Some(mallory.as_str()));
    assert_eq!(row.get::<_, Option<String>>(1).as_deref(), Some(mallory.as_str()));

    // pub carries the authenticated sender, which the client cannot forge
    let mut writer = WsClient::connect(&hub.ws_url(&format!("?token={}", token(&alice, 600, &["*"], &["updates"])))).await;
    writer
        .ok(json!({"method": "pub", "params": {"channel": "updates", "content": "hi", "metadata": {"sender": "someone else"}}}))
        .await;
    let payload = client.delivery("updates").await;
    assert_eq!(payload["sender"], alice.as_str());
    assert_eq!(payload["metadata"]["sender"], "someone else", "client metadata is kept, but separately");
}

#[tokio::test]
async fn connections_close_when_the_token_expires_unless_refreshed() {
    let db = TestDb::new().await;
    let hub = authenticated_hub(&db).await;
    // a user that exists: tokens naming no user are refused (see tokens_for_users_that_do_not_exist_are_refused)
    let user: String = db.client().await.query_one("SELECT memoriesdb.create_user('u')::text", &[]).await.unwrap().get(0);
    let user = user.as_str();

    let started = Instant::now();
    let mut short = WsClient::connect(&hub.ws_url(&format!("?c=updates&token={}", token(user, 2, &["*"], &[])))).await;
    let close = short.close_frame(Duration::from_secs(10)).await;
    assert_eq!(close.as_ref().map(|(code, reason)| (*code, reason.as_str())), Some((1008, "token expired")));
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());

    // a refreshed token keeps the connection open past the first expiry
    let mut refreshed = WsClient::connect(&hub.ws_url(&format!("?c=updates&token={}", token(user, 2, &["*"], &[])))).await;
    let result = refreshed.ok(json!({"method": "auth", "params": {"token": token(user, 60, &["*"], &[])}})).await;
    assert!(result["expires_in"].as_u64().unwrap() > 50);
    assert!(refreshed.try_expect(Duration::from_secs(3), &|_: &Value| false).await.is_none());
    assert_eq!(refreshed.ok(json!({"method": "ping"})).await, json!("pong"));
    // but not into another user, nor into one that drops a subscribed channel
    let other = "01a21f10-a1fa-729b-9207-000000000000";
    let reply = refreshed.request(json!({"method": "auth", "params": {"token": token(other, 60, &["*"], &[])}})).await;
    assert_eq!(reply["error"]["code"], "forbidden");
    let reply = refreshed.request(json!({"method": "auth", "params": {"token": token(user, 60, &["other"], &[])}})).await;
    assert_eq!(reply["error"]["code"], "forbidden");
    let reply = refreshed.request(json!({"method": "auth", "params": {"token": "bad"}})).await;
    assert_eq!(reply["error"]["code"], "unauthorized");
}

#[tokio::test]
async fn origin_allow_list() {
    let db = TestDb::new().await;
    let hub = HubProcess::start(&db.hub_url().await, &["--allowed-origins", "https://app.example,https://other.example"]).await;
    let own = format!("http://127.0.0.1:{}", hub.port);
    assert_eq!(upgrade_status(&hub, "", &[]).await, 101, "non-browser clients send no Origin");
    assert_eq!(upgrade_status(&hub, "", &[("Origin", "https://app.example")]).await, 101);
    assert_eq!(upgrade_status(&hub, "", &[("Origin", "https://other.example")]).await, 101);
    assert_eq!(upgrade_status(&hub, "", &[("Origin", &own)]).await, 101, "the hub's own demo page");
    assert_eq!(upgrade_status(&hub, "", &[("Origin", "https://evil.example")]).await, 403);
    assert_eq!(upgrade_status(&hub, "", &[("Origin", "null")]).await, 403);
}

#[tokio::test]
async fn anonymous_hub_on_a_public_address_refuses_to_start() {
    let output =
        std::process::Command::new(HUB_BIN).args(["--host", "0.0.0.0", "--port", &free_port().to_string()]).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("without authentication"), "{stderr}");
}

/// Issue 14, defect 5: a token naming a user that does not exist is refused at the upgrade (401),
/// and a user that disappears later never makes a client see a raw constraint error.
#[tokio::test]
async fn tokens_for_users_that_do_not_exist_are_refused() {
    let db = TestDb::new().await;
    let hub = authenticated_hub(&db).await;
    let sql = db.client().await;
    let ghost = "01a21f10-a1fa-729b-9207-651564608c0c";
    assert_eq!(upgrade_status(&hub, &format!("?token={}", token(ghost, 60, &["*"], &["*"])), &[]).await, 401);
    match WsClient::try_connect(&hub.ws_url(&format!("?token={}", token(ghost, 60, &["*"], &["*"])))).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401);
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).to_string();
            assert!(body.contains("user"), "{body}");
        }
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
    // a real user gets in; so does the same user again (from the hub's cache or not)
    let real: String = sql.query_one("SELECT memoriesdb.create_user('real')::text", &[]).await.unwrap().get(0);
    let good = token(&real, 600, &["*"], &["*"]);
    assert_eq!(upgrade_status(&hub, &format!("?token={good}"), &[]).await, 101);
    let mut client = WsClient::connect(&hub.ws_url(&format!("?token={good}"))).await;

    // the user is deleted while connected: the next write fails without naming the schema
    sql.batch_execute(&format!("DELETE FROM memoriesdb.users WHERE id = '{real}'")).await.unwrap();
    let reply = client.request(json!({"action": "create_session", "title": "orphan"})).await;
    let error = &reply["error"];
    assert!(error.is_object(), "{reply}");
    let message = error["message"].as_str().unwrap();
    assert_eq!(error["code"], "invalid_argument", "{reply}");
    for secret in ["constraint \"", "fkey", "memories", "users", "foreign key", "violates"] {
        assert!(!message.contains(secret), "{secret:?} in {reply}");
    }
}

/// Issue 14, defect 7: the README's example token grants one user their own sessions only, never
/// every session's channel.
#[test]
fn the_readmes_example_token_is_scoped_to_the_users_own_sessions() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let section = readme.split("### Authentication and production use").nth(1).expect("the authentication section");
    let start = section.find("```json\n").expect("an example token") + "```json\n".len();
    let example = &section[start..start + section[start..].find("```").unwrap()];
    let claims: Value = serde_json::from_str(example).unwrap_or_else(|e| panic!("the example is JSON: {e}\n{example}"));
    let someone_elses = "chat_updates_0190ffff000070008000000000000099";
    for kind in ["read", "write"] {
        let patterns = claims["channels"][kind].as_array().unwrap_or_else(|| panic!("channels.{kind} in {example}"));
        assert!(!patterns.is_empty(), "{example}");
        for pattern in patterns {
            let pattern = pattern.as_str().unwrap();
            assert!(
                !memoriesdb_hub::channel::glob_matches(pattern, someone_elses),
                "the example token's {kind} pattern {pattern:?} matches every session's channel"
            );
        }
    }
}
