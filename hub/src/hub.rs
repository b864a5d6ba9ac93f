//! The state every part of the hub shares.

use crate::auth::Authenticator;
use crate::config::Config;
use crate::database::Database;
use crate::listener::ListenerState;
use crate::metrics::{Gauges, Metrics};
use crate::registry::Registry;
use crate::users::UserDirectory;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub struct Hub {
    pub config: Config,
    pub registry: Arc<Registry>,
    pub listener: Arc<ListenerState>,
    pub metrics: Arc<Metrics>,
    pub database: Database,
    pub auth: Option<Authenticator>,
    /// Whether a token's user exists (authentication only).
    pub users: UserDirectory,
    /// Cancelled on SIGTERM/SIGINT: stop accepting, close every connection with 1001.
    pub shutdown: CancellationToken,
    /// WebSocket connection tasks, so shutdown can wait for their close frames to go out.
    pub connections: TaskTracker,
    open_connections: AtomicUsize,
}

impl Hub {
    pub fn new(config: Config, database: Database, auth: Option<Authenticator>) -> Hub {
        let metrics = Arc::new(Metrics::new());
        let budget_bytes = config.outbound_budget_mib.saturating_mul(1024 * 1024);
        Hub {
            config,
            registry: Arc::new(Registry::new(metrics.clone(), budget_bytes)),
            listener: Arc::new(ListenerState::new()),
            metrics,
            database,
            auth,
            users: UserDirectory::default(),
            shutdown: CancellationToken::new(),
            connections: TaskTracker::new(),
            open_connections: AtomicUsize::new(0),
        }
    }

    /// Reserve one of the --max-connections slots; None when all are taken. The slot is
    /// released when the returned guard is dropped (connection closed or upgrade failed).
    pub fn reserve_connection(self: &Arc<Self>) -> Option<ConnectionSlot> {
        let previous = self.open_connections.fetch_add(1, Ordering::AcqRel);
        if previous >= self.config.max_connections {
            self.open_connections.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(ConnectionSlot { hub: self.clone() })
    }

    pub fn gauges(&self) -> Gauges {
        Gauges {
            // the slots, not the registry: a closing connection keeps its slot until its closing
            // handshake is over, and the gauge must agree with what --max-connections refuses
            connections: self.open_connections.load(Ordering::Acquire),
            subscriptions: self.registry.subscription_count(),
            channels: self.registry.channel_count(),
            listening_channels: self.listener.listening_count(),
            listener_up: self.listener.is_up(),
            pool: self.database.pool_status(),
            outbound_bytes: self.registry.budget.used(),
        }
    }
}

pub struct ConnectionSlot {
    hub: Arc<Hub>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.hub.open_connections.fetch_sub(1, Ordering::AcqRel);
    }
}
