//! Command-line flags. Every flag has an environment variable (MEMORIESDB_EMBEDDER_<FLAG>).
//! Secrets (the API key) come from a file or the environment, never from the command line,
//! where `ps` would show them.

use clap::{Parser, ValueEnum};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug, Clone)]
#[command(name = "memoriesdb-embedder", version, about = "Embedding worker and /v1/embeddings server for MemoriesDB")]
pub struct Config {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Where embeddings come from: the local model (--model-dir) or an OpenAI-compatible API (--api-url).
    #[arg(long, env = "MEMORIESDB_EMBEDDER_BACKEND", value_enum, default_value_t = BackendKind::Local)]
    pub backend: BackendKind,

    /// Directory of a sentence-transformers model (config.json, model.safetensors, tokenizer.json).
    #[arg(long, env = "MEMORIESDB_EMBEDDER_MODEL_DIR", default_value = "/var/lib/memoriesdb/models/all-MiniLM-L6-v2")]
    pub model_dir: PathBuf,

    /// The model name recorded with each embedding (default: the local model directory's name,
    /// or --api-model).
    #[arg(long, env = "MEMORIESDB_EMBEDDER_MODEL_NAME")]
    pub model_name: Option<String>,

    /// Texts per forward pass of the local model.
    #[arg(long, env = "MEMORIESDB_EMBEDDER_MODEL_BATCH", default_value_t = 32)]
    pub model_batch: usize,

    /// Forward passes of the local model that run side by side when a call has several batches,
    /// each on cores / passes threads (0: two, or one on a single core). A single batch uses
    /// every core. Each pass holds one batch's activations in memory.
    #[arg(long, env = "MEMORIESDB_EMBEDDER_MODEL_PASSES", default_value_t = 0)]
    pub model_passes: usize,

    /// Base URL of an OpenAI-compatible API (e.g. https://api.openai.com/v1, http://localhost:11434/v1).
    #[arg(long, env = "MEMORIESDB_EMBEDDER_API_URL")]
    pub api_url: Option<String>,

    /// Model name sent to the API.
    #[arg(long, env = "MEMORIESDB_EMBEDDER_API_MODEL")]
    pub api_model: Option<String>,

    /// Dimensions to ask the API for (models that support shortening, e.g. text-embedding-3-*).
    #[arg(long, env = "MEMORIESDB_EMBEDDER_API_DIMENSIONS")]
    pub api_dimensions: Option<usize>,

    /// File holding the API key (trailing newline ignored). MEMORIESDB_EMBEDDER_API_KEY in the
    /// environment works too; there is deliberately no --api-key flag.
    #[arg(long, env = "MEMORIESDB_EMBEDDER_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,

    /// Texts per API request.
    #[arg(long, env = "MEMORIESDB_EMBEDDER_API_BATCH", default_value_t = 64)]
    pub api_batch: usize,

    /// Timeout of one API request.
    #[arg(long, env = "MEMORIESDB_EMBEDDER_API_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub api_timeout: Duration,

    /// Attempts per API request for retryable failures (429, 5xx, timeouts) before the batch fails.
    #[arg(long, env = "MEMORIESDB_EMBEDDER_API_RETRIES", default_value_t = 4)]
    pub api_retries: u32,

    /// Most API requests per second (0 = no limit).
    #[arg(long, env = "MEMORIESDB_EMBEDDER_API_RATE_LIMIT", default_value_t = 0.0)]
    pub api_rate_limit: f64,

    /// Tokens per passage of a long memory (default: what the local model reads at once, 254 for
    /// all-MiniLM-L6-v2; 512 for an API, counted as 4 characters a token).
    #[arg(long, env = "MEMORIESDB_EMBEDDER_CHUNK_TOKENS")]
    pub chunk_tokens: Option<usize>,

    /// Tokens each passage shares with the one before it.
    #[arg(long, env = "MEMORIESDB_EMBEDDER_CHUNK_OVERLAP", default_value_t = 32)]
    pub chunk_overlap: usize,

    /// Most passages embedded per memory; the rest of a longer content is found by full-text
    /// search only.
    #[arg(long, env = "MEMORIESDB_EMBEDDER_MAX_CHUNKS", default_value_t = 64)]
    pub max_chunks: usize,

    /// PostgreSQL connection string of the queue (a role granted memoriesdb_worker). Empty: no
    /// queue worker, only the HTTP endpoint.
    #[arg(long, env = "MEMORIESDB_EMBEDDER_DATABASE_URL", default_value = "")]
    pub database_url: String,

    /// Queue items claimed at once.
    #[arg(long, env = "MEMORIESDB_EMBEDDER_CLAIM_BATCH", default_value_t = 64)]
    pub claim_batch: usize,

    /// How long a claimed item stays leased to this embedder (then another may take it).
    #[arg(long, env = "MEMORIESDB_EMBEDDER_LEASE", default_value = "2m", value_parser = parse_duration)]
    pub lease: Duration,

    /// Attempts before an item is dead (retry_dead_embeddings() revives them).
    #[arg(long, env = "MEMORIESDB_EMBEDDER_MAX_ATTEMPTS", default_value_t = 5)]
    pub max_attempts: u32,

    /// Look at the queue at least this often, notifications or not (retries come due silently).
    #[arg(long, env = "MEMORIESDB_EMBEDDER_POLL_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub poll_interval: Duration,

    /// Address of the HTTP endpoint (/v1/embeddings, /healthz, /readyz, /metrics).
    #[arg(long, env = "MEMORIESDB_EMBEDDER_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// Port of the HTTP endpoint (0: no endpoint).
    #[arg(long, short = 'p', env = "MEMORIESDB_EMBEDDER_PORT", default_value_t = 5003)]
    pub port: u16,

    /// Largest request body accepted by /v1/embeddings (bytes).
    #[arg(long, env = "MEMORIESDB_EMBEDDER_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Most inputs in one /v1/embeddings request.
    #[arg(long, env = "MEMORIESDB_EMBEDDER_MAX_INPUTS", default_value_t = 2048)]
    pub max_inputs: usize,

    /// Connections served at once (more wait to be accepted).
    #[arg(long, env = "MEMORIESDB_EMBEDDER_MAX_CONNECTIONS", default_value_t = 256)]
    pub max_connections: usize,

    /// /v1/embeddings requests handled at once; more are answered 503 (each holds its body).
    #[arg(long, env = "MEMORIESDB_EMBEDDER_MAX_REQUESTS", default_value_t = 32)]
    pub max_requests: usize,

    /// Time a client has to send a request's head, and then its body (else 408).
    #[arg(long, env = "MEMORIESDB_EMBEDDER_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Log filter (tracing's EnvFilter syntax).
    #[arg(long, env = "MEMORIESDB_EMBEDDER_LOG", default_value = "info")]
    pub log: String,

    /// Log format: text or json.
    #[arg(long, env = "MEMORIESDB_EMBEDDER_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum Command {
    /// Embed texts with the local model without a database or server: one JSON string per
    /// input line, one JSON array per output line; the time taken goes to stderr.
    Embed,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Local,
    Openai,
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|error| error.to_string())
}
