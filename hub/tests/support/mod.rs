//! Test support: a fresh database with the extension per test (on the cluster scripts/test.sh
//! started, admin connection string in MEMORIESDB_TEST_ADMIN_URL), real hub processes, a
//! WebSocket client, raw HTTP, and a TCP proxy that can make PostgreSQL "go away".
#![allow(dead_code)]

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::net::TcpListener as StdTcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_postgres::NoTls;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

pub const HUB_BIN: &str = env!("CARGO_BIN_EXE_memoriesdb-hub");
static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub fn admin_url() -> String {
    std::env::var("MEMORIESDB_TEST_ADMIN_URL").expect(
        "MEMORIESDB_TEST_ADMIN_URL is not set: run the hub tests through scripts/test.sh, which starts a throwaway cluster",
    )
}

/// The value of one key in a libpq key=value string.
pub fn url_value(url: &str, key: &str) -> Option<String> {
    url.split_whitespace().find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(str::to_string))
}

fn replace_keys(url: &str, replacements: &[(&str, &str)]) -> String {
    let mut parts: Vec<String> = url
        .split_whitespace()
        .filter(|kv| !replacements.iter().any(|(k, _)| kv.starts_with(&format!("{k}="))))
        .map(str::to_string)
        .collect();
    parts.extend(replacements.iter().map(|(k, v)| format!("{k}={v}")));
    parts.join(" ")
}

/// A database of its own with `CREATE EXTENSION memoriesdb CASCADE`, dropped at the end. The
/// extension lives in schema `memoriesdb`, which is not on the search_path: SQL in tests names
/// it, as the hub does.
pub struct TestDb {
    pub name: String,
    admin_url: String,
    roles: Mutex<Vec<String>>,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let admin_url = admin_url();
        let name = format!("hub_it_{}_{}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst));
        let admin = connect(&admin_url).await;
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name}")).await.expect("drop database");
        // CREATE DATABASE fails while another session happens to be connected to the template
        let mut attempt = 0;
        while let Err(error) = admin.batch_execute(&format!("CREATE DATABASE {name}")).await {
            attempt += 1;
            assert!(attempt < 50, "create database: {error}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let db = TestDb { name, admin_url, roles: Mutex::new(Vec::new()) };
        // On a fresh cluster, two tests installing the extension at once race to create its
        // cluster-wide roles (23505 on pg_authid); the loser simply tries again.
        let client = db.client().await;
        let mut attempt = 0;
        while let Err(error) = client.batch_execute("CREATE EXTENSION memoriesdb CASCADE").await {
            attempt += 1;
            let duplicate = error.code().is_some_and(|c| c.code() == "23505");
            assert!(duplicate && attempt < 5, "create extension: {error}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        db
    }

    /// Connection string for this database (as the postgres superuser).
    pub fn url(&self) -> String {
        replace_keys(&self.admin_url, &[("dbname", &self.name)])
    }

    /// A login role that is not a superuser, member of memoriesdb_user (the extension's API) and
    /// of `member_of` (e.g. memoriesdb_trusted); dropped with the database. Returns its
    /// connection string.
    pub async fn role_url(&self, tag: &str, member_of: &[&str]) -> String {
        let role = format!("{}_{tag}", self.name);
        let admin = connect(&self.admin_url).await;
        admin
            .batch_execute(&format!("DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE"))
            .await
            .expect("create role");
        self.roles.lock().unwrap().push(role.clone());
        for group in ["memoriesdb_user"].iter().chain(member_of) {
            admin.batch_execute(&format!("GRANT {group} TO {role}")).await.expect("grant role");
        }
        replace_keys(&self.admin_url, &[("dbname", &self.name), ("user", &role)])
    }

    /// A role as [`role_url`](Self::role_url) makes, mapped to a new MemoriesDB user `user_name`
    /// (`memoriesdb.create_user(user_name, role)`): the role acts as that user. Returns the
    /// connection string and the user's id.
    pub async fn mapped_role_url(&self, tag: &str, user_name: &str) -> (String, String) {
        let url = self.role_url(tag, &[]).await;
        let role = url_value(&url, "user").unwrap();
        let user: String = self
            .client()
            .await
            .query_one("SELECT memoriesdb.create_user($1, $2)::text", &[&user_name, &role])
            .await
            .expect("create_user")
            .get(0);
        (url, user)
    }

    /// The database role of an anonymous hub, as a demo deployment has it: no superuser, a member
    /// of memoriesdb_user, mapped to the MemoriesDB user "demo", so every anonymous client acts as
    /// that user and row-level security applies.
    pub async fn hub_url(&self) -> String {
        self.mapped_role_url("hub", "demo").await.0
    }

    pub fn pg_port(&self) -> u16 {
        url_value(&self.admin_url, "port").and_then(|p| p.parse().ok()).unwrap_or(5432)
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.url()).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let roles = std::mem::take(&mut *self.roles.lock().unwrap());
        // Drop runs inside the test's runtime; use a thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                if let Ok((client, connection)) = tokio_postgres::connect(&admin_url, NoTls).await {
                    tokio::spawn(connection);
                    let _ = client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
                    for role in roles {
                        let _ = client.batch_execute(&format!("DROP ROLE IF EXISTS {role}")).await;
                    }
                }
            });
        })
        .join();
    }
}

