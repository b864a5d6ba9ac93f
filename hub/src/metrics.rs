//! What /metrics shows, in the Prometheus text format: `metrics` handles rendered by
//! `metrics-exporter-prometheus`, process figures from `metrics-process` and the build.
//!
//! The recorder is the hub's own, not the process-global one, so that tests can build several.
//! Handles are registered once, here: the hot path (fan-out) only does an atomic add per
//! counter. Histograms are sampled where they would cost per delivery: the writer records the
//! queue wait and the commit-to-send time of the first frame of each batch it flushes.

use metrics::{Counter, Histogram, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};

/// Histogram buckets (seconds): 100 µs to 10 s.
const BUCKETS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The chat actions, for the per-action duration histogram.
const ACTIONS: [&str; 6] = ["send_message", "get_transcript", "create_session", "fork_session", "list_sessions", "search"];

pub struct Metrics {
    recorder: PrometheusRecorder,
    process: metrics_process::Collector,
    pub connections_total: Counter,
    pub connections_rejected_total: Counter,
    pub messages_in_total: Counter,
    pub messages_out_total: Counter,
    pub notifications_total: Counter,
    pub publishes_total: Counter,
    pub actions_total: Counter,
    pub error_replies_total: Counter,
    pub dropped_messages_total: Counter,
    pub slow_client_disconnects_total: Counter,
    pub heartbeat_timeouts_total: Counter,
    pub idle_timeouts_total: Counter,
    pub listener_reconnects_total: Counter,
    pub busy_replies_total: Counter,
    pub memory_budget_sheds_total: Counter,
    /// From a frame's enqueueing to the flush that writes it.
    pub queue_wait: Histogram,
    /// From the commit of the event (its payload's `created_at`) to the flush that writes it.
    pub commit_to_send: Histogram,
    action_durations: Vec<(&'static str, Histogram)>,
}

/// Gauges read from live state at scrape time.
#[derive(Default)]
pub struct Gauges {
    pub connections: usize,
    pub subscriptions: usize,
    pub channels: usize,
    pub listening_channels: usize,
    pub listener_up: bool,
    pub pool: crate::database::PoolStatus,
    pub outbound_bytes: usize,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let recorder = PrometheusBuilder::new().set_buckets(&BUCKETS).expect("the buckets are not empty").build_recorder();
        let process = metrics_process::Collector::default();
        metrics::with_local_recorder(&recorder, || process.describe());
        // each handle is registered with (and stays bound to) this recorder
        let counter = |name: &'static str, help: &'static str| {
            metrics::with_local_recorder(&recorder, || {
                metrics::describe_counter!(name, help);
                metrics::counter!(name)
            })
        };
        let seconds = |name: &'static str, help: &'static str, action: Option<&'static str>| {
            metrics::with_local_recorder(&recorder, || {
                metrics::describe_histogram!(name, Unit::Seconds, help);
                match action {
                    Some(action) => metrics::histogram!(name, "action" => action),
                    None => metrics::histogram!(name),
                }
            })
        };
        Metrics {
            connections_total: counter("memoriesdb_hub_connections_total", "WebSocket connections accepted."),
            connections_rejected_total: counter(
                "memoriesdb_hub_connections_rejected_total",
                "Upgrades refused (limits, auth, unknown users, origin, bad channels).",
            ),
            messages_in_total: counter("memoriesdb_hub_messages_in_total", "Messages received from clients."),
            messages_out_total: counter(
                "memoriesdb_hub_messages_out_total",
                "Messages queued to clients (deliveries, replies, events).",
            ),
            notifications_total: counter("memoriesdb_hub_notifications_total", "NOTIFY messages received from PostgreSQL."),
            publishes_total: counter("memoriesdb_hub_publishes_total", "pub requests sent to PostgreSQL."),
            actions_total: counter("memoriesdb_hub_actions_total", "Chat actions executed."),
            error_replies_total: counter("memoriesdb_hub_error_replies_total", "Error replies sent to clients."),
            dropped_messages_total: counter(
                "memoriesdb_hub_dropped_messages_total",
                "Messages not delivered because a client's queue was full or it was cut off for its backlog.",
            ),
            slow_client_disconnects_total: counter(
                "memoriesdb_hub_slow_client_disconnects_total",
                "Clients disconnected for not reading (queue full or write timeout).",
            ),
            heartbeat_timeouts_total: counter(
                "memoriesdb_hub_heartbeat_timeouts_total",
                "Clients disconnected for not answering pings.",
            ),
            idle_timeouts_total: counter("memoriesdb_hub_idle_timeouts_total", "Connections closed for being idle."),
            listener_reconnects_total: counter(
                "memoriesdb_hub_listener_reconnects_total",
                "Times the LISTEN connection was re-established.",
            ),
            busy_replies_total: counter(
                "memoriesdb_hub_busy_replies_total",
                "Requests answered busy or timeout (a stuck session, a saturated pool).",
            ),
            memory_budget_sheds_total: counter(
                "memoriesdb_hub_memory_budget_sheds_total",
                "Clients closed because all queues together exceeded --outbound-budget-mib.",
            ),
            queue_wait: seconds(
                "memoriesdb_hub_queue_wait_seconds",
                "Time a frame waited in a client's queue (first frame of each flushed batch).",
                None,
            ),
            commit_to_send: seconds(
                "memoriesdb_hub_commit_to_send_seconds",
                "From an event's created_at (its transaction's time) to its write to the client (first frame of each batch).",
                None,
            ),
            action_durations: ACTIONS
                .iter()
                .map(|&action| {
                    let help = "Time a chat action took, database included.";
                    (action, seconds("memoriesdb_hub_action_duration_seconds", help, Some(action)))
                })
                .collect(),
            // last: the handles above borrowed it while they were made
            recorder,
            process,
        }
    }

    pub fn inc(counter: &Counter) {
        counter.increment(1);
    }

    /// The duration histogram of a chat action (None for a name that is not one).
    pub fn action_duration(&self, action: &str) -> Option<&Histogram> {
        self.action_durations.iter().find(|(name, _)| *name == action).map(|(_, histogram)| histogram)
    }

    /// Fold recorded histogram samples into their buckets (they wait in a lock-free list until
    /// then); run every few seconds so that memory stays flat between scrapes.
    pub fn upkeep(&self) {
        self.recorder.handle().run_upkeep();
    }

    pub fn render(&self, gauges: &Gauges) -> String {
        metrics::with_local_recorder(&self.recorder, || {
            self.process.collect();
            let gauge = |name: &'static str, help: &'static str, value: usize| {
                metrics::describe_gauge!(name, help);
                metrics::gauge!(name).set(value as f64);
            };
            gauge(
                "memoriesdb_hub_connections",
                "Open WebSocket connections, including ones in their opening or closing handshake (what --max-connections limits).",
                gauges.connections,
            );
            gauge("memoriesdb_hub_subscriptions", "Channel subscriptions over all connections.", gauges.subscriptions);
            gauge("memoriesdb_hub_channels", "Channels with at least one subscriber on this hub.", gauges.channels);
            gauge("memoriesdb_hub_listen_channels", "Channels the LISTEN connection is listening on.", gauges.listening_channels);
            gauge("memoriesdb_hub_listener_up", "1 when the LISTEN connection to PostgreSQL is up.", gauges.listener_up as usize);
            gauge(
                "memoriesdb_hub_outbound_bytes",
                "Bytes waiting for clients in all outbound queues (--outbound-budget-mib).",
                gauges.outbound_bytes,
            );
            gauge("memoriesdb_hub_db_pool_connections_max", "--db-pool-size.", gauges.pool.max);
            gauge("memoriesdb_hub_db_pool_connections", "Open pooled database connections.", gauges.pool.open);
            gauge("memoriesdb_hub_db_pool_idle", "Pooled database connections free for a request.", gauges.pool.idle);
            gauge(
                "memoriesdb_hub_db_pool_waiting",
                "Requests waiting for a pooled connection (the pool is saturated).",
                gauges.pool.waiting,
            );
            metrics::describe_gauge!("memoriesdb_hub_build_info", "The hub's version (value 1).");
            metrics::gauge!("memoriesdb_hub_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        });
        self.recorder.handle().render()
    }
}
