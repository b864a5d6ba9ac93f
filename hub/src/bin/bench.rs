//! memoriesdb-hub-bench: the hub's benchmark client (run by bench/hub/run.sh, which starts a
//! throwaway cluster and a release hub). Built with `--features bench`.
//!
//!   latency      COMMIT of add_message_to_session -> WebSocket client, with N clients all
//!                subscribed to the session; a raw libpq LISTEN client measured in the same run
//!   fanout-one   one channel, N subscribers: deliveries per second
//!   fanout-many  N channels, one subscriber each: deliveries per second
//!   idle         RSS growth of the hub per idle connection
//!
//! Each prints one JSON object on stdout.

use futures_util::StreamExt;
use serde_json::json;
use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

struct Args {
    command: String,
    hub: String,
    db: String,
    clients: usize,
    messages: usize,
    interval_ms: u64,
    hub_pid: u32,
    /// latency: how many of the clients subscribe to the session (the others to channels of their own)
    subscribers: usize,
}

fn parse_args() -> Result<Args> {
    let mut args = std::env::args().skip(1);
    let command = args.next().ok_or("usage: memoriesdb-hub-bench latency|fanout-one|fanout-many|idle --hub ws://HOST:PORT --db CONNINFO [--clients N] [--messages N] [--interval-ms N] [--hub-pid PID]")?;
    let mut parsed = Args {
        command,
        hub: String::new(),
        db: String::new(),
        clients: 1000,
        messages: 200,
        interval_ms: 20,
        hub_pid: 0,
        subscribers: usize::MAX,
    };
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--hub" => parsed.hub = value,
            "--db" => parsed.db = value,
            "--clients" => parsed.clients = value.parse()?,
            "--messages" => parsed.messages = value.parse()?,
            "--interval-ms" => parsed.interval_ms = value.parse()?,
            "--hub-pid" => parsed.hub_pid = value.parse()?,
            "--subscribers" => parsed.subscribers = value.parse()?,
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    Ok(parsed)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = runtime.block_on(async {
        match args.command.as_str() {
            "latency" => latency(&args).await,
            "fanout-one" => fanout(&args, false).await,
            "fanout-many" => fanout(&args, true).await,
            "idle" => idle(&args).await,
            other => Err(format!("unknown command {other}").into()),
        }
    })?;
    println!("{result}");
    Ok(())
}

