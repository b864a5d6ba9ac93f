//! Robustness against a real database and real hub processes: losing the LISTEN connection,
//! PostgreSQL going away, several hubs on one database, slow and silent clients, floods of
//! garbage, limits, timeouts and graceful shutdown.

mod support;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

async fn terminate_listener(db: &TestDb) -> i64 {
    let sql = db.client().await;
    let row = sql
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
              WHERE application_name = 'memoriesdb-hub-listener' AND datname = current_database()",
            &[],
        )
        .await
        .unwrap();
    row.get(0)
}

#[tokio::test]
async fn killed_listen_connection_reconnects_relistens_and_tells_clients() {
    let db = TestDb::new().await;
    let hub = HubProcess::start(&db.hub_url().await, &["--reconnect-max-backoff", "500ms"]).await;
    let mut client = WsClient::connect(&hub.ws_url("?c=alpha&c=beta")).await;
    let sql = db.client().await;

    for round in 1..=3u64 {
        assert_eq!(terminate_listener(&db).await, 1, "one LISTEN connection");
        let event = client.expect("the reconnected event", |v| v["event"] == "reconnected").await;
        assert_eq!(event, json!({"event": "reconnected"}));
        assert_eq!(hub.metric("listener_reconnects_total").await, round);
        // everything is listened again
        sql.batch_execute("NOTIFY alpha, 'a'; NOTIFY beta, 'b'").await.unwrap();
        assert_eq!(client.delivery("alpha").await, json!("a"));
        assert_eq!(client.delivery("beta").await, json!("b"));
    }
    let (status, _) = http_get(hub.port, "/readyz").await.unwrap();
    assert_eq!(status, 200);
}

