//! Start-up and shutdown: load the backend, start the queue worker (with a database) and the
//! HTTP endpoint (with a port), and stop both on SIGTERM or Ctrl-C, finishing the batch in hand.

use crate::backend::Backend;
use crate::config::Config;
use crate::http::{router, AppState};
use crate::worker::Worker;
use anyhow::Context;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Histogram buckets (seconds): 1 ms to 60 s.
const BUCKETS: [f64; 14] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0];

pub async fn run(config: Config) -> anyhow::Result<()> {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &BUCKETS)
        .context("histogram buckets")?
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    let process = metrics_process::Collector::default();
    process.describe();
    metrics::gauge!("memoriesdb_embedder_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);

    let loaded = std::time::Instant::now();
    let backend = Arc::new(tokio::task::block_in_place(|| Backend::from_config(&config))?);
    tracing::info!(
        model = backend.model_name(),
        dimensions = backend.dimensions(),
        load_ms = loaded.elapsed().as_millis() as u64,
        "embedding backend ready"
    );

    let shutdown = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    let worker = if config.database_url.is_empty() {
        tracing::info!("no --database-url: serving /v1/embeddings only, not working the queue");
        None
    } else {
        let worker = Arc::new(Worker::new(config.clone(), Arc::clone(&backend)));
        tasks.spawn(Arc::clone(&worker).run(shutdown.clone()));
        Some(worker)
    };

    if config.port != 0 {
        let address = SocketAddr::new(config.host, config.port);
        let listener = tokio::net::TcpListener::bind(address).await.with_context(|| format!("cannot listen on {address}"))?;
        tracing::info!("serving /v1/embeddings on http://{}", listener.local_addr()?);
        let state = Arc::new(AppState {
            backend: Arc::clone(&backend),
            worker,
            metrics: recorder,
            process,
            max_body_bytes: config.max_body_bytes,
            max_inputs: config.max_inputs.max(1),
        });
        let stop = shutdown.clone();
        tasks.spawn(async move {
            let served = axum::serve(listener, router(state)).with_graceful_shutdown(stop.cancelled_owned()).await;
            if let Err(error) = served {
                tracing::error!("HTTP server: {error}");
            }
        });
    }
    if tasks.is_empty() {
        anyhow::bail!("nothing to do: give --database-url, a --port other than 0, or both");
    }

    shutdown_signal().await;
    tracing::info!("shutting down");
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    Ok(())
}

async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match terminate.as_mut() { Some(signal) => { signal.recv().await; } None => std::future::pending().await } } => {}
    }
}
