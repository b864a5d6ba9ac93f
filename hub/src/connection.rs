//! One WebSocket connection: a reader (requests in, handled one at a time in order) and a writer
//! (drains the client's bounded outbound queue, sends heartbeat pings, enforces timeouts).
//!
//! The two halves never wait for each other: replies go through the same bounded queue as
//! deliveries, so a client that floods requests but does not read its replies fills its own
//! queue and is disconnected, like any other slow reader.

use crate::auth::{AuthError, Grant};
use crate::channel::ChannelName;
use crate::database::DbFailure;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::protocol::{self, code, Action, Envelope, Request, RequestName};
use crate::registry::{frame_cost, ClientControl, ClientHandle, CloseReason, Outbound};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};

/// How long a subscription waits for PostgreSQL to confirm LISTEN before it is acknowledged
/// as pending.
const LISTEN_CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
/// Frames the writer sends per flush when several are queued (fewer system calls under load).
const FRAMES_PER_FLUSH: usize = 64;
/// How long the goodbye (close frame) may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Last time the client sent anything (any frame) and a request (a text frame), in
/// milliseconds since the connection opened; read by the writer's timers.
struct Activity {
    opened: Instant,
    last_frame_ms: AtomicU64,
    last_request_ms: AtomicU64,
    subscriptions: AtomicUsize,
}

impl Activity {
    fn now_ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }
}

/// A client that exists before its WebSocket does: registered, subscribed to the channels its
/// URL names and, once PostgreSQL confirmed those LISTENs, ready to be upgraded. The upgrade
/// (the 101) is sent only after [`prepare`], so "subscribe in the URL, then have someone write"
/// never loses the write's event: it waits in the client's queue until the socket is up.
pub struct Prepared {
    hub: Arc<Hub>,
    client: Arc<ClientHandle>,
    queue: Option<mpsc::Receiver<Outbound>>,
    subscriptions: BTreeSet<ChannelName>,
    /// `{"event":"subscribed",...}`, the first frame the client gets (URL channels only).
    greeting: Option<Utf8Bytes>,
}

impl Drop for Prepared {
    /// The upgrade failed or was abandoned: forget the client (a served one is forgotten by
    /// [`serve`], which empties `queue`).
    fn drop(&mut self) {
        if self.queue.is_some() {
            self.client.control.close(CloseReason::ClientGone);
            self.hub.registry.unregister(self.client.id, &self.subscriptions);
        }
    }
}

/// Register a client and subscribe it to `channels` (validated and authorized), waiting until
/// PostgreSQL listens on them. While the LISTEN connection is down nothing is waited for: the
/// greeting lists the channels as pending, and `{"event":"reconnected"}` follows once it is up.
pub async fn prepare(hub: &Arc<Hub>, channels: Vec<ChannelName>) -> Prepared {
    let (queue_tx, queue_rx) = mpsc::channel(hub.config.outbound_queue);
    let client = hub.registry.register(queue_tx, Arc::new(ClientControl::new()));
    hub.registry.subscribe(&client, &channels);
    let mut prepared =
        Prepared { hub: hub.clone(), client, queue: Some(queue_rx), subscriptions: BTreeSet::new(), greeting: None };
    prepared.subscriptions.extend(channels.iter().cloned());
    if !channels.is_empty() {
        let pending = if hub.listener.is_up() {
            hub.listener.wait_until_listening(&channels, LISTEN_CONFIRM_TIMEOUT).await
        } else {
            channels.clone()
        };
        if !pending.is_empty() {
            tracing::warn!(client = prepared.client.id, ?pending, "LISTEN not confirmed yet for URL channels");
        }
        prepared.greeting = Some(protocol::subscribed_frame(&channels, &pending));
    }
    prepared
}

