//! Command-line flags and environment variables. Every flag has an environment variable of the
//! same name (MEMORIESDB_HUB_<FLAG>), so the hub can be configured either way.

use clap::Parser;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

#[derive(Parser, Debug, Clone)]
#[command(name = "memoriesdb-hub", version, about = "WebSocket hub for MemoriesDB")]
pub struct Config {
    /// Address to listen on. Non-loopback addresses need --jwt-secret (or --allow-anonymous).
    #[arg(long, env = "MEMORIESDB_HUB_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// TCP port to listen on.
    #[arg(long, short = 'p', env = "MEMORIESDB_HUB_PORT", default_value_t = 5002)]
    pub port: u16,

    /// PostgreSQL connection string (key=value or postgresql:// URL).
    #[arg(long, env = "MEMORIESDB_HUB_DATABASE_URL", default_value = "host=localhost port=5433 user=postgres dbname=memoriesdb")]
    pub database_url: String,

    /// HS256 secret for JWT authentication, at least 32 bytes. Authentication is off when neither
    /// this nor --jwt-secret-file is given.
    #[arg(long, env = "MEMORIESDB_HUB_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// File holding the HS256 secret (trailing newline ignored); keeps it out of `ps`.
    #[arg(long, env = "MEMORIESDB_HUB_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<std::path::PathBuf>,

    /// Listen on a non-loopback address without authentication (not for production).
    #[arg(long, env = "MEMORIESDB_HUB_ALLOW_ANONYMOUS")]
    pub allow_anonymous: bool,

    /// Without authentication, let the hub's database role be a superuser or have BYPASSRLS, so
    /// that every client reaches every tenant's data (a local demo only). Refused with
    /// --jwt-secret: an authenticated hub never runs as such a role.
    #[arg(long, env = "MEMORIESDB_HUB_ALLOW_ANONYMOUS_SUPERUSER")]
    pub allow_anonymous_superuser: bool,

    /// Comma-separated Host names (name or name:port) the hub answers besides loopback ones
    /// (localhost, 127.0.0.0/8, [::1]); "*" = any. Enforced without authentication (defence
    /// against DNS rebinding), and with authentication when given.
    #[arg(long, env = "MEMORIESDB_HUB_ALLOWED_HOSTS", value_delimiter = ',', default_value = "")]
    pub allowed_hosts: Vec<String>,

    /// Comma-separated Origin values browsers may connect from ("*" = any). Empty: only pages
    /// served by the hub itself (Origin host = Host header) and clients that send no Origin.
    #[arg(long, env = "MEMORIESDB_HUB_ALLOWED_ORIGINS", value_delimiter = ',', default_value = "")]
    pub allowed_origins: Vec<String>,

    /// Maximum number of simultaneous WebSocket connections.
    #[arg(long, env = "MEMORIESDB_HUB_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Maximum number of channels one connection may subscribe to.
    #[arg(long, env = "MEMORIESDB_HUB_MAX_CHANNELS_PER_CONNECTION", default_value_t = 100)]
    pub max_channels_per_connection: usize,

    /// Maximum size of one incoming WebSocket message (bytes).
    #[arg(long, env = "MEMORIESDB_HUB_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024)]
    pub max_message_bytes: usize,

    /// Maximum size of one incoming WebSocket frame (bytes).
    #[arg(long, env = "MEMORIESDB_HUB_MAX_FRAME_BYTES", default_value_t = 64 * 1024)]
    pub max_frame_bytes: usize,

    /// Messages that may wait for one client; a client that lets more pile up is disconnected.
    #[arg(long, env = "MEMORIESDB_HUB_OUTBOUND_QUEUE", default_value_t = 1024)]
    pub outbound_queue: usize,

    /// Memory (MiB) all outbound queues together may hold; over it, the clients with the largest
    /// backlogs are disconnected (1008) first.
    #[arg(long, env = "MEMORIESDB_HUB_OUTBOUND_BUDGET_MIB", default_value_t = 512)]
    pub outbound_budget_mib: usize,

    /// How often the hub pings each client (e.g. 20s, 500ms).
    #[arg(long, env = "MEMORIESDB_HUB_PING_INTERVAL", default_value = "20s", value_parser = parse_duration)]
    pub ping_interval: Duration,

    /// A client that sends nothing (not even a pong) for ping-interval + pong-timeout is dropped.
    #[arg(long, env = "MEMORIESDB_HUB_PONG_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub pong_timeout: Duration,