async fn sql(db: &str) -> Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(db, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Open `count` connections, at most 64 handshakes at a time.
async fn connect_many(hub: &str, queries: Vec<String>) -> Result<Vec<Socket>> {
    let semaphore = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::with_capacity(queries.len());
    for query in queries {
        let url = format!("{hub}/ws{query}");
        let permit = semaphore.clone().acquire_owned().await?;
        tasks.push(tokio::spawn(async move {
            // small eagerly allocated read buffers (the default is 128 KiB per connection), no Nagle
            let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4096);
            let result = tokio_tungstenite::connect_async_with_config(url, Some(config), true).await.map(|(socket, _)| socket);
            drop(permit);
            result
        }));
    }
    let mut sockets = Vec::with_capacity(tasks.len());
    for task in tasks {
        sockets.push(task.await??);
    }
    Ok(sockets)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(mut samples: Vec<f64>) -> serde_json::Value {
    samples.sort_by(|a, b| a.total_cmp(b));
    json!({
        "samples": samples.len(),
        "p50_ms": percentile(&samples, 50.0),
        "p90_ms": percentile(&samples, 90.0),
        "p99_ms": percentile(&samples, 99.0),
        "max_ms": samples.last().copied().unwrap_or(f64::NAN),
    })
}

/// The message id in an extension event payload (`... "id" : "0190...", ...`). A substring scan,
/// not a JSON parse, so that the bench client spends as little CPU as possible per delivery (it
/// shares the two cores with the hub and PostgreSQL).
fn event_id(text: &str) -> Option<String> {
    let start = text.find("\"id\"")? + 4;
    let rest = text[start..].trim_start().strip_prefix(':')?.trim_start().strip_prefix('"')?;
    let end = rest.find('"')?;
    Some(rest[..end].to_string())
}

async fn latency(args: &Args) -> Result<serde_json::Value> {
    let db = sql(&args.db).await?;
    let session: uuid::Uuid = db.query_one("SELECT memoriesdb.create_session('hub latency bench')", &[]).await?.get(0);
    let channel = format!("chat_updates_{}", session.simple());

    // the raw libpq LISTEN client, on its own thread
    let raw_received: Arc<Mutex<Vec<(String, Instant)>>> = Arc::new(Mutex::new(Vec::new()));
    let raw_stop = Arc::new(AtomicBool::new(false));
    let raw_ready = Arc::new(AtomicBool::new(false));
    let raw_thread = {
        let (conninfo, channel) = (args.db.clone(), channel.clone());
        let (received, stop, ready) = (raw_received.clone(), raw_stop.clone(), raw_ready.clone());
        std::thread::spawn(move || raw_libpq_listener(&conninfo, &channel, received, stop, ready))
    };

    let subscribers = args.subscribers.min(args.clients);
    let queries =
        (0..args.clients).map(|i| if i < subscribers { format!("?c={channel}") } else { format!("?c=bystander_{i}") }).collect();
    let sockets = connect_many(&args.hub, queries).await?;
    let hub_received: Arc<Mutex<Vec<(String, Instant)>>> = Arc::new(Mutex::new(Vec::new()));
    let expected = subscribers * args.messages;
    let count = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let mut bystanders = Vec::new();
    for (index, mut socket) in sockets.into_iter().enumerate() {
        if index >= subscribers {
            // connected, subscribed elsewhere, answering pings
            bystanders.push(tokio::spawn(async move { while let Some(Ok(_)) = socket.next().await {} }));
            continue;
        }
        let (received, count, done) = (hub_received.clone(), count.clone(), done.clone());
        tokio::spawn(async move {
            let mut local = Vec::new();
            while let Some(Ok(message)) = socket.next().await {
                let at = Instant::now(); // before any parsing
                if let Message::Text(text) = message {
                    if let Some(id) = event_id(text.as_str()) {
                        local.push((id, at));
                        if count.fetch_add(1, Ordering::Relaxed) + 1 == expected {
                            done.notify_one();
                        }
                        if local.len() % 50 == 0 {
                            received.lock().unwrap().append(&mut local);
                        }
                    }
                }
                if local.len() >= 1 && count.load(Ordering::Relaxed) >= expected {
                    break;
                }
            }
            received.lock().unwrap().append(&mut local);
        });
    }
    while !raw_ready.load(Ordering::Acquire) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // the writer: one transaction per message; the clock starts when COMMIT is sent
    let (cpu_before, phase_started) = (process_cpu_seconds(), Instant::now());
    let mut committed_at: HashMap<String, Instant> = HashMap::new();
    let mut writer = sql(&args.db).await?;
    for i in 0..args.messages {
        let transaction = writer.transaction().await?;
        let id: uuid::Uuid = transaction
            .query_one("SELECT memoriesdb.add_message_to_session($1, 'user', $2)", &[&session, &format!("message {i}")])
            .await?
            .get(0);
        let started = Instant::now();
        transaction.commit().await?;
        committed_at.insert(id.to_string(), started);
        tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), done.notified()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // what this process (the receivers, the raw client and the writer) cost while the messages
    // were delivered: the load generator shares the cores with the hub and PostgreSQL
    let (bench_cpu, phase) = (process_cpu_seconds() - cpu_before, phase_started.elapsed().as_secs_f64());
    raw_stop.store(true, Ordering::Release);
    raw_thread.join().map_err(|_| "raw listener thread panicked")??;

    let latencies = |received: &Mutex<Vec<(String, Instant)>>| -> Vec<f64> {
        received
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(id, at)| committed_at.get(id).map(|t0| at.saturating_duration_since(*t0).as_secs_f64() * 1000.0))
            .collect()
    };
    for bystander in bystanders {
        bystander.abort();
    }
    let hub = latencies(&hub_received);
    let raw = latencies(&raw_received);
    Ok(json!({
        "bench": "latency",
        "clients": args.clients,
        "subscribers": subscribers,
        "messages": args.messages,
        "interval_ms": args.interval_ms,
        "expected_deliveries": expected,
        "hub": summary(hub),
        "raw_libpq": summary(raw),
        "bench_process_cpu_seconds": bench_cpu,
        "phase_seconds": phase,
        "bench_process_cores_busy": bench_cpu / phase,
    }))
}

/// CPU time (user + system) this process has used so far, in seconds.
fn process_cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// A plain libpq client: LISTEN, then poll(2) on its socket and drain PQnotifies.
fn raw_libpq_listener(
    conninfo: &str,
    channel: &str,
    received: Arc<Mutex<Vec<(String, Instant)>>>,
    stop: Arc<AtomicBool>,
    ready: Arc<AtomicBool>,
) -> Result<()> {
    use pq_sys::*;
    let conninfo = CString::new(conninfo)?;
    let listen = CString::new(format!("LISTEN \"{channel}\""))?;
    // SAFETY: plain libpq calls on a connection owned by this thread; every pointer libpq
    // returns is checked for null and freed with the matching libpq function.
    unsafe {
        let conn = PQconnectdb(conninfo.as_ptr());
        if conn.is_null() || PQstatus(conn) != ConnStatusType::CONNECTION_OK {
            return Err("raw libpq connection failed".into());
        }
        let result = PQexec(conn, listen.as_ptr());
        let ok = PQresultStatus(result) == ExecStatusType::PGRES_COMMAND_OK;
        PQclear(result);
        if !ok {
            PQfinish(conn);
            return Err("LISTEN failed".into());
        }
        ready.store(true, Ordering::Release);
        let fd = PQsocket(conn);
        while !stop.load(Ordering::Acquire) {
            let mut poll_fd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
            if libc::poll(&mut poll_fd, 1, 50) <= 0 {
                continue;
            }
            let at = Instant::now();
            if PQconsumeInput(conn) == 0 {
                break;
            }
            loop {
                let notify = PQnotifies(conn);
                if notify.is_null() {
                    break;
                }
                let payload = CStr::from_ptr((*notify).extra).to_string_lossy().into_owned();
                if let Some(id) = serde_json::from_str::<serde_json::Value>(&payload)
                    .ok()
                    .and_then(|v| v.get("id").and_then(|id| id.as_str().map(str::to_string)))
                {
                    received.lock().unwrap().push((id, at));
                }
                PQfreemem(notify as *mut std::ffi::c_void);
            }
        }
        PQfinish(conn);
    }
    Ok(())
}

