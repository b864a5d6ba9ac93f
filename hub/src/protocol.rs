//! The wire protocol: parsing client requests and building the frames the hub sends.
//!
//! Client → hub (one JSON object per text frame; an optional "id" of any JSON type is echoed):
//!   {"method":"sub",   "params":{"channels":["a","b"]}}
//!   {"method":"unsub", "params":{"channels":["a"]}}
//!   {"method":"pub",   "params":{"channel":"x","content":<any JSON>,"metadata":{...}}}
//!                      (never on memoriesdb_* or chat_updates_*: only the database publishes there)
//!   {"method":"auth",  "params":{"token":"<jwt>"}}             (refresh before expiry)
//!   {"method":"ping"}                                          (application-level ping)
//!   {"action":"send_message","session_id":"...","content":"...","role":"user","metadata":{...}}
//!   {"action":"get_transcript","session_id":"...","after_position":0,"limit":500,"include_metadata":false}
//!   {"action":"create_session","title":"...","metadata":{...}}
//!   {"action":"fork_session","session_id":"...","title":"...","parent_message_id":"...","metadata":{...}}
//!   {"action":"list_sessions","limit":50}
//!   {"action":"search","query":"...","session_id":"...","limit":10}   (session_id optional)
//! (action fields may also be given inside "params").
//!
//! Hub → client:
//!   {"channel":"...","payload":...}                   a message on a subscribed channel
//!   {"event":"subscribed","channels":[...]}           first frame with ?c=...: those channels are live
//!   {"event":"reconnected"}                           the LISTEN connection was re-established
//!   {"method":"sub","id":...,"result":{...}}          a reply; "action" instead of "method" for actions
//!   {"method":"pub","id":...,"error":{"code":"...","message":"..."}}

use crate::channel::ChannelName;
use axum::extract::ws::Utf8Bytes;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use uuid::Uuid;

/// Error codes clients can switch on.
pub mod code {
    pub const BAD_JSON: &str = "bad_json";
    pub const BAD_REQUEST: &str = "bad_request";
    pub const UNKNOWN_METHOD: &str = "unknown_method";
    pub const UNKNOWN_ACTION: &str = "unknown_action";
    pub const UNSUPPORTED_FRAME: &str = "unsupported_frame";
    pub const INVALID_CHANNEL: &str = "invalid_channel";
    pub const TOO_MANY_CHANNELS: &str = "too_many_channels";
    pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
    pub const FORBIDDEN: &str = "forbidden";
    pub const UNAUTHORIZED: &str = "unauthorized";
    pub const NOT_FOUND: &str = "not_found";
    pub const INVALID_ARGUMENT: &str = "invalid_argument";
    pub const DATABASE_ERROR: &str = "database_error";
    pub const UNAVAILABLE: &str = "unavailable";
    /// Not now: the session has --max-actions-per-session actions running, its row is locked by
    /// another transaction (--lock-timeout), or no database connection came free in time. The
    /// error carries "session_id" when one session is the cause. Retry later.
    pub const BUSY: &str = "busy";
    /// The statement ran longer than --statement-timeout and was cancelled.
    pub const TIMEOUT: &str = "timeout";
}

/// Which request a reply answers: `"method": name` or `"action": name`.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestName {
    Method(String),
    Action(String),
}

