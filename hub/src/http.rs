//! HTTP endpoints: the WebSocket upgrade at /ws, the demo page at /, and /healthz, /readyz,
//! /metrics for operators.
//!
//! Two checks keep web pages a user visits away from a hub on their machine or network: the
//! Origin allow-list (a page from elsewhere cannot open a WebSocket) and the Host check (a page
//! that rebinds its own DNS name to the hub's address cannot either; see [`host_allowed`]).

use crate::auth::AuthError;
use crate::channel::ChannelName;
use crate::connection;
use crate::hub::Hub;
use crate::metrics::Metrics;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::json;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

const DEMO_PAGE: &str = include_str!("../static/index.html");

/// The tungstenite read buffer per connection. Small, so idle connections stay small; larger
/// frames grow it on demand.
const READ_BUFFER_BYTES: usize = 4 * 1024;

pub fn router(hub: Arc<Hub>) -> Router {
    Router::new()
        .route("/", get(demo_page))
        .route("/ws", get(websocket))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(hub)
}

fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({ "error": { "code": code, "message": message } }).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn websocket(
    State(hub): State<Arc<Hub>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let reject = |status: StatusCode, code: &str, message: &str| {
        Metrics::inc(&hub.metrics.connections_rejected_total);
        tracing::debug!(%peer, code, message, "upgrade refused");
        error_response(status, code, message)
    };
    if let Err(message) = host_allowed(&hub, &headers) {
        return reject(StatusCode::FORBIDDEN, "host_not_allowed", &message);
    }
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            return reject(
                StatusCode::UPGRADE_REQUIRED,
                "websocket_required",
                &format!("GET /ws must be a WebSocket upgrade ({rejection})"),
            )
        }
    };
    if hub.shutdown.is_cancelled() {
        return reject(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "the hub is shutting down");
    }
    if !origin_allowed(&hub.config.allowed_origins, &headers) {
        return reject(StatusCode::FORBIDDEN, "origin_not_allowed", "this Origin is not in the hub's allow-list");
    }
    let params = parse_query(query.as_deref().unwrap_or(""));

    let grant = match &hub.auth {
        None => None,
        Some(authenticator) => {
            let token = params
                .iter()
                .find(|(k, _)| k == "token")
                .map(|(_, v)| v.clone())
                .or_else(|| bearer_token(&headers))
                .unwrap_or_default();
            let grant = match authenticator.verify(&token) {
                Ok(grant) => grant,
                Err(error) => return reject(StatusCode::UNAUTHORIZED, "unauthorized", &error.to_string()),
            };
            match hub.users.exists(&hub.database, grant.user).await {
                Ok(true) => Some(grant),
                Ok(false) => return reject(StatusCode::UNAUTHORIZED, "unauthorized", &AuthError::UnknownUser.to_string()),
                Err(failure) => {
                    let message = format!("cannot check the token's user now: {}", failure.message);
                    return reject(StatusCode::SERVICE_UNAVAILABLE, "unavailable", &message);
                }
            }
        }
    };

    let mut channels: Vec<ChannelName> = Vec::new();
    for (_, name) in params.iter().filter(|(k, _)| k == "c") {
        match ChannelName::parse(name) {
            Ok(channel) => {
                if !channels.contains(&channel) {
                    channels.push(channel)
                }
            }
            Err(message) => return reject(StatusCode::BAD_REQUEST, "invalid_channel", &message),
        }
    }
    if channels.len() > hub.config.max_channels_per_connection {
        let message = format!("at most {} channels per connection", hub.config.max_channels_per_connection);
        return reject(StatusCode::BAD_REQUEST, "too_many_channels", &message);
    }
    if let Some(grant) = &grant {
        let denied: Vec<&str> = channels.iter().map(ChannelName::as_str).filter(|c| !grant.can_read(c)).collect();
        if !denied.is_empty() {
            return reject(
                StatusCode::FORBIDDEN,
                "forbidden",
                &format!("the token does not allow reading {}", denied.join(", ")),
            );
        }
    }

    let Some(slot) = hub.reserve_connection() else {
        return reject(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_connections",
            &format!("the hub is at its limit of {} connections", hub.config.max_connections),
        );
    };

    let config = &hub.config;
    let upgrade = upgrade
        .max_message_size(config.max_message_bytes)
        .max_frame_size(config.max_frame_bytes.min(config.max_message_bytes))
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(16 * 1024)
        // bounded by the outbound queue and FRAMES_PER_FLUSH; a hard stop for anything else
        .max_write_buffer_size(4 * 1024 * 1024);
    // LISTEN before the 101: once the client sees the upgrade, its URL channels are live
    let prepared = connection::prepare(&hub, channels).await;
    let tracker = hub.connections.clone();
    upgrade.on_upgrade(move |socket| {
        tracker.track_future(async move {
            let _slot = slot;
            connection::serve(prepared, socket, grant, peer).await;
        })
    })
}

fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_string())
}

/// Browsers always send Origin on WebSocket upgrades; other clients usually don't. A page may
/// connect when it was served by the hub itself (same host), when its origin is in the
/// allow-list, or when the allow-list contains "*". Without this check any web site a user
/// visits could open a connection to a hub on their machine or network.
fn origin_allowed(allowed: &[String], headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim_end_matches('/');
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let origin_host = origin.split_once("://").map(|(_, rest)| rest).unwrap_or("");
    if !host.is_empty() && origin_host.eq_ignore_ascii_case(host) {
        return true;
    }
    allowed
        .iter()
        .map(|a| a.trim())
        .filter(|a| !a.is_empty())
        .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin))
}

/// DNS rebinding: a page on attacker.example can make its own name resolve to 127.0.0.1 and then
/// talk to a hub there as a same-origin page — its Origin equals the Host header it sends, so the
/// Origin check cannot tell. What gives it away is the Host header, which carries the name the
/// browser resolved: without authentication the hub answers only requests that name it by a
/// loopback name (no outside page can rebind those) or by a name in --allowed-hosts. With
/// authentication a rebinding page holds no token; --allowed-hosts is still enforced when given.
fn host_allowed(hub: &Hub, headers: &HeaderMap) -> Result<(), String> {
    let allowed = &hub.config.allowed_hosts;
    let listed = allowed.iter().any(|h| !h.trim().is_empty());
    if hub.auth.is_some() && !listed {
        return Ok(());
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    if host_matches(allowed, host) {
        return Ok(());
    }
    Err(format!(
        "Host {:?} is not a loopback name and not in --allowed-hosts (DNS rebinding defence)",
        crate::channel::truncate(host, 80)
    ))
}

/// Whether a Host header value names a loopback address or an allowed host.
fn host_matches(allowed: &[String], host: &str) -> bool {
    let Some((name, port)) = split_host(host) else {
        return false;
    };
    if is_loopback_name(name) {
        return true;
    }
    allowed.iter().map(|a| a.trim()).filter(|a| !a.is_empty()).any(|entry| {
        if entry == "*" {
            return true;
        }
        match split_host(entry) {
            Some((allowed_name, allowed_port)) => {
                allowed_name.eq_ignore_ascii_case(name) && (allowed_port.is_none() || allowed_port == port)
            }
            None => false,
        }
    })
}

/// "name", "name:port", "[v6]" or "[v6]:port" into the name (brackets kept) and the port.
fn split_host(value: &str) -> Option<(&str, Option<&str>)> {
    let (name, port) = if value.starts_with('[') {
        let end = value.find(']')?;
        let (name, rest) = value.split_at(end + 1);
        match rest {
            "" => (name, None),
            _ => (name, Some(rest.strip_prefix(':')?)),
        }
    } else {
        match value.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (value, None),
        }
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    (!name.is_empty() && port_ok).then_some((name, port))
}

/// localhost, 127.0.0.0/8 and [::1]: names that resolve to this machine without asking DNS.
fn is_loopback_name(name: &str) -> bool {
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    if let Some(v6) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        return v6.parse::<Ipv6Addr>().is_ok_and(|ip| ip.is_loopback());
    }
    name.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
}

/// The Host check's refusal as a response, for the HTTP endpoints that show data.
fn host_refusal(hub: &Hub, headers: &HeaderMap) -> Option<Response> {
    host_allowed(hub, headers).err().map(|message| error_response(StatusCode::FORBIDDEN, "host_not_allowed", &message))
}

/// Split a query string into decoded key/value pairs (repeated keys kept, in order).
fn parse_query(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes()).map(|(key, value)| (key.into_owned(), value.into_owned())).collect()
}

async fn demo_page(State(hub): State<Arc<Hub>>, headers: HeaderMap) -> Response {
    if let Some(refusal) = host_refusal(&hub, &headers) {
        return refusal;
    }
    let mut response = (StatusCode::OK, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], DEMO_PAGE).into_response();
    // The page loads nothing from anywhere: inline script and style, WebSocket to its own host.
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; \
             img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    response.headers_mut().insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

