//! Query embeddings from SQL: `embed_text(text)`, and the searches by plain text
//! (`semantic_search`, `hybrid_search` without an embedding) get their query vector from an
//! OpenAI-compatible embeddings endpoint — normally memoriesdb-embedder, which computes the
//! stored memories' embeddings with the same model.
//!
//! Settings:
//! - `memoriesdb.embedding_url` (superuser-set, e.g. per database with ALTER DATABASE): the
//!   endpoint, `http://host:port/v1/embeddings`. Only an administrator chooses where the
//!   database server sends requests (a tenant who could set it could make the server connect
//!   anywhere it can reach). Plain http only: the endpoint is meant to be a local embedder,
//!   which can itself forward to an https service (its `--backend openai`). Not shown to
//!   non-superusers (SHOW, pg_settings), but PostgreSQL's pg_db_role_setting, which every role
//!   can read, holds per-database and per-role values: never put a secret in the URL.
//! - `memoriesdb.embedding_model`: the model named in each request (endpoints that serve several
//!   need it); the answer's model is what searches compare against.
//! - `memoriesdb.embedding_timeout`: how long one request may take (default 10 s).
//!
//! The request runs in the backend: it waits on the socket in short slices and handles
//! statement_timeout and cancel requests between them, so a slow endpoint never holds a
//! backend that was asked to stop.

use crate::errors::{catching, raise};
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::CString;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

pub static EMBEDDING_URL: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static EMBEDDING_MODEL: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static EMBEDDING_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(10_000);

pub fn register_settings() {
    GucRegistry::define_string_guc(
        c"memoriesdb.embedding_url",
        c"OpenAI-compatible embeddings endpoint for query embeddings (http://host:port/v1/embeddings)",
        c"Used by embed_text(), semantic_search() and hybrid_search() without an embedding. Normally memoriesdb-embedder. Only superusers may set or show it (it decides where the database server connects).",
        &EMBEDDING_URL,
        GucContext::Suset,
        // not shown to tenants either (SHOW, pg_settings): the address of an internal service
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_string_guc(
        c"memoriesdb.embedding_model",
        c"Model named in requests to memoriesdb.embedding_url (empty: the endpoint's default)",
        c"Searches compare only with stored embeddings of the model the endpoint says it used.",
        &EMBEDDING_MODEL,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"memoriesdb.embedding_timeout",
        c"How long one request to memoriesdb.embedding_url may take",
        c"Connecting, sending and the whole answer; statement_timeout and cancel requests still apply within it.",
        &EMBEDDING_TIMEOUT_MS,
        100,
        600_000,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
}

/// Largest text embed_text() sends (the model reads only its first few hundred tokens anyway).
const MAX_INPUT_BYTES: usize = 1024 * 1024;
/// Largest answer read from the endpoint (one embedding is a few kilobytes of JSON).
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;
/// pgvector's largest dimension (VECTOR_MAX_DIM).
const MAX_DIMENSIONS: usize = 16000;
/// How often a wait on the socket stops to look for cancel requests and timeouts.
const SLICE: Duration = Duration::from_millis(50);

/// The embedding of one query text and the model that computed it.
pub struct QueryEmbedding {
    pub model: String,
    pub values: Vec<f32>,
}

const NOT_CONFIGURED_HINT: &str = "an administrator sets the endpoint, e.g. ALTER DATABASE mydb SET memoriesdb.embedding_url = 'http://127.0.0.1:5003/v1/embeddings' (memoriesdb-embedder serves it; scripts/run.sh starts one and sets it)";

/// Embed `text` with the configured endpoint, or raise: 55000 when none is configured, 22023
/// for a bad URL or text, 08001 when it cannot be reached, 57014 when it does not answer in
/// time, 58000 when it answers with an error or something that is not an embedding.
pub fn embed_query(text: &[u8]) -> QueryEmbedding {
    let url = EMBEDDING_URL.get().map(|url| url.to_string_lossy().trim().to_owned()).filter(|url| !url.is_empty());
    let Some(url) = url else {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "no embedding endpoint is configured (memoriesdb.embedding_url is not set)".into(),
            Some(NOT_CONFIGURED_HINT),
        )
    };
    let endpoint = Endpoint::parse(&url).unwrap_or_else(|problem| {
        raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, format!("memoriesdb.embedding_url {problem}"), Some(NOT_CONFIGURED_HINT))
    });
    if text.len() > MAX_INPUT_BYTES {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("text to embed is {} bytes long; at most {MAX_INPUT_BYTES} are sent to the embedding endpoint", text.len()),
            None,
        )
    }
    let text = String::from_utf8_lossy(text);
    let model = EMBEDDING_MODEL.get().map(|model| model.to_string_lossy().into_owned()).filter(|model| !model.is_empty());
    let mut request = serde_json::json!({ "input": [text], "encoding_format": "float" });
    if let Some(model) = &model {
        request["model"] = model.clone().into();
    }
    let timeout = Duration::from_millis(EMBEDDING_TIMEOUT_MS.get().max(1) as u64);
    let (status, answer) = endpoint.post_json(request.to_string().as_bytes(), timeout);
    parse_answer(&endpoint, status, &answer)
}