/// Serve one upgraded connection until either side closes it.
pub async fn serve(mut prepared: Prepared, socket: WebSocket, grant: Option<Grant>, peer: SocketAddr) {
    let hub = prepared.hub.clone();
    let client = prepared.client.clone();
    let control = client.control.clone();
    let queue = prepared.queue.take().expect("a prepared client is served once");
    let subscriptions = std::mem::take(&mut prepared.subscriptions);
    let greeting = prepared.greeting.take();
    drop(prepared);
    let (sink, stream) = socket.split();
    Metrics::inc(&hub.metrics.connections_total);
    let activity = Arc::new(Activity {
        opened: Instant::now(),
        last_frame_ms: AtomicU64::new(0),
        last_request_ms: AtomicU64::new(0),
        subscriptions: AtomicUsize::new(subscriptions.len()),
    });
    tracing::debug!(client = client.id, %peer, user = ?grant.as_ref().map(|g| g.user), "connected");

    if hub.shutdown.is_cancelled() {
        // upgraded just as shutdown began, after close_all() ran
        control.close(CloseReason::Shutdown);
    }
    let writer = tokio::spawn(write_loop(hub.clone(), sink, greeting, queue, client.clone(), activity.clone()));
    let mut connection = Connection { hub: hub.clone(), client, grant, subscriptions, activity };
    connection.read_loop(stream).await;

    // Whatever ended the reader, stop the writer and forget the client.
    control.close(CloseReason::ClientGone);
    hub.registry.unregister(connection.client.id, &connection.subscriptions);
    let _ = writer.await;
    let reason = control.reason();
    if let Some(CloseReason::SlowClient | CloseReason::MemoryBudget) = &reason {
        // the operator's business: a client that does not read loses messages
        tracing::info!(client = connection.client.id, %peer, ?reason, dropped = control.dropped(), "slow client disconnected");
    } else {
        tracing::debug!(client = connection.client.id, ?reason, dropped = control.dropped(), "disconnected");
    }
}

struct Connection {
    hub: Arc<Hub>,
    client: Arc<ClientHandle>,
    grant: Option<Grant>,
    subscriptions: BTreeSet<ChannelName>,
    activity: Arc<Activity>,
}

impl Connection {
    async fn read_loop(&mut self, mut stream: SplitStream<WebSocket>) {
        let control = self.client.control.clone();
        let expiry = tokio::time::sleep(self.token_lifetime());
        tokio::pin!(expiry);
        loop {
            let frame = tokio::select! {
                biased;
                _ = control.closed() => return,
                _ = &mut expiry, if self.grant.is_some() => {
                    control.close(CloseReason::TokenExpired);
                    return;
                }
                frame = stream.next() => frame,
            };
            let frame = match frame {
                Some(Ok(frame)) => frame,
                Some(Err(error)) => {
                    control.close(read_error_reason(error));
                    return;
                }
                None => return,
            };
            let now = self.activity.now_ms();
            self.activity.last_frame_ms.store(now, Ordering::Relaxed);
            match frame {
                Message::Text(text) => {
                    self.activity.last_request_ms.store(now, Ordering::Relaxed);
                    Metrics::inc(&self.hub.metrics.messages_in_total);
                    // Boxed: request handling holds database futures; keeping them off the
                    // connection's own future keeps idle connections small.
                    Box::pin(self.handle_text(text)).await;
                    if self.grant.is_some() {
                        expiry.as_mut().reset(Instant::now() + self.token_lifetime());
                    }
                }
                Message::Binary(_) => {
                    Metrics::inc(&self.hub.metrics.messages_in_total);
                    self.send_error(None, None, code::UNSUPPORTED_FRAME, "binary frames are not supported; send JSON as text");
                }
                Message::Ping(_) | Message::Pong(_) => {}
                Message::Close(_) => return,
            }
        }
    }

    fn token_lifetime(&self) -> Duration {
        match &self.grant {
            Some(grant) => grant.remaining(),
            None => Duration::from_secs(365 * 24 * 3600),
        }
    }

    async fn handle_text(&mut self, text: Utf8Bytes) {
        match protocol::parse_request(text.as_str()) {
            Ok(envelope) => self.handle(envelope).await,
            Err(error) => {
                Metrics::inc(&self.hub.metrics.error_replies_total);
                self.enqueue(error.frame());
            }
        }
    }

    async fn handle(&mut self, envelope: Envelope) {
        let Envelope { id, name, request } = envelope;
        let id = id.as_ref();
        match request {
            Request::Subscribe { channels } => self.subscribe(&name, id, channels).await,
            Request::Unsubscribe { channels } => self.unsubscribe(&name, id, channels),
            Request::Publish { channel, content, metadata } => self.publish(&name, id, channel, content, metadata).await,
            Request::Authenticate { token } => self.reauthenticate(&name, id, &token).await,
            Request::Ping => self.reply(&name, id, json!("pong")),
            Request::Action(action) => self.run_action(&name, id, action).await,
        }
    }

