//! The one dedicated LISTEN connection to PostgreSQL.
//!
//! Its LISTEN set follows the set of channels anyone subscribes to (the registry is the source
//! of truth; the listener reconciles towards it whenever it changes). Notifications are fanned
//! out as they arrive. When the connection is lost (PostgreSQL restarted, backend terminated,
//! network gone, or the periodic `SELECT 1` probe times out) the listener reconnects with
//! exponential backoff and jitter, LISTENs on everything again and tells every client
//! `{"event":"reconnected"}`, since notifications sent in the gap are lost and clients must resync.

use crate::channel::ChannelName;
use crate::metrics::Metrics;
use crate::protocol;
use crate::registry::Registry;
use crate::role::{RoleCheck, RoleError};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::time::{sleep, timeout, Instant};
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;

/// The application_name of the LISTEN connection (visible in pg_stat_activity).
pub const LISTENER_APPLICATION_NAME: &str = "memoriesdb-hub-listener";

/// At most this many LISTEN/UNLISTEN statements go in one round trip.
const STATEMENTS_PER_BATCH: usize = 256;

/// What the rest of the hub can see of the listener.
pub struct ListenerState {
    up: AtomicBool,
    listening: RwLock<HashSet<ChannelName>>,
    version: watch::Sender<u64>,
}

