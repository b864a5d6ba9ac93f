//! Database work on behalf of clients: `pub` (through `SELECT pg_notify($1, $2)`, so every hub
//! instance sharing the database delivers it) and the chat actions, which call the extension's
//! SQL API. A small pool of ordinary connections serves both; the LISTEN connection is separate.
//!
//! With authentication on, each action runs in a transaction that first asserts the token's
//! user with `set_config('app.current_user', <uuid>, true)` (transaction-local), so triggers
//! record that user as the author and row-level security applies to them. Every new connection
//! first passes [`RoleCheck`]: the hub never works as a role that bypasses row security.
//!
//! Every name the hub sends is schema-qualified (`memoriesdb.` for the extension, `pg_catalog.`
//! for built-in functions and types): the extension lives in its own schema, which is not on
//! the default search_path, and what the hub calls must not depend on a search_path someone
//! else configured. Operators are left unqualified for readability: PostgreSQL looks them up in
//! pg_catalog before the search_path unless a search_path names pg_catalog explicitly.

use crate::channel::ChannelName;
use crate::protocol::{code, Action};
use crate::role::{RoleCheck, RoleError};
use deadpool_postgres::{HookError, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_postgres::NoTls;
use uuid::Uuid;

/// PostgreSQL rejects NOTIFY payloads of 8000 bytes or more ("payload string too long").
pub const MAX_NOTIFY_PAYLOAD_BYTES: usize = 7999;

/// The application_name of pooled connections (visible in pg_stat_activity).
pub const POOL_APPLICATION_NAME: &str = "memoriesdb-hub";

/// An error to report to the client: a protocol code, a message, the SQLSTATE if any and, for
/// `busy` and `timeout`, the session that caused it.
#[derive(Debug)]
pub struct DbFailure {
    pub code: &'static str,
    pub message: String,
    pub sqlstate: Option<String>,
    pub session: Option<Uuid>,
}

impl DbFailure {
    fn new(code: &'static str, message: String) -> DbFailure {
        DbFailure { code, message, sqlstate: None, session: None }
    }

    pub fn to_json(&self) -> Value {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some(state) = &self.sqlstate {
            error["sqlstate"] = Value::String(state.clone());
        }
        if let Some(session) = &self.session {
            error["session_id"] = Value::String(session.to_string());
        }
        error
    }

    /// `busy` and `timeout` while working on `session` name it: the client learns which of its
    /// sessions is stuck.
    fn on_session(mut self, session: Option<&Uuid>) -> DbFailure {
        if let (Some(session), code::BUSY | code::TIMEOUT) = (session, self.code) {
            self.message = format!("session {session}: {}", self.message);
            self.session = Some(*session);
        }
        self
    }
}

impl From<tokio_postgres::Error> for DbFailure {
    fn from(error: tokio_postgres::Error) -> DbFailure {
        match error.as_db_error() {
            Some(db) => {
                let sqlstate = db.code().code().to_string();
                let code = match sqlstate.as_str() {
                    // lock_not_available: --lock-timeout ran out waiting for a row lock
                    "55P03" => code::BUSY,
                    // query_canceled: --statement-timeout
                    "57014" => code::TIMEOUT,
                    "P0002" | "02000" => code::NOT_FOUND,
                    "42501" => code::FORBIDDEN,
                    s if s.starts_with("22") || s == "23503" || s == "23514" => code::INVALID_ARGUMENT,
                    _ => code::DATABASE_ERROR,
                };
                // A constraint the database enforced (not an error the extension raised) names
                // tables and constraints in its message: schema details clients need not see.
                // (An error raised inside the extension's Rust functions reaches us without the
                // constraint field, so PostgreSQL's wording counts too.)
                let names_a_constraint = db.constraint().is_some()
                    || (sqlstate.starts_with("23")
                        && db.message().contains("violates")
                        && db.message().contains("constraint \""));
                let mut message = if names_a_constraint {
                    match sqlstate.as_str() {
                        "23503" => "the request refers to something that does not exist or that you cannot see \
                                    (a user, session or message)"
                            .to_string(),
                        "23505" => "the request conflicts with something that already exists".to_string(),
                        _ => "the request violates a rule of the database".to_string(),
                    }
                } else {
                    db.message().to_string()
                };
                if let Some(hint) = db.hint() {
                    message.push_str(&format!(" (hint: {hint})"));
                }
                DbFailure { code, message, sqlstate: Some(sqlstate), session: None }
            }
            None if error.is_closed() => DbFailure::new(code::UNAVAILABLE, format!("database unavailable: {error}")),
            None => DbFailure::new(code::DATABASE_ERROR, error.to_string()),
        }
    }
}

impl From<deadpool_postgres::PoolError> for DbFailure {
    fn from(error: deadpool_postgres::PoolError) -> DbFailure {
        match error {
            deadpool_postgres::PoolError::Backend(e) if e.as_db_error().is_some() => e.into(),
            // the role check refused the connection: the reason is for the operator's log
            deadpool_postgres::PoolError::PostCreateHook(HookError::Message(_)) => DbFailure::new(
                code::UNAVAILABLE,
                "database unavailable: the hub cannot use its database role (see the hub's log)".into(),
            ),
            // every pooled connection stayed busy for --lock-timeout
            deadpool_postgres::PoolError::Timeout(deadpool_postgres::TimeoutType::Wait) => {
                DbFailure::new(code::BUSY, "all of the hub's database connections are busy; try again".into())
            }
            other => DbFailure::new(code::UNAVAILABLE, format!("database unavailable: {other}")),
        }
    }
}

/// How the pool may be used: the bounds that keep one stuck session from taking it all.
pub struct Limits {
    pub pool_size: usize,
    /// PostgreSQL's statement_timeout for every statement (answered `timeout`).
    pub statement_timeout: Duration,
    /// PostgreSQL's lock_timeout, and the longest wait for a free pooled connection (`busy`).
    pub lock_timeout: Duration,
    /// Chat actions running at once on one session, hub-wide (more are `busy` at once).
    pub actions_per_session: usize,
}

pub struct Database {
    pool: Pool,
    role: Arc<RoleCheck>,
    sessions: SessionGate,
}

/// What readiness and /metrics show of the pool.
#[derive(Debug, Clone, Copy, Default)]
pub struct PoolStatus {
    pub max: usize,
    pub open: usize,
    pub idle: usize,
    /// Requests waiting for a connection: the pool is saturated.
    pub waiting: usize,
}

impl Database {
    pub fn new(pg_config: &tokio_postgres::Config, limits: &Limits, role: Arc<RoleCheck>) -> Result<Database, String> {
        let mut config = pg_config.clone();
        config.application_name(POOL_APPLICATION_NAME);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        // Bound every statement the hub runs for a client: a statement that runs long is
        // cancelled, and one that waits for a lock someone else holds (a transaction left open
        // in psql) gives up after lock_timeout instead of holding its connection.
        let existing = config.get_options().unwrap_or("").to_string();
        config.options(
            format!(
                "{existing} -c statement_timeout={} -c lock_timeout={}",
                limits.statement_timeout.as_millis(),
                limits.lock_timeout.as_millis()
            )
            .trim(),
        );
        let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let hook_role = role.clone();
        let pool = Pool::builder(manager)
            .post_create(deadpool_postgres::Hook::async_fn(move |client, _| {
                let role = hook_role.clone();
                Box::pin(async move {
                    role.verify(client).await.map_err(|error| match error {
                        RoleError::Refused(message) => HookError::message(message),
                        RoleError::Query(error) => HookError::Backend(error),
                    })
                })
            }))
            .max_size(limits.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(limits.lock_timeout))
            .create_timeout(Some(Duration::from_secs(5)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| format!("cannot build the connection pool: {e}"))?;
        Ok(Database { pool, role, sessions: SessionGate::new(limits.actions_per_session) })
    }

    /// Check the hub's database role now, by opening a pooled connection. Err only when the
    /// role is refused; an unreachable database is not an error (the hub starts anyway, and
    /// every connection made later is checked).
    pub async fn check_role(&self) -> Result<(), String> {
        match self.pool.get().await {
            Ok(_) => Ok(()),
            Err(error) => match self.role.refusal() {
                Some(refusal) => Err(refusal),
                None => {
                    tracing::warn!(error = %crate::error_chain(&error), "cannot check the hub's database role yet; every new connection will be checked");
                    Ok(())
                }
            },
        }
    }

    /// Whether a MemoriesDB user exists (the hub's role is trusted, so it sees every user).
    pub async fn user_exists(&self, user: Uuid) -> Result<bool, DbFailure> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached("SELECT memoriesdb.user_exists($1)").await?;
        Ok(client.query_one(&statement, &[&user]).await?.get(0))
    }

    /// NOTIFY through PostgreSQL so that all hubs (and psql LISTENers) see it.
    pub async fn publish(&self, channel: &ChannelName, payload: &str) -> Result<(), DbFailure> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached("SELECT pg_catalog.pg_notify($1, $2)").await?;
        client.execute(&statement, &[&channel.as_str(), &payload]).await?;
        Ok(())
    }

    pub fn pool_status(&self) -> PoolStatus {
        let status = self.pool.status();
        PoolStatus { max: status.max_size, open: status.size, idle: status.available, waiting: status.waiting }
    }

    /// Run a chat action as `user` (when authentication is on). Returns the reply's result.
    pub async fn run_action(&self, action: &Action, user: Option<Uuid>) -> Result<Value, DbFailure> {
        let session = action.session();
        let _permit = match session {
            Some(session) => Some(self.sessions.enter(session)?),
            None => None,
        };
        self.run_action_now(action, user).await.map_err(|failure| failure.on_session(session))
    }

    async fn run_action_now(&self, action: &Action, user: Option<Uuid>) -> Result<Value, DbFailure> {
        let mut client = self.pool.get().await?;
        let transaction = client.transaction().await?;
        if let Some(user) = user {
            transaction.execute("SELECT pg_catalog.set_config('app.current_user', $1, true)", &[&user.to_string()]).await?;
        }
        let result = match action {
            Action::SendMessage { session_id, content, role, metadata } => {
                let row = transaction
                    .query_one("SELECT memoriesdb.add_message_to_session($1, $2, $3, $4)", &[session_id, role, content, metadata])
                    .await?;
                let message_id: Uuid = row.get(0);
                json!({
                    "message_id": message_id,
                    "session_id": session_id,
                    "channel": ChannelName::for_session(session_id).as_str(),
                })
            }
            Action::GetTranscript { session_id, include_metadata, after_position, limit } => {
                // one row more than the page, to tell whether more follow
                let row = transaction
                    .query_one(
                        "SELECT coalesce(pg_catalog.jsonb_agg(pg_catalog.to_jsonb(t) OPERATOR(pg_catalog.-) 'rn'
                                             OPERATOR(pg_catalog.-) CASE WHEN $2::pg_catalog.bool THEN '' ELSE 'metadata' END
                                             ORDER BY t.position) FILTER (WHERE t.rn OPERATOR(pg_catalog.<=) $4::pg_catalog.int8),
                                         '[]'::pg_catalog.jsonb),
                                pg_catalog.count(*) OPERATOR(pg_catalog.>) $4::pg_catalog.int8
                           FROM (SELECT c.*, pg_catalog.row_number() OVER (ORDER BY c.position) AS rn
                                   FROM memoriesdb.get_conversation_page($1::pg_catalog.uuid, $3::pg_catalog.int8,
                                                                         ($4::pg_catalog.int8 OPERATOR(pg_catalog.+) 1)::pg_catalog.int4,
                                                                         $2::pg_catalog.bool) c) t",
                        &[session_id, include_metadata, after_position, limit],
                    )
                    .await?;
                let messages: Value = row.get(0);
                let more: bool = row.get(1);
                let session = session_summary(&transaction, session_id).await?;
                json!({
                    "session_id": session_id,
                    "channel": ChannelName::for_session(session_id).as_str(),
                    "session": session,
                    "messages": messages,
                    "more": more,
                })
            }
            Action::CreateSession { title, metadata } => {
                let row = transaction.query_one("SELECT memoriesdb.create_session($1, $2)", &[title, metadata]).await?;
                let session_id: Uuid = row.get(0);
                json!({ "session_id": session_id, "channel": ChannelName::for_session(&session_id).as_str() })
            }
            Action::ForkSession { session_id, title, metadata, parent_message_id } => {
                let row = transaction
                    .query_one(
                        "SELECT memoriesdb.fork_session($1, $2, $3, $4)",
                        &[session_id, title, metadata, parent_message_id],
                    )
                    .await?;
                let fork_id: Uuid = row.get(0);
                json!({
                    "session_id": fork_id,
                    "parent_session_id": session_id,
                    "channel": ChannelName::for_session(&fork_id).as_str(),
                })
            }
            Action::ListSessions { limit } => {
                let row = transaction
                    .query_one(
                        "SELECT coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                                    'session_id', l.session_id, 'title', l.title, 'created_at', l.created_at,
                                    'parent_id', l.parent_id, 'message_count', l.last_position)
                                    ORDER BY l.created_at DESC, l.session_id DESC), '[]'::pg_catalog.jsonb)
                           FROM memoriesdb.list_sessions($1::pg_catalog.int8::pg_catalog.int4) l",
                        &[limit],
                    )
                    .await?;
                json!({ "sessions": row.get::<_, Value>(0) })
            }
            Action::Search { query, session_id, limit } => {
                // by words and meaning; by words alone when the database has no embedding
                // endpoint (hybrid_search says so with 55000; the savepoint undoes the attempt).
                // The reply says which. Each result names its session (a session's own memory
                // names itself), so clients can open it.
                let as_json = |rows: &str| {
                    format!(
                        "SELECT coalesce(pg_catalog.jsonb_agg(pg_catalog.to_jsonb(r) OPERATOR(pg_catalog.-) 'origin_session_id'
                                  OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object('session_id',
                                      CASE WHEN r.kind OPERATOR(pg_catalog.=) 'session' THEN r.id ELSE r.origin_session_id END)),
                                '[]'::pg_catalog.jsonb)
                           FROM ({rows}) r"
                    )
                };
                let hybrid_rows = as_json(
                    "SELECT h.id, h.content, h.kind, h.role, h.origin_session_id, h.position, h.score,
                            h.text_rank, h.vector_rank, h.vector_similarity AS similarity, h.chunk_start, h.chunk_end
                       FROM memoriesdb.hybrid_search($1, lim => $2::pg_catalog.int8::pg_catalog.int4, session_id => $3) h",
                );
                let text_rows = as_json(
                    "SELECT s.id, s.content, s.kind, s.role, s.origin_session_id, s.position, s.rank AS score, s.snippet
                       FROM memoriesdb.search_memories($1, session_id => $3, lim => $2::pg_catalog.int8::pg_catalog.int4) s",
                );
                transaction.batch_execute("SAVEPOINT search").await?;
                let (mode, row) = match transaction.query_one(&hybrid_rows, &[query, limit, session_id]).await {
                    Ok(row) => ("hybrid", row),
                    Err(error) if error.code().is_some_and(|code| code.code() == "55000") => {
                        transaction.batch_execute("ROLLBACK TO SAVEPOINT search").await?;
                        ("text", transaction.query_one(&text_rows, &[query, limit, session_id]).await?)
                    }
                    Err(error) => return Err(error.into()),
                };
                json!({ "mode": mode, "results": row.get::<_, Value>(0) })
            }
        };
        transaction.commit().await?;
        Ok(result)
    }
}