    fn add_subscriptions(&mut self, channels: &[ChannelName]) {
        let new: Vec<ChannelName> = channels.iter().filter(|c| !self.subscriptions.contains(*c)).cloned().collect();
        self.hub.registry.subscribe(&self.client, &new);
        self.subscriptions.extend(new);
        self.activity.subscriptions.store(self.subscriptions.len(), Ordering::Relaxed);
    }

    async fn subscribe(&mut self, name: &RequestName, id: Option<&Value>, requested: Vec<String>) {
        let channels = match self.validate_channels(&requested) {
            Ok(channels) => channels,
            Err((code, message)) => return self.send_error(Some(name), id, code, &message),
        };
        if let Some(grant) = &self.grant {
            let denied: Vec<&str> = channels.iter().map(ChannelName::as_str).filter(|c| !grant.can_read(c)).collect();
            if !denied.is_empty() {
                let message = format!("the token does not allow reading {}", denied.join(", "));
                return self.send_error(Some(name), id, code::FORBIDDEN, &message);
            }
        }
        let added = channels.iter().filter(|c| !self.subscriptions.contains(*c)).count();
        let limit = self.hub.config.max_channels_per_connection;
        if self.subscriptions.len() + added > limit {
            let message = format!(
                "subscribing to {added} more channel(s) would exceed the limit of {limit} per connection ({} now)",
                self.subscriptions.len()
            );
            return self.send_error(Some(name), id, code::TOO_MANY_CHANNELS, &message);
        }
        self.add_subscriptions(&channels);
        let pending = self.hub.listener.wait_until_listening(&channels, LISTEN_CONFIRM_TIMEOUT).await;
        let mut result = json!({ "channels": channels.iter().map(ChannelName::as_str).collect::<Vec<_>>() });
        if !pending.is_empty() {
            // Subscribed, but PostgreSQL has not confirmed LISTEN (database unreachable): the
            // client gets {"event":"reconnected"} once it has.
            result["pending"] = json!(pending.iter().map(ChannelName::as_str).collect::<Vec<_>>());
        }
        self.reply(name, id, result);
    }

    fn unsubscribe(&mut self, name: &RequestName, id: Option<&Value>, requested: Vec<String>) {
        let channels = match self.validate_channels(&requested) {
            Ok(channels) => channels,
            Err((code, message)) => return self.send_error(Some(name), id, code, &message),
        };
        let removed: Vec<ChannelName> = channels.into_iter().filter(|c| self.subscriptions.remove(c)).collect();
        self.hub.registry.unsubscribe(self.client.id, &removed);
        self.activity.subscriptions.store(self.subscriptions.len(), Ordering::Relaxed);
        self.reply(name, id, json!({ "channels": removed.iter().map(ChannelName::as_str).collect::<Vec<_>>() }));
    }

    async fn publish(
        &mut self,
        name: &RequestName,
        id: Option<&Value>,
        channel: String,
        content: Value,
        metadata: Option<Value>,
    ) {
        let channel = match ChannelName::parse(&channel) {
            Ok(channel) => channel,
            Err(message) => return self.send_error(Some(name), id, code::INVALID_CHANNEL, &message),
        };
        // for everyone, whatever a token says: events on these come from the database only
        if channel.is_reserved() {
            let message = format!(
                "{channel} is reserved: channels starting with {} carry the database's own events; clients cannot publish on them",
                crate::channel::RESERVED_PREFIXES.join(" or ")
            );
            return self.send_error(Some(name), id, code::FORBIDDEN, &message);
        }
        let mut payload = Map::new();
        payload.insert("content".into(), content);
        if let Some(metadata) = metadata {
            payload.insert("metadata".into(), metadata);
        }
        if let Some(grant) = &self.grant {
            if !grant.can_write(channel.as_str()) {
                let message = format!("the token does not allow publishing to {channel}");
                return self.send_error(Some(name), id, code::FORBIDDEN, &message);
            }
            // asserted by the hub, not by the client
            payload.insert("sender".into(), Value::String(grant.user.to_string()));
        }
        let payload = Value::Object(payload).to_string();
        if payload.len() > crate::database::MAX_NOTIFY_PAYLOAD_BYTES {
            let message = format!(
                "payload is {} bytes; PostgreSQL NOTIFY carries at most {} (content and metadata together)",
                payload.len(),
                crate::database::MAX_NOTIFY_PAYLOAD_BYTES
            );
            return self.send_error(Some(name), id, code::PAYLOAD_TOO_LARGE, &message);
        }
        Metrics::inc(&self.hub.metrics.publishes_total);
        match self.hub.database.publish(&channel, &payload).await {
            // acknowledged only when the client asked (gave an id): pub is fire-and-forget
            Ok(()) => {
                if id.is_some() {
                    self.reply(name, id, json!({ "channel": channel.as_str() }));
                }
            }
            Err(failure) => self.send_failure(Some(name), id, failure),
        }
    }