fn parse_answer(endpoint: &Endpoint, status: u16, answer: &[u8]) -> QueryEmbedding {
    let failed = |message: String| -> ! {
        raise(PgSqlErrorCode::ERRCODE_SYSTEM_ERROR, message, Some("check the embedding endpoint (memoriesdb.embedding_url) and its log"))
    };
    let json: Option<serde_json::Value> = serde_json::from_slice(answer).ok();
    if !(200..300).contains(&status) {
        let reason = json
            .as_ref()
            .and_then(|json| json.pointer("/error/message").or_else(|| json.get("error")).or_else(|| json.get("detail")))
            .map(|reason| reason.as_str().map_or_else(|| reason.to_string(), str::to_owned))
            .unwrap_or_else(|| excerpt(answer));
        failed(format!("the embedding endpoint {} answered HTTP {status}: {reason}", endpoint.shown))
    }
    let Some(json) = json else {
        failed(format!("the embedding endpoint {} answered with something that is not JSON: {}", endpoint.shown, excerpt(answer)))
    };
    let values = json.pointer("/data/0/embedding").and_then(|values| values.as_array()).map(|values| {
        values.iter().map(|value| value.as_f64().map(|x| x as f32).filter(|x| x.is_finite())).collect::<Option<Vec<f32>>>()
    });
    let Some(Some(values)) = values else {
        failed(format!(
            "the embedding endpoint {} did not answer with an embedding of finite numbers (data[0].embedding): {}",
            endpoint.shown,
            excerpt(answer)
        ))
    };
    if values.is_empty() || values.len() > MAX_DIMENSIONS {
        failed(format!("the embedding endpoint {} answered with {} dimensions (1..{MAX_DIMENSIONS} are usable)", endpoint.shown, values.len()))
    }
    let Some(model) = json.get("model").and_then(|model| model.as_str()).filter(|model| !model.is_empty()) else {
        failed(format!(
            "the embedding endpoint {} did not say which model computed the embedding (\"model\"): searches must compare embeddings of one model",
            endpoint.shown
        ))
    };
    QueryEmbedding { model: model.to_owned(), values }
}

/// At most 200 characters of an answer, for an error message.
fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None if text.is_empty() => "(empty)".into(),
        None => text.to_owned(),
    }
}

/// An http:// URL: where to connect and what to ask for.
#[derive(Debug)]
struct Endpoint {
    host: String,
    port: u16,
    path: String,
    /// scheme, host, port and path, for messages (no query string: it could carry a key)
    shown: String,
}

