//! The HTTP endpoint: OpenAI's `POST /v1/embeddings` (so the database's embed_text(),
//! applications and OpenAI client libraries embed queries with the same model as the stored
//! memories), `GET /v1/models`, `/healthz`, `/readyz` and Prometheus `/metrics`.
//!
//! Errors have OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`. Bodies are
//! read up to --max-body-bytes and requests hold at most --max-inputs texts, so one request
//! cannot take unbounded memory.

use crate::backend::{Backend, EmbedError};
use crate::worker::Worker;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

pub struct AppState {
    pub backend: Arc<Backend>,
    pub worker: Option<Arc<Worker>>,
    pub metrics: PrometheusHandle,
    pub process: metrics_process::Collector,
    pub max_body_bytes: usize,
    pub max_inputs: usize,
    /// how long a client may take to send a body
    pub body_timeout: std::time::Duration,
    /// /v1/embeddings requests in progress (each holds a body of up to max_body_bytes)
    pub requests: tokio::sync::Semaphore,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

fn error(status: StatusCode, kind: &str, param: Option<&str>, message: impl Into<String>) -> Response {
    let body = json!({ "error": { "message": message.into(), "type": kind, "param": param, "code": Value::Null } });
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn invalid(param: Option<&str>, message: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, "invalid_request_error", param, message)
}

/// The texts of a request: `input` as one string or an array of strings.
fn inputs(request: &Value, max_inputs: usize) -> Result<Vec<String>, Response> {
    match request.get("input") {
        None | Some(Value::Null) => Err(invalid(Some("input"), "'input' is required: a string or an array of strings")),
        Some(Value::String(text)) => Ok(vec![text.clone()]),
        Some(Value::Array(items)) => {
            if items.is_empty() {
                return Err(invalid(Some("input"), "'input' must not be an empty array"));
            }
            if items.len() > max_inputs {
                return Err(invalid(Some("input"), format!("at most {max_inputs} inputs per request, got {}", items.len())));
            }
            items
                .iter()
                .enumerate()
                .map(|(index, item)| match item {
                    Value::String(text) => Ok(text.clone()),
                    _ => Err(invalid(Some("input"), format!("'input[{index}]' must be a string (token arrays are not supported)"))),
                })
                .collect()
        }
        Some(_) => Err(invalid(Some("input"), "'input' must be a string or an array of strings")),
    }
}

async fn embeddings(State(state): State<Arc<AppState>>, body: Body) -> Response {
    let started = Instant::now();
    let response = embeddings_response(&state, body).await;
    metrics::histogram!("memoriesdb_embedder_http_request_seconds", "status" => response.status().as_u16().to_string())
        .record(started.elapsed().as_secs_f64());
    response
}

async fn embeddings_response(state: &AppState, body: Body) -> Response {
    let Ok(_permit) = state.requests.try_acquire() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "server_error", None, "too many requests in progress; try again shortly");
    };
    let bytes = match tokio::time::timeout(state.body_timeout, axum::body::to_bytes(body, state.max_body_bytes)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                None,
                format!("the request body is larger than {} bytes", state.max_body_bytes),
            )
        }
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request_error",
                None,
                format!("the request body did not arrive within {} s", state.body_timeout.as_secs_f64()),
            )
        }
    };
    let request: Value = match serde_json::from_slice(&bytes) {
        Ok(value @ Value::Object(_)) => value,
        Ok(_) => return invalid(None, "the body must be a JSON object"),
        Err(parse_error) => return invalid(None, format!("the body is not valid JSON: {parse_error}")),
    };
    let texts = match inputs(&request, state.max_inputs) {
        Ok(texts) => texts,
        Err(response) => return response,
    };
    let served = state.backend.model_name();
    match request.get("model") {
        None | Some(Value::Null) => {}
        Some(Value::String(model)) if model == served => {}
        Some(Value::String(model)) => {
            return invalid(Some("model"), format!("model '{model}' is not served here; this endpoint serves '{served}'"))
        }
        Some(_) => return invalid(Some("model"), "'model' must be a string"),
    }
    let base64 = match request.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(format)) if format == "float" => false,
        Some(Value::String(format)) if format == "base64" => true,
        Some(_) => return invalid(Some("encoding_format"), "'encoding_format' must be \"float\" or \"base64\""),
    };
    match (request.get("dimensions"), state.backend.dimensions()) {
        (None | Some(Value::Null), _) => {}
        (Some(Value::Number(asked)), Some(dimensions)) if asked.as_u64() == Some(dimensions as u64) => {}
        (Some(asked), Some(dimensions)) => {
            return invalid(Some("dimensions"), format!("'{served}' has {dimensions} dimensions; asked for {asked}"))
        }
        (Some(_), None) => return invalid(Some("dimensions"), "this endpoint does not shorten embeddings"),
    }

    let characters: usize = texts.iter().map(String::len).sum();
    let vectors = match state.backend.embed(texts).await {
        Ok(vectors) => vectors,
        Err(EmbedError::Rejected(message)) => return invalid(Some("input"), message),
        Err(EmbedError::Unavailable(message)) => {
            return error(StatusCode::SERVICE_UNAVAILABLE, "server_error", None, message);
        }
    };
    let data: Vec<EmbeddingItem> = vectors
        .into_iter()
        .enumerate()
        .map(|(index, vector)| EmbeddingItem {
            object: "embedding",
            index,
            embedding: if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                EmbeddingValue::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                EmbeddingValue::Float(vector)
            },
        })
        .collect();
    // usage in bytes/4, the usual estimate, rather than a second tokenisation of every input
    let tokens = characters.div_ceil(4);
    let body = EmbeddingsResponse { object: "list", data, model: served, usage: Usage { prompt_tokens: tokens, total_tokens: tokens } };
    match serde_json::to_string(&body) {
        Ok(text) => (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], text).into_response(),
        Err(failure) => error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", None, failure.to_string()),
    }
}

// Serialised from f32 directly (serde_json writes the shortest text that reads back as the same
// f32), not through serde_json::Value, which would widen to f64 and print 17 digits.
#[derive(Serialize)]
struct EmbeddingsResponse<'a> {
    object: &'static str,
    data: Vec<EmbeddingItem>,
    model: &'a str,
    usage: Usage,
}

#[derive(Serialize)]
struct EmbeddingItem {
    object: &'static str,
    index: usize,
    embedding: EmbeddingValue,
}

#[derive(Serialize)]
#[serde(untagged)]
enum EmbeddingValue {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: usize,
    total_tokens: usize,
}

async fn models(State(state): State<Arc<AppState>>) -> Response {
    let body = json!({
        "object": "list",
        "data": [{ "id": state.backend.model_name(), "object": "model", "owned_by": "memoriesdb-embedder",
                   "dimensions": state.backend.dimensions() }],
    });
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when the model is loaded (it is, once the server listens) and, with a database, when
/// the queue worker is connected and listening.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match &state.worker {
        Some(worker) if !worker.connected.load(Ordering::Relaxed) => {
            (StatusCode::SERVICE_UNAVAILABLE, "not ready: the queue worker is not connected to the database\n").into_response()
        }
        _ => (StatusCode::OK, "ready\n").into_response(),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    state.process.collect();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}