impl RequestName {
    fn put(&self, object: &mut Map<String, Value>) {
        match self {
            RequestName::Method(name) => object.insert("method".into(), Value::String(name.clone())),
            RequestName::Action(name) => object.insert("action".into(), Value::String(name.clone())),
        };
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Subscribe { channels: Vec<String> },
    Unsubscribe { channels: Vec<String> },
    Publish { channel: String, content: Value, metadata: Option<Value> },
    Authenticate { token: String },
    Ping,
    Action(Action),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    SendMessage { session_id: Uuid, content: String, role: String, metadata: Option<Value> },
    GetTranscript { session_id: Uuid, include_metadata: bool, after_position: i64, limit: i64 },
    CreateSession { title: String, metadata: Option<Value> },
    ForkSession { session_id: Uuid, title: String, metadata: Option<Value>, parent_message_id: Option<Uuid> },
    ListSessions { limit: i64 },
    /// hybrid_search (words and meaning) when the database has an embedding endpoint, else
    /// search_memories (words)
    Search { query: String, session_id: Option<Uuid>, limit: i64 },
}

impl Action {
    /// The session an action works on, if any: the unit of --max-actions-per-session.
    pub fn session(&self) -> Option<&Uuid> {
        match self {
            Action::SendMessage { session_id, .. }
            | Action::GetTranscript { session_id, .. }
            | Action::ForkSession { session_id, .. } => Some(session_id),
            Action::Search { session_id, .. } => session_id.as_ref(),
            Action::CreateSession { .. } | Action::ListSessions { .. } => None,
        }
    }
}

pub const DEFAULT_TRANSCRIPT_LIMIT: i64 = 500;
pub const MAX_TRANSCRIPT_LIMIT: i64 = 5000;
pub const DEFAULT_SESSION_LIST_LIMIT: i64 = 50;
pub const MAX_SESSION_LIST_LIMIT: i64 = 500;
pub const DEFAULT_SEARCH_LIMIT: i64 = 10;
pub const MAX_SEARCH_LIMIT: i64 = 100;

/// A parsed request with what is needed to reply to it.
#[derive(Debug)]
pub struct Envelope {
    pub id: Option<Value>,
    pub name: RequestName,
    pub request: Request,
}

/// A request that could not be understood, with what is known about it for the reply.
#[derive(Debug)]
pub struct ProtocolError {
    pub id: Option<Value>,
    pub name: Option<RequestName>,
    pub code: &'static str,
    pub message: String,
}

impl ProtocolError {
    pub fn frame(&self) -> Utf8Bytes {
        error_frame(self.name.as_ref(), self.id.as_ref(), self.code, &self.message)
    }
}

pub fn parse_request(text: &str) -> Result<Envelope, Box<ProtocolError>> {
    parse(text).map_err(Box::new)
}

// Errors are the cold path; they are boxed once, at the public boundary.
#[allow(clippy::result_large_err)]
fn parse(text: &str) -> Result<Envelope, ProtocolError> {
    let value: Value = serde_json::from_str(text).map_err(|e| ProtocolError {
        id: None,
        name: None,
        code: code::BAD_JSON,
        message: format!("not valid JSON: {e}"),
    })?;
    let Value::Object(object) = value else {
        return Err(ProtocolError {
            id: None,
            name: None,
            code: code::BAD_REQUEST,
            message: "a request must be a JSON object with \"method\" or \"action\"".into(),
        });
    };
    let id = object.get("id").cloned();
    let fail = |name: &RequestName, code: &'static str, message: String| ProtocolError {
        id: id.clone(),
        name: Some(name.clone()),
        code,
        message,
    };
    if let Some(method) = object.get("method") {
        let Some(method) = method.as_str() else {
            return Err(ProtocolError { id, name: None, code: code::BAD_REQUEST, message: "\"method\" must be a string".into() });
        };
        let name = RequestName::Method(crate::channel::truncate(method, 64));
        let params = Fields::new(&object, true);
        let request = match method {
            "sub" | "subscribe" => {
                Request::Subscribe { channels: params.channels().map_err(|m| fail(&name, code::BAD_REQUEST, m))? }
            }
            "unsub" | "unsubscribe" => {
                Request::Unsubscribe { channels: params.channels().map_err(|m| fail(&name, code::BAD_REQUEST, m))? }
            }
            "pub" | "publish" => Request::Publish {
                channel: params.required_string("channel").map_err(|m| fail(&name, code::BAD_REQUEST, m))?,
                content: params.get("content").cloned().unwrap_or(Value::Null),
                metadata: params.optional_object("metadata").map_err(|m| fail(&name, code::BAD_REQUEST, m))?,
            },
            "auth" => {
                Request::Authenticate { token: params.required_string("token").map_err(|m| fail(&name, code::BAD_REQUEST, m))? }
            }
            "ping" => Request::Ping,
            _ => {
                return Err(fail(
                    &name,
                    code::UNKNOWN_METHOD,
                    format!("unknown method {:?}; known: sub, unsub, pub, auth, ping", crate::channel::truncate(method, 64)),
                ))
            }
        };
        return Ok(Envelope { id, name, request });
    }
    if let Some(action) = object.get("action") {
        let Some(action) = action.as_str() else {
            return Err(ProtocolError { id, name: None, code: code::BAD_REQUEST, message: "\"action\" must be a string".into() });
        };
        let name = RequestName::Action(crate::channel::truncate(action, 64));
        let fields = Fields::new(&object, false);
        let parsed = parse_action(action, &fields).map_err(|(code, message)| fail(&name, code, message))?;
        return Ok(Envelope { id, name, request: Request::Action(parsed) });
    }
    Err(ProtocolError {
        id,
        name: None,
        code: code::BAD_REQUEST,
        message: "a request needs \"method\" (sub, unsub, pub, auth, ping) or \"action\" (send_message, \
                  get_transcript, create_session, fork_session, list_sessions, search)"
            .into(),
    })
}