async fn fanout(args: &Args, many_channels: bool) -> Result<serde_json::Value> {
    let channel_of = |i: usize| if many_channels { format!("fan_{i}") } else { "fan".to_string() };
    let queries = (0..args.clients).map(|i| format!("?c={}", channel_of(i))).collect();
    let sockets = connect_many(&args.hub, queries).await?;
    let per_client = args.messages;
    let expected = args.clients * per_client;
    let count = Arc::new(AtomicUsize::new(0));
    let last: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let done = Arc::new(tokio::sync::Notify::new());
    let closed = Arc::new(AtomicUsize::new(0));
    for mut socket in sockets {
        let (count, last, done, closed) = (count.clone(), last.clone(), done.clone(), closed.clone());
        tokio::spawn(async move {
            let mut mine = 0;
            while mine < per_client {
                match socket.next().await {
                    Some(Ok(Message::Text(_))) => mine += 1,
                    Some(Ok(_)) => continue,
                    _ => {
                        closed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
            let now = Instant::now();
            {
                let mut last = last.lock().unwrap();
                if last.is_none_or(|l| now > l) {
                    *last = Some(now);
                }
            }
            if count.fetch_add(mine, Ordering::AcqRel) + mine == expected {
                done.notify_one();
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let db = sql(&args.db).await?;
    // One autocommit statement per round (= one transaction, delivered at its COMMIT), sent
    // back to back on one pipelined connection: a producer publishing as fast as it can.
    // fanout-one: a round is 1 message to the channel; fanout-many: 1 message to each channel.
    let statement = if many_channels {
        db.prepare(&format!(
            "SELECT pg_catalog.pg_notify('fan_' || c, $1) FROM pg_catalog.generate_series(0, {}) c",
            args.clients - 1
        ))
        .await?
    } else {
        db.prepare("SELECT pg_catalog.pg_notify('fan', $1)").await?
    };
    let started = Instant::now();
    let rounds: Vec<String> = (1..=per_client).map(|i| i.to_string()).collect();
    let params: Vec<[&(dyn tokio_postgres::types::ToSql + Sync); 1]> = rounds.iter().map(|r| [r as _]).collect();
    let sends = params.iter().map(|p| db.execute(&statement, p));
    for result in futures_util::future::join_all(sends).await {
        result?;
    }
    let finished = tokio::time::timeout(Duration::from_secs(60), done.notified()).await.is_ok();
    let delivered = count.load(Ordering::Acquire);
    let elapsed = last.lock().unwrap().map(|l| l.duration_since(started)).unwrap_or_default();
    Ok(json!({
        "bench": if many_channels { "fanout-many" } else { "fanout-one" },
        "channels": if many_channels { args.clients } else { 1 },
        "subscribers": args.clients,
        "messages_per_subscriber": per_client,
        "deliveries": delivered,
        "complete": finished && delivered == expected,
        "disconnected_clients": closed.load(Ordering::Relaxed),
        "seconds": elapsed.as_secs_f64(),
        "deliveries_per_second": delivered as f64 / elapsed.as_secs_f64().max(1e-9),
    }))
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| "no VmRSS".into())
}

async fn idle(args: &Args) -> Result<serde_json::Value> {
    if args.hub_pid == 0 {
        return Err("idle needs --hub-pid".into());
    }
    // warm up: one connection, so that lazily created runtime structures are not counted
    let warm = connect_many(&args.hub, vec!["?c=idle".to_string()]).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kib(args.hub_pid)?;
    let sockets = connect_many(&args.hub, vec!["?c=idle".to_string(); args.clients]).await?;
    // keep them alive and answering pings, otherwise idle
    let mut holders = Vec::new();
    for mut socket in sockets {
        holders.push(tokio::spawn(async move { while let Some(Ok(_)) = socket.next().await {} }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss_kib(args.hub_pid)?;
    let per_connection = (after.saturating_sub(before)) as f64 * 1024.0 / args.clients as f64;
    drop(warm);
    for holder in holders {
        holder.abort();
    }
    Ok(json!({
        "bench": "idle",
        "connections": args.clients,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "bytes_per_connection": per_connection,
        "kib_per_connection": per_connection / 1024.0,
    }))
}