#[tokio::test]
async fn database_going_away_and_coming_back() {
    let db = TestDb::new().await;
    let proxy = PgProxy::start(db.pg_port()).await;
    let hub = HubProcess::start(
        &via_port(&db.hub_url().await, proxy.port),
        &["--reconnect-max-backoff", "300ms", "--listener-probe-interval", "500ms"],
    )
    .await;
    let mut client = WsClient::connect(&hub.ws_url("?c=news")).await;
    client.publish("news", json!("before")).await;
    assert_eq!(client.delivery("news").await["content"], "before");

    proxy.sever();
    // readiness reports the lost LISTEN connection
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = http_get(hub.port, "/readyz").await.unwrap();
        if status == 503 {
            assert!(body.contains("\"listener\":\"down\""), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "readyz still 200 after the database went away");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // a pub now fails loudly, never silently
    let reply = client.request(json!({"method": "pub", "params": {"channel": "news", "content": "lost?"}})).await;
    assert_eq!(reply["error"]["code"], "unavailable", "{reply}");
    // a subscription made now is acknowledged as pending
    let reply = client.ok(json!({"method": "sub", "params": {"channels": ["later"]}})).await;
    assert_eq!(reply["pending"], json!(["later"]), "{reply}");

    proxy.restore().await;
    client.expect("the reconnected event", |v| v["event"] == "reconnected").await;
    hub.wait_ready(WAIT).await;
    assert!(hub.metric("listener_reconnects_total").await >= 1);
    // both the old and the pending channel are listened again
    let sql = db.client().await;
    sql.batch_execute("NOTIFY news, 'after'; NOTIFY later, 'now'").await.unwrap();
    assert_eq!(client.delivery("news").await, json!("after"));
    assert_eq!(client.delivery("later").await, json!("now"));
    client.publish("news", json!("pub works again")).await;
    assert_eq!(client.delivery("news").await["content"], "pub works again");
}

#[tokio::test]
async fn hub_starts_before_the_database_is_reachable() {
    let db = TestDb::new().await;
    let proxy = PgProxy::start(db.pg_port()).await;
    proxy.sever();
    let hub = HubProcess::spawn(&via_port(&db.hub_url().await, proxy.port), &["--reconnect-max-backoff", "200ms"]);
    // serves health but not readiness
    let deadline = Instant::now() + WAIT;
    while http_get(hub.port, "/healthz").await.is_err() {
        assert!(Instant::now() < deadline, "hub did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(http_get(hub.port, "/readyz").await.unwrap().0, 503);
    proxy.restore().await;
    hub.wait_ready(WAIT).await;
}

#[tokio::test]
async fn two_hubs_on_one_database_see_each_others_messages() {
    let db = TestDb::new().await;
    let hub_url = db.hub_url().await;
    let hub_a = HubProcess::start(&hub_url, &[]).await;
    let hub_b = HubProcess::start(&hub_url, &[]).await;
    let mut on_a = WsClient::connect(&hub_a.ws_url("?c=shared")).await;
    let mut on_b = WsClient::connect(&hub_b.ws_url("?c=shared")).await;

    on_a.publish("shared", json!("from a")).await;
    assert_eq!(on_b.delivery("shared").await["content"], "from a");
    assert_eq!(on_a.delivery("shared").await["content"], "from a");
    on_b.publish("shared", json!("from b")).await;
    assert_eq!(on_a.delivery("shared").await["content"], "from b");
    assert_eq!(on_b.delivery("shared").await["content"], "from b");

    // a chat message sent through one hub reaches a subscriber on the other
    let session = on_a.ok(json!({"action": "create_session", "title": "across hubs"})).await;
    let channel = session["channel"].as_str().unwrap().to_string();
    on_b.subscribe(&[&channel]).await;
    on_a.ok(json!({"action": "send_message", "session_id": session["session_id"], "content": "hi b"})).await;
    assert_eq!(on_b.delivery(&channel).await["position"], 1);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_and_slows_no_one() {
    let db = TestDb::new().await;
    // bursts of 100 fit easily in a 512-message queue; only a client that stops reading overflows it
    let hub = HubProcess::start(&db.hub_url().await, &["--outbound-queue", "512", "--write-timeout", "3s"]).await;

    // the stalled client: a tiny receive buffer and it never reads
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(([127, 0, 0, 1], hub.port).into()).await.unwrap();
    let (mut stalled, _) = tokio_tungstenite::client_async(hub.ws_url("?c=flood"), stream).await.unwrap();
    let mut reader = WsClient::connect(&hub.ws_url("?c=flood")).await;

    const BATCHES: usize = 40;
    const PER_BATCH: usize = 100;
    const MESSAGES: usize = BATCHES * PER_BATCH;
    let started = Instant::now();
    let sql = db.client().await;
    let sender = tokio::spawn(async move {
        for batch in 0..BATCHES {
            let first = batch * PER_BATCH + 1;
            let last = first + PER_BATCH - 1;
            sql.batch_execute(&format!(
                "SELECT pg_notify('flood', i || ':' || repeat('x', 6000)) FROM generate_series({first}, {last}) i"
            ))
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    for i in 1..=MESSAGES {
        let payload = reader.delivery("flood").await;
        let text = payload.as_str().unwrap();
        assert!(text.starts_with(&format!("{i}:")), "message {i} in order");
    }
    sender.await.unwrap();
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(15), "the reading client got {MESSAGES} messages in {elapsed:?}");

    hub.wait_metric("slow_client_disconnects_total", WAIT, |n| n == 1).await;
    assert!(hub.metric("dropped_messages_total").await > 0);
    // the stalled client finds its connection closed when it finally reads
    let deadline = Instant::now() + WAIT;
    let mut received = 0;
    let mut close_reason = None;
    loop {
        assert!(Instant::now() < deadline, "stalled client still connected");
        match tokio::time::timeout(WAIT, stalled.next()).await {
            Ok(Some(Ok(Message::Text(_)))) => received += 1,
            Ok(Some(Ok(Message::Close(frame)))) => {
                close_reason = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                break;
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_))) | Ok(None) => break,
            Err(_) => panic!("stalled client neither closed nor fed"),
        }
    }
    assert!(received < MESSAGES, "the stalled client lost messages ({received} received)");
    if let Some((code, reason)) = close_reason {
        assert_eq!(code, 1008, "{reason}");
        assert!(reason.contains("dropped"), "{reason}");
    }
    hub.wait_metric("connections", WAIT, |n| n == 1).await;
    // issue 14, defect 6: an operator sees who was cut off, and why, at the default log level
    let log = hub.log_text();
    assert!(
        log.lines().any(|l| l.contains(" INFO ") && l.contains("slow client disconnected") && l.contains("dropped=")),
        "no info line about the slow client in:\n{log}"
    );
}

#[tokio::test]
async fn silent_clients_fail_the_heartbeat_and_idle_ones_time_out() {
    let db = TestDb::new().await;
    let hub =
        HubProcess::start(&db.hub_url().await, &["--ping-interval", "200ms", "--pong-timeout", "300ms", "--idle-timeout", "1s"])
            .await;
    // never polled, so it never answers pings
    let (mut silent, _) = tokio_tungstenite::connect_async(hub.ws_url("?c=x")).await.unwrap();
    // answers pings (it reads) and is subscribed: stays
    let mut lively = WsClient::connect(&hub.ws_url("?c=x")).await;
    // answers pings but has no subscriptions and sends nothing: idle
    let mut idle = WsClient::connect(&hub.ws_url("")).await;

    // both readers answer pings while they read; the silent one is dropped meanwhile
    let (nothing, close) =
        tokio::join!(lively.try_expect(Duration::from_millis(2000), &|_: &Value| false), idle.close_frame(WAIT));
    assert!(nothing.is_none());
    assert_eq!(close.as_ref().map(|(code, _)| *code), Some(1000), "{close:?}");
    assert!(close.unwrap().1.contains("idle"));
    assert_eq!(hub.metric("idle_timeouts_total").await, 1);
    assert_eq!(hub.metric("heartbeat_timeouts_total").await, 1);
    let close = loop {
        match tokio::time::timeout(WAIT, silent.next()).await.expect("silent client closed") {
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            _ => break None,
        }
    };
    assert!(close.is_none() || close == Some(1011), "{close:?}");
    assert_eq!(lively.ok(json!({"method": "ping"})).await, json!("pong"));
}

#[tokio::test]
async fn incomplete_handshakes_time_out() {
    let db = TestDb::new().await;
    let hub = HubProcess::start(&db.hub_url().await, &["--handshake-timeout", "500ms"]).await;
    let started = Instant::now();
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", hub.port)).await.unwrap();
    stream.write_all(b"GET /ws?c=x HTTP/1.1\r\nHost: 127.0.0.1\r\n").await.unwrap(); // never finished
    let mut buffer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buffer))
        .await
        .expect("the hub closes a connection whose request head never completes")
        .ok();
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}

#[tokio::test]
async fn connection_cap_refuses_extra_clients_with_503() {
    let db = TestDb::new().await;
    let hub = HubProcess::start(&db.hub_url().await, &["--max-connections", "3"]).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(WsClient::connect(&hub.ws_url("")).await);
    }
    match WsClient::try_connect(&hub.ws_url("")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503)
        }
        Err(other) => panic!("expected 503, got {other}"),
        Ok(_) => panic!("a fourth connection was accepted"),
    }
    assert!(hub.metric("connections_rejected_total").await >= 1);
    drop(clients.pop());
    hub.wait_metric("connections", WAIT, |n| n == 2).await;
    let mut again = WsClient::connect(&hub.ws_url("")).await;
    assert_eq!(again.ok(json!({"method": "ping"})).await, json!("pong"));
}