impl Endpoint {
    fn parse(url: &str) -> Result<Endpoint, String> {
        let Some(rest) = url.strip_prefix("http://") else {
            return Err(if url.starts_with("https://") {
                "must be an http:// URL: for an https service, run memoriesdb-embedder --backend openai as a local proxy and point the setting at it".into()
            } else {
                format!("must be an http:// URL, got {:?}", url.chars().take(80).collect::<String>())
            });
        };
        let (authority, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash..]),
            None => (rest, "/v1/embeddings"),
        };
        if authority.contains('@') {
            return Err("must not carry credentials (user:password@)".into());
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed.split_once(']').ok_or("has an unclosed [ in its host")?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err("has no host".into());
        }
        let port = match port {
            Some(port) => port.parse::<u16>().map_err(|_| format!("has an invalid port {port:?}"))?,
            None => 80,
        };
        if path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err("has spaces or control characters in its path".into());
        }
        let shown_path = path.split('?').next().unwrap_or(path);
        Ok(Endpoint { host: host.to_owned(), port, path: path.to_owned(), shown: format!("http://{authority}{shown_path}") })
    }

    /// POST `body` as JSON; returns the status and the body of the answer.
    fn post_json(&self, body: &[u8], timeout: Duration) -> (u16, Vec<u8>) {
        let deadline = Instant::now() + timeout;
        let timed_out = || -> ! {
            raise(
                PgSqlErrorCode::ERRCODE_QUERY_CANCELED,
                format!("the embedding endpoint {} did not answer within {} ms", self.shown, timeout.as_millis()),
                Some("memoriesdb.embedding_timeout sets the limit"),
            )
        };
        let mut stream = self.connect(deadline).unwrap_or_else(|| timed_out());
        let host_header = if self.host.contains(':') { format!("[{}]:{}", self.host, self.port) } else { format!("{}:{}", self.host, self.port) };
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: memoriesdb\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.path,
            body.len()
        );
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        let mut written = 0;
        while written < request.len() {
            wait_slice(deadline).unwrap_or_else(|| timed_out());
            match stream.write(&request[written..]) {
                Ok(0) => self.unreachable("the connection was closed while sending the request"),
                Ok(n) => written += n,
                Err(error) if is_timeout(&error) => continue,
                Err(error) => self.unreachable(&error.to_string()),
            }
        }

        let mut answer = ResponseReader::default();
        let mut buffer = [0u8; 16 * 1024];
        loop {
            wait_slice(deadline).unwrap_or_else(|| timed_out());
            let complete = match stream.read(&mut buffer) {
                // closed: what arrived is the whole answer
                Ok(0) => match answer.finish() {
                    Ok(Some(complete)) => Ok(Some(complete)),
                    Ok(None) => Err("the connection was closed before a whole answer arrived".to_owned()),
                    Err(problem) => Err(problem),
                },
                Ok(n) => answer.push(&buffer[..n]),
                Err(error) if is_timeout(&error) => continue,
                Err(error) => self.unreachable(&error.to_string()),
            };
            match complete {
                Ok(Some(complete)) => return complete,
                Ok(None) => {}
                Err(problem) => self.bad_answer(&problem),
            }
        }
    }

    /// Connect to the first address that accepts, in slices so that cancel requests are seen;
    /// None when the deadline passes first.
    fn connect(&self, deadline: Instant) -> Option<TcpStream> {
        let addresses: Vec<_> = match (self.host.as_str(), self.port).to_socket_addrs() {
            Ok(addresses) => addresses.collect(),
            Err(error) => self.unreachable(&format!("cannot resolve {}: {error}", self.host)),
        };
        if addresses.is_empty() {
            self.unreachable(&format!("{} has no address", self.host));
        }
        let mut last_error = None;
        loop {
            for address in &addresses {
                let slice = wait_slice(deadline)?.max(Duration::from_millis(250)).min(deadline.saturating_duration_since(Instant::now()));
                if slice.is_zero() {
                    return None;
                }
                match TcpStream::connect_timeout(address, slice) {
                    Ok(stream) => {
                        let _ = stream.set_nodelay(true);
                        stream.set_read_timeout(Some(SLICE)).ok()?;
                        stream.set_write_timeout(Some(SLICE)).ok()?;
                        return Some(stream);
                    }
                    // nobody listens: say so at once rather than retrying until the deadline
                    Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => self.unreachable(&error.to_string()),
                    Err(error) => last_error = Some(error),
                }
            }
            if Instant::now() >= deadline {
                return match last_error {
                    Some(error) if !is_timeout(&error) => self.unreachable(&error.to_string()),
                    _ => None,
                };
            }
        }
    }

    fn unreachable(&self, reason: &str) -> ! {
        raise(
            PgSqlErrorCode::ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
            format!("cannot reach the embedding endpoint {}: {reason}", self.shown),
            Some("is memoriesdb-embedder running? The endpoint is the setting memoriesdb.embedding_url"),
        )
    }

    fn bad_answer(&self, problem: &str) -> ! {
        raise(
            PgSqlErrorCode::ERRCODE_SYSTEM_ERROR,
            format!("the embedding endpoint {} did not answer with valid HTTP: {problem}", self.shown),
            Some("memoriesdb.embedding_url must name an OpenAI-compatible /v1/embeddings endpoint"),
        )
    }
}

