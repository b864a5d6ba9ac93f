//! Test support: each test gets its own database (with the extension) on the cluster that
//! `scripts/test.sh` started, and an ordinary non-superuser login role to act through.
//! The admin connection string comes from MEMORIESDB_TEST_ADMIN_URL.

use postgres::{Client, NoTls};
use std::sync::atomic::{AtomicUsize, Ordering};

pub use postgres;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub struct TestDb {
    admin_url: String,
    pub name: String,
    /// an ordinary login role, mapped to `user`
    pub role: String,
    pub user: uuid::Uuid,
}

fn admin_url() -> String {
    std::env::var("MEMORIESDB_TEST_ADMIN_URL").expect(
        "MEMORIESDB_TEST_ADMIN_URL is not set: run the integration tests through scripts/test.sh, \
         which starts a throwaway cluster",
    )
}

fn unique_suffix() -> String {
    format!("{}_{}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst))
}

impl TestDb {
    /// A fresh database with `CREATE EXTENSION memoriesdb CASCADE` and a login role that is not a
    /// superuser and owns nothing.
    pub fn new() -> TestDb {
        let admin_url = admin_url();
        let suffix = unique_suffix();
        let name = format!("mdb_it_{suffix}");
        let role = format!("mdb_app_{suffix}");
        let mut admin = Client::connect(&admin_url, NoTls).expect("connect as admin");
        admin.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        admin
            .batch_execute(&format!("DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE"))
            .unwrap();
        let mut db = TestDb { admin_url, name, role, user: uuid::Uuid::nil() };
        let mut admin = db.admin();
        admin.batch_execute(&db.install_sql()).unwrap();
        admin.batch_execute(&format!("GRANT memoriesdb_user TO {}", db.role)).unwrap();
        db.user = admin
            .query_one("SELECT memoriesdb.create_user('test user', $1::name)", &[&db.role])
            .unwrap()
            .get(0);
        db
    }

    /// What an administrator runs to set MemoriesDB up in a database (README, "Quick start"):
    /// the extension, and its schema on the database's search_path so that unqualified calls
    /// (`SELECT create_session(...)`) resolve. Connections opened afterwards see the path.
    pub fn install_sql(&self) -> String {
        format!(
            "CREATE EXTENSION memoriesdb CASCADE; ALTER DATABASE {} SET search_path = \"$user\", public, memoriesdb",
            self.name
        )
    }

    fn url_for(&self, user: &str) -> String {
        let base: Vec<&str> = self
            .admin_url
            .split_whitespace()
            .filter(|kv| !kv.starts_with("user=") && !kv.starts_with("dbname="))
            .collect();
        format!("{} user={} dbname={}", base.join(" "), user, self.name)
    }

    /// A superuser connection to this test's database.
    pub fn admin(&self) -> Client {
        Client::connect(&self.url_for("postgres"), NoTls).expect("connect as admin")
    }

    /// A connection as the ordinary (non-superuser) role.
    pub fn connect(&self) -> Client {
        Client::connect(&self.url_for(&self.role), NoTls).expect("connect as the test role")
    }

    /// Another ordinary login role in this cluster (dropped with the test database), mapped to a
    /// new user of its own; returns the role and that user.
    pub fn extra_role(&self, tag: &str) -> (String, uuid::Uuid) {
        let role = format!("{}_{tag}", self.role);
        let mut admin = self.admin();
        admin
            .batch_execute(&format!(
                "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN NOSUPERUSER; GRANT memoriesdb_user TO {role}"
            ))
            .unwrap();
        let user = admin
            .query_one("SELECT memoriesdb.create_user($1, $2::name)", &[&tag, &role])
            .unwrap()
            .get(0);
        (role, user)
    }

    /// Make a role a member of one of MemoriesDB's roles (memoriesdb_worker, _trusted, _auditor).
    pub fn grant(&self, memoriesdb_role: &str, role: &str) {
        self.admin().batch_execute(&format!("GRANT {memoriesdb_role} TO {role}")).unwrap();
    }

    pub fn connect_as(&self, role: &str) -> Client {
        Client::connect(&self.url_for(role), NoTls).expect("connect as extra role")
    }

    /// Another ordinary login role in this cluster (dropped with the test database) that may use
    /// MemoriesDB (member of memoriesdb_user) but is mapped to no user.
    pub fn unmapped_role(&self, tag: &str) -> String {
        let role = self.outsider_role(tag);
        self.admin().batch_execute(&format!("GRANT memoriesdb_user TO {role}")).unwrap();
        role
    }

    /// Another ordinary login role in this cluster (dropped with the test database) that was
    /// granted nothing: not memoriesdb_user, not mapped to a user.
    pub fn outsider_role(&self, tag: &str) -> String {
        let role = format!("{}_{tag}", self.role);
        self.admin()
            .batch_execute(&format!("DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN NOSUPERUSER"))
            .unwrap();
        role
    }

    /// A libpq connection string for `user` on database `dbname` of this test's cluster, with
    /// `extra` (e.g. `options='-c work_mem=64MB'`) appended.
    pub fn url_for_db(&self, user: &str, dbname: &str, extra: &str) -> String {
        let base: Vec<&str> = self
            .admin_url
            .split_whitespace()
            .filter(|kv| !kv.starts_with("user=") && !kv.starts_with("dbname="))
            .collect();
        format!("{} user={} dbname={} {}", base.join(" "), user, dbname, extra)
    }
}

/// Host and port of the cluster MEMORIESDB_TEST_ADMIN_URL points at (for pg_dump, pg_restore).
pub fn admin_host_port() -> (String, String) {
    let url = admin_url();
    let get = |key: &str, default: &str| {
        url.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(|v| v.trim_matches('\'').to_string()))
            .unwrap_or_else(|| default.to_string())
    };
    (get("host", "localhost"), get("port", "5432"))
}