fn parse_action(action: &str, fields: &Fields) -> Result<Action, (&'static str, String)> {
    let bad = |m: String| (code::BAD_REQUEST, m);
    Ok(match action {
        "send_message" => Action::SendMessage {
            session_id: fields.uuid("session_id").map_err(bad)?,
            content: fields.required_string("content").map_err(bad)?,
            role: fields.optional_string("role").map_err(bad)?.unwrap_or_else(|| "user".into()),
            metadata: fields.optional_object("metadata").map_err(bad)?,
        },
        "get_transcript" => Action::GetTranscript {
            session_id: fields.uuid("session_id").map_err(bad)?,
            include_metadata: fields.optional_bool("include_metadata").map_err(bad)?.unwrap_or(false),
            after_position: fields.optional_int("after_position", 0, i64::MAX).map_err(bad)?.unwrap_or(0),
            limit: fields.optional_int("limit", 1, MAX_TRANSCRIPT_LIMIT).map_err(bad)?.unwrap_or(DEFAULT_TRANSCRIPT_LIMIT),
        },
        "create_session" => Action::CreateSession {
            title: fields.required_string("title").map_err(bad)?,
            metadata: fields.optional_object("metadata").map_err(bad)?,
        },
        "fork_session" => Action::ForkSession {
            session_id: fields.uuid("session_id").map_err(bad)?,
            title: match fields.optional_string("title").map_err(bad)? {
                Some(title) => title,
                None => fields.required_string("new_title").map_err(|_| bad("fork_session needs \"title\"".into()))?,
            },
            metadata: fields.optional_object("metadata").map_err(bad)?,
            parent_message_id: match fields.get("parent_message_id") {
                None | Some(Value::Null) => None,
                Some(_) => Some(fields.uuid("parent_message_id").map_err(bad)?),
            },
        },
        "list_sessions" => Action::ListSessions {
            limit: fields.optional_int("limit", 1, MAX_SESSION_LIST_LIMIT).map_err(bad)?.unwrap_or(DEFAULT_SESSION_LIST_LIMIT),
        },
        "search" => Action::Search {
            query: fields.required_string("query").map_err(bad)?,
            session_id: match fields.get("session_id") {
                None | Some(Value::Null) => None,
                Some(_) => Some(fields.uuid("session_id").map_err(bad)?),
            },
            limit: fields.optional_int("limit", 1, MAX_SEARCH_LIMIT).map_err(bad)?.unwrap_or(DEFAULT_SEARCH_LIMIT),
        },
        _ => {
            return Err((
                code::UNKNOWN_ACTION,
                format!(
                    "unknown action {:?}; known: send_message, get_transcript, create_session, fork_session, list_sessions, search",
                    crate::channel::truncate(action, 64)
                ),
            ))
        }
    })
}