fn is_timeout(error: &std::io::Error) -> bool {
    matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut | std::io::ErrorKind::Interrupted)
}

/// Before each wait on the socket: handle a pending cancel request or statement_timeout (it
/// raises its own error, 57014; Rust frames unwind and close the socket), then return the time
/// left, or None once the deadline has passed.
fn wait_slice(deadline: Instant) -> Option<Duration> {
    // SAFETY: reads a flag of the backend's own; ProcessInterrupts is PostgreSQL's
    // CHECK_FOR_INTERRUPTS body, called through catching() so that its ERROR unwinds.
    unsafe {
        if std::ptr::read_volatile(std::ptr::addr_of!(pg_sys::InterruptPending)) != 0 {
            catching(|| raw::process_interrupts());
        }
    }
    let left = deadline.saturating_duration_since(Instant::now());
    (!left.is_zero()).then_some(left)
}

/// An HTTP/1.x response, read as it arrives. Every byte is looked at a bounded number of times
/// (a hostile endpoint sending a million one-byte chunks costs linear time), the head may be at
/// most 64 KiB, and the whole answer at most MAX_ANSWER_BYTES.
#[derive(Default)]
struct ResponseReader {
    bytes: Vec<u8>,
    /// how far the search for the end of the head has looked
    scanned: usize,
    head: Option<Head>,
    /// chunked: where the next chunk-size line starts, and the body decoded so far
    next_chunk: usize,
    decoded: Vec<u8>,
}

struct Head {
    status: u16,
    body_start: usize,
    length: Option<usize>,
    chunked: bool,
}

impl ResponseReader {
    /// Take more bytes; Ok(Some((status, body))) once the response is complete.
    fn push(&mut self, data: &[u8]) -> Result<Option<(u16, Vec<u8>)>, String> {
        if self.bytes.len() + data.len() > MAX_ANSWER_BYTES {
            return Err(format!("the answer is larger than {MAX_ANSWER_BYTES} bytes"));
        }
        self.bytes.extend_from_slice(data);
        self.advance(false)
    }

    /// The peer closed the connection: a body without a length ends here.
    fn finish(&mut self) -> Result<Option<(u16, Vec<u8>)>, String> {
        self.advance(true)
    }