// /healthz and /readyz answer whatever the Host: orchestrators probe the hub by its address, and
// they reveal only whether it is up.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when the LISTEN connection is up (deliveries work), the database pool is not saturated
/// (requests waiting for a connection: new clients are better served elsewhere) and the hub is
/// not shutting down.
async fn readyz(State(hub): State<Arc<Hub>>) -> Response {
    let listener_up = hub.listener.is_up();
    let pool = hub.database.pool_status();
    let saturated = pool.waiting > 0;
    let ready = listener_up && !saturated && !hub.shutdown.is_cancelled();
    let body = json!({
        "ready": ready,
        "listener": if listener_up { "up" } else { "down" },
        "shutting_down": hub.shutdown.is_cancelled(),
        "listen_channels": hub.listener.listening_count(),
        "db_pool": { "max": pool.max, "open": pool.open, "idle": pool.idle, "waiting": pool.waiting, "saturated": saturated },
    })
    .to_string();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn metrics(State(hub): State<Arc<Hub>>, headers: HeaderMap) -> Response {
    if let Some(refusal) = host_refusal(&hub, &headers) {
        return refusal;
    }
    let body = hub.metrics.render(&hub.gauges());
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_decode() {
        let pairs = parse_query("c=channel1&c=channel2&token=a.b.c&x=%41%2b+z&bad=%zz&end=%4");
        assert_eq!(pairs[0], ("c".into(), "channel1".into()));
        assert_eq!(pairs[1], ("c".into(), "channel2".into()));
        assert_eq!(pairs[2], ("token".into(), "a.b.c".into()));
        assert_eq!(pairs[3], ("x".into(), "A+ z".into()));
        assert_eq!(pairs[4], ("bad".into(), "%zz".into()));
        assert_eq!(pairs[5], ("end".into(), "%4".into()));
        assert!(parse_query("").is_empty());
    }

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        if let Some(origin) = origin {
            headers.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        }
        headers
    }

    #[test]
    fn origins() {
        let none: Vec<String> = vec![];
        assert!(origin_allowed(&none, &headers(None, "localhost:5002")));
        assert!(origin_allowed(&none, &headers(Some("http://localhost:5002"), "localhost:5002")));
        assert!(!origin_allowed(&none, &headers(Some("http://evil.example"), "localhost:5002")));
        assert!(!origin_allowed(&none, &headers(Some("null"), "localhost:5002")));
        let list = vec!["https://app.example".to_string()];
        assert!(origin_allowed(&list, &headers(Some("https://app.example"), "hub:5002")));
        assert!(!origin_allowed(&list, &headers(Some("https://app.example.evil"), "hub:5002")));
        assert!(origin_allowed(&["*".to_string()], &headers(Some("http://anything"), "hub:5002")));
    }

    #[test]
    fn loopback_hosts() {
        let none: Vec<String> = vec![];
        for host in ["localhost", "LocalHost:5002", "127.0.0.1", "127.0.0.1:5002", "127.1.2.3:1", "[::1]", "[::1]:5002"] {
            assert!(host_matches(&none, host), "{host}");
        }
        for host in [
            "",
            "rebind.test",
            "rebind.test:5002",
            "localhost.rebind.test",
            "127.0.0.1.rebind.test",
            "0.0.0.0:5002",
            "10.0.0.1:5002",
            "[::2]:5002",
            "::1",
            "[::1",
            "[::1]5002",
            "localhost:",
            "localhost:x",
            "127.0.0.1:5002:1",
            "[::ffff:127.0.0.1]",
        ] {
            assert!(!host_matches(&none, host), "{host:?}");
        }
    }

    #[test]
    fn allowed_hosts() {
        let list = vec!["hub.example".to_string(), " lan-box:5002 ".to_string(), "[fd00::1]".to_string()];
        assert!(host_matches(&list, "hub.example"));
        assert!(host_matches(&list, "HUB.example:443"), "a name without port allows any port");
        assert!(host_matches(&list, "lan-box:5002"));
        assert!(!host_matches(&list, "lan-box:5003"), "a name with a port allows that port");
        assert!(!host_matches(&list, "lan-box"));
        assert!(host_matches(&list, "[fd00::1]:5002"));
        assert!(!host_matches(&list, "evil.example"));
        assert!(!host_matches(&list, "hub.example.evil"));
        assert!(host_matches(&list, "localhost:5002"), "loopback names stay allowed");
        assert!(host_matches(&["*".to_string()], "anything.example:1"));
        assert!(!host_matches(&["*".to_string()], ""), "a missing Host is never allowed");
    }
}