    /// A connection with no subscriptions that sends no request for this long is closed.
    #[arg(long, env = "MEMORIESDB_HUB_IDLE_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Time allowed from TCP accept to a complete HTTP request head (slow-loris defence).
    #[arg(long, env = "MEMORIESDB_HUB_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// How long a write to one client may block before the client is dropped.
    #[arg(long, env = "MEMORIESDB_HUB_WRITE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub write_timeout: Duration,

    /// Database connections for pub and chat actions (the LISTEN connection is separate).
    #[arg(long, env = "MEMORIESDB_HUB_DB_POOL_SIZE", default_value_t = 8)]
    pub db_pool_size: usize,

    /// statement_timeout for pub and chat actions (a longer one is answered `timeout`).
    #[arg(long, env = "MEMORIESDB_HUB_STATEMENT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub statement_timeout: Duration,

    /// How long a pub or chat action waits for a row lock (PostgreSQL's lock_timeout) or for a
    /// free database connection before it is answered `busy`.
    #[arg(long, env = "MEMORIESDB_HUB_LOCK_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub lock_timeout: Duration,

    /// Chat actions that may run at once on one session (hub-wide); more are answered `busy`, so
    /// one stuck session cannot take every database connection.
    #[arg(long, env = "MEMORIESDB_HUB_MAX_ACTIONS_PER_SESSION", default_value_t = 2)]
    pub max_actions_per_session: usize,

    /// Longest wait between two attempts to re-establish the LISTEN connection.
    #[arg(long, env = "MEMORIESDB_HUB_RECONNECT_MAX_BACKOFF", default_value = "5s", value_parser = parse_duration)]
    pub reconnect_max_backoff: Duration,

    /// How often the LISTEN connection is probed with `SELECT 1` (catches dead TCP peers).
    #[arg(long, env = "MEMORIESDB_HUB_LISTENER_PROBE_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub listener_probe_interval: Duration,

    /// How long SIGTERM waits for clients to receive their close frame.
    #[arg(long, env = "MEMORIESDB_HUB_SHUTDOWN_GRACE", default_value = "5s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Log format: text or json.
    #[arg(long, env = "MEMORIESDB_HUB_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    /// Log filter (tracing EnvFilter syntax), e.g. info or memoriesdb_hub=debug.
    #[arg(long, env = "MEMORIESDB_HUB_LOG", default_value = "info")]
    pub log: String,
}

impl Config {
    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }

    /// The JWT secret from --jwt-secret or --jwt-secret-file, if any. A secret that is given but
    /// empty, blank or shorter than [`MIN_JWT_SECRET_BYTES`] is an error, never "no
    /// authentication" and never "authentication with a guessable key".
    pub fn jwt_secret_bytes(&self) -> Result<Option<Vec<u8>>, String> {
        let (secret, source) = if let Some(secret) = &self.jwt_secret {
            (secret.as_bytes().to_vec(), "--jwt-secret (MEMORIESDB_HUB_JWT_SECRET)".to_string())
        } else if let Some(path) = &self.jwt_secret_file {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("cannot read --jwt-secret-file {}: {e}", path.display()))?;
            (text.trim_end_matches(['\n', '\r']).as_bytes().to_vec(), format!("--jwt-secret-file {}", path.display()))
        } else {
            return Ok(None);
        };
        check_jwt_secret(&secret, &source)?;
        Ok(Some(secret))
    }

    /// Refuse configurations that are unsafe or cannot work.
    pub fn validate(&self, auth_enabled: bool) -> Result<(), String> {
        if !auth_enabled && !self.host.is_loopback() && !self.allow_anonymous {
            return Err(format!(
                "refusing to listen on {} without authentication: set --jwt-secret (or \
                 MEMORIESDB_HUB_JWT_SECRET), or pass --allow-anonymous",
                self.host
            ));
        }
        if auth_enabled && self.allow_anonymous_superuser {
            return Err("--allow-anonymous-superuser applies only without authentication: with --jwt-secret the \
                        hub never runs as a database role that bypasses row-level security"
                .into());
        }
        if self.outbound_queue == 0 || self.db_pool_size == 0 || self.max_connections == 0 || self.max_actions_per_session == 0 {
            return Err(
                "--outbound-queue, --db-pool-size, --max-connections and --max-actions-per-session must be at least 1".into()
            );
        }
        if self.lock_timeout.is_zero() {
            // 0 would mean "wait forever" to PostgreSQL
            return Err("--lock-timeout must be positive".into());
        }
        if self.ping_interval.is_zero() {
            return Err("--ping-interval must be positive".into());
        }
        Ok(())
    }
}

/// HS256 is only as strong as its key: RFC 7518 asks for at least 256 bits.
pub const MIN_JWT_SECRET_BYTES: usize = 32;