/// Title and branch structure of a session, for clients showing a transcript.
async fn session_summary(transaction: &deadpool_postgres::Transaction<'_>, session_id: &Uuid) -> Result<Value, DbFailure> {
    let row = transaction
        .query_opt(
            "SELECT pg_catalog.jsonb_build_object('title', g.title, 'parent_id', g.parent_id,
                                                  'fork_message_id', g.fork_message_id, 'fork_position', g.fork_position)
               FROM memoriesdb.get_session($1) g",
            &[session_id],
        )
        .await?;
    Ok(row.map(|r| r.get::<_, Value>(0)).unwrap_or(Value::Null))
}

/// At most `limit` chat actions at once on one session, hub-wide. Requests on one client's
/// connection already run one at a time; this bounds what many clients can pile onto one session
/// (all of them waiting for the same row lock, say), so that the pool stays free for everyone else.
struct SessionGate {
    limit: usize,
    running: Mutex<HashMap<Uuid, usize>>,
}

struct SessionPermit<'a> {
    gate: &'a SessionGate,
    session: Uuid,
}

impl SessionGate {
    fn new(limit: usize) -> SessionGate {
        SessionGate { limit, running: Mutex::new(HashMap::new()) }
    }

    fn enter(&self, session: &Uuid) -> Result<SessionPermit<'_>, DbFailure> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let count = running.entry(*session).or_insert(0);
        if *count >= self.limit {
            let message = format!("{} action(s) on it are already running; try again", self.limit);
            return Err(DbFailure::new(code::BUSY, message).on_session(Some(session)));
        }
        *count += 1;
        Ok(SessionPermit { gate: self, session: *session })
    }
}

impl Drop for SessionPermit<'_> {
    fn drop(&mut self) {
        let mut running = self.gate.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = running.get_mut(&self.session) {
            *count -= 1;
            if *count == 0 {
                running.remove(&self.session);
            }
        }
    }
}
