//! Running memoriesdb-embedder as a process (the built binary, as users run it) and talking
//! HTTP to it with a plain socket.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn model_dir() -> PathBuf {
    let dir = PathBuf::from(
        std::env::var("MEMORIESDB_MODEL_DIR").unwrap_or_else(|_| "/var/lib/memoriesdb/models/all-MiniLM-L6-v2".into()),
    );
    assert!(dir.join("model.safetensors").exists(), "{} has no model: run scripts/setup.sh --deps", dir.display());
    dir
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub struct Embedder {
    pub child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Embedder {
    /// Start the embedder with `args` (plus --port) and wait until /healthz answers.
    pub fn start(args: &[&str]) -> Embedder {
        let port = free_port();
        let log = std::env::temp_dir().join(format!("memoriesdb-embedder-test-{}-{port}.log", std::process::id()));
        let child = Command::new(env!("CARGO_BIN_EXE_memoriesdb-embedder"))
            .args(args)
            .args(["--port", &port.to_string(), "--log", "memoriesdb_embedder=debug,info"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start memoriesdb-embedder");
        let mut embedder = Embedder { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((200, _)) = embedder.try_get("/healthz") {
                return embedder;
            }
            if let Ok(Some(status)) = embedder.child.try_wait() {
                panic!("the embedder exited ({status}):\n{}", embedder.log_text());
            }
            assert!(Instant::now() < deadline, "the embedder did not start:\n{}", embedder.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn try_get(&self, path: &str) -> std::io::Result<(u16, String)> {
        request(self.port, &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").into_bytes())
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        self.try_get(path).unwrap()
    }

    pub fn post(&self, path: &str, body: &[u8]) -> (u16, String) {
        let mut bytes = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        bytes.extend_from_slice(body);
        request(self.port, &bytes).unwrap()
    }

    /// Resident memory of the process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches(" kB").trim().parse().unwrap()
    }

    pub fn metric(&self, name: &str) -> f64 {
        let (_, text) = self.get("/metrics");
        text.lines()
            .filter(|line| line.starts_with(name) && !line.starts_with('#'))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Embedder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Send raw request bytes, read the whole answer (the server closes after it): (status, body).
pub fn request(port: u16, bytes: &[u8]) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    // a server may answer (413) and close before it has read a large body: keep what it said
    let _ = stream.write_all(bytes);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, format!("no HTTP answer: {:?}", text.chars().take(100).collect::<String>()))
    })?;
    let body = text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    Ok((status, dechunk(&text, body)))
}

/// hyper answers small bodies with a length and large ones chunked.
fn dechunk(head: &str, body: String) -> String {
    if !head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return body;
    }
    let mut rest = body.as_str();
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
    out
}