    async fn reauthenticate(&mut self, name: &RequestName, id: Option<&Value>, token: &str) {
        let Some(authenticator) = &self.hub.auth else {
            return self.send_error(Some(name), id, code::BAD_REQUEST, "authentication is not enabled on this hub");
        };
        match authenticator.verify(token) {
            Ok(grant) => {
                if self.grant.as_ref().is_some_and(|current| current.user != grant.user) {
                    return self.send_error(Some(name), id, code::FORBIDDEN, "a connection cannot change its user");
                }
                match self.hub.users.exists(&self.hub.database, grant.user).await {
                    Ok(true) => {}
                    Ok(false) => return self.send_error(Some(name), id, code::UNAUTHORIZED, &AuthError::UnknownUser.to_string()),
                    Err(failure) => return self.send_failure(Some(name), id, failure),
                }
                let lost: Vec<&ChannelName> = self.subscriptions.iter().filter(|c| !grant.can_read(c.as_str())).collect();
                if !lost.is_empty() {
                    let lost: Vec<&str> = lost.iter().map(|c| c.as_str()).collect();
                    let message = format!("the new token does not allow reading subscribed channels: {}", lost.join(", "));
                    return self.send_error(Some(name), id, code::FORBIDDEN, &message);
                }
                let expires_in = grant.remaining().as_secs();
                let user = grant.user;
                self.grant = Some(grant);
                self.reply(name, id, json!({ "user": user, "expires_in": expires_in }));
            }
            Err(error) => self.send_error(Some(name), id, code::UNAUTHORIZED, &error.to_string()),
        }
    }

    async fn run_action(&mut self, name: &RequestName, id: Option<&Value>, action: Action) {
        if let Err(message) = self.authorize(&action) {
            return self.send_error(Some(name), id, code::FORBIDDEN, &message);
        }
        Metrics::inc(&self.hub.metrics.actions_total);
        let user = self.grant.as_ref().map(|g| g.user);
        let started = Instant::now();
        let outcome = self.hub.database.run_action(&action, user).await;
        if let RequestName::Action(action_name) = name {
            if let Some(histogram) = self.hub.metrics.action_duration(action_name) {
                histogram.record(started.elapsed().as_secs_f64());
            }
        }
        match outcome {
            Ok(mut result) => {
                if let Some(grant) = &self.grant {
                    // show only sessions, and search results from sessions, whose channel the
                    // token may read
                    let listed = match action {
                        Action::ListSessions { .. } => Some("sessions"),
                        Action::Search { .. } => Some("results"),
                        _ => None,
                    };
                    if let Some(Value::Array(rows)) = listed.and_then(|key| result.get_mut(key)) {
                        rows.retain(|row| {
                            row.get("session_id")
                                .and_then(Value::as_str)
                                .and_then(|id| uuid::Uuid::parse_str(id).ok())
                                .is_some_and(|id| grant.can_read(ChannelName::for_session(&id).as_str()))
                        });
                    }
                }
                self.reply(name, id, result)
            }
            Err(failure) => self.send_failure(Some(name), id, failure),
        }
    }

    /// With authentication on, chat actions need the rights the session's channel needs:
    /// reading a transcript or forking needs read, sending a message needs write.
    fn authorize(&self, action: &Action) -> Result<(), String> {
        let Some(grant) = &self.grant else { return Ok(()) };
        match action {
            Action::SendMessage { session_id, .. } => {
                let channel = ChannelName::for_session(session_id);
                if grant.can_write(channel.as_str()) {
                    Ok(())
                } else {
                    Err(format!("the token does not allow writing to {channel}"))
                }
            }
            Action::GetTranscript { session_id, .. }
            | Action::ForkSession { session_id, .. }
            | Action::Search { session_id: Some(session_id), .. } => {
                let channel = ChannelName::for_session(session_id);
                if grant.can_read(channel.as_str()) {
                    Ok(())
                } else {
                    Err(format!("the token does not allow reading {channel}"))
                }
            }
            Action::CreateSession { .. } | Action::ListSessions { .. } | Action::Search { session_id: None, .. } => Ok(()),
        }
    }