/// Request fields: for methods they live in "params"; for actions at the top level, or in
/// "params" for clients that nest them.
struct Fields<'a> {
    top: &'a Map<String, Value>,
    params: Option<&'a Map<String, Value>>,
    params_only: bool,
}

impl<'a> Fields<'a> {
    fn new(top: &'a Map<String, Value>, params_only: bool) -> Fields<'a> {
        Fields { top, params: top.get("params").and_then(Value::as_object), params_only }
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        let nested = self.params.and_then(|p| p.get(key));
        if self.params_only {
            nested
        } else {
            self.top.get(key).or(nested)
        }
    }

    fn required_string(&self, key: &str) -> Result<String, String> {
        match self.get(key) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(format!("\"{key}\" must be a string, got {}", type_name(other))),
            None => Err(format!("missing \"{key}\"")),
        }
    }

    fn optional_string(&self, key: &str) -> Result<Option<String>, String> {
        match self.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => self.required_string(key).map(Some),
        }
    }

    fn optional_object(&self, key: &str) -> Result<Option<Value>, String> {
        match self.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(value @ Value::Object(_)) => Ok(Some(value.clone())),
            Some(other) => Err(format!("\"{key}\" must be a JSON object, got {}", type_name(other))),
        }
    }

    fn optional_bool(&self, key: &str) -> Result<Option<bool>, String> {
        match self.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(format!("\"{key}\" must be true or false, got {}", type_name(other))),
        }
    }

    fn optional_int(&self, key: &str, min: i64, max: i64) -> Result<Option<i64>, String> {
        match self.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(v) if (min..=max).contains(&v) => Ok(Some(v)),
                _ => Err(format!("\"{key}\" must be an integer from {min} to {max}, got {n}")),
            },
            Some(other) => Err(format!("\"{key}\" must be an integer, got {}", type_name(other))),
        }
    }

    fn uuid(&self, key: &str) -> Result<Uuid, String> {
        let text = self.required_string(key)?;
        Uuid::parse_str(text.trim())
            .map_err(|_| format!("\"{key}\" must be a uuid, got {:?}", crate::channel::truncate(&text, 80)))
    }

    fn channels(&self) -> Result<Vec<String>, String> {
        match self.get("channels") {
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| item.as_str().map(str::to_string).ok_or_else(|| "\"channels\" must hold strings".to_string()))
                .collect(),
            // a single channel is accepted for convenience
            Some(Value::String(one)) => Ok(vec![one.clone()]),
            None => match self.get("channel") {
                Some(Value::String(one)) => Ok(vec![one.clone()]),
                _ => Err("missing \"params\": {\"channels\": [...]}".into()),
            },
            Some(other) => Err(format!("\"channels\" must be an array of strings, got {}", type_name(other))),
        }
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `{"channel": ..., "payload": ...}`: the payload is embedded as JSON when it is valid JSON
/// (without re-serializing it), otherwise as a JSON string.
pub fn delivery_frame(channel: &str, payload: &str) -> Utf8Bytes {
    let channel_json = Value::String(channel.to_string()).to_string();
    let mut frame = String::with_capacity(channel_json.len() + payload.len() + 32);
    frame.push_str("{\"channel\":");
    frame.push_str(&channel_json);
    frame.push_str(",\"payload\":");
    match serde_json::from_str::<&RawValue>(payload) {
        Ok(raw) => frame.push_str(raw.get()),
        Err(_) => frame.push_str(&Value::String(payload.to_string()).to_string()),
    }
    frame.push('}');
    Utf8Bytes::from(frame)
}

