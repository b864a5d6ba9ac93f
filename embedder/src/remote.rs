//! An OpenAI-compatible embeddings API (OpenAI, Ollama, vLLM, text-embeddings-inference, or
//! another memoriesdb-embedder): `POST {base}/embeddings` with `{"model", "input": [...]}`.
//!
//! Retryable failures (429, 5xx, timeouts, connection errors, a malformed answer) are retried
//! with exponential backoff and jitter, honouring Retry-After; other 4xx answers are the input's
//! fault and are not retried. The API key is sent as a bearer token and never logged.

use crate::backend::EmbedError;
use crate::config::Config;
use crate::error_chain;
use anyhow::{bail, Context};
use serde::Deserialize;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

pub struct RemoteApi {
    client: reqwest::Client,
    url: String,
    api_key: Option<String>,
    /// The model named in each request.
    api_model: String,
    /// The name recorded with each embedding (--model-name, else the API's model name).
    pub model_name: String,
    /// Asked of the API when set; checked on every answer once known.
    pub dimensions: Option<usize>,
    batch_size: usize,
    retries: u32,
    /// The earliest time the next request may start (rate limit).
    next_request: Mutex<Instant>,
    min_interval: Duration,
}

#[derive(Deserialize)]
struct EmbeddingsResponse {
    data: Vec<EmbeddingItem>,
}

#[derive(Deserialize)]
struct EmbeddingItem {
    index: usize,
    embedding: Vec<f32>,
}

/// Read the API key from --api-key-file or MEMORIESDB_EMBEDDER_API_KEY.
fn api_key(config: &Config) -> anyhow::Result<Option<String>> {
    if let Some(path) = &config.api_key_file {
        let key = std::fs::read_to_string(path).with_context(|| format!("cannot read the API key file {}", path.display()))?;
        let key = key.trim_end_matches(['\r', '\n']).to_owned();
        if key.is_empty() {
            bail!("the API key file {} is empty", path.display());
        }
        return Ok(Some(key));
    }
    Ok(std::env::var("MEMORIESDB_EMBEDDER_API_KEY").ok().filter(|key| !key.is_empty()))
}

impl RemoteApi {
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let Some(base) = &config.api_url else { bail!("--backend openai needs --api-url") };
        let Some(model) = config.api_model.clone() else { bail!("--backend openai needs --api-model") };
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("--api-url must start with http:// or https://");
        }
        let client = reqwest::Client::builder()
            .timeout(config.api_timeout)
            .connect_timeout(config.api_timeout.min(Duration::from_secs(10)))
            .build()
            .context("cannot build the HTTP client")?;
        let min_interval =
            if config.api_rate_limit > 0.0 { Duration::from_secs_f64(1.0 / config.api_rate_limit) } else { Duration::ZERO };
        Ok(Self {
            client,
            url: format!("{}/embeddings", base.trim_end_matches('/')),
            api_key: api_key(config)?,
            model_name: config.model_name.clone().filter(|name| !name.is_empty()).unwrap_or_else(|| model.clone()),
            api_model: model,
            dimensions: config.api_dimensions,
            batch_size: config.api_batch.max(1),
            retries: config.api_retries.max(1),
            next_request: Mutex::new(Instant::now()),
            min_interval,
        })
    }

    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut vectors = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(self.batch_size) {
            vectors.extend(self.embed_chunk(chunk).await?);
        }
        Ok(vectors)
    }

    async fn embed_chunk(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut body = serde_json::json!({ "model": self.api_model, "input": texts, "encoding_format": "float" });
        if let Some(dimensions) = self.dimensions {
            body["dimensions"] = dimensions.into();
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (error, retry_after) = match self.request(&body, texts.len()).await {
                Ok(vectors) => return Ok(vectors),
                Err((EmbedError::Rejected(message), _)) => return Err(EmbedError::Rejected(message)),
                Err((error, retry_after)) => (error, retry_after),
            };
            metrics::counter!("memoriesdb_embedder_api_retries_total").increment(1);
            if attempt >= self.retries {
                return Err(error);
            }
            // exponential backoff with full jitter (250 ms, 500 ms, 1 s, ... at most 30 s), or
            // what the server asked for
            let ceiling = Duration::from_millis(250u64.saturating_mul(1 << attempt.min(7))).min(Duration::from_secs(30));
            let wait = retry_after.unwrap_or_else(|| ceiling.mul_f64(0.5 + fastrand::f64() / 2.0));
            tracing::warn!(attempt, wait_ms = wait.as_millis() as u64, "{error}; retrying");
            tokio::time::sleep(wait).await;
        }
    }

    async fn pace(&self) {
        if self.min_interval.is_zero() {
            return;
        }
        let start = {
            let mut next = self.next_request.lock().await;
            let start = (*next).max(Instant::now());
            *next = start + self.min_interval;
            start
        };
        tokio::time::sleep_until(start.into()).await;
    }

    async fn request(&self, body: &serde_json::Value, expected: usize) -> Result<Vec<Vec<f32>>, (EmbedError, Option<Duration>)> {
        self.pace().await;
        let mut request = self.client.post(&self.url).json(body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let unavailable = |message: String| (EmbedError::Unavailable(message), None);
        let response = request.send().await.map_err(|error| {
            unavailable(if error.is_timeout() { "request timed out".into() } else { format!("request failed: {}", error_chain(&error)) })
        })?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok())
            .map(|seconds| Duration::from_secs(seconds.min(300)));
        let text = response.text().await.map_err(|error| unavailable(format!("reading the answer failed: {}", error_chain(&error))))?;
        if status.as_u16() == 429 || status.is_server_error() || status.as_u16() == 408 {
            return Err((EmbedError::Unavailable(format!("HTTP {status}: {}", excerpt(&text))), retry_after));
        }
        if !status.is_success() {
            return Err((EmbedError::Rejected(format!("HTTP {status}: {}", excerpt(&text))), None));
        }
        let parsed: EmbeddingsResponse =
            serde_json::from_str(&text).map_err(|error| unavailable(format!("malformed answer ({error}): {}", excerpt(&text))))?;
        if parsed.data.len() != expected {
            return Err(unavailable(format!("asked for {expected} embeddings, got {}", parsed.data.len())));
        }
        let mut vectors: Vec<Option<Vec<f32>>> = vec![None; expected];
        for item in parsed.data {
            let slot = vectors.get_mut(item.index).ok_or_else(|| unavailable(format!("answer has index {} of {expected}", item.index)))?;
            if item.embedding.is_empty() || item.embedding.iter().any(|x| !x.is_finite()) {
                return Err(unavailable("answer has an empty or non-finite embedding".into()));
            }
            if let Some(dimensions) = self.dimensions {
                if item.embedding.len() != dimensions {
                    return Err(unavailable(format!("asked for {dimensions} dimensions, got {}", item.embedding.len())));
                }
            }
            *slot = Some(item.embedding);
        }
        let vectors: Option<Vec<Vec<f32>>> = vectors.into_iter().collect();
        let vectors = vectors.ok_or_else(|| unavailable("answer repeats an index and misses another".into()))?;
        if vectors.windows(2).any(|pair| pair[0].len() != pair[1].len()) {
            return Err(unavailable("answer mixes embedding dimensions".into()));
        }
        Ok(vectors)
    }
}

/// At most 300 characters of a server's answer, for an error message.
fn excerpt(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(300) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}