impl ListenerState {
    pub fn new() -> ListenerState {
        ListenerState { up: AtomicBool::new(false), listening: RwLock::new(HashSet::new()), version: watch::channel(0).0 }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    pub fn listening_count(&self) -> usize {
        self.listening.read().map(|set| set.len()).unwrap_or(0)
    }

    fn pending(&self, channels: &[ChannelName]) -> Vec<ChannelName> {
        let listening = self.listening.read().unwrap_or_else(|p| p.into_inner());
        channels.iter().filter(|c| !listening.contains(*c)).cloned().collect()
    }

    /// Wait (at most `limit`) until PostgreSQL has confirmed LISTEN on all `channels`; returns
    /// those still pending. A subscription is acknowledged only once it is live, so a client that
    /// publishes right after subscribing receives its own message.
    pub async fn wait_until_listening(&self, channels: &[ChannelName], limit: Duration) -> Vec<ChannelName> {
        let mut changes = self.version.subscribe();
        let deadline = Instant::now() + limit;
        loop {
            let pending = self.pending(channels);
            if pending.is_empty() {
                return pending;
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => continue,
                _ => return self.pending(channels),
            }
        }
    }

    fn changed(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    fn mark_listening(&self, channels: &[ChannelName]) {
        self.listening.write().unwrap_or_else(|p| p.into_inner()).extend(channels.iter().cloned());
        self.changed();
    }

    fn mark_not_listening(&self, channels: &[ChannelName]) {
        let mut listening = self.listening.write().unwrap_or_else(|p| p.into_inner());
        for channel in channels {
            listening.remove(channel);
        }
    }

    fn mark_down(&self) {
        self.up.store(false, Ordering::Release);
        self.listening.write().unwrap_or_else(|p| p.into_inner()).clear();
        self.changed();
    }
}

impl Default for ListenerState {
    fn default() -> Self {
        Self::new()
    }
}

pub struct Listener {
    pub pg_config: tokio_postgres::Config,
    pub registry: Arc<Registry>,
    pub state: Arc<ListenerState>,
    pub metrics: Arc<Metrics>,
    pub max_backoff: Duration,
    pub probe_interval: Duration,
    /// Checked on every (re)connect: the first connection after a database outage may be the
    /// first time the hub can see its role at all.
    pub role: Arc<RoleCheck>,
}

impl Listener {
    /// Runs until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut pg_config = self.pg_config.clone();
        pg_config.application_name(LISTENER_APPLICATION_NAME);
        pg_config.keepalives(true).keepalives_idle(Duration::from_secs(30));
        if pg_config.get_connect_timeout().is_none() {
            pg_config.connect_timeout(Duration::from_secs(5));
        }
        let initial_backoff = Duration::from_millis(100);
        let mut backoff = initial_backoff;
        let mut was_up_before = false;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            match self.session(&pg_config, &shutdown, &mut was_up_before).await {
                SessionEnd::Shutdown => return,
                SessionEnd::Lost { was_established } => {
                    self.state.mark_down();
                    if was_established {
                        backoff = initial_backoff;
                    }
                }
            }
            // jitter spreads the reconnect attempts of many hubs after a database restart
            let pause = backoff + Duration::from_millis(fastrand::u64(0..=backoff.as_millis() as u64 / 2));
            tracing::info!(retry_in_ms = pause.as_millis() as u64, "LISTEN connection down; reconnecting");
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = sleep(pause) => {}
            }
            backoff = (backoff * 2).min(self.max_backoff.max(initial_backoff));
        }
    }

    /// One connection's lifetime: connect, LISTEN on everything, follow changes, deliver.
    async fn session(
        &self,
        pg_config: &tokio_postgres::Config,
        shutdown: &CancellationToken,
        was_up_before: &mut bool,
    ) -> SessionEnd {
        let connected = tokio::select! {
            _ = shutdown.cancelled() => return SessionEnd::Shutdown,
            connected = pg_config.connect(NoTls) => connected,
        };
        let (client, mut connection) = match connected {
            Ok(pair) => pair,
            Err(error) => {
                tracing::warn!(error = %crate::error_chain(&error), "cannot open the LISTEN connection");
                return SessionEnd::Lost { was_established: false };
            }
        };

        // The connection object must be polled for anything to happen, including the replies
        // to our LISTEN statements; notifications come out of the same poll loop.
        let (lost_tx, mut lost_rx) = oneshot::channel::<()>();
        let registry = self.registry.clone();
        let metrics = self.metrics.clone();
        let poller = tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(note))) => {
                        Metrics::inc(&metrics.notifications_total);
                        let frame = protocol::delivery_frame(note.channel(), note.payload());
                        registry.publish(note.channel(), &frame, protocol::event_time(note.payload()));
                    }
                    Some(Ok(AsyncMessage::Notice(notice))) => {
                        tracing::debug!(message = notice.message(), "notice on the LISTEN connection");
                    }
                    Some(Ok(_)) => {}
                    Some(Err(error)) => {
                        tracing::warn!(error = %crate::error_chain(&error), "LISTEN connection failed");
                        break;
                    }
                    None => {
                        tracing::warn!("LISTEN connection closed by the server");
                        break;
                    }
                }
            }
            let _ = lost_tx.send(());
        });
        let _abort_poller_on_exit = AbortOnDrop(poller);

        match self.role.verify(&client).await {
            Ok(()) => {}
            // recorded by the check: the hub is stopping
            Err(RoleError::Refused(_)) => return SessionEnd::Shutdown,
            Err(RoleError::Query(error)) => {
                tracing::warn!(error = %crate::error_chain(&error), "checking the database role failed");
                return SessionEnd::Lost { was_established: false };
            }
        }
        if let Err(error) = self.reconcile(&client).await {
            tracing::warn!(error = %crate::error_chain(&error), "re-LISTEN after connecting failed");
            return SessionEnd::Lost { was_established: false };
        }
        self.state.up.store(true, Ordering::Release);
        self.state.changed();
        if *was_up_before {
            Metrics::inc(&self.metrics.listener_reconnects_total);
        }
        tracing::info!(channels = self.state.listening_count(), reconnect = *was_up_before, "LISTEN connection up");
        if *was_up_before || self.registry.connection_count() > 0 {
            // Anything NOTIFYed while we were away is gone: clients must resync.
            self.registry.broadcast(&protocol::event_frame("reconnected"));
        }
        *was_up_before = true;

        let mut probe = tokio::time::interval(self.probe_interval);
        probe.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return SessionEnd::Shutdown,
                _ = &mut lost_rx => return SessionEnd::Lost { was_established: true },
                _ = self.registry.channels_changed.notified() => {
                    if let Err(error) = self.reconcile(&client).await {
                        tracing::warn!(error = %crate::error_chain(&error), "LISTEN/UNLISTEN failed");
                        return SessionEnd::Lost { was_established: true };
                    }
                }
                _ = probe.tick() => {
                    let alive = timeout(Duration::from_secs(5), client.simple_query("SELECT 1")).await;
                    if !matches!(alive, Ok(Ok(_))) {
                        tracing::warn!("LISTEN connection did not answer the liveness probe");
                        return SessionEnd::Lost { was_established: true };
                    }
                }
            }
        }
    }

    /// Bring the LISTEN set in line with the registry's channels, until it is stable.
    async fn reconcile(&self, client: &tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
        loop {
            let wanted: HashSet<ChannelName> = self.registry.channel_names().into_iter().collect();
            let (to_listen, to_unlisten) = {
                let listening = self.state.listening.read().unwrap_or_else(|p| p.into_inner());
                let to_listen: Vec<ChannelName> = wanted.difference(&listening).cloned().collect();
                let to_unlisten: Vec<ChannelName> = listening.difference(&wanted).cloned().collect();
                (to_listen, to_unlisten)
            };
            if to_listen.is_empty() && to_unlisten.is_empty() {
                return Ok(());
            }
            // Channels stop counting as listened before UNLISTEN is sent, and start counting only
            // after LISTEN succeeded, so a subscriber is never told "live" too early.
            self.state.mark_not_listening(&to_unlisten);
            for chunk in to_unlisten.chunks(STATEMENTS_PER_BATCH) {
                let sql: String = chunk.iter().map(|c| format!("UNLISTEN {};", c.quoted_identifier())).collect();
                client.batch_execute(&sql).await?;
            }
            for chunk in to_listen.chunks(STATEMENTS_PER_BATCH) {
                let sql: String = chunk.iter().map(|c| format!("LISTEN {};", c.quoted_identifier())).collect();
                client.batch_execute(&sql).await?;
                self.state.mark_listening(chunk);
            }
            tracing::debug!(listen = to_listen.len(), unlisten = to_unlisten.len(), "LISTEN set updated");
        }
    }
}

enum SessionEnd {
    Shutdown,
    Lost { was_established: bool },
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