/// A database error as "SQLSTATE | message | detail | hint", with each of `ids` replaced by
/// "<id>", so that the errors two statements got can be compared apart from the ids they name.
pub fn error_shape(err: &postgres::Error, ids: &[uuid::Uuid]) -> String {
    let Some(db) = err.as_db_error() else {
        return format!("not a database error: {err}");
    };
    let mut shape = format!(
        "{} | {} | {} | {}",
        db.code().code(),
        db.message(),
        db.detail().unwrap_or(""),
        db.hint().unwrap_or("")
    );
    for id in ids {
        shape = shape.replace(&id.to_string(), "<id>");
    }
    shape
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Ok(mut admin) = Client::connect(&self.admin_url, NoTls) {
            let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
            let roles: Vec<String> = admin
                .query("SELECT rolname::text FROM pg_roles WHERE rolname LIKE $1", &[&format!("{}%", self.role)])
                .map(|rows| rows.iter().map(|r| r.get(0)).collect())
                .unwrap_or_default();
            for role in roles {
                let _ = admin.batch_execute(&format!("DROP ROLE IF EXISTS {role}"));
            }
        }
    }
}

/// The first column of the one row `sql` returns (panics with the error's shape if it fails).
pub fn one<T: for<'a> postgres::types::FromSql<'a>>(c: &mut Client, sql: &str) -> T {
    c.query_one(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {}", error_shape(&e, &[]))).get(0)
}

/// The count `sql` returns.
pub fn count(c: &mut Client, sql: &str) -> i64 {
    one(c, sql)
}

/// Run `sql`, which must fail with SQLSTATE `state`; returns the error's shape.
pub fn expect_error(c: &mut Client, sql: &str, state: &str) -> String {
    let err = c.batch_execute(sql).expect_err(sql);
    assert_eq!(sqlstate(&err), state, "{sql}: {}", error_shape(&err, &[]));
    error_shape(&err, &[])
}

/// The SQLSTATE of a failed statement, e.g. "23514".
pub fn sqlstate(err: &postgres::Error) -> String {
    err.code().map(|c| c.code().to_string()).unwrap_or_else(|| format!("no SQLSTATE: {err}"))
}

/// Channel name for a session's chat events: chat_updates_<uuid without dashes>.
pub fn chat_channel(session: &uuid::Uuid) -> String {
    format!("chat_updates_{}", session.simple())
}

/// HTTP endpoints for the tests of query embeddings (embed_text(), semantic_search(),
/// hybrid_search() without an embedding): an OpenAI-style /v1/embeddings the test scripts.
pub mod embedding_endpoint {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::{Arc, Mutex};

    /// What a stub endpoint does with one request (its body): the raw bytes of its answer, or None
    /// to hold the connection open without answering.
    pub type Behaviour = Arc<dyn Fn(&str) -> Option<Vec<u8>> + Send + Sync>;

    pub struct Stub {
        pub port: u16,
        /// the body of every request received
        pub requests: Arc<Mutex<Vec<String>>>,
    }

    impl Stub {
        pub fn start(behaviour: Behaviour) -> Stub {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let requests = Arc::new(Mutex::new(Vec::new()));
            let seen = Arc::clone(&requests);
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    let (behaviour, seen) = (Arc::clone(&behaviour), Arc::clone(&seen));
                    std::thread::spawn(move || serve(stream, &*behaviour, &seen));
                }
            });
            Stub { port, requests }
        }

        pub fn url(&self) -> String {
            format!("http://127.0.0.1:{}/v1/embeddings", self.port)
        }

        pub fn request_count(&self) -> usize {
            self.requests.lock().unwrap().len()
        }
    }

    fn serve(mut stream: TcpStream, behaviour: &(dyn Fn(&str) -> Option<Vec<u8>> + Send + Sync), seen: &Mutex<Vec<String>>) {
        let mut bytes = Vec::new();
        let mut buffer = [0u8; 4096];
        let body = loop {
            let Ok(n) = stream.read(&mut buffer) else { return };
            if n == 0 {
                return;
            }
            bytes.extend_from_slice(&buffer[..n]);
            let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
            let head = String::from_utf8_lossy(&bytes[..end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .map_or(0, |value| value.trim().parse().unwrap());
            if bytes.len() >= end + 4 + length {
                break String::from_utf8_lossy(&bytes[end + 4..end + 4 + length]).into_owned();
            }
        };
        seen.lock().unwrap().push(body.clone());
        match behaviour(&body) {
            Some(answer) => {
                let _ = stream.write_all(&answer);
            }
            // hold the connection until the client gives up
            None => while stream.read(&mut buffer).is_ok_and(|n| n > 0) {},
        }
    }

    pub fn http(status: &str, body: &str) -> Vec<u8> {
        format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
            .into_bytes()
    }
}