    fn validate_channels(&self, requested: &[String]) -> Result<Vec<ChannelName>, (&'static str, String)> {
        if requested.is_empty() {
            return Err((code::BAD_REQUEST, "\"channels\" is empty".into()));
        }
        if requested.len() > self.hub.config.max_channels_per_connection {
            return Err((
                code::TOO_MANY_CHANNELS,
                format!("at most {} channels per connection", self.hub.config.max_channels_per_connection),
            ));
        }
        let mut channels = Vec::with_capacity(requested.len());
        for name in requested {
            let channel = ChannelName::parse(name).map_err(|message| (code::INVALID_CHANNEL, message))?;
            if !channels.contains(&channel) {
                channels.push(channel);
            }
        }
        Ok(channels)
    }

    fn reply(&self, name: &RequestName, id: Option<&Value>, result: Value) {
        self.enqueue(protocol::reply_frame(name, id, result));
    }

    fn send_error(&self, name: Option<&RequestName>, id: Option<&Value>, code: &str, message: &str) {
        Metrics::inc(&self.hub.metrics.error_replies_total);
        self.enqueue(protocol::error_frame(name, id, code, message));
    }

    fn send_failure(&self, name: Option<&RequestName>, id: Option<&Value>, failure: DbFailure) {
        Metrics::inc(&self.hub.metrics.error_replies_total);
        if failure.code == code::BUSY || failure.code == code::TIMEOUT {
            Metrics::inc(&self.hub.metrics.busy_replies_total);
            tracing::debug!(client = self.client.id, code = failure.code, session = ?failure.session, "{}", failure.message);
        }
        self.enqueue(protocol::error_frame_with(name, id, failure.to_json()));
    }

    fn enqueue(&self, frame: Utf8Bytes) {
        self.client.offer(Outbound::now(frame), &self.hub.metrics);
        self.hub.registry.enforce_budget();
    }
}

