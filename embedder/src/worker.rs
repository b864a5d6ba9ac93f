//! The queue worker: drains `memoriesdb.embedding_schedule` with the extension's own functions
//! (claim_embedding_batch, store_embedding, fail_embedding, process_vindexing).
//!
//! Woken by the queue's NOTIFY (memoriesdb_embedding_queue) and by a poll interval (retries come
//! due without a notification). Any number of embedders may run against one database: claims
//! use SKIP LOCKED leases, so two workers never hold the same item, and an item whose worker
//! died is claimed again when its lease runs out. An embedding is stored only for the content
//! hash it was computed from, so a memory edited meanwhile is simply redone, and a memory
//! deleted meanwhile is skipped.

use crate::backend::{Backend, EmbedError};
use crate::chunking::{character_offsets, Chunking};
use crate::config::Config;
use crate::error_chain;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, Client, NoTls};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The channel the extension notifies when work is queued.
const QUEUE_CHANNEL: &str = "memoriesdb_embedding_queue";

pub struct Worker {
    config: Config,
    backend: Arc<Backend>,
    chunking: Chunking,
    /// Connected to the database and listening (for /readyz).
    pub connected: AtomicBool,
}

/// The statements a worker runs, prepared once per connection.
struct Statements {
    claim: tokio_postgres::Statement,
    store: tokio_postgres::Statement,
    store_one: tokio_postgres::Statement,
    fail: tokio_postgres::Statement,
}

struct Claimed {
    memory_id: Uuid,
    /// the part of the content the passages can come from (Chunking::max_tokens tokens)
    content: Arc<str>,
    content_hash: String,
}

/// A memory's embeddings: one per passage, with the passages' character offsets, or one of the
/// whole content (offsets None).
struct Embedded {
    vectors: Vec<Vec<f32>>,
    offsets: Option<Vec<(i32, i32)>>,
}

impl Worker {
    /// A worker for `config`: refuses chunk settings that cannot work (an overlap as long as
    /// the chunk).
    pub fn new(config: Config, backend: Arc<Backend>) -> anyhow::Result<Self> {
        let tokens = config.chunk_tokens.unwrap_or_else(|| backend.window());
        let chunking = Chunking::new(tokens, config.chunk_overlap, config.max_chunks)?;
        Ok(Self { config, backend, chunking, connected: AtomicBool::new(false) })
    }