#[tokio::test]
async fn a_flood_of_garbage_never_stalls_the_hub() {
    let db = TestDb::new().await;
    let hub = HubProcess::start(&db.hub_url().await, &[]).await;
    let mut bystander = WsClient::connect(&hub.ws_url("?c=calm")).await;

    // a flooder that reads its replies: every bad frame gets its error reply
    let mut flooder = WsClient::connect(&hub.ws_url("")).await;
    let deep = "[".repeat(10_000);
    let garbage: Vec<String> = vec![
        "{".into(),
        "null".into(),
        "".into(),
        deep,
        "{\"method\":\"sub\",\"params\":{\"channels\":\"\u{0}\"}}".into(),
        "{\"method\":\"pub\",\"params\":{\"channel\":\"x\",\"content\":1e999999}}".into(),
        "{\"action\":\"fork_session\",\"session_id\":[],\"title\":{}}".into(),
        "\u{feff}{}".into(),
        // a list longer than --max-channels-per-connection, even of one name
        format!("{{\"method\":\"sub\",\"params\":{{\"channels\":[{}]}}}}", vec!["\"a\""; 101].join(",")),
    ];
    const ROUNDS: usize = 300;
    // The flooder reads its replies after each burst: a client that only writes would (rightly)
    // be cut off as a slow reader once its reply queue fills, which the next part tests.
    let mut errors = 0;
    let mut successes = 0;
    let writer = async {
        for _ in 0..ROUNDS {
            for text in &garbage {
                flooder.socket.feed(Message::Text(text.clone().into())).await.unwrap();
            }
            flooder.socket.flush().await.unwrap();
            for _ in 0..garbage.len() {
                let reply = flooder.expect("a reply", |_| true).await;
                if reply.get("error").is_some() {
                    errors += 1;
                } else {
                    successes += 1;
                }
            }
        }
    };
    // meanwhile the bystander's round trips stay fast
    let bystander_task = async {
        let mut worst = Duration::ZERO;
        for i in 0..30 {
            let started = Instant::now();
            bystander.publish("calm", json!(i)).await;
            bystander.delivery("calm").await;
            worst = worst.max(started.elapsed());
        }
        worst
    };
    let ((), worst) = tokio::join!(writer, bystander_task);
    assert!(worst < Duration::from_secs(1), "a bystander's round trip took {worst:?} during the flood");
    // every garbage frame was answered with an error
    let expected_errors = ROUNDS * garbage.len();
    assert_eq!((errors, successes), (expected_errors, 0));

    // a flooder that never reads fills its own queue and is cut off; nobody else notices
    let (mut rude, _) = tokio_tungstenite::connect_async(hub.ws_url("")).await.unwrap();
    let rude_task = tokio::spawn(async move {
        for _ in 0..200_000 {
            if rude.feed(Message::Text("{".into())).await.is_err() {
                return;
            }
        }
        let _ = rude.flush().await;
    });
    hub.wait_metric("slow_client_disconnects_total", Duration::from_secs(30), |n| n >= 1).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), rude_task).await;
    let started = Instant::now();
    bystander.publish("calm", json!("still here")).await;
    assert_eq!(bystander.delivery("calm").await["content"], "still here");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(http_get(hub.port, "/healthz").await.unwrap().0, 200);
}

