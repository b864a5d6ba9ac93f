//! Who is connected and who listens to what; fan-out of one message to a channel's subscribers.
//!
//! Every client has a bounded outbound queue. Fan-out never waits: it offers the (shared,
//! already serialized) frame to each subscriber's queue with `try_send`. A client whose queue is
//! full is not waited for: the message is counted as dropped for it and the client is told to
//! close ("slow client"), so one stalled reader never delays anyone else.
//!
//! All queues together are bounded too ([`MemoryBudget`], --outbound-budget-mib): when the bytes
//! waiting for clients exceed it, the clients with the largest backlogs are closed first, so a
//! flood of stalled clients cannot hold the hub's memory, and clients that read are untouched.

use crate::channel::ChannelName;
use crate::metrics::Metrics;
use axum::extract::ws::Utf8Bytes;
use std::borrow::Borrow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::num::NonZeroU64;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

pub type ClientId = u64;

impl Borrow<str> for ChannelName {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

/// Why the hub closes a connection; decides the close code and reason the client sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The outbound queue overflowed: the client does not read fast enough.
    SlowClient,
    /// All queues together exceeded --outbound-budget-mib and this client's backlog was among
    /// the largest.
    MemoryBudget,
    HeartbeatTimeout,
    IdleTimeout,
    TokenExpired,
    Shutdown,
    /// A message or frame over --max-message-bytes / --max-frame-bytes.
    MessageTooBig,
    /// Broken WebSocket framing (unmasked frame, reserved bits, bad opcode, ...).
    ProtocolViolation,
    /// A text frame that is not UTF-8 (RFC 6455 §8.1: 1007, invalid frame payload data).
    InvalidPayload,
    /// The client closed the connection or the socket failed: nothing left to say.
    ClientGone,
}

impl CloseReason {
    pub fn code(&self) -> u16 {
        match self {
            CloseReason::SlowClient | CloseReason::MemoryBudget | CloseReason::TokenExpired => 1008, // policy violation
            CloseReason::HeartbeatTimeout => 1011,
            CloseReason::MessageTooBig => 1009,
            CloseReason::ProtocolViolation => 1002,
            CloseReason::InvalidPayload => 1007,
            CloseReason::IdleTimeout | CloseReason::ClientGone => 1000,
            CloseReason::Shutdown => 1001, // going away
        }
    }
}

/// Shared between a connection's tasks and the fan-out: the way to ask a connection to close.
pub struct ClientControl {
    closing: CancellationToken,
    reason: Mutex<Option<CloseReason>>,
    dropped: AtomicU64,
}

impl ClientControl {
    pub fn new() -> ClientControl {
        ClientControl { closing: CancellationToken::new(), reason: Mutex::new(None), dropped: AtomicU64::new(0) }
    }

    /// Ask the connection to close; the first reason given wins. Returns true for the first call.
    pub fn close(&self, reason: CloseReason) -> bool {
        let first = {
            let mut slot = self.reason.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if slot.is_none() {
                *slot = Some(reason);
                true
            } else {
                false
            }
        };
        self.closing.cancel();
        first
    }