/// Drain the outbound queue to the socket; ping; enforce heartbeat and idle timeouts; say
/// goodbye with the close code the reason calls for.
async fn write_loop(
    hub: Arc<Hub>,
    mut sink: SplitSink<WebSocket, Message>,
    greeting: Option<Utf8Bytes>,
    mut queue: mpsc::Receiver<Outbound>,
    client: Arc<ClientHandle>,
    activity: Arc<Activity>,
) {
    let config = &hub.config;
    let control = client.control.clone();
    let mut ticker = tokio::time::interval_at(Instant::now() + config.ping_interval, config.ping_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let silence_limit = (config.ping_interval + config.pong_timeout).as_millis() as u64;
    let idle_limit = config.idle_timeout.as_millis() as u64;
    // one registration for the connection's lifetime, not one per message (hot path)
    let closed = control.closed();
    tokio::pin!(closed);
    // the subscription acknowledgement goes out before anything that was queued meanwhile
    let greeted = match greeting {
        Some(frame) => {
            let send = sink.send(Message::Text(frame));
            send_within(send, config.write_timeout, closed.as_mut(), &control, &hub.metrics).await
        }
        None => true,
    };
    if greeted {
        loop {
            tokio::select! {
                biased;
                _ = &mut closed => break,
                frame = queue.recv() => {
                    let Some(first) = frame else { break };
                    // sampled: the first frame of each batch stands for the batch
                    hub.metrics.queue_wait.record(first.queue_wait().as_secs_f64());
                    let committed_at = first.committed_at();
                    // the frames' bytes stay counted against the memory budget until flushed
                    let mut cost = frame_cost(&first.frame);
                    let send = async {
                        sink.feed(Message::Text(first.frame)).await?;
                        for _ in 1..FRAMES_PER_FLUSH {
                            match queue.try_recv() {
                                Ok(item) => {
                                    cost += frame_cost(&item.frame);
                                    sink.feed(Message::Text(item.frame)).await?
                                }
                                Err(_) => break,
                            }
                        }
                        sink.flush().await
                    };
                    if !send_within(send, config.write_timeout, closed.as_mut(), &control, &hub.metrics).await {
                        break;
                    }
                    client.release(cost);
                    if let Some(since) = committed_at.and_then(|at| std::time::SystemTime::now().duration_since(at).ok()) {
                        hub.metrics.commit_to_send.record(since.as_secs_f64());
                    }
                }
                _ = ticker.tick() => {
                    let now = activity.now_ms();
                    if now.saturating_sub(activity.last_frame_ms.load(Ordering::Relaxed)) > silence_limit {
                        if control.close(CloseReason::HeartbeatTimeout) {
                            Metrics::inc(&hub.metrics.heartbeat_timeouts_total);
                        }
                        break;
                    }
                    if activity.subscriptions.load(Ordering::Relaxed) == 0
                        && now.saturating_sub(activity.last_request_ms.load(Ordering::Relaxed)) > idle_limit
                    {
                        if control.close(CloseReason::IdleTimeout) {
                            Metrics::inc(&hub.metrics.idle_timeouts_total);
                        }
                        break;
                    }
                    let ping = sink.send(Message::Ping(Default::default()));
                    if !send_within(ping, config.write_timeout, closed.as_mut(), &control, &hub.metrics).await {
                        break;
                    }
                }
            }
        }
    }
    // Nothing queued will be sent any more: free it now, not after the goodbye (which a stalled
    // client may make take seconds), so that shedding a backlog frees its memory at once.
    control.close(CloseReason::ClientGone);
    drop(queue);
    client.release_all();
    let reason = control.reason();
    if let Some(frame) = reason.as_ref().and_then(|r| close_frame(r, control.dropped())) {
        let _ = timeout(CLOSE_TIMEOUT, sink.send(Message::Close(Some(frame)))).await;
    }
    let _ = timeout(CLOSE_TIMEOUT, sink.close()).await;
}

/// Run a send; false (and the connection marked for closing) if it fails, times out (the client
/// stopped reading and the socket buffer is full) or the connection is closing anyway.
async fn send_within<F, C>(
    send: F,
    limit: Duration,
    closed: std::pin::Pin<&mut C>,
    control: &ClientControl,
    metrics: &Metrics,
) -> bool
where
    F: std::future::Future<Output = Result<(), axum::Error>>,
    C: std::future::Future<Output = ()>,
{
    tokio::select! {
        _ = closed => false,
        outcome = timeout(limit, send) => match outcome {
            Ok(Ok(())) => true,
            Ok(Err(_)) => {
                control.close(CloseReason::ClientGone);
                false
            }
            Err(_) => {
                if control.close(CloseReason::SlowClient) {
                    Metrics::inc(&metrics.slow_client_disconnects_total);
                }
                false
            }
        }
    }
}

fn close_frame(reason: &CloseReason, dropped: u64) -> Option<CloseFrame> {
    let text = match reason {
        CloseReason::SlowClient => format!("slow client: outbound queue full, {dropped} message(s) dropped"),
        CloseReason::MemoryBudget => {
            "slow client: the hub's outbound memory budget is full and this backlog was among the largest".into()
        }
        CloseReason::HeartbeatTimeout => "no pong: heartbeat timeout".into(),
        CloseReason::IdleTimeout => "idle timeout".into(),
        CloseReason::TokenExpired => "token expired".into(),
        CloseReason::Shutdown => "hub shutting down".into(),
        CloseReason::MessageTooBig => "message too big".into(),
        CloseReason::ProtocolViolation => "websocket protocol error".into(),
        CloseReason::InvalidPayload => "text frame is not valid UTF-8".into(),
        CloseReason::ClientGone => return None,
    };
    Some(CloseFrame { code: reason.code(), reason: Utf8Bytes::from(text) })
}

/// Why reading failed, for the close frame: too big (1009), broken framing (1002), a text frame
/// that is not UTF-8 (1007), or a dead socket (nothing to say).
fn read_error_reason(error: axum::Error) -> CloseReason {
    let inner = error.into_inner();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => CloseReason::MessageTooBig,
        Some(tungstenite::Error::Protocol(_)) => CloseReason::ProtocolViolation,
        Some(tungstenite::Error::Utf8(_)) => CloseReason::InvalidPayload,
        _ => CloseReason::ClientGone,
    }
}