    fn advance(&mut self, closed: bool) -> Result<Option<(u16, Vec<u8>)>, String> {
        while self.head.is_none() {
            let from = self.scanned.saturating_sub(3);
            let Some(end) = self.bytes[from..].windows(4).position(|w| w == b"\r\n\r\n").map(|i| from + i) else {
                self.scanned = self.bytes.len();
                if self.bytes.len() > 64 * 1024 {
                    return Err("the response head is larger than 64 KiB".into());
                }
                return Ok(None);
            };
            let head = parse_head(&self.bytes[..end], end + 4)?;
            if (100..200).contains(&head.status) {
                // an interim response (100 Continue): the real one follows
                self.bytes.drain(..end + 4);
                self.scanned = 0;
                continue;
            }
            self.next_chunk = head.body_start;
            self.head = Some(head);
        }
        let head = self.head.as_ref().expect("parsed above");
        let (status, body) = (head.status, &self.bytes[head.body_start..]);
        if head.chunked {
            return self.dechunk().map(|done| done.then(|| (status, std::mem::take(&mut self.decoded))));
        }
        match head.length {
            Some(length) if body.len() >= length => Ok(Some((head.status, body[..length].to_vec()))),
            Some(_) if closed => Err("the connection was closed before the whole body arrived".into()),
            None if closed => Ok(Some((head.status, body.to_vec()))),
            _ => Ok(None),
        }
    }

    /// Decode the complete chunks that have arrived; true after the last (empty) one.
    fn dechunk(&mut self) -> Result<bool, String> {
        loop {
            let rest = &self.bytes[self.next_chunk..];
            let Some(line_end) = rest[..rest.len().min(1024)].windows(2).position(|w| w == b"\r\n") else {
                return if rest.len() >= 1024 { Err("a chunk-size line is longer than 1 KiB".into()) } else { Ok(false) };
            };
            let size_text = std::str::from_utf8(&rest[..line_end]).map_err(|_| "bad chunk size".to_owned())?;
            let size_text = size_text.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_text, 16)
                .ok()
                .filter(|size| *size <= MAX_ANSWER_BYTES)
                .ok_or_else(|| format!("bad chunk size {:?}", size_text.chars().take(40).collect::<String>()))?;
            if size == 0 {
                return Ok(true);
            }
            let data = line_end + 2;
            if rest.len() < data + size + 2 {
                return Ok(false);
            }
            self.decoded.extend_from_slice(&rest[data..data + size]);
            self.next_chunk += data + size + 2;
        }
    }
}

/// The status line and the headers that matter.
fn parse_head(head: &[u8], body_start: usize) -> Result<Head, String> {
    let head = std::str::from_utf8(head).map_err(|_| "the response head is not text".to_owned())?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let shown = || status_line.chars().take(60).collect::<String>();
    let mut parts = status_line.splitn(3, ' ');
    let (version, code) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1 response: {:?}", shown()));
    }
    let status: u16 = code.parse().map_err(|_| format!("bad status line {:?}", shown()))?;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().map_err(|_| format!("bad Content-Length {value:?}"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") && value.to_ascii_lowercase().contains("chunked") {
            chunked = true;
        }
    }
    Ok(Head { status, body_start, length, chunked })
}

/// A pgvector `vector` datum holding `values`, allocated in the current memory context: a
/// varlena header, int16 dim, int16 unused (0), then dim float4s (pgvector's struct Vector).
pub fn vector_datum(values: &[f32]) -> pg_sys::Datum {
    let size = pg_sys::VARHDRSZ + 4 + 4 * values.len();
    // SAFETY: a fresh, zeroed allocation of exactly that size, written within its bounds.
    unsafe {
        let vector = pg_sys::palloc0(size).cast::<u8>();
        pgrx::set_varsize_4b(vector.cast(), size as i32);
        std::ptr::write_unaligned(vector.add(pg_sys::VARHDRSZ).cast::<i16>(), values.len() as i16);
        std::ptr::copy_nonoverlapping(values.as_ptr().cast::<u8>(), vector.add(pg_sys::VARHDRSZ + 4), 4 * values.len());
        pg_sys::Datum::from(vector)
    }
}

/// embed_text(input text) RETURNS vector: the embedding of `input` by the configured endpoint.
unsafe fn embed_text(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: declared STRICT with one text argument.
    let text = unsafe { crate::tuples::text_bytes(crate::fmgr::raw_arg(fcinfo, 0).expect("STRICT")) };
    vector_datum(&embed_query(text).values)
}