    pub fn reason(&self) -> Option<CloseReason> {
        self.reason.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    pub async fn closed(&self) {
        self.closing.cancelled().await
    }

    pub fn is_closing(&self) -> bool {
        self.closing.is_cancelled()
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Default for ClientControl {
    fn default() -> Self {
        Self::new()
    }
}

/// Bytes waiting for clients, over all queues, against a limit. A frame counts for every client
/// it waits for (queued, or in the socket's write buffer until the flush that sends it), as if it
/// were not shared: shared frames cost less, so the bound errs on the safe side.
pub struct MemoryBudget {
    limit: usize,
    used: AtomicUsize,
    /// Bytes of clients already told to close, freed once their connection is gone: not shed
    /// twice.
    reclaiming: AtomicUsize,
    /// One shedder at a time.
    shedding: Mutex<()>,
}

/// What one queued frame costs beyond its bytes (the queue slot and the shared buffer's header).
const FRAME_OVERHEAD: usize = 64;

/// What a frame counts against the memory budget.
pub fn frame_cost(frame: &Utf8Bytes) -> usize {
    frame.len() + FRAME_OVERHEAD
}

impl MemoryBudget {
    pub fn new(limit: usize) -> MemoryBudget {
        MemoryBudget { limit, used: AtomicUsize::new(0), reclaiming: AtomicUsize::new(0), shedding: Mutex::new(()) }
    }

    /// Bytes waiting for clients now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn excess(&self) -> usize {
        let live = self.used.load(Ordering::Relaxed).saturating_sub(self.reclaiming.load(Ordering::Relaxed));
        live.saturating_sub(self.limit)
    }
}

/// A frame waiting in a client's queue, with what the writer's latency histograms need. Kept at
/// 48 bytes: every client's queue allocates its first block of 32 of these when it is created,
/// so each byte here costs every idle connection 32 (with `Instant` and `SystemTime`, 64 bytes,
/// the block was 2 KiB of the 12 KiB an idle connection took).
#[derive(Clone)]
pub struct Outbound {
    pub frame: Utf8Bytes,
    /// When it was queued, in nanoseconds of `clock_ns()`.
    queued_ns: u64,
    /// When the event was committed, if its payload says (`created_at`), in microseconds since
    /// the Unix epoch.
    committed_us: Option<NonZeroU64>,
}

impl Outbound {
    pub fn now(frame: Utf8Bytes) -> Outbound {
        Outbound::committed(frame, None)
    }

    /// A frame queued now for an event committed at `committed_at` (if known).
    pub fn committed(frame: Utf8Bytes, committed_at: Option<SystemTime>) -> Outbound {
        let committed_us = committed_at
            .and_then(|at| at.duration_since(UNIX_EPOCH).ok())
            .and_then(|since| NonZeroU64::new(u64::try_from(since.as_micros()).unwrap_or(u64::MAX)));
        Outbound { frame, queued_ns: clock_ns(), committed_us }
    }

    /// How long it has waited in the queue.
    pub fn queue_wait(&self) -> Duration {
        Duration::from_nanos(clock_ns().saturating_sub(self.queued_ns))
    }

    /// When its event was committed, if known.
    pub fn committed_at(&self) -> Option<SystemTime> {
        self.committed_us.map(|us| UNIX_EPOCH + Duration::from_micros(us.get()))
    }
}

/// Nanoseconds on a monotonic clock that starts with the process (a u64 lasts 584 years).
fn clock_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// A connected client as the fan-out sees it.
pub struct ClientHandle {
    pub id: ClientId,
    queue: mpsc::Sender<Outbound>,
    pub control: Arc<ClientControl>,
    budget: Arc<MemoryBudget>,
    /// This client's bytes in [`MemoryBudget::used`].
    held: AtomicUsize,
    /// Its bytes counted in [`MemoryBudget::reclaiming`] once it was shed.
    shed: AtomicUsize,
}

impl ClientHandle {
    /// Offer a frame to the client's queue without waiting. Returns whether it was queued.
    pub fn offer(&self, item: Outbound, metrics: &Metrics) -> bool {
        if self.control.is_closing() {
            // its writer has stopped: nothing it is offered would be sent; a client cut off for
            // its backlog counts what it misses
            if matches!(self.control.reason(), Some(CloseReason::SlowClient | CloseReason::MemoryBudget)) {
                self.control.dropped.fetch_add(1, Ordering::Relaxed);
                Metrics::inc(&metrics.dropped_messages_total);
            }
            return false;
        }
        let cost = frame_cost(&item.frame);
        self.held.fetch_add(cost, Ordering::Relaxed);
        self.budget.used.fetch_add(cost, Ordering::Relaxed);
        let outcome = self.queue.try_send(item);
        if outcome.is_err() {
            self.release(cost);
        }
        match outcome {
            Ok(()) => {
                Metrics::inc(&metrics.messages_out_total);
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.control.dropped.fetch_add(1, Ordering::Relaxed);
                Metrics::inc(&metrics.dropped_messages_total);
                if self.control.close(CloseReason::SlowClient) {
                    Metrics::inc(&metrics.slow_client_disconnects_total);
                }
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Frames that cost `cost` bytes ([`frame_cost`]) were sent: no longer held for this client.
    pub fn release(&self, cost: usize) {
        self.held.fetch_sub(cost, Ordering::Relaxed);
        self.budget.used.fetch_sub(cost, Ordering::Relaxed);
    }

    /// The queue is gone (the writer dropped it, which frees the frames in it): nothing is held
    /// for this client any more. Offers fail from now on, as the client is closing.
    pub fn release_all(&self) {
        self.budget.used.fetch_sub(self.held.swap(0, Ordering::Relaxed), Ordering::Relaxed);
        self.budget.reclaiming.fetch_sub(self.shed.swap(0, Ordering::Relaxed), Ordering::Relaxed);
    }
}

impl Drop for ClientHandle {
    /// Whatever a client that never got a writer still held (its queue goes with it).
    fn drop(&mut self) {
        self.release_all();
    }
}

#[derive(Default)]
struct State {
    clients: HashMap<ClientId, Arc<ClientHandle>>,
    channels: HashMap<ChannelName, Vec<Arc<ClientHandle>>>,
}

pub struct Registry {
    state: RwLock<State>,
    pub budget: Arc<MemoryBudget>,
    next_id: AtomicU64,
    /// Signalled when the set of channels with subscribers gains or loses a member; the
    /// listener then brings its LISTEN set in line.
    pub channels_changed: Notify,
    metrics: Arc<Metrics>,
}

impl Registry {
    /// `budget_bytes`: what all outbound queues together may hold.
    pub fn new(metrics: Arc<Metrics>, budget_bytes: usize) -> Registry {
        Registry {
            state: RwLock::new(State::default()),
            budget: Arc::new(MemoryBudget::new(budget_bytes)),
            next_id: AtomicU64::new(1),
            channels_changed: Notify::new(),
            metrics,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn register(&self, queue: mpsc::Sender<Outbound>, control: Arc<ClientControl>) -> Arc<ClientHandle> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let handle = Arc::new(ClientHandle {
            id,
            queue,
            control,
            budget: self.budget.clone(),
            held: AtomicUsize::new(0),
            shed: AtomicUsize::new(0),
        });
        self.write().clients.insert(id, handle.clone());
        handle
    }

    /// Subscribe a client to channels (already validated and authorized, not yet subscribed).
    pub fn subscribe(&self, client: &Arc<ClientHandle>, channels: &[ChannelName]) {
        let mut created = false;
        {
            let mut state = self.write();
            for channel in channels {
                let subscribers = state.channels.entry(channel.clone()).or_insert_with(|| {
                    created = true;
                    Vec::new()
                });
                if !subscribers.iter().any(|s| s.id == client.id) {
                    subscribers.push(client.clone());
                }
            }
        }
        if created {
            self.channels_changed.notify_one();
        }
    }

    pub fn unsubscribe<'a>(&self, client: ClientId, channels: impl IntoIterator<Item = &'a ChannelName>) {
        let mut emptied = false;
        {
            let mut state = self.write();
            for channel in channels {
                if let Some(subscribers) = state.channels.get_mut(channel.as_str()) {
                    subscribers.retain(|s| s.id != client);
                    if subscribers.is_empty() {
                        state.channels.remove(channel.as_str());
                        emptied = true;
                    }
                }
            }
        }
        if emptied {
            self.channels_changed.notify_one();
        }
    }

    /// Forget a client and all its subscriptions (connection closed).
    pub fn unregister<'a>(&self, client: ClientId, channels: impl IntoIterator<Item = &'a ChannelName>) {
        self.unsubscribe(client, channels);
        self.write().clients.remove(&client);
    }

    /// Deliver a frame to every subscriber of a channel. Returns how many queued it.
    pub fn publish(&self, channel: &str, frame: &Utf8Bytes, committed_at: Option<SystemTime>) -> usize {
        let item = Outbound::committed(frame.clone(), committed_at);
        let queued = {
            let state = self.read();
            let Some(subscribers) = state.channels.get(channel) else {
                return 0;
            };
            subscribers.iter().filter(|client| client.offer(item.clone(), &self.metrics)).count()
        };
        self.enforce_budget();
        queued
    }

    /// Deliver a frame to every connected client (hub events such as `reconnected`).
    pub fn broadcast(&self, frame: &Utf8Bytes) -> usize {
        let item = Outbound::now(frame.clone());
        let queued = self.read().clients.values().filter(|client| client.offer(item.clone(), &self.metrics)).count();
        self.enforce_budget();
        queued
    }

    /// Over the memory budget: close the clients with the largest backlogs until what remains
    /// fits. Cheap within the budget (two atomic loads); called after every fan-out and reply,
    /// never under the registry's lock.
    pub fn enforce_budget(&self) {
        if self.budget.excess() == 0 {
            return;
        }
        let Ok(_one_shedder) = self.budget.shedding.try_lock() else { return };
        let mut excess = self.budget.excess();
        let mut candidates: Vec<Arc<ClientHandle>> =
            self.read().clients.values().filter(|c| !c.control.is_closing()).cloned().collect();
        candidates.sort_unstable_by_key(|c| std::cmp::Reverse(c.held.load(Ordering::Relaxed)));
        for client in candidates {
            if excess == 0 {
                break;
            }
            let held = client.held.load(Ordering::Relaxed);
            if held == 0 || !client.control.close(CloseReason::MemoryBudget) {
                continue;
            }
            client.shed.store(held, Ordering::Relaxed);
            self.budget.reclaiming.fetch_add(held, Ordering::Relaxed);
            Metrics::inc(&self.metrics.memory_budget_sheds_total);
            excess = excess.saturating_sub(held);
        }
    }

    /// Ask every connection to close (graceful shutdown).
    pub fn close_all(&self, reason: CloseReason) {
        for client in self.read().clients.values() {
            client.control.close(reason.clone());
        }
    }

    /// The channels that have at least one subscriber: what the hub must LISTEN on.
    pub fn channel_names(&self) -> Vec<ChannelName> {
        self.read().channels.keys().cloned().collect()
    }

    pub fn connection_count(&self) -> usize {
        self.read().clients.len()
    }

    pub fn channel_count(&self) -> usize {
        self.read().channels.len()
    }

    pub fn subscription_count(&self) -> usize {
        self.read().channels.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(name: &str) -> ChannelName {
        ChannelName::parse(name).unwrap()
    }

    #[test]
    fn a_queued_frame_is_small_and_keeps_its_times() {
        // each client's queue allocates 32 of these up front
        assert!(std::mem::size_of::<Outbound>() <= 48, "Outbound is {} bytes", std::mem::size_of::<Outbound>());
        let committed = UNIX_EPOCH + Duration::from_micros(1_764_720_000_123_456);
        let item = Outbound::committed(Utf8Bytes::from_static("x"), Some(committed));
        assert_eq!(item.committed_at(), Some(committed));
        assert_eq!(Outbound::now(Utf8Bytes::from_static("x")).committed_at(), None);
        std::thread::sleep(Duration::from_millis(5));
        assert!(item.queue_wait() >= Duration::from_millis(5));
    }

    #[tokio::test]
    async fn fan_out_reaches_only_subscribers() {
        let registry = Registry::new(Arc::new(Metrics::default()), usize::MAX);
        let (tx_a, mut rx_a) = mpsc::channel(8);
        let (tx_b, mut rx_b) = mpsc::channel(8);
        let a = registry.register(tx_a, Arc::new(ClientControl::new()));
        let b = registry.register(tx_b, Arc::new(ClientControl::new()));
        registry.subscribe(&a, &[channel("x"), channel("y")]);
        registry.subscribe(&b, &[channel("y")]);
        assert_eq!(registry.channel_count(), 2);
        assert_eq!(registry.subscription_count(), 3);
        assert_eq!(registry.publish("x", &Utf8Bytes::from("1"), None), 1);
        assert_eq!(registry.publish("y", &Utf8Bytes::from("2"), None), 2);
        assert_eq!(registry.publish("z", &Utf8Bytes::from("3"), None), 0);
        assert_eq!(rx_a.recv().await.unwrap().frame.as_str(), "1");
        assert_eq!(rx_a.recv().await.unwrap().frame.as_str(), "2");
        assert_eq!(rx_b.recv().await.unwrap().frame.as_str(), "2");
        registry.unregister(a.id, &[channel("x"), channel("y")]);
        assert_eq!(registry.channel_count(), 1);
        assert_eq!(registry.connection_count(), 1);
    }

    #[tokio::test]
    async fn a_full_queue_closes_only_that_client() {
        let metrics = Arc::new(Metrics::default());
        let registry = Registry::new(metrics.clone(), usize::MAX);
        let (slow_tx, _slow_rx) = mpsc::channel(2);
        let (fast_tx, mut fast_rx) = mpsc::channel(100);
        let slow = registry.register(slow_tx, Arc::new(ClientControl::new()));
        let fast = registry.register(fast_tx, Arc::new(ClientControl::new()));
        registry.subscribe(&slow, &[channel("c")]);
        registry.subscribe(&fast, &[channel("c")]);
        for i in 0..10 {
            registry.publish("c", &Utf8Bytes::from(i.to_string()), None);
        }
        assert_eq!(slow.control.reason(), Some(CloseReason::SlowClient));
        assert_eq!(slow.control.dropped(), 8);
        assert!(!fast.control.is_closing());
        for i in 0..10 {
            assert_eq!(fast_rx.recv().await.unwrap().frame.as_str(), i.to_string());
        }
        let rendered = metrics.render(&crate::metrics::Gauges::default());
        assert!(rendered.contains("memoriesdb_hub_slow_client_disconnects_total 1\n"), "{rendered}");
    }
}