#[tokio::test]
async fn sigterm_closes_every_connection_with_1001_and_exits() {
    let db = TestDb::new().await;
    let mut hub = HubProcess::start(&db.hub_url().await, &[]).await;
    let mut first = WsClient::connect(&hub.ws_url("?c=a")).await;
    let mut second = WsClient::connect(&hub.ws_url("")).await;
    hub.terminate();
    for client in [&mut first, &mut second] {
        let close = client.close_frame(WAIT).await;
        assert_eq!(close.as_ref().map(|(code, _)| *code), Some(1001), "{close:?}");
    }
    assert_eq!(hub.wait_exit(Duration::from_secs(10)), Some(0), "log:\n{}", hub.log_text());
}

/// Issue 14, defect 6: a failing LISTEN connection is logged with PostgreSQL's reason, not just
/// "db error".
#[tokio::test]
async fn listen_connection_failures_are_logged_with_their_cause() {
    let db = TestDb::new().await;
    let hub_url = db.hub_url().await;
    let hub = HubProcess::start(&hub_url, &["--reconnect-max-backoff", "200ms"]).await;
    let role = url_value(&hub_url, "user").unwrap();
    db.client().await.batch_execute(&format!("ALTER ROLE {role} NOLOGIN")).await.unwrap();
    assert_eq!(terminate_listener(&db).await, 1);
    let deadline = Instant::now() + WAIT;
    while !hub.log_text().contains("is not permitted to log in") {
        assert!(Instant::now() < deadline, "the cause is not in the log:\n{}", hub.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    db.client().await.batch_execute(&format!("ALTER ROLE {role} LOGIN")).await.unwrap();
    hub.wait_ready(WAIT).await;
}

/// Hub backends (pooled connections) waiting for a lock.
async fn hub_backends_waiting_on_locks(sql: &tokio_postgres::Client) -> i64 {
    sql.query_one(
        "SELECT count(*) FROM pg_stat_activity
          WHERE application_name = 'memoriesdb-hub' AND datname = current_database() AND wait_event_type = 'Lock'",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// Issue 14, defect 2: a session whose row is locked by someone else (a psql transaction left
/// open) ties up at most a few pooled connections, for at most --lock-timeout; every other
/// client's `pub` and chat actions keep working, and the stuck requests get a `busy` error that
/// names the session.
#[tokio::test]
async fn a_locked_session_cannot_take_the_whole_pool() {
    let db = TestDb::new().await;
    let hub_url = db.hub_url().await;
    let hub = HubProcess::start(&hub_url, &["--db-pool-size", "4", "--statement-timeout", "30s"]).await;
    let mut bystander = WsClient::connect(&hub.ws_url("?c=calm")).await;
    let stuck = bystander.ok(json!({"action": "create_session", "title": "stuck"})).await;
    let other = bystander.ok(json!({"action": "create_session", "title": "other"})).await;
    let stuck_id = stuck["session_id"].as_str().unwrap().to_string();

    // psql left a transaction open holding the session's row
    let locker = db.client().await;
    locker.batch_execute("BEGIN").await.unwrap();
    locker.execute("SELECT 1 FROM memoriesdb.memory_sessions WHERE id = $1::text::uuid FOR UPDATE", &[&stuck_id]).await.unwrap();

    // eight clients write to the stuck session at once
    const STUCK: usize = 8;
    let replies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..STUCK {
        let mut client = WsClient::connect(&hub.ws_url("")).await;
        let (replies, session) = (replies.clone(), stuck_id.clone());
        tasks.push(tokio::spawn(async move {
            let request = json!({"action": "send_message", "session_id": session, "content": format!("stuck {i}")});
            let reply = tokio::time::timeout(Duration::from_secs(60), client.request(request)).await.expect("a reply");
            replies.lock().unwrap().push(reply);
        }));
    }
    // until every one of them is either answered or waiting for the lock, or the pool is all
    // taken by waiters
    let sql = db.client().await;
    let deadline = Instant::now() + WAIT;
    loop {
        let waiting = hub_backends_waiting_on_locks(&sql).await;
        let answered = replies.lock().unwrap().len() as i64;
        if waiting == 4 || waiting + answered == STUCK as i64 {
            break;
        }
        assert!(Instant::now() < deadline, "{waiting} waiting, {answered} answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // everyone else is served
    let reply = bystander.request(json!({"method": "pub", "params": {"channel": "calm", "content": "still here"}})).await;
    assert!(reply.get("error").is_none(), "pub failed while one session is locked: {reply}");
    bystander.delivery("calm").await;
    bystander.ok(json!({"action": "send_message", "session_id": other["session_id"], "content": "unaffected"})).await;

    // the stuck requests were refused, naming the session, never "database unavailable"
    for task in tasks {
        task.await.unwrap();
    }
    for reply in replies.lock().unwrap().iter() {
        assert_eq!(reply["error"]["code"], "busy", "{reply}");
        assert_eq!(reply["error"]["session_id"], stuck_id.as_str(), "{reply}");
        assert!(reply["error"]["message"].as_str().unwrap().contains(&stuck_id), "{reply}");
    }
    assert!(hub.metric("busy_replies_total").await >= STUCK as u64);
    // and once the lock is gone the session takes messages again
    locker.batch_execute("ROLLBACK").await.unwrap();
    bystander.ok(json!({"action": "send_message", "session_id": stuck_id, "content": "unstuck"})).await;
    drop(hub);

    // When the pool is all taken anyway (here: a pool of 2, both stuck on the lock), readiness
    // says so while a request waits for a connection.
    let hub = HubProcess::start(&hub_url, &["--db-pool-size", "2", "--lock-timeout", "3s"]).await;
    locker.batch_execute("BEGIN").await.unwrap();
    locker.execute("SELECT 1 FROM memoriesdb.memory_sessions WHERE id = $1::text::uuid FOR UPDATE", &[&stuck_id]).await.unwrap();
    let mut holders = Vec::new();
    for _ in 0..2 {
        let mut client = WsClient::connect(&hub.ws_url("")).await;
        client.send(json!({"action": "send_message", "session_id": stuck_id, "content": "holds a connection", "id": 1})).await;
        holders.push(client);
    }
    let deadline = Instant::now() + WAIT;
    while hub_backends_waiting_on_locks(&sql).await < 2 {
        assert!(Instant::now() < deadline, "the two requests did not reach the lock");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut third = WsClient::connect(&hub.ws_url("")).await;
    third.send(json!({"method": "pub", "params": {"channel": "calm", "content": "no connection"}, "id": 1})).await;
    let deadline = Instant::now() + WAIT;
    let body = loop {
        let (status, body) = http_get(hub.port, "/readyz").await.unwrap();
        if status == 503 {
            break body;
        }
        assert!(Instant::now() < deadline, "readyz stayed 200 with the pool saturated: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let ready: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["db_pool"]["saturated"], true, "{body}");
    assert_eq!(ready["db_pool"]["max"], 2, "{body}");
    assert!(hub.metric("db_pool_waiting").await >= 1);
    // the holders give up their lock waits (and connections) after --lock-timeout, before the
    // pub, which came later, has waited as long for a connection: it is served, or told busy
    let reply = third.expect("the pub's reply", |v| v["id"] == 1).await;
    assert!(reply.get("error").is_none() || reply["error"]["code"] == "busy", "{reply}");
    for mut client in holders {
        let reply = client.expect("the reply", |v| v["id"] == 1).await;
        assert_eq!(reply["error"]["code"], "busy", "lock_timeout: {reply}");
    }
    locker.batch_execute("ROLLBACK").await.unwrap();
    hub.wait_ready(WAIT).await;
}

/// Peak and current resident memory of a process (KiB), from /proc.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Issue 14, defect 3: outbound queues are bounded in total, not only per client. A flood of
/// stalled clients, each with a backlog it is allowed on its own, keeps the hub's peak RSS
/// within --outbound-budget-mib (plus the process's own baseline), the largest backlogs are
/// shed, and a client that reads gets every message.
#[tokio::test]
async fn stalled_clients_stay_within_the_global_memory_budget() {
    const BUDGET_MIB: u64 = 8;
    // each stalled socket also parks up to 4 MiB in the kernel (tcp_wmem), which is not RSS
    const STALLED: usize = 16;
    const PER_CHANNEL: usize = 1000;
    const PAYLOAD: usize = 7000;
    let db = TestDb::new().await;
    let budget = BUDGET_MIB.to_string();
    let hub = HubProcess::start(&db.hub_url().await, &["--outbound-budget-mib", &budget, "--write-timeout", "60s"]).await;
    let mut reader = WsClient::connect(&hub.ws_url("?c=stall_0")).await;
    let mut stalled = Vec::new();
    for k in 0..STALLED {
        // a tiny receive buffer and never read: each holds up to PER_CHANNEL messages of its own
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(([127, 0, 0, 1], hub.port).into()).await.unwrap();
        let (client, _) = tokio_tungstenite::client_async(hub.ws_url(&format!("?c=stall_{k}")), stream).await.unwrap();
        stalled.push(client);
    }
    let (_, baseline_kib) = memory_kib(hub.pid());

    let sql = db.client().await;
    for k in 0..STALLED {
        sql.batch_execute(&format!(
            "SELECT pg_notify('stall_{k}', i || ':' || repeat('x', {PAYLOAD})) FROM generate_series(1, {PER_CHANNEL}) i"
        ))
        .await
        .unwrap();
    }
    for i in 1..=PER_CHANNEL {
        let payload = reader.delivery("stall_0").await;
        assert!(payload.as_str().unwrap().starts_with(&format!("{i}:")), "message {i} in order");
    }
    hub.wait_metric("notifications_total", Duration::from_secs(60), |n| n == (STALLED * PER_CHANNEL) as u64).await;
    let (peak_kib, _) = memory_kib(hub.pid());
    let growth_mib = peak_kib.saturating_sub(baseline_kib) / 1024;
    let offered_mib = (STALLED * PER_CHANNEL * PAYLOAD / (1024 * 1024)) as u64;
    eprintln!(
        "peak RSS growth {growth_mib} MiB with {STALLED} stalled clients offered {offered_mib} MiB; budget {BUDGET_MIB} MiB"
    );
    // generous: the budget twice over, plus 16 MiB for the allocator and frames in flight
    assert!(growth_mib <= 2 * BUDGET_MIB + 16, "peak RSS grew {growth_mib} MiB; budget {BUDGET_MIB} MiB");
    assert!(hub.metric("memory_budget_sheds_total").await >= 1);
    // the reader was never the one shed
    assert_eq!(reader.ok(json!({"method": "ping"})).await, json!("pong"));
    drop(stalled);
}

/// Issue 14, defect 1, while the database is away: the upgrade is not held up, the greeting lists
/// the URL's channels as pending, and `reconnected` follows once they are live.
#[tokio::test]
async fn url_subscriptions_while_the_database_is_away_are_acknowledged_as_pending() {
    let db = TestDb::new().await;
    let proxy = PgProxy::start(db.pg_port()).await;
    let hub = HubProcess::start(&via_port(&db.hub_url().await, proxy.port), &["--reconnect-max-backoff", "300ms"]).await;
    proxy.sever();
    let deadline = Instant::now() + WAIT;
    while http_get(hub.port, "/readyz").await.unwrap().0 != 503 {
        assert!(Instant::now() < deadline, "readyz still 200 after the database went away");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut client = WsClient::connect(&hub.ws_url("?c=later&c=news")).await;
    let ack = client.expect("the greeting", |v| v["event"] == "subscribed").await;
    assert_eq!(ack, json!({"event": "subscribed", "channels": ["later", "news"], "pending": ["later", "news"]}));
    proxy.restore().await;
    client.expect("the reconnected event", |v| v["event"] == "reconnected").await;
    db.client().await.batch_execute("NOTIFY later, 'live'").await.unwrap();
    assert_eq!(client.delivery("later").await, json!("live"));
}
