//! Startup, the accept loop and graceful shutdown.

use crate::auth::Authenticator;
use crate::config::Config;
use crate::database::{Database, Limits};
use crate::http;
use crate::hub::Hub;
use crate::listener::Listener;
use crate::registry::CloseReason;
use crate::role::RoleCheck;
use axum::extract::connect_info::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tower_service::Service;

/// Run the hub until SIGTERM or SIGINT. Errors are startup failures (bad configuration, port
/// taken, a database role that bypasses row security); losing the database is not an error, the
/// hub keeps retrying. A role refused later (first seen after an outage) stops the hub with an
/// error too.
pub async fn run(config: Config) -> Result<(), String> {
    let secret = config.jwt_secret_bytes()?;
    config.validate(secret.is_some())?;
    let pg_config: tokio_postgres::Config = config.database_url.parse().map_err(|e| format!("invalid --database-url: {e}"))?;
    let role = RoleCheck::new(secret.is_some(), config.allow_anonymous_superuser);
    let limits = Limits {
        pool_size: config.db_pool_size,
        statement_timeout: config.statement_timeout,
        lock_timeout: config.lock_timeout,
        actions_per_session: config.max_actions_per_session,
    };
    let database = Database::new(&pg_config, &limits, role.clone())?;
    database.check_role().await?;
    if secret.is_none() && !config.host.is_loopback() && config.allowed_hosts.iter().all(|h| h.trim().is_empty()) {
        tracing::warn!(
            host = %config.host,
            "no authentication and no --allowed-hosts: only requests naming the hub by a loopback name are served"
        );
    }
    let auth = secret.map(Authenticator::new);
    let listen_addr = config.listen_addr();
    let tcp = bind(listen_addr).map_err(|e| format!("cannot listen on {listen_addr}: {e}"))?;
    let hub = Arc::new(Hub::new(config, database, auth));

    let listener_shutdown = CancellationToken::new();
    let listener = Listener {
        pg_config,
        registry: hub.registry.clone(),
        state: hub.listener.clone(),
        metrics: hub.metrics.clone(),
        max_backoff: hub.config.reconnect_max_backoff,
        probe_interval: hub.config.listener_probe_interval,
        role: role.clone(),
    };
    let listener_task = tokio::spawn(listener.run(listener_shutdown.clone()));

    tracing::info!(
        address = %listen_addr,
        auth = hub.auth.is_some(),
        "memoriesdb-hub listening: ws://{listen_addr}/ws?c=<channel>, demo page http://{listen_addr}/"
    );
    let accept_task = tokio::spawn(accept_loop(tcp, hub.clone()));
    let upkeep_hub = hub.clone();
    // histogram samples wait in a list until folded into buckets: keep that list short
    let upkeep_task = tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = upkeep_hub.shutdown.cancelled() => return,
                _ = every.tick() => upkeep_hub.metrics.upkeep(),
            }
        }
    });

    tokio::select! {
        _ = wait_for_signal() => {}
        _ = role.refused().cancelled() => {}
    }
    tracing::info!("shutting down: closing connections with 1001");
    hub.shutdown.cancel();
    hub.registry.close_all(CloseReason::Shutdown);
    hub.connections.close();
    if tokio::time::timeout(hub.config.shutdown_grace, hub.connections.wait()).await.is_err() {
        tracing::warn!(remaining = hub.registry.connection_count(), "shutdown grace period over; dropping connections");
    }
    let _ = accept_task.await;
    let _ = upkeep_task.await;
    listener_shutdown.cancel();
    let _ = listener_task.await;
    tracing::info!("stopped");
    match role.refusal() {
        Some(refusal) => Err(refusal),
        None => Ok(()),
    }
}

fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    // a deep backlog so that thousands of clients connecting at once are not refused
    socket.listen(4096)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(stream) => stream,
        Err(error) => {
            tracing::error!(%error, "cannot install the SIGTERM handler; only Ctrl-C will stop the hub");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

async fn accept_loop(tcp: TcpListener, hub: Arc<Hub>) {
    let router = http::router(hub.clone());
    let mut http1 = hyper::server::conn::http1::Builder::new();
    // The handshake timeout: the request head must arrive within it (slow-loris defence).
    http1.timer(TokioTimer::new()).header_read_timeout(hub.config.handshake_timeout).keep_alive(true);
    loop {
        let (stream, peer) = tokio::select! {
            _ = hub.shutdown.cancelled() => return,
            accepted = tcp.accept() => match accepted {
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
        let router = router.clone();
        let http1 = http1.clone();
        let shutdown = hub.shutdown.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                router.clone().call(request)
            });
            let connection = http1.serve_connection(TokioIo::new(stream), service).with_upgrades();
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
