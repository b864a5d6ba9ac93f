//! The WebSocket protocol against a real hub process and a real database: subscriptions,
//! publishing through pg_notify, NOTIFY from SQL, chat actions, and error replies.

mod support;

use memoriesdb_integration_tests::embedding_endpoint::{http, Stub};
use serde_json::{json, Value};
use std::time::Duration;
use support::*;

#[tokio::test]
async fn query_channels_subscribe_and_pub_reaches_every_subscriber() {
    let db = TestDb::new().await;
    let hub = HubProcess::start(&db.hub_url().await, &[]).await;
    let mut alice = WsClient::connect(&hub.ws_url("?c=updates&c=notifications")).await;
    let mut bob = WsClient::connect(&hub.ws_url("?c=updates")).await;
    let mut carol = WsClient::connect(&hub.ws_url("?c=other")).await;

    // the specification's message format, metadata included
    alice
        .send(json!({"method": "pub", "params": {"channel": "updates", "content": "Hello, world!",
                     "metadata": {"sender": "user123", "timestamp": "2025-06-27T13:20:00Z"}}}))
        .await;
    let expected = json!({"content": "Hello, world!", "metadata": {"sender": "user123", "timestamp": "2025-06-27T13:20:00Z"}});
    assert_eq!(alice.delivery("updates").await, expected, "the publisher is a subscriber too");
    assert_eq!(bob.delivery("updates").await, expected);
    carol.no_delivery("updates", Duration::from_millis(300)).await;

    // any JSON content goes through unchanged
    bob.publish("notifications", json!({"nested": [1, 2, {"x": null}]})).await;
    assert_eq!(alice.delivery("notifications").await, json!({"content": {"nested": [1, 2, {"x": null}]}}));
}

#[tokio::test]
async fn dynamic_sub_and_unsub_follow_listen() {
    let db = TestDb::new().await;
    let hub = HubProcess::start(&db.hub_url().await, &[]).await;
    let mut client = WsClient::connect(&hub.ws_url("")).await;
    let sql = db.client().await;

    let result = client.subscribe(&["new_channel", "Mixed.Case:chan-1"]).await;
    assert_eq!(result["channels"], json!(["new_channel", "Mixed.Case:chan-1"]));
    assert!(result.get("pending").is_none(), "acknowledged only once LISTEN is live: {result}");
    assert_eq!(hub.metric("listen_channels").await, 2);
    assert_eq!(hub.metric("subscriptions").await, 2);

    // a NOTIFY from SQL arrives; JSON payloads are parsed, others delivered as strings
    sql.batch_execute(r#"NOTIFY new_channel, '{"op":"x","n":1}'; SELECT pg_notify('Mixed.Case:chan-1', 'plain text')"#)
        .await
        .unwrap();
    assert_eq!(client.delivery("new_channel").await, json!({"op": "x", "n": 1}));
    assert_eq!(client.delivery("Mixed.Case:chan-1").await, json!("plain text"));

    let result = client.ok(json!({"method": "unsub", "params": {"channels": ["new_channel"]}})).await;
    assert_eq!(result["channels"], json!(["new_channel"]));
    hub.wait_metric("listen_channels", WAIT, |n| n == 1).await;
    sql.batch_execute("NOTIFY new_channel, 'after unsub'").await.unwrap();
    client.no_delivery("new_channel", Duration::from_millis(300)).await;

    // closing the connection removes its subscriptions and the hub UNLISTENs
    drop(client);
    hub.wait_metric("listen_channels", WAIT, |n| n == 0).await;
    hub.wait_metric("connections", WAIT, |n| n == 0).await;
    assert_eq!(hub.metric("subscriptions").await, 0);
}

#[tokio::test]
async fn channel_names_are_validated_and_injection_is_impossible() {
    let db = TestDb::new().await;
    let hub = HubProcess::start(&db.hub_url().await, &[]).await;

    // bad names in the URL refuse the upgrade with 400
    let (status, body) = http_request(
        hub.port,
        "GET /ws?c=a%22%3B%20DROP%20TABLE%20memories%3B%20-- HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid_channel"), "{body}");

    let mut client = WsClient::connect(&hub.ws_url("")).await;
    for bad in ["x\"; DROP TABLE memories; --", "", "with space", &"y".repeat(64), "é", "a\u{0}b"] {
        let reply = client.request(json!({"method": "sub", "params": {"channels": ["ok_channel", bad]}})).await;
        assert_eq!(reply["error"]["code"], "invalid_channel", "{bad:?}: {reply}");
        assert_eq!(reply["method"], "sub");
        let reply = client.request(json!({"method": "pub", "params": {"channel": bad, "content": 1}})).await;
        assert_eq!(reply["error"]["code"], "invalid_channel", "{bad:?}: {reply}");
    }
    // nothing was subscribed by the failed requests, and the table is intact
    assert_eq!(hub.metric("subscriptions").await, 0);
    let sql = db.client().await;
    sql.query_one("SELECT count(*) FROM memoriesdb.memories", &[]).await.expect("memories still exists");
    // the longest valid name works end to end
    let longest = "z".repeat(63);
    client.subscribe(&[&longest]).await;
    client.publish(&longest, json!("edge")).await;
    assert_eq!(client.delivery(&longest).await, json!({"content": "edge"}));
}