/// When an event was written, for the commit-to-send histogram: the `created_at` of the
/// extension's chat events (`2026-12-02T13:11:17.937222+00:00`, in the writer's time zone). None
/// for payloads without one. Costs a scan for the key, and a parse only when it is there.
pub fn event_time(payload: &str) -> Option<std::time::SystemTime> {
    if !payload.starts_with('{') || !payload.contains("\"created_at\"") {
        return None;
    }
    #[derive(serde::Deserialize)]
    struct Stamped<'a> {
        #[serde(borrow)]
        created_at: Option<&'a str>,
    }
    let text = serde_json::from_str::<Stamped>(payload).ok()?.created_at?;
    // humantime reads the local part as UTC; the offset (+HH:MM, or Z) is applied here
    let split = text.rfind(['+', '-', 'Z']).filter(|&at| at > 10)?;
    let (local, offset) = text.split_at(split);
    let at = humantime::parse_rfc3339_weak(local).ok()?;
    let offset_secs = match offset.as_bytes() {
        [b'Z'] => 0,
        [sign @ (b'+' | b'-'), ..] => {
            let (hours, minutes) = offset[1..].split_once(':').unwrap_or((&offset[1..], "0"));
            let secs = hours.parse::<u64>().ok()? * 3600 + minutes.parse::<u64>().ok()? * 60;
            if *sign == b'+' {
                return at.checked_sub(std::time::Duration::from_secs(secs));
            }
            secs
        }
        _ => return None,
    };
    at.checked_add(std::time::Duration::from_secs(offset_secs))
}

/// `{"event":"subscribed","channels":[...]}`: the channels named in the connection's URL are
/// live (PostgreSQL listens), so an event written from now on reaches the client. Channels whose
/// LISTEN is not confirmed yet (the database is unreachable) are listed in `"pending"` as well.
pub fn subscribed_frame(channels: &[ChannelName], pending: &[ChannelName]) -> Utf8Bytes {
    let names = |list: &[ChannelName]| list.iter().map(|c| Value::String(c.as_str().into())).collect::<Vec<_>>();
    let mut frame = json!({ "event": "subscribed", "channels": names(channels) });
    if !pending.is_empty() {
        frame["pending"] = Value::Array(names(pending));
    }
    Utf8Bytes::from(frame.to_string())
}

/// `{"event": name}`, e.g. reconnected.
pub fn event_frame(name: &str) -> Utf8Bytes {
    Utf8Bytes::from(json!({ "event": name }).to_string())
}

pub fn reply_frame(name: &RequestName, id: Option<&Value>, result: Value) -> Utf8Bytes {
    let mut object = Map::new();
    name.put(&mut object);
    if let Some(id) = id {
        object.insert("id".into(), id.clone());
    }
    object.insert("result".into(), result);
    Utf8Bytes::from(Value::Object(object).to_string())
}

pub fn error_frame(name: Option<&RequestName>, id: Option<&Value>, code: &str, message: &str) -> Utf8Bytes {
    error_frame_with(name, id, json!({ "code": code, "message": message }))
}