    /// Work the queue until `shutdown`; reconnects (with backoff) whenever the database goes away.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            match self.session(&shutdown).await {
                Ok(()) => return,
                Err(error) => {
                    self.connected.store(false, Ordering::Relaxed);
                    tracing::warn!(retry_in_ms = backoff.as_millis() as u64, "queue worker: {error:#}");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// One database connection's life: LISTEN, then claim and embed until the queue is empty,
    /// wait for a notification or the poll interval, repeat.
    async fn session(&self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let (client, mut connection) = tokio_postgres::connect(&self.config.database_url, NoTls).await?;
        let wake = Arc::new(Notify::new());
        let lost = CancellationToken::new();
        let driver = {
            let wake = Arc::clone(&wake);
            let lost = lost.clone();
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            tokio::spawn(async move {
                while let Some(message) = messages.next().await {
                    match message {
                        Ok(AsyncMessage::Notification(_)) => wake.notify_one(),
                        Ok(_) => {}
                        Err(error) => {
                            tracing::warn!("queue connection: {}", error_chain(&error));
                            break;
                        }
                    }
                }
                lost.cancel();
            })
        };
        let result = self.work(&client, &wake, &lost, shutdown).await;
        driver.abort();
        result
    }

    async fn work(&self, client: &Client, wake: &Notify, lost: &CancellationToken, shutdown: &CancellationToken) -> anyhow::Result<()> {
        client
            .batch_execute(&format!(
                "SET application_name = 'memoriesdb-embedder'; SET search_path = pg_catalog, pg_temp; LISTEN {QUEUE_CHANNEL}"
            ))
            .await?;
        let claim = client
            .prepare(
                // only the part of the content the model reads leaves the database
                "SELECT memory_id, pg_catalog.left(content, $3::pg_catalog.int4), content_hash, attempts
                   FROM memoriesdb.claim_embedding_batch($1::pg_catalog.int4, $2::pg_catalog.text::pg_catalog.interval)",
            )
            .await?;
        // One round trip stores the whole batch. store_embedding() returns false for a memory
        // whose content changed since the claim (the queue holds the new content) and raises
        // no_data_found for one deleted since: such rows are left out here, and if one is
        // deleted between this check and the store, the batch falls back to row by row.
        let vector = vector_type(client).await?;
        // (each memory's embeddings, and its passages' offsets when it has several, travel as
        // array literals: one text per memory)
        let store = client
            .prepare(&format!(
                "SELECT memoriesdb.store_embedding_chunks(t.id, t.content_hash, $3, t.embeddings::{vector}[],
                                                          t.starts::pg_catalog.int4[], t.ends::pg_catalog.int4[])
                   FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.uuid[]), pg_catalog.unnest($2::pg_catalog.text[]),
                                   pg_catalog.unnest($4::pg_catalog.text[]), pg_catalog.unnest($5::pg_catalog.text[]),
                                   pg_catalog.unnest($6::pg_catalog.text[])) AS t(id, embeddings, content_hash, starts, ends)
                  WHERE EXISTS (SELECT FROM memoriesdb.memories m WHERE m.id OPERATOR(pg_catalog.=) t.id)"
            ))
            .await
            .map_err(older_extension)?;
        let store_one = client
            .prepare(&format!(
                "SELECT memoriesdb.store_embedding_chunks($1, $4, $3, $2::pg_catalog.text::{vector}[],
                                                          $5::pg_catalog.text::pg_catalog.int4[], $6::pg_catalog.text::pg_catalog.int4[])"
            ))
            .await
            .map_err(older_extension)?;
        let fail = client.prepare("SELECT memoriesdb.fail_embedding($1, $2, $3::pg_catalog.int4)").await?;
        let depth = client
            .prepare("SELECT pg_catalog.count(*) FROM memoriesdb.embedding_schedule WHERE status IN ('pending', 'failed', 'processing')")
            .await?;
        let statements = Statements { claim, store, store_one, fail };
        self.connected.store(true, Ordering::Relaxed);
        tracing::info!(
            model = self.backend.model_name(),
            chunk_tokens = self.chunking.tokens,
            chunk_overlap = self.chunking.overlap,
            max_chunks = self.chunking.max_chunks,
            "queue worker listening on {QUEUE_CHANNEL}"
        );

        // The model and the database work at the same time: while batch N is embedded, the
        // database stores batch N-1 (updating the HNSW index costs about as much per row as the
        // model) and leases batch N+1. Everything is still stored in claim order per worker.
        let mut last_depth = Instant::now() - Duration::from_secs(3600);
        let mut storing: Option<BoxFuture<'_, Result<(), tokio_postgres::Error>>> = None;
        let mut next = self.claim(client, &statements).await?;
        loop {
            if last_depth.elapsed() >= Duration::from_secs(1) {
                let waiting: i64 = client.query_one(&depth, &[]).await?.get(0);
                metrics::gauge!("memoriesdb_embedder_queue_depth").set(waiting as f64);
                last_depth = Instant::now();
            }
            if next.is_empty() {
                if let Some(store) = storing.take() {
                    store.await?;
                    // new dimensions get their HNSW index (a no-op query when nothing is queued)
                    client.execute("SELECT memoriesdb.process_vindexing()", &[]).await?;
                    if !shutdown.is_cancelled() {
                        next = self.claim(client, &statements).await?;
                    }
                    continue;
                }
                if shutdown.is_cancelled() {
                    return Ok(());
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = lost.cancelled() => anyhow::bail!("the database connection was lost"),
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(self.config.poll_interval) => {}
                }
                next = self.claim(client, &statements).await?;
                continue;
            }
            let current = std::mem::take(&mut next);
            let previous = storing.take();
            let database = async {
                if let Some(store) = previous {
                    store.await?;
                }
                client.execute("SELECT memoriesdb.process_vindexing()", &[]).await?;
                if shutdown.is_cancelled() {
                    return Ok(Vec::new());
                }
                self.claim(client, &statements).await
            };
            let (embedded, claimed_next) = tokio::join!(self.embed_items(&current), database);
            next = claimed_next?;
            storing = Some(Box::pin(self.settle(client, current, embedded, &statements)));
        }
    }

    /// Lease the next batch. An item claimed more often than it may be tried (its earlier claims
    /// never ended: an embedder died or lost the database holding it) goes dead instead of
    /// taking down every embedder that picks it up.
    async fn claim(&self, client: &Client, statements: &Statements) -> Result<Vec<Claimed>, tokio_postgres::Error> {
        let lease = format!("{} milliseconds", self.config.lease.as_millis().max(1000));
        let claim_batch = self.config.claim_batch.clamp(1, 1000) as i32;
        let max_chars = self.backend.characters_for(self.chunking.max_tokens()).min(i32::MAX as usize) as i32;
        let max_attempts = self.config.max_attempts.max(1) as i32;
        let rows = client.query(&statements.claim, &[&claim_batch, &lease, &max_chars]).await?;
        metrics::counter!("memoriesdb_embedder_claimed_total").increment(rows.len() as u64);
        let mut claimed = Vec::with_capacity(rows.len());
        for row in &rows {
            let item = Claimed { memory_id: row.get(0), content: row.get::<_, String>(1).into(), content_hash: row.get(2) };
            let attempts: i32 = row.get(3);
            if attempts > max_attempts {
                let reason = format!("claimed {attempts} times without finishing (an embedder died or lost the database while working on it)");
                self.fail(client, &item, &EmbedError::Rejected(reason), &statements.fail).await?;
                continue;
            }
            claimed.push(item);
        }
        Ok(claimed)
    }

    /// Each claimed item's embeddings, or the error it failed with. One bad text must not fail
    /// the others: a batch the backend rejects is retried one memory at a time.
    async fn embed_items(&self, claimed: &[Claimed]) -> Vec<Result<Embedded, EmbedError>> {
        // splitting tokenises: off the async threads
        let contents: Vec<Arc<str>> = claimed.iter().map(|item| Arc::clone(&item.content)).collect();
        let (backend, chunking) = (Arc::clone(&self.backend), self.chunking);
        let split: Vec<Result<Vec<Range<usize>>, EmbedError>> =
            tokio::task::spawn_blocking(move || contents.iter().map(|text| passages_of(&backend, chunking, text)).collect())
                .await
                .unwrap_or_else(|error| claimed.iter().map(|_| Err(EmbedError::Unavailable(format!("chunking task failed: {error}")))).collect());
        let texts_of = |item: &Claimed, ranges: &[Range<usize>]| -> Vec<String> {
            ranges.iter().map(|range| item.content[range.clone()].to_owned()).collect()
        };
        let all_texts: Vec<String> =
            claimed.iter().zip(&split).filter_map(|(item, ranges)| ranges.as_ref().ok().map(|ranges| texts_of(item, ranges))).flatten().collect();
        let splittable = split.iter().filter(|ranges| ranges.is_ok()).count();
        let vectors: Vec<Result<Vec<Vec<f32>>, EmbedError>> = match self.backend.embed(all_texts).await {
            Ok(vectors) => {
                let mut vectors = vectors.into_iter();
                split.iter().map(|ranges| ranges.clone().map(|ranges| vectors.by_ref().take(ranges.len()).collect())).collect()
            }
            Err(EmbedError::Rejected(_)) if splittable > 1 => {
                let mut vectors = Vec::with_capacity(claimed.len());
                for (item, ranges) in claimed.iter().zip(&split) {
                    vectors.push(match ranges {
                        Ok(ranges) => self.backend.embed(texts_of(item, ranges)).await,
                        Err(error) => Err(error.clone()),
                    });
                }
                vectors
            }
            Err(error) => split.iter().map(|ranges| Err(ranges.as_ref().err().unwrap_or(&error).clone())).collect(),
        };
        claimed
            .iter()
            .zip(split)
            .zip(vectors)
            .map(|((item, ranges), vectors)| {
                let (ranges, vectors) = (ranges?, vectors?);
                let whole = ranges.len() == 1 && ranges[0] == (0..item.content.len());
                Ok(Embedded { vectors, offsets: (!whole).then(|| character_offsets(&item.content, &ranges)) })
            })
            .collect()
    }

    /// Store what was embedded and record what failed.
    async fn settle(
        &self,
        client: &Client,
        claimed: Vec<Claimed>,
        embedded: Vec<Result<Embedded, EmbedError>>,
        statements: &Statements,
    ) -> Result<(), tokio_postgres::Error> {
        let mut stored_items = Vec::with_capacity(claimed.len());
        let mut embeddings = Vec::with_capacity(claimed.len());
        for (item, result) in claimed.into_iter().zip(embedded) {
            match result {
                Ok(embedded) => {
                    stored_items.push(item);
                    embeddings.push(embedded);
                }
                Err(error) => self.fail(client, &item, &error, &statements.fail).await?,
            }
        }
        if stored_items.is_empty() {
            return Ok(());
        }
        self.store(client, &stored_items, &embeddings, statements).await
    }

    async fn store(&self, client: &Client, claimed: &[Claimed], embedded: &[Embedded], statements: &Statements) -> Result<(), tokio_postgres::Error> {
        let ids: Vec<Uuid> = claimed.iter().map(|item| item.memory_id).collect();
        let hashes: Vec<&str> = claimed.iter().map(|item| item.content_hash.as_str()).collect();
        let literals: Vec<String> = embedded.iter().map(|e| array_literal(e.vectors.iter().map(|v| format!("\"{}\"", vector_literal(v))))).collect();
        let offsets = |side: fn(&(i32, i32)) -> i32| -> Vec<Option<String>> {
            embedded.iter().map(|e| e.offsets.as_ref().map(|o| array_literal(o.iter().map(|p| side(p).to_string())))).collect()
        };
        let (starts, ends) = (offsets(|o| o.0), offsets(|o| o.1));
        let model = self.backend.model_name();
        match client.query(&statements.store, &[&ids, &literals, &model, &hashes, &starts, &ends]).await {
            Ok(rows) => {
                let stored = rows.iter().filter(|row| row.get::<_, bool>(0)).count();
                self.count_stores(stored, rows.len() - stored, claimed.len() - rows.len());
                Ok(())
            }
            Err(error) if error.code().is_some() => {
                // a memory deleted in the middle of the statement, or one bad vector: row by row
                tracing::debug!("batch store failed, storing one by one: {}", error_chain(&error));
                for (index, item) in claimed.iter().enumerate() {
                    let parameters: [&(dyn tokio_postgres::types::ToSql + Sync); 6] =
                        [&item.memory_id, &literals[index], &model, &hashes[index], &starts[index], &ends[index]];
                    match client.query_one(&statements.store_one, &parameters).await {
                        Ok(row) => {
                            let stored: bool = row.get(0);
                            self.count_stores(stored as usize, !stored as usize, 0);
                        }
                        Err(error) if error.code() == Some(&tokio_postgres::error::SqlState::NO_DATA_FOUND) => {
                            self.count_stores(0, 0, 1)
                        }
                        // the database refused this vector (e.g. an API's zero vector): that
                        // item fails, the others go on
                        Err(error) if error.code().is_some() => {
                            let reason = EmbedError::Rejected(format!("the database refused the embedding: {}", error_chain(&error)));
                            self.fail(client, item, &reason, &statements.fail).await?;
                        }
                        Err(error) => return Err(error),
                    }
                }
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    fn count_stores(&self, stored: usize, stale: usize, deleted: usize) {
        metrics::counter!("memoriesdb_embedder_stored_total").increment(stored as u64);
        metrics::counter!("memoriesdb_embedder_stale_total").increment(stale as u64);
        metrics::counter!("memoriesdb_embedder_deleted_total").increment(deleted as u64);
    }

    async fn fail(&self, client: &Client, item: &Claimed, error: &EmbedError, fail: &tokio_postgres::Statement) -> Result<(), tokio_postgres::Error> {
        let message = error.to_string();
        let max_attempts = self.config.max_attempts.max(1) as i32;
        match client.query_one(fail, &[&item.memory_id, &message, &max_attempts]).await {
            Ok(row) => {
                let status: String = row.get(0);
                metrics::counter!("memoriesdb_embedder_failed_total", "status" => status.clone()).increment(1);
                tracing::warn!(memory_id = %item.memory_id, status, "embedding failed: {message}");
                Ok(())
            }
            // deleted meanwhile: its queue row went with it
            Err(error) if error.code() == Some(&tokio_postgres::error::SqlState::NO_DATA_FOUND) => Ok(()),
            Err(error) => Err(error),
        }
    }
}

/// The schema-qualified name of pgvector's type, wherever pgvector is installed.
async fn vector_type(client: &Client) -> Result<String, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT pg_catalog.quote_ident(n.nspname) OPERATOR(pg_catalog.||) '.vector'
               FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) e.extnamespace
              WHERE e.extname OPERATOR(pg_catalog.=) 'vector'",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// A function the worker calls does not exist: the extension in the database is older than this
/// embedder (0.1.0 has no store_embedding_chunks()). Said plainly, rather than as the bare
/// "function does not exist" it would otherwise log every few seconds.
fn older_extension(error: tokio_postgres::Error) -> anyhow::Error {
    if error.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_FUNCTION) {
        anyhow::Error::new(error)
            .context("the memoriesdb extension in this database is older than this embedder: run ALTER EXTENSION memoriesdb UPDATE")
    } else {
        error.into()
    }
}

/// The passages of a claimed text (byte ranges): the whole text when it fits one window.
fn passages_of(backend: &Backend, chunking: Chunking, text: &str) -> Result<Vec<Range<usize>>, EmbedError> {
    // every token covers at least one byte: a text of fewer bytes than a window is one window
    if text.len() <= chunking.tokens {
        return Ok(vec![0..text.len()]);
    }
    let (pieces, complete) = backend.pieces(text, chunking.max_tokens())?;
    Ok(chunking.passages(text, &pieces, complete))
}

/// A PostgreSQL array literal of elements already in their literal form.
fn array_literal(elements: impl Iterator<Item = String>) -> String {
    let mut text = String::from("{");
    for (index, element) in elements.enumerate() {
        if index > 0 {
            text.push(',');
        }
        text.push_str(&element);
    }
    text.push('}');
    text
}

/// pgvector's text form, '[x,y,...]'; f32's Display is the shortest text that reads back exactly.
pub fn vector_literal(vector: &[f32]) -> String {
    let mut text = String::with_capacity(vector.len() * 12 + 2);
    text.push('[');
    for (index, value) in vector.iter().enumerate() {
        if index > 0 {
            text.push(',');
        }
        text.push_str(&value.to_string());
    }
    text.push(']');
    text
}