#[tokio::test]
async fn bad_requests_get_error_replies_naming_the_request() {
    let db = TestDb::new().await;
    let hub = HubProcess::start(&db.hub_url().await, &[]).await;
    let mut client = WsClient::connect(&hub.ws_url("")).await;

    // (frame, the key and value naming the request in the reply, error code)
    type Case<'a> = (&'a str, Option<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        ("{not json", None, "bad_json"),
        ("[1,2,3]", None, "bad_request"),
        ("\"just a string\"", None, "bad_request"),
        (r#"{"hello":"world","id":1}"#, None, "bad_request"),
        (r#"{"method":"frobnicate","id":2}"#, Some(("method", "frobnicate")), "unknown_method"),
        (r#"{"action":"launch_rockets","id":3}"#, Some(("action", "launch_rockets")), "unknown_action"),
        (r#"{"method":"sub","id":4}"#, Some(("method", "sub")), "bad_request"),
        (r#"{"method":"sub","params":{"channels":[1]},"id":5}"#, Some(("method", "sub")), "bad_request"),
        (r#"{"method":"pub","params":{"content":"no channel"},"id":6}"#, Some(("method", "pub")), "bad_request"),
        (
            r#"{"method":"pub","params":{"channel":"c","metadata":"not an object"},"id":7}"#,
            Some(("method", "pub")),
            "bad_request",
        ),
        (
            r#"{"action":"send_message","session_id":"not-a-uuid","content":"x","id":8}"#,
            Some(("action", "send_message")),
            "bad_request",
        ),
        (
            r#"{"action":"send_message","session_id":"01a21f10-a1fa-729b-9207-651564608c0c","id":9}"#,
            Some(("action", "send_message")),
            "bad_request",
        ),
        (
            r#"{"action":"get_transcript","session_id":"01a21f10-a1fa-729b-9207-651564608c0c","limit":-1,"id":10}"#,
            Some(("action", "get_transcript")),
            "bad_request",
        ),
        (r#"{"method":42}"#, None, "bad_request"),
        (r#"{"method":"auth","params":{"token":"x"},"id":11}"#, Some(("method", "auth")), "bad_request"),
    ];
    for (text, name, code) in cases {
        client.send_text(text).await;
        let reply = client.expect(&format!("an error for {text}"), |v| v.get("error").is_some()).await;
        assert_eq!(reply["error"]["code"], code, "{text}: {reply}");
        assert!(reply["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{reply}");
        if let Some((key, value)) = name {
            assert_eq!(reply[key], value, "the reply names the request: {reply}");
        }
        if let Ok(request) = serde_json::from_str::<Value>(text) {
            if let Some(id) = request.get("id") {
                assert_eq!(&reply["id"], id, "the reply echoes the id: {reply}");
            }
        }
    }
    // binary frames are answered too
    use futures_util::SinkExt;
    client.socket.send(tokio_tungstenite::tungstenite::Message::Binary(vec![1, 2, 3].into())).await.unwrap();
    let reply = client.expect("binary error", |v| v.get("error").is_some()).await;
    assert_eq!(reply["error"]["code"], "unsupported_frame");
    // and the connection still works
    assert_eq!(client.ok(json!({"method": "ping"})).await, json!("pong"));
    assert!(hub.metric("error_replies_total").await >= 16);
}

#[tokio::test]
async fn oversized_pub_gets_an_error_and_the_limit_is_exact() {
    let db = TestDb::new().await;
    let hub = HubProcess::start(&db.hub_url().await, &[]).await;
    let mut client = WsClient::connect(&hub.ws_url("?c=big")).await;
    // payload is {"content":"<n x>"}: 14 bytes of wrapping
    let fits = "x".repeat(7999 - 14);
    client.publish("big", json!(fits)).await;
    assert_eq!(client.delivery("big").await["content"].as_str().map(str::len), Some(7999 - 14));

    let too_big = "x".repeat(8000 - 14);
    let reply = client.request(json!({"method": "pub", "params": {"channel": "big", "content": too_big}})).await;
    assert_eq!(reply["error"]["code"], "payload_too_large", "{reply}");
    assert_eq!(reply["method"], "pub");
    // also without an id the client hears about it: errors are never silent
    client.send(json!({"method": "pub", "params": {"channel": "big", "content": "y".repeat(20_000)}})).await;
    let reply = client.expect("payload_too_large", |v| v["error"]["code"] == "payload_too_large").await;
    assert!(reply["error"]["message"].as_str().unwrap().contains("7999"), "{reply}");
    client.no_delivery("big", Duration::from_millis(300)).await;
}

#[tokio::test]
async fn frame_size_and_channel_caps() {
    let db = TestDb::new().await;
    let hub =
        HubProcess::start(&db.hub_url().await, &["--max-message-bytes", "4096", "--max-channels-per-connection", "3"]).await;

    let mut client = WsClient::connect(&hub.ws_url("?c=a&c=b")).await;
    let reply = client.request(json!({"method": "sub", "params": {"channels": ["c", "d"]}})).await;
    assert_eq!(reply["error"]["code"], "too_many_channels", "{reply}");
    client.subscribe(&["c"]).await;
    let reply = client.request(json!({"method": "sub", "params": {"channels": ["d"]}})).await;
    assert_eq!(reply["error"]["code"], "too_many_channels", "{reply}");
    // resubscribing to a channel it has is not "more"
    client.subscribe(&["a"]).await;

    let (status, body) = http_get(hub.port, "/ws?c=1&c=2&c=3&c=4").await.unwrap();
    assert!(status == 400 || status == 426, "{status} {body}");

    // a message over the cap closes the connection with 1009
    client.send_text(&format!("{{\"method\":\"ping\",\"pad\":\"{}\"}}", "p".repeat(5000))).await;
    let close = client.close_frame(WAIT).await;
    assert_eq!(close.map(|(code, _)| code), Some(1009));
    // the hub is fine
    let mut other = WsClient::connect(&hub.ws_url("")).await;
    assert_eq!(other.ok(json!({"method": "ping"})).await, json!("pong"));
}

#[tokio::test]
async fn chat_actions_send_message_reaches_every_subscriber_of_the_session() {
    let db = TestDb::new().await;
    let hub = HubProcess::start(&db.hub_url().await, &[]).await;
    let mut alice = WsClient::connect(&hub.ws_url("")).await;
    let mut bob = WsClient::connect(&hub.ws_url("")).await;

    let created = alice
        .ok(json!({"action": "create_session", "title": "Product Brainstorm",
                   "metadata": {"type": "chat", "members": ["alice", "bob"]}}))
        .await;
    let session = created["session_id"].as_str().unwrap().to_string();
    let channel = chat_channel(&session);
    assert_eq!(created["channel"], channel.as_str());
    alice.subscribe(&[&channel]).await;
    bob.subscribe(&[&channel]).await;

    // the specification's send_message, as a WebSocket action
    alice
        .send(json!({"action": "send_message", "session_id": session, "content": "I think we should focus on mobile",
                     "metadata": {"device": "web", "priority": "normal"}}))
        .await;
    let sent = alice.expect("send_message reply", |v| v["action"] == "send_message").await;
    let message_id = sent["result"]["message_id"].as_str().unwrap().to_string();
    for client in [&mut alice, &mut bob] {
        let event = client.delivery(&channel).await;
        assert_eq!(event["op"], "INSERT");
        assert_eq!(event["id"], message_id.as_str());
        assert_eq!(event["session_id"], session.as_str());
        assert_eq!(event["position"], 1);
        assert_eq!(event["role"], "user");
    }
    bob.ok(json!({"action": "send_message", "session_id": session, "role": "bob", "content": "Great point!"})).await;
    assert_eq!(alice.delivery(&channel).await["position"], 2);

    // resync: the transcript, whole or after a position
    let transcript = bob.ok(json!({"action": "get_transcript", "session_id": session, "include_metadata": true})).await;
    let messages = transcript["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0]["content"], "I think we should focus on mobile");
    assert_eq!(messages[0]["metadata"]["device"], "web");
    assert_eq!(messages[1]["role"], "bob");
    assert_eq!(transcript["session"]["title"], "Product Brainstorm");
    assert_eq!(transcript["more"], false);
    let tail = bob.ok(json!({"action": "get_transcript", "session_id": session, "after_position": 1})).await;
    assert_eq!(tail["messages"].as_array().unwrap().len(), 1);
    assert!(tail["messages"][0].get("metadata").is_none(), "metadata only when asked");
    let page = bob.ok(json!({"action": "get_transcript", "session_id": session, "limit": 1})).await;
    assert_eq!(page["more"], true);

    // fork at the first message: the branch sees it, not the second
    let fork = alice
        .ok(json!({"action": "fork_session", "session_id": session, "title": "Mobile Design Discussion",
                   "parent_message_id": message_id, "metadata": {"focus": "mobile_design"}}))
        .await;
    let branch = fork["session_id"].as_str().unwrap().to_string();
    let branch_channel = chat_channel(&branch);
    alice.subscribe(&[&branch_channel]).await;
    alice.ok(json!({"action": "send_message", "session_id": branch, "content": "only in the branch"})).await;
    assert_eq!(alice.delivery(&branch_channel).await["position"], 2);
    bob.no_delivery(&branch_channel, Duration::from_millis(200)).await;
    let branch_transcript = alice.ok(json!({"action": "get_transcript", "session_id": branch})).await;
    let contents: Vec<&str> =
        branch_transcript["messages"].as_array().unwrap().iter().map(|m| m["content"].as_str().unwrap()).collect();
    assert_eq!(contents, ["I think we should focus on mobile", "only in the branch"]);
    assert_eq!(branch_transcript["session"]["parent_id"], session.as_str());

    let sessions = bob.ok(json!({"action": "list_sessions"})).await;
    let titles: Vec<&str> = sessions["sessions"].as_array().unwrap().iter().map(|s| s["title"].as_str().unwrap()).collect();
    assert_eq!(titles, ["Mobile Design Discussion", "Product Brainstorm"]);

    // SQL errors come back with their SQLSTATE
    let missing = alice
        .request(json!({"action": "send_message", "session_id": "01a21f10-a1fa-729b-9207-651564608c0c", "content": "x"}))
        .await;
    assert_eq!(missing["error"]["code"], "not_found", "{missing}");
    assert_eq!(missing["error"]["sqlstate"], "P0002");
    let blank_role = alice.request(json!({"action": "send_message", "session_id": session, "role": " ", "content": "x"})).await;
    assert_eq!(blank_role["error"]["code"], "invalid_argument", "{blank_role}");
    assert_eq!(blank_role["error"]["sqlstate"], "22023");
}

#[tokio::test]
async fn endpoints_health_ready_metrics_and_demo_page() {
    let db = TestDb::new().await;
    let hub = HubProcess::start(&db.hub_url().await, &["--log-format", "json"]).await;
    // structured logs: one JSON object per line
    let log = hub.log_text();
    // every line is a JSON object; the listen line may come before or after the LISTEN
    // connection's, which starts concurrently
    let lines: Vec<Value> = log.lines().map(|l| serde_json::from_str(l).expect("JSON log line")).collect();
    let listening = lines
        .iter()
        .find(|l| l["fields"]["message"].as_str().is_some_and(|m| m.contains("listening")))
        .unwrap_or_else(|| panic!("no 'listening' line in {log}"));
    assert_eq!(listening["level"], "INFO");
    let (status, body) = http_get(hub.port, "/healthz").await.unwrap();
    assert_eq!((status, body.trim()), (200, "ok"));
    let (status, body) = http_get(hub.port, "/readyz").await.unwrap();
    assert_eq!(status, 200);
    let ready: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["listener"], "up");
    let (status, body) = http_get(hub.port, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    for name in [
        "connections",
        "subscriptions",
        "messages_in_total",
        "messages_out_total",
        "dropped_messages_total",
        "listener_reconnects_total",
        "listener_up",
    ] {
        assert!(
            body.contains(&format!("\nmemoriesdb_hub_{name} ")) || body.starts_with(&format!("# HELP memoriesdb_hub_{name} ")),
            "{name} in\n{body}"
        );
    }
    // issue 14, defect 6: latency histograms, the process and the build. A chat message while
    // subscribed to its session gives every histogram a sample: the action's duration, the
    // event's time from commit (its created_at) to the socket, and its time in the queue.
    let mut client = WsClient::connect(&hub.ws_url("")).await;
    let session = client.ok(json!({"action": "create_session", "title": "metrics"})).await;
    client.subscribe(&[session["channel"].as_str().unwrap()]).await;
    client.ok(json!({"action": "send_message", "session_id": session["session_id"], "content": "timed"})).await;
    client.delivery(session["channel"].as_str().unwrap()).await;
    let (_, body) = http_get(hub.port, "/metrics").await.unwrap();
    for series in [
        "memoriesdb_hub_action_duration_seconds_bucket{action=\"send_message\",le=",
        "memoriesdb_hub_action_duration_seconds_count{action=\"send_message\"} ",
        "memoriesdb_hub_commit_to_send_seconds_bucket{le=",
        "memoriesdb_hub_queue_wait_seconds_bucket{le=",
        "memoriesdb_hub_db_pool_connections_max ",
        "memoriesdb_hub_db_pool_waiting ",
        "memoriesdb_hub_build_info{version=\"",
        "process_resident_memory_bytes ",
        "process_cpu_seconds_total ",
        "process_open_fds ",
        "process_start_time_seconds ",
    ] {
        assert!(body.contains(series), "{series} in\n{body}");
    }
    let (status, body) = http_get(hub.port, "/").await.unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("<title>MemoriesDB hub"), "{body}");
    assert!(!body.contains("http://") && !body.contains("https://"), "the demo page loads nothing from the network");
    // plain GET /ws is not an upgrade
    let (status, _) = http_get(hub.port, "/ws").await.unwrap();
    assert_eq!(status, 426);
}

/// Issue 14, defect 1: a client that subscribes in the URL and then has someone write must get
/// the write's event. The hub LISTENs before it completes the upgrade and says so in its first
/// frame, `{"event":"subscribed","channels":[...]}`.
#[tokio::test]
async fn url_subscriptions_are_live_when_the_upgrade_completes() {
    let db = TestDb::new().await;
    let hub = HubProcess::start(&db.hub_url().await, &[]).await;
    let sql = db.client().await;
    // keeps "marker" listened, so that a `sub` to it is live as soon as it is acknowledged
    let _keeper = WsClient::connect(&hub.ws_url("?c=marker")).await;

    let (mut lost, mut unacknowledged) = (Vec::new(), Vec::new());
    for i in 0..100 {
        let channel = format!("fresh_{i}");
        let mut client = WsClient::connect(&hub.ws_url(&format!("?c={channel}"))).await;
        // "subscribe, then write": another session writes right after the 101
        sql.execute("SELECT pg_notify($1, $2)", &[&channel, &i.to_string()]).await.unwrap();
        // PostgreSQL delivers notifications in commit order, and the hub queues them in order:
        // once the marker (committed later) has arrived, so has the first one, or it is lost
        client.subscribe(&["marker"]).await;
        sql.execute("SELECT pg_notify('marker', $1)", &[&i.to_string()]).await.unwrap();
        client.expect("the marker", move |v| v["channel"] == "marker" && v["payload"] == i).await;
        let first = channel.clone();
        if client.try_expect(Duration::ZERO, &move |v: &Value| v["channel"] == first.as_str()).await.is_none() {
            lost.push(i);
        }
        // and the client was told that its subscription is live (before the marker)
        let ack = json!({"event": "subscribed", "channels": [channel]});
        if client.try_expect(Duration::ZERO, &move |v: &Value| *v == ack).await.is_none() {
            unacknowledged.push(i);
        }
    }
    assert!(lost.is_empty(), "events lost right after subscribing in the URL: {} of 100 ({lost:?})", lost.len());
    assert!(unacknowledged.is_empty(), "no {{\"event\":\"subscribed\"}} for {} of 100", unacknowledged.len());
}

/// Issue 14, defect 4: RFC 6455 §8.1: a text frame that is not UTF-8 closes with 1007.
#[tokio::test]
async fn invalid_utf8_in_a_text_frame_closes_with_1007() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::Message;
    let db = TestDb::new().await;
    let hub = HubProcess::start(&db.hub_url().await, &[]).await;
    let mut client = WsClient::connect(&hub.ws_url("")).await;
    let frame = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    client.socket.send(Message::Frame(frame)).await.unwrap();
    let close = client.close_frame(WAIT).await;
    assert_eq!(close.as_ref().map(|(code, _)| *code), Some(1007), "{close:?}");
    // the hub is fine
    let mut other = WsClient::connect(&hub.ws_url("")).await;
    assert_eq!(other.ok(json!({"method": "ping"})).await, json!("pong"));
}

/// The hub names a session's channel (to authorize actions before they reach the database, and
/// in replies) exactly as the extension does, whose events go to memoriesdb.session_channel():
/// one naming rule, checked against the extension's own definition.
#[tokio::test]
async fn the_hub_names_session_channels_as_the_extension_does() {
    let db = support::TestDb::new().await;
    let client = db.client().await;
    for _ in 0..50 {
        let session = uuid::Uuid::from_u128(fastrand::u128(..));
        let extension: String =
            client.query_one("SELECT memoriesdb.session_channel($1)", &[&session]).await.unwrap().get(0);
        assert_eq!(memoriesdb_hub::channel::ChannelName::for_session(&session).as_str(), extension);
    }
}

#[tokio::test]
async fn search_finds_messages_by_words_and_by_meaning_when_the_database_can_embed() {
    let db = TestDb::new().await;
    let hub_url = db.hub_url().await;
    let hub = HubProcess::start(&hub_url, &[]).await;
    let mut client = WsClient::connect(&hub.ws_url("")).await;
    let created = client.ok(json!({"action": "create_session", "title": "Design"})).await;
    let session = created["session_id"].as_str().unwrap().to_string();
    for content in ["the phone layout needs bigger buttons", "we drink green tea at the office"] {
        client.ok(json!({"action": "send_message", "session_id": session, "content": content})).await;
    }

    // no embedding endpoint: by words
    let found = client.ok(json!({"action": "search", "query": "bigger buttons"})).await;
    assert_eq!(found["mode"], "text", "{found}");
    let results = found["results"].as_array().unwrap();
    assert_eq!(results.len(), 1, "{found}");
    assert_eq!(results[0]["content"], "the phone layout needs bigger buttons");
    assert_eq!(results[0]["session_id"], session.as_str());
    assert_eq!(results[0]["position"], 1);
    assert!(results[0]["snippet"].as_str().unwrap().contains("<b>"));

    // with an endpoint (one of the test's, answering like OpenAI's): by words and meaning
    let endpoint = Stub::start(std::sync::Arc::new(|_: &str| {
        Some(http("200 OK", r#"{"data":[{"embedding":[0.1,0.2,0.3]}],"model":"stub"}"#))
    }));
    db.client().await.batch_execute(&format!("ALTER DATABASE {} SET memoriesdb.embedding_url = '{}'", db.name, endpoint.url())).await.unwrap();
    let hub = HubProcess::start(&hub_url, &[]).await;
    let mut client = WsClient::connect(&hub.ws_url("")).await;
    let found = client.ok(json!({"action": "search", "query": "green tea", "session_id": session, "limit": 5})).await;
    assert_eq!(found["mode"], "hybrid", "{found}");
    assert_eq!(found["results"][0]["content"], "we drink green tea at the office", "{found}");
    assert_eq!(found["results"][0]["text_rank"], 1);
    // (found by words only: no vector rank, so no matched passage)
    assert_eq!((&found["results"][0]["chunk_start"], &found["results"][0]["chunk_end"]), (&Value::Null, &Value::Null), "{found}");
    assert!(found["results"][0].as_object().unwrap().contains_key("chunk_start"), "{found}");
    assert!(endpoint.request_count() >= 1, "the query was embedded");

    // bad requests
    let missing = client.request(json!({"action": "search"})).await;
    assert_eq!(missing["error"]["code"], "bad_request", "{missing}");
    let too_many = client.request(json!({"action": "search", "query": "x", "limit": 101})).await;
    assert_eq!(too_many["error"]["code"], "bad_request", "{too_many}");
    let unknown = client
        .request(json!({"action": "search", "query": "x", "session_id": "01a21f10-a1fa-729b-9207-651564608c0c"}))
        .await;
    assert_eq!(unknown["error"]["code"], "not_found", "{unknown}");
}