/// An HS256 secret anyone could guess (empty, blank, short) is refused at startup: with an
/// empty key every client can sign any token it likes.
fn check_jwt_secret(secret: &[u8], source: &str) -> Result<(), String> {
    if secret.iter().all(u8::is_ascii_whitespace) {
        return Err(format!(
            "{source} is empty: with an empty HS256 secret anyone can forge tokens. Give a random secret of at \
             least {MIN_JWT_SECRET_BYTES} bytes (e.g. `openssl rand -base64 48`), or give no secret to run \
             without authentication (loopback only)"
        ));
    }
    if secret.len() < MIN_JWT_SECRET_BYTES {
        return Err(format!(
            "{source} is {} bytes; an HS256 secret must be at least {MIN_JWT_SECRET_BYTES} bytes (256 bits), \
             e.g. `openssl rand -base64 48`",
            secret.len()
        ));
    }
    Ok(())
}

/// A duration as humantime reads it ("250ms", "20s", "5m", "1h 30m"), or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().map(Duration::from_secs).map_err(|_| format!("not a duration: {text:?}"));
    }
    humantime::parse_duration(text).map_err(|e| format!("not a duration: {text:?} ({e}; try 500ms, 20s, 5m)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn flags_and_environment() {
        let config = Config::parse_from(["memoriesdb-hub"]);
        assert_eq!(config.port, 5002, "the specification's port");
        // every flag has an environment variable; a flag given on the command line wins
        std::env::set_var("MEMORIESDB_HUB_PORT", "6123");
        std::env::set_var("MEMORIESDB_HUB_DATABASE_URL", "host=/tmp dbname=x");
        std::env::set_var("MEMORIESDB_HUB_PING_INTERVAL", "750ms");
        let from_env = Config::parse_from(["memoriesdb-hub"]);
        let from_flag = Config::parse_from(["memoriesdb-hub", "--port", "7000"]);
        std::env::remove_var("MEMORIESDB_HUB_PORT");
        std::env::remove_var("MEMORIESDB_HUB_DATABASE_URL");
        std::env::remove_var("MEMORIESDB_HUB_PING_INTERVAL");
        assert_eq!(from_env.port, 6123);
        assert_eq!(from_env.database_url, "host=/tmp dbname=x");
        assert_eq!(from_env.ping_interval, Duration::from_millis(750));
        assert_eq!(from_flag.port, 7000);
    }

    #[test]
    fn anonymous_public_listening_is_refused() {
        let mut config = Config::parse_from(["memoriesdb-hub"]);
        assert!(config.validate(false).is_ok(), "loopback without auth is the development default");
        config.host = "0.0.0.0".parse().unwrap();
        assert!(config.validate(false).is_err());
        assert!(config.validate(true).is_ok());
        config.allow_anonymous = true;
        assert!(config.validate(false).is_ok());
    }

    #[test]
    fn weak_jwt_secrets_are_refused() {
        let secret_of = |args: &[&str]| Config::parse_from([&["memoriesdb-hub"], args].concat()).jwt_secret_bytes();
        assert_eq!(secret_of(&[]), Ok(None), "no secret: authentication off");
        let strong = "k".repeat(MIN_JWT_SECRET_BYTES);
        assert_eq!(secret_of(&["--jwt-secret", &strong]), Ok(Some(strong.clone().into_bytes())));
        for weak in ["", " ", "\t\n", &"k".repeat(MIN_JWT_SECRET_BYTES - 1)] {
            let error = secret_of(&["--jwt-secret", weak]).expect_err(weak);
            assert!(error.contains("32 bytes"), "{error}");
        }
        let dir = std::env::temp_dir().join(format!("memoriesdb-hub-secret-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, content, ok) in [
            ("empty", "", false),
            ("blank", "  \n\n", false),
            ("newline", "\n", false),
            ("short", "0123456789\n", false),
            ("strong", &format!("{strong}\n"), true),
        ] {
            let path = dir.join(name);
            std::fs::write(&path, content).unwrap();
            let result = secret_of(&["--jwt-secret-file", path.to_str().unwrap()]);
            assert_eq!(result.is_ok(), ok, "{name}: {result:?}");
        }
        assert_eq!(
            secret_of(&["--jwt-secret-file", dir.join("strong").to_str().unwrap()]),
            Ok(Some(strong.into_bytes())),
            "the trailing newline is not part of the secret"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_superuser_escape_hatch_is_for_anonymous_mode_only() {
        let config = Config::parse_from(["memoriesdb-hub", "--allow-anonymous-superuser"]);
        assert!(config.validate(false).is_ok());
        assert!(config.validate(true).unwrap_err().contains("--allow-anonymous-superuser"));
    }
}