/// The same connection string reached through another port on 127.0.0.1 (e.g. a proxy).
pub fn via_port(url: &str, port: u16) -> String {
    replace_keys(url, &[("host", "127.0.0.1"), ("port", &port.to_string())])
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("connect to PostgreSQL");
    tokio::spawn(connection);
    client
}

pub fn free_port() -> u16 {
    StdTcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A hub process. SIGTERM on drop (then SIGKILL if it lingers).
pub struct HubProcess {
    pub port: u16,
    child: Option<Child>,
    pub log: PathBuf,
}

impl HubProcess {
    /// Start a hub against `database_url` with extra flags; waits until /readyz says ready.
    pub async fn start(database_url: &str, extra: &[&str]) -> HubProcess {
        let hub = Self::spawn(database_url, extra);
        hub.wait_ready(Duration::from_secs(20)).await;
        hub
    }

    /// Start without waiting for readiness (e.g. when the database is unreachable).
    pub fn spawn(database_url: &str, extra: &[&str]) -> HubProcess {
        let port = free_port();
        let log = std::env::temp_dir().join(format!("memoriesdb-hub-test-{port}.log"));
        let log_file = std::fs::File::create(&log).unwrap();
        let child = Command::new(HUB_BIN)
            .args(["--port", &port.to_string(), "--database-url", database_url, "--log", "memoriesdb_hub=debug,info"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start memoriesdb-hub");
        HubProcess { port, child: Some(child), log }
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://127.0.0.1:{}/ws{query}", self.port)
    }

    pub async fn wait_ready(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok((200, _)) = http_get(self.port, "/readyz").await {
                return;
            }
            if Instant::now() > deadline {
                panic!("hub on port {} not ready in {limit:?}; log:\n{}", self.port, self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn metric(&self, name: &str) -> u64 {
        let (_, body) = http_get(self.port, "/metrics").await.expect("GET /metrics");
        body.lines()
            .find_map(|line| line.strip_prefix(&format!("memoriesdb_hub_{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("metric {name} missing"))
    }

    /// Wait until a metric satisfies a predicate.
    pub async fn wait_metric(&self, name: &str, limit: Duration, ok: impl Fn(u64) -> bool) -> u64 {
        let deadline = Instant::now() + limit;
        loop {
            let value = self.metric(name).await;
            if ok(value) {
                return value;
            }
            if Instant::now() > deadline {
                panic!("metric {name} = {value} did not reach the expected value in {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn terminate(&self) {
        if let Some(child) = &self.child {
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
        }
    }

    /// Wait for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.terminate();
            if self.wait_exit(Duration::from_secs(5)).is_none() {
                if let Some(child) = self.child.as_mut() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        // keep the hub's log only when the test failed
        if std::thread::panicking() {
            eprintln!("hub log kept: {}", self.log.display());
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// GET over a fresh TCP connection; returns (status, body).
pub async fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    http_request(port, &format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")).await
}

pub async fn http_request(port: u16, request: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    // read to the end, or until the body announced by Content-Length is complete (a refused
    // upgrade keeps the connection open)
    let read = async {
        let mut chunk = [0u8; 8192];
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok::<(), std::io::Error>(());
            }
            response.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&response);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse::<usize>().ok()).flatten()
                });
                if length.is_some_and(|len| body.len() >= len) {
                    return Ok(());
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "response timeout"))??;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// A raw WebSocket upgrade request with the given Host header (and extra headers); returns the
/// HTTP status (101 when the hub upgraded).
pub async fn upgrade_status(port: u16, host: &str, query: &str, headers: &[(&str, &str)]) -> u16 {
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let request = format!(
        "GET /ws{query} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    );
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buffer = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, stream.read(&mut buffer)).await.unwrap().unwrap();
    let head = String::from_utf8_lossy(&buffer[..n]).to_string();
    head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// A hub process that must refuse to start: its exit code and stderr.
pub fn refused_start(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut command = Command::new(HUB_BIN);
    command.args(["--port", &free_port().to_string()]).args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("start memoriesdb-hub");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("memoriesdb-hub {args:?} did not exit: it started");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    (status.code(), stderr)
}

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket client that keeps messages it was not waiting for.
pub struct WsClient {
    pub socket: Socket,
    backlog: VecDeque<Value>,
    next_id: u64,
}

pub const WAIT: Duration = Duration::from_secs(10);

impl WsClient {
    pub async fn connect(url: &str) -> WsClient {
        let (socket, _) = tokio_tungstenite::connect_async(url).await.unwrap_or_else(|e| panic!("connect {url}: {e}"));
        WsClient { socket, backlog: VecDeque::new(), next_id: 1 }
    }

    pub async fn try_connect(url: &str) -> Result<WsClient, tokio_tungstenite::tungstenite::Error> {
        let (socket, _) = tokio_tungstenite::connect_async(url).await?;
        Ok(WsClient { socket, backlog: VecDeque::new(), next_id: 1 })
    }

    pub async fn send(&mut self, value: Value) {
        self.socket.send(Message::Text(value.to_string().into())).await.expect("send");
    }

    pub async fn send_text(&mut self, text: &str) {
        self.socket.send(Message::Text(text.to_string().into())).await.expect("send");
    }

    /// Next JSON message from the socket (not the backlog); None when the connection ends.
    async fn read_json(&mut self, limit: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let message = tokio::time::timeout_at(deadline, self.socket.next()).await.ok()??;
            match message {
                Ok(Message::Text(text)) => {
                    return Some(
                        serde_json::from_str(text.as_str()).unwrap_or_else(|e| panic!("hub sent invalid JSON {text}: {e}")),
                    )
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// The first message (backlog first) satisfying `matches`; others are kept for later.
    pub async fn expect(&mut self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        self.try_expect(WAIT, &matches)
            .await
            .unwrap_or_else(|| panic!("did not receive {what} within {WAIT:?}; backlog: {:?}", self.backlog))
    }

    pub async fn try_expect(&mut self, limit: Duration, matches: &impl Fn(&Value) -> bool) -> Option<Value> {
        if let Some(index) = self.backlog.iter().position(matches) {
            return self.backlog.remove(index);
        }
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let value = self.read_json(left).await?;
            if matches(&value) {
                return Some(value);
            }
            self.backlog.push_back(value);
        }
    }

    /// A delivery on `channel`.
    pub async fn delivery(&mut self, channel: &str) -> Value {
        let channel = channel.to_string();
        self.expect(&format!("a message on {channel}"), move |v| v["channel"] == channel.as_str()).await["payload"].clone()
    }

    /// Assert that nothing on `channel` arrives within `limit`.
    pub async fn no_delivery(&mut self, channel: &str, limit: Duration) {
        let channel = channel.to_string();
        if let Some(value) = self.try_expect(limit, &move |v: &Value| v["channel"] == channel.as_str()).await {
            panic!("unexpected delivery {value}");
        }
    }

    /// Send a request with a fresh id and return the reply to it.
    pub async fn request(&mut self, mut request: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        request["id"] = json!(id);
        self.send(request.clone()).await;
        self.expect(&format!("the reply to {request}"), move |v| v["id"] == id && v.get("channel").is_none()).await
    }

    /// A request that must succeed; returns its result.
    pub async fn ok(&mut self, request: Value) -> Value {
        let reply = self.request(request.clone()).await;
        assert!(reply.get("error").is_none(), "{request} failed: {reply}");
        reply["result"].clone()
    }

    pub async fn subscribe(&mut self, channels: &[&str]) -> Value {
        self.ok(json!({"method": "sub", "params": {"channels": channels}})).await
    }

    pub async fn publish(&mut self, channel: &str, content: Value) {
        self.ok(json!({"method": "pub", "params": {"channel": channel, "content": content}})).await;
    }

    /// Read until the hub closes the connection; returns the close frame's code and reason.
    pub async fn close_frame(&mut self, limit: Duration) -> Option<(u16, String)> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Err(_) => panic!("connection not closed within {limit:?}"),
                Ok(None) | Ok(Some(Err(_))) => return None,
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                }
                Ok(Some(Ok(_))) => continue,
            }
        }
    }
}

/// A TCP proxy in front of PostgreSQL. `sever` closes every proxied connection and refuses new
/// ones (the database "goes away"); `restore` accepts again on the same port.
pub struct PgProxy {
    pub port: u16,
    target: u16,
    generation: Mutex<CancellationToken>,
}

impl PgProxy {
    pub async fn start(target: u16) -> Arc<PgProxy> {
        let port = free_port();
        let proxy = Arc::new(PgProxy { port, target, generation: Mutex::new(CancellationToken::new()) });
        proxy.clone().accept().await;
        proxy
    }

    async fn accept(self: Arc<Self>) {
        let token = self.generation.lock().unwrap().clone();
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.expect("bind proxy port");
        let target = self.target;
        tokio::spawn(async move {
            loop {
                let (mut inbound, _) = tokio::select! {
                    _ = token.cancelled() => return,
                    accepted = listener.accept() => match accepted { Ok(pair) => pair, Err(_) => continue },
                };
                let token = token.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await else { return };
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
    }

    pub fn sever(&self) {
        let mut generation = self.generation.lock().unwrap();
        generation.cancel();
        *generation = CancellationToken::new();
    }

    pub async fn restore(self: &Arc<Self>) {
        self.clone().accept().await;
    }
}

/// Channel name for a session's chat events.
pub fn chat_channel(session_id: &str) -> String {
    format!("chat_updates_{}", session_id.replace('-', ""))
}
