//! The HTTP endpoint as a client sees it: OpenAI's /v1/embeddings answers, and clear 4xx
//! errors with bounded memory for every kind of bad request.

mod support;

use serde_json::{json, Value};
use std::io::{Read, Write};
use support::{model_dir, Embedder};

fn embedder() -> Embedder {
    Embedder::start(&["--model-dir", model_dir().to_str().unwrap(), "--max-inputs", "2048"])
}

fn embeddings(body: &str) -> Vec<Vec<f32>> {
    let value: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    value["data"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, item)| {
            assert_eq!(item["index"].as_u64(), Some(i as u64));
            item["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
        })
        .collect()
}

#[test]
fn answers_like_openai() {
    let embedder = embedder();
    let (status, body) = embedder.post("/v1/embeddings", br#"{"input": "hello world", "model": "all-MiniLM-L6-v2"}"#);
    assert_eq!(status, 200, "{body}");
    let value: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((value["object"].as_str(), value["model"].as_str()), (Some("list"), Some("all-MiniLM-L6-v2")));
    assert!(value["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    let one = embeddings(&body);
    assert_eq!((one.len(), one[0].len()), (1, 384));

    // a batch keeps its order, and each text gets the vector it gets alone
    let (status, body) = embedder.post("/v1/embeddings", json!({"input": ["a cat", "hello world", "un chien"]}).to_string().as_bytes());
    assert_eq!(status, 200, "{body}");
    let batch = embeddings(&body);
    assert_eq!(batch.len(), 3);
    let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5);
    assert!(close(&batch[1], &one[0]));
    assert!(!close(&batch[0], &one[0]));

    // base64 (what OpenAI's Python client asks for by default): the same floats, little-endian
    let (status, body) = embedder.post("/v1/embeddings", br#"{"input": "hello world", "encoding_format": "base64"}"#);
    assert_eq!(status, 200, "{body}");
    let value: Value = serde_json::from_str(&body).unwrap();
    let bytes = base64_decode(value["data"][0]["embedding"].as_str().unwrap());
    let floats: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    assert_eq!(floats, one[0]);

    let (status, body) = embedder.get("/v1/models");
    assert_eq!(status, 200);
    assert!(body.contains("all-MiniLM-L6-v2") && body.contains("384"), "{body}");
    assert_eq!(embedder.get("/healthz").0, 200);
    // no database: the endpoint alone is ready
    assert_eq!(embedder.get("/readyz").0, 200);
    let (_, metrics) = embedder.get("/metrics");
    for name in [
        "memoriesdb_embedder_texts_embedded_total",
        "memoriesdb_embedder_inference_seconds_bucket",
        "memoriesdb_embedder_http_request_seconds_bucket",
        "memoriesdb_embedder_build_info",
        "process_resident_memory_bytes",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}:\n{metrics}");
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for c in text.bytes().filter(|&c| c != b'=') {
        bits = (bits << 6) | ALPHABET.iter().position(|&a| a == c).unwrap() as u32;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
        }
    }
    out
}

#[test]
fn bad_requests_get_clear_errors_and_bounded_memory() {
    let embedder = embedder();
    let ten_thousand = json!({ "input": vec!["word"; 10_000] }).to_string();
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("not JSON", b"{input: hello".to_vec(), 400, "not valid JSON"),
        ("not an object", b"[\"hello\"]".to_vec(), 400, "JSON object"),
        ("no input", b"{}".to_vec(), 400, "'input' is required"),
        ("input null", br#"{"input": null}"#.to_vec(), 400, "'input' is required"),
        ("input a number", br#"{"input": 42}"#.to_vec(), 400, "string or an array"),
        ("token arrays", br#"{"input": [[1, 2, 3]]}"#.to_vec(), 400, "token arrays"),
        ("a number in the array", br#"{"input": ["a", 7]}"#.to_vec(), 400, "'input[1]'"),
        ("empty array", br#"{"input": []}"#.to_vec(), 400, "empty"),
        ("10,000 inputs", ten_thousand.into_bytes(), 400, "at most 2048 inputs"),
        ("another model", br#"{"input": "x", "model": "text-embedding-3-large"}"#.to_vec(), 400, "not served here"),
        ("model not a string", br#"{"input": "x", "model": 5}"#.to_vec(), 400, "'model' must be a string"),
        ("other dimensions", br#"{"input": "x", "dimensions": 128}"#.to_vec(), 400, "384 dimensions"),
        ("unknown encoding", br#"{"input": "x", "encoding_format": "int8"}"#.to_vec(), 400, "encoding_format"),
        ("5 MiB body", format!(r#"{{"input": "{}"}}"#, "a".repeat(5 << 20)).into_bytes(), 413, "larger than"),
    ];
    for (what, body, status, message) in &cases {
        let (got, answer) = embedder.post("/v1/embeddings", body);
        assert_eq!(got, *status, "{what}: {answer}");
        let value: Value = serde_json::from_str(&answer).unwrap_or_else(|_| panic!("{what}: the error is not JSON: {answer}"));
        let text = value["error"]["message"].as_str().unwrap_or_else(|| panic!("{what}: no error.message: {answer}"));
        assert!(text.contains(message), "{what}: expected {message:?} in {text:?}");
        assert_eq!(value["error"]["type"].as_str(), Some("invalid_request_error"), "{what}");
    }
    // the wrong method and path
    assert_eq!(embedder.get("/v1/embeddings").0, 405);
    assert_eq!(embedder.post("/v1/nothing", b"{}").0, 404);

    // many large bodies, valid and not: memory stays bounded (the body limit, no leak)
    let before = embedder.rss_kib();
    let big_valid = json!({ "input": vec!["lorem ipsum dolor sit amet ".repeat(150); 64] }).to_string();
    assert!(big_valid.len() < 4 << 20);
    for round in 0..20 {
        let body = if round % 2 == 0 { big_valid.as_bytes().to_vec() } else { format!(r#"{{"input": "{}"}}"#, "b".repeat(8 << 20)).into_bytes() };
        let (status, answer) = embedder.post("/v1/embeddings", &body);
        assert!(status == 200 || status == 413, "round {round}: {status} {}", &answer[..answer.len().min(200)]);
    }
    let after = embedder.rss_kib();
    assert!(after < before + 200 * 1024, "RSS grew from {before} KiB to {after} KiB");
    assert_eq!(embedder.get("/healthz").0, 200, "the embedder survived");
}

#[test]
fn slow_and_idle_clients_are_cut_off_and_requests_in_flight_are_bounded() {
    let dir = model_dir();
    let embedder = Embedder::start(&["--model-dir", dir.to_str().unwrap(), "--request-timeout", "1s", "--max-requests", "1"]);
    // a client that sends a head promising a body, then stalls: 408 after the timeout
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", embedder.port)).unwrap();
    slow.write_all(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"input\":").unwrap();
    // meanwhile the one request slot is taken: another request is told to come back (503)
    std::thread::sleep(std::time::Duration::from_millis(200));
    let (status, body) = embedder.post("/v1/embeddings", br#"{"input": "x"}"#);
    assert_eq!(status, 503, "{body}");
    let started = std::time::Instant::now();
    let mut answer = String::new();
    slow.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let _ = slow.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // the slot is free again
    assert_eq!(embedder.post("/v1/embeddings", br#"{"input": "x"}"#).0, 200);

    // a connection that never sends its head is closed after the timeout
    let mut idle = std::net::TcpStream::connect(("127.0.0.1", embedder.port)).unwrap();
    idle.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let started = std::time::Instant::now();
    let mut buffer = [0u8; 64];
    // (the read ends when the server closes; without that, it would time out after 10 s)
    let _ = idle.read(&mut buffer);
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "not closed after {:?}", started.elapsed());
}