pub fn error_frame_with(name: Option<&RequestName>, id: Option<&Value>, error: Value) -> Utf8Bytes {
    let mut object = Map::new();
    if let Some(name) = name {
        name.put(&mut object);
    }
    if let Some(id) = id {
        object.insert("id".into(), id.clone());
    }
    object.insert("error".into(), error);
    Utf8Bytes::from(Value::Object(object).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_requests_parse() {
        let sub = parse_request(r#"{"method":"sub","params":{"channels":["new_channel"]}}"#).unwrap();
        assert_eq!(sub.request, Request::Subscribe { channels: vec!["new_channel".into()] });
        let publish = parse_request(
            r#"{"method":"pub","params":{"channel":"channel_name","content":"Your message here","metadata":{"sender":"user123"}}}"#,
        )
        .unwrap();
        assert_eq!(
            publish.request,
            Request::Publish {
                channel: "channel_name".into(),
                content: json!("Your message here"),
                metadata: Some(json!({"sender": "user123"}))
            }
        );
        let send = parse_request(
            r#"{"action":"send_message","session_id":"0190abcd-0000-7000-8000-000000000001","content":"hi","metadata":{"device":"web"}}"#,
        )
        .unwrap();
        assert!(matches!(send.request, Request::Action(Action::SendMessage { ref role, .. }) if role == "user"));
        assert_eq!(send.name, RequestName::Action("send_message".into()));
    }

    #[test]
    fn bad_requests_name_themselves() {
        let err = parse_request("{not json").unwrap_err();
        assert_eq!(err.code, code::BAD_JSON);
        let err = parse_request(r#"{"method":"frobnicate","id":7}"#).unwrap_err();
        assert_eq!(err.code, code::UNKNOWN_METHOD);
        assert_eq!(err.id, Some(json!(7)));
        let frame = err.frame();
        let reply: Value = serde_json::from_str(frame.as_str()).unwrap();
        assert_eq!(reply["method"], "frobnicate");
        assert_eq!(reply["id"], 7);
        assert_eq!(reply["error"]["code"], "unknown_method");
        let err = parse_request(r#"{"action":"send_message","session_id":"nope","content":"x"}"#).unwrap_err();
        assert_eq!(err.code, code::BAD_REQUEST);
        assert!(err.message.contains("session_id"));
        assert_eq!(parse_request("[1,2]").unwrap_err().code, code::BAD_REQUEST);
        assert_eq!(parse_request(r#"{"method":"pub","params":{"content":1}}"#).unwrap_err().code, code::BAD_REQUEST);
        assert_eq!(
            parse_request(r#"{"action":"get_transcript","session_id":"0190abcd-0000-7000-8000-000000000001","limit":0}"#)
                .unwrap_err()
                .code,
            code::BAD_REQUEST
        );
        assert_eq!(parse_request(r#"{"hello":1}"#).unwrap_err().code, code::BAD_REQUEST);
    }

    #[test]
    fn event_times() {
        use std::time::{Duration, UNIX_EPOCH};
        let at = |payload: &str| event_time(payload).map(|t| t.duration_since(UNIX_EPOCH).unwrap());
        let noon = Duration::from_secs(1_767_268_800); // 2026-01-01T12:00:00Z
        assert_eq!(at(r#"{"op":"INSERT","created_at":"2026-01-01T12:00:00+00:00"}"#), Some(noon));
        assert_eq!(at(r#"{"created_at" : "2026-01-01T14:00:00.5+02:00"}"#), Some(noon + Duration::from_millis(500)));
        assert_eq!(at(r#"{"created_at":"2026-01-01T07:30:00-04:30"}"#), Some(noon));
        assert_eq!(at(r#"{"created_at":"2026-01-01T12:00:00Z"}"#), Some(noon));
        assert_eq!(at(r#"{"created_at":null}"#), None);
        assert_eq!(at(r#"{"content":"no time"}"#), None);
        assert_eq!(at("created_at"), None);
    }

    #[test]
    fn deliveries_embed_json_payloads_and_quote_text() {
        assert_eq!(delivery_frame("c", r#"{"a": 1}"#).as_str(), r#"{"channel":"c","payload":{"a": 1}}"#);
        assert_eq!(delivery_frame("c", "x").as_str(), r#"{"channel":"c","payload":"x"}"#);
        assert_eq!(delivery_frame("c", "42").as_str(), r#"{"channel":"c","payload":42}"#);
        assert_eq!(delivery_frame("c", "").as_str(), r#"{"channel":"c","payload":""}"#);
        assert_eq!(delivery_frame("c", "say \"hi\"\n").as_str(), r#"{"channel":"c","payload":"say \"hi\"\n"}"#);
        let frame = delivery_frame("c", "{\"a\":1} trailing");
        let parsed: Value = serde_json::from_str(frame.as_str()).unwrap();
        assert_eq!(parsed["payload"], "{\"a\":1} trailing");
    }
}
