//! Counters and gauges, exposed in the Prometheus text format at /metrics.
//! Plain atomics: the hot path (fan-out) only does relaxed increments.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Default)]
pub struct Metrics {
    pub connections_total: AtomicU64,
    pub connections_rejected_total: AtomicU64,
    pub messages_in_total: AtomicU64,
    pub messages_out_total: AtomicU64,
    pub notifications_total: AtomicU64,
    pub publishes_total: AtomicU64,
    pub actions_total: AtomicU64,
    pub error_replies_total: AtomicU64,
    pub dropped_messages_total: AtomicU64,
    pub slow_client_disconnects_total: AtomicU64,
    pub heartbeat_timeouts_total: AtomicU64,
    pub idle_timeouts_total: AtomicU64,
    pub listener_reconnects_total: AtomicU64,
    pub busy_replies_total: AtomicU64,
    pub memory_budget_sheds_total: AtomicU64,
}

/// Gauges read from live state at scrape time.
pub struct Gauges {
    pub connections: usize,
    pub subscriptions: usize,
    pub channels: usize,
    pub listening_channels: usize,
    pub listener_up: bool,
    pub pool: crate::database::PoolStatus,
    pub outbound_bytes: usize,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        let mut gauge = |name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP memoriesdb_hub_{name} {help}\n# TYPE memoriesdb_hub_{name} gauge\nmemoriesdb_hub_{name} {value}"
            );
        };
        gauge(
            "connections",
            "Open WebSocket connections, including ones in their opening or closing handshake (what --max-connections limits).",
            gauges.connections as u64,
        );
        gauge("subscriptions", "Channel subscriptions over all connections.", gauges.subscriptions as u64);
        gauge("channels", "Channels with at least one subscriber on this hub.", gauges.channels as u64);
        gauge("listen_channels", "Channels the LISTEN connection is listening on.", gauges.listening_channels as u64);
        gauge("listener_up", "1 when the LISTEN connection to PostgreSQL is up.", gauges.listener_up as u64);
        gauge(
            "outbound_bytes",
            "Bytes waiting for clients in all outbound queues (--outbound-budget-mib).",
            gauges.outbound_bytes as u64,
        );
        gauge("db_pool_connections_max", "--db-pool-size.", gauges.pool.max as u64);
        gauge("db_pool_connections", "Open pooled database connections.", gauges.pool.open as u64);
        gauge("db_pool_idle", "Pooled database connections free for a request.", gauges.pool.idle as u64);
        gauge("db_pool_waiting", "Requests waiting for a pooled connection (the pool is saturated).", gauges.pool.waiting as u64);
        let counters: [(&str, &str, &AtomicU64); 15] = [
            ("connections_total", "WebSocket connections accepted.", &self.connections_total),
            (
                "connections_rejected_total",
                "Upgrades refused (limits, auth, origin, bad channels).",
                &self.connections_rejected_total,
            ),
            ("messages_in_total", "Messages received from clients.", &self.messages_in_total),
            ("messages_out_total", "Messages queued to clients (deliveries, replies, events).", &self.messages_out_total),
            ("notifications_total", "NOTIFY messages received from PostgreSQL.", &self.notifications_total),
            ("publishes_total", "pub requests sent to PostgreSQL.", &self.publishes_total),
            ("actions_total", "Chat actions executed.", &self.actions_total),
            ("error_replies_total", "Error replies sent to clients.", &self.error_replies_total),
            ("dropped_messages_total", "Messages not delivered because a client's queue was full.", &self.dropped_messages_total),
            ("slow_client_disconnects_total", "Clients disconnected for not reading.", &self.slow_client_disconnects_total),
            ("heartbeat_timeouts_total", "Clients disconnected for not answering pings.", &self.heartbeat_timeouts_total),
            ("idle_timeouts_total", "Connections closed for being idle.", &self.idle_timeouts_total),
            (
                "busy_replies_total",
                "Requests answered busy or timeout (a stuck session, a saturated pool).",
                &self.busy_replies_total,
            ),
            (
                "memory_budget_sheds_total",
                "Clients closed because all queues together exceeded --outbound-budget-mib.",
                &self.memory_budget_sheds_total,
            ),
            ("listener_reconnects_total", "Times the LISTEN connection was re-established.", &self.listener_reconnects_total),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP memoriesdb_hub_{name} {help}\n# TYPE memoriesdb_hub_{name} counter\nmemoriesdb_hub_{name} {}",
                value.load(Relaxed)
            );
        }
        out
    }
}
