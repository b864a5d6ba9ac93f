//! Where embeddings come from: the local model or an OpenAI-compatible API. The queue worker
//! and the HTTP endpoint both call `Backend::embed`, so stored embeddings and query embeddings
//! come from the same model.

use crate::chunking::{approximate_pieces, Piece};
use crate::config::{BackendKind, Config};
use crate::model::LocalModel;
use crate::remote::RemoteApi;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Why a batch could not be embedded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmbedError {
    /// The service is overloaded, down or timed out: try again later.
    Unavailable(String),
    /// The input itself was refused (e.g. too long for the API): retrying the same text fails again.
    Rejected(String),
}

impl std::fmt::Display for EmbedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EmbedError::Unavailable(message) => write!(f, "embedding service unavailable: {message}"),
            EmbedError::Rejected(message) => write!(f, "input rejected: {message}"),
        }
    }
}

pub enum Backend {
    Local { model: Arc<LocalModel>, inference: Semaphore },
    Remote(RemoteApi),
}

impl Backend {
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        Ok(match config.backend {
            BackendKind::Local => Backend::Local {
                model: Arc::new(LocalModel::load(&config.model_dir, config.model_name.clone(), config.model_batch)?.with_passes(config.model_passes)?),
                inference: Semaphore::new(1),
            },
            BackendKind::Openai => Backend::Remote(RemoteApi::from_config(config)?),
        })
    }

    /// The name stored with each embedding and reported by /v1/embeddings.
    pub fn model_name(&self) -> &str {
        match self {
            Backend::Local { model, .. } => &model.name,
            Backend::Remote(api) => &api.model_name,
        }
    }

    /// The dimension of the vectors, when known before the first call.
    pub fn dimensions(&self) -> Option<usize> {
        match self {
            Backend::Local { model, .. } => Some(model.dimensions),
            Backend::Remote(api) => api.dimensions,
        }
    }

    /// How many tokens of a text the model reads at once: the default length of a passage of a
    /// long memory (chunking.rs). An API's window is not known here: 512.
    pub fn window(&self) -> usize {
        match self {
            Backend::Local { model, .. } => model.window(),
            Backend::Remote(_) => 512,
        }
    }

    /// The first `max_pieces` tokens of `text`, for chunking, and whether they are all of its
    /// tokens: the local model's own, or about four characters of a word each for an API
    /// (whose tokenizer is not known here).
    pub fn pieces(&self, text: &str, max_pieces: usize) -> Result<(Vec<Piece>, bool), EmbedError> {
        match self {
            Backend::Local { model, .. } => model.pieces(text, max_pieces).map_err(|error| EmbedError::Rejected(format!("{error:#}"))),
            Backend::Remote(_) => {
                let pieces = approximate_pieces(text, max_pieces + 1);
                let all = pieces.len() <= max_pieces;
                Ok((pieces.into_iter().take(max_pieces).collect(), all))
            }
        }
    }

    /// The most characters of text `tokens` tokens can come from: real tokens are a few bytes,
    /// the local model's are at most 64 in any text that is not made of hundred-character words
    /// (see LocalModel::readable_part); approximate ones (for an API) are 4 characters of a word,
    /// which with the spaces between words is at most 8.
    pub fn characters_for(&self, tokens: usize) -> usize {
        match self {
            Backend::Local { .. } => tokens.saturating_mul(64),
            Backend::Remote(_) => tokens.saturating_mul(8),
        }
    }

    /// Embed `texts`, in order, one vector per text.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EmbedError> {
        let started = std::time::Instant::now();
        let count = texts.len();
        let result = match self {
            Backend::Local { model, inference } => {
                // One round of forward passes at a time (a batch per pass, side by side: see
                // LocalModel::embed). The semaphore is first come, first served, and the worker
                // takes it one round at a time, so a query from /v1/embeddings waits for one
                // round at most (on 2 cores, about two batches' time).
                let mut vectors = Vec::with_capacity(count);
                for chunk in texts.chunks(model.texts_per_round()) {
                    let _permit = inference.acquire().await.map_err(|_| EmbedError::Unavailable("shutting down".into()))?;
                    let model = Arc::clone(model);
                    let chunk = chunk.to_vec();
                    let embedded = tokio::task::spawn_blocking(move || {
                        let texts: Vec<&str> = chunk.iter().map(String::as_str).collect();
                        model.embed(&texts)
                    })
                    .await
                    .map_err(|error| EmbedError::Unavailable(format!("inference task failed: {error}")))?
                    .map_err(|error| EmbedError::Rejected(format!("{error:#}")))?;
                    vectors.extend(embedded);
                }
                Ok(vectors)
            }
            Backend::Remote(api) => api.embed(texts).await,
        };
        match &result {
            Ok(_) => {
                metrics::counter!("memoriesdb_embedder_texts_embedded_total").increment(count as u64);
                metrics::histogram!("memoriesdb_embedder_inference_seconds").record(started.elapsed().as_secs_f64());
            }
            Err(_) => metrics::counter!("memoriesdb_embedder_inference_failures_total").increment(1),
        }
        result
    }
}
