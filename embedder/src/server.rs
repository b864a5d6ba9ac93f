//! Start-up and shutdown: load the backend, start the queue worker (with a database) and the
//! HTTP endpoint (with a port), and stop both on SIGTERM or Ctrl-C, finishing the batch in hand.

use crate::backend::Backend;
use crate::config::Config;
use crate::http::{router, AppState};
use crate::worker::Worker;
use anyhow::Context;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tower_service::Service;

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
        let worker = Arc::new(Worker::new(config.clone(), Arc::clone(&backend))?);
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
            body_timeout: config.request_timeout,
            requests: tokio::sync::Semaphore::new(config.max_requests.max(1)),
        });
        tasks.spawn(accept_loop(listener, router(state), config.max_connections.max(1), config.request_timeout, shutdown.clone()));
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

/// Serve HTTP/1.1 connections: at most `max_connections` at once (more wait in the kernel's
/// backlog), each with `timeout` to send its request head (slow-loris defence; the handler
/// bounds the body's time itself).
async fn accept_loop(listener: tokio::net::TcpListener, router: axum::Router, max_connections: usize, timeout: Duration, shutdown: CancellationToken) {
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1.timer(TokioTimer::new()).header_read_timeout(timeout).keep_alive(true);
    loop {
        let slot = tokio::select! {
            _ = shutdown.cancelled() => return,
            slot = Arc::clone(&slots).acquire_owned() => slot.expect("never closed"),
        };
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // e.g. EMFILE: back off instead of spinning
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (router, http1, shutdown) = (router.clone(), http1.clone(), shutdown.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| router.clone().call(request));
            let connection = http1.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(1), connection).await;
                }
            }
        });
    }
}