crate::fmgr::sql_function_entry!(pg_finfo_embed_text_native, embed_text_native, embed_text);

/// PostgreSQL's ProcessInterrupts, not wrapped by pgrx (catching() handles its ERROR).
mod raw {
    unsafe extern "C-unwind" {
        #[link_name = "ProcessInterrupts"]
        pub fn process_interrupts();
    }
}

#[cfg(test)]
mod unit {
    use super::{Endpoint, ResponseReader};

    /// The whole of `bytes` at once, then (when `closed`) the end of the connection.
    fn parse_response(bytes: &[u8], closed: bool) -> Result<Option<(u16, Vec<u8>)>, String> {
        let mut reader = ResponseReader::default();
        match reader.push(bytes)? {
            Some(done) => Ok(Some(done)),
            None if closed => reader.finish(),
            None => Ok(None),
        }
    }

    #[test]
    fn urls() {
        let e = Endpoint::parse("http://127.0.0.1:5003/v1/embeddings").unwrap();
        assert_eq!((e.host.as_str(), e.port, e.path.as_str()), ("127.0.0.1", 5003, "/v1/embeddings"));
        let e = Endpoint::parse("http://[::1]:8080/x?key=secret").unwrap();
        assert_eq!((e.host.as_str(), e.port, e.shown.as_str()), ("::1", 8080, "http://[::1]:8080/x"));
        let e = Endpoint::parse("http://embedder").unwrap();
        assert_eq!((e.port, e.path.as_str()), (80, "/v1/embeddings"));
        assert!(Endpoint::parse("https://api.openai.com/v1/embeddings").unwrap_err().contains("proxy"));
        assert!(Endpoint::parse("http://user:pw@host/x").is_err());
        assert!(Endpoint::parse("http://host:99999/x").is_err());
        assert!(Endpoint::parse("http:///x").is_err());
        assert!(Endpoint::parse("ftp://host").is_err());
    }

    #[test]
    fn responses() {
        let whole = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(parse_response(whole, false).unwrap(), Some((200, b"{}".to_vec())));
        assert_eq!(parse_response(&whole[..whole.len() - 1], false).unwrap(), None);
        assert!(parse_response(&whole[..whole.len() - 1], true).is_err());
        let chunked = b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked, false).unwrap(), Some((503, b"abcde".to_vec())));
        assert_eq!(parse_response(&chunked[..60], false).unwrap(), None);
        let until_close = b"HTTP/1.0 200 OK\r\n\r\n[1]";
        assert_eq!(parse_response(until_close, false).unwrap(), None);
        assert_eq!(parse_response(until_close, true).unwrap(), Some((200, b"[1]".to_vec())));
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n", true).is_err());
        assert!(parse_response(b"HTTP/1.1 abc\r\n\r\n", true).is_err());
        // an interim 100 Continue is skipped
        let interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx";
        assert_eq!(parse_response(interim, false).unwrap(), Some((200, b"x".to_vec())));
        // hostile chunk sizes are errors, not panics or huge allocations
        for size in ["ffffffffffffffff", "fffffffffffffffe", "-1", "+30", "1000001"] {
            let answer = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{size}\r\nX");
            // (an error, or incomplete when the connection closes: post_json reports both)
            assert!(!matches!(parse_response(answer.as_bytes(), true), Ok(Some(_))), "{size}");
        }
    }

    #[test]
    fn many_small_chunks_arrive_in_linear_time() {
        let mut reader = ResponseReader::default();
        assert_eq!(reader.push(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap(), None);
        let started = std::time::Instant::now();
        for _ in 0..200_000 {
            assert_eq!(reader.push(b"1\r\n \r\n").unwrap(), None);
        }
        assert_eq!(reader.push(b"0\r\n\r\n").unwrap().map(|(s, b)| (s, b.len())), Some((200, 200_000)));
        assert!(started.elapsed() < std::time::Duration::from_secs(2), "{:?}", started.elapsed());
    }
}
