//! The generated bad-input matrix: every function the extension lets a user role execute, read
//! from pg_catalog at run time (so a new function is covered without touching this file), called
//! through a real client as an ordinary login role holding each MemoriesDB role that may execute
//! it, with generated bad arguments.
//!
//! Arguments: one parameter at a time takes every value of its type's palette (NULL, empty,
//! huge, deep, out-of-range, another tenant's ids, ...) while the others keep a plausible valid
//! value (the caller's own session, 'user', '{}', ...); plus one all-NULL call per function.
//! Every call runs in its own transaction. An accepted call is committed when its caller is the
//! first of the four roles that may execute the function (so the data evolves, e.g. a successful
//! delete_memory, and the relay sees committed events) and its arguments are not heavy (10 MB
//! text, 10,000-deep JSON, vectors of 2,001+ dimensions, 100,000-element arrays); otherwise it is
//! rolled back: committed, those rows would make every later fingerprint slow (a few 10,000-deep
//! JSON rows alone cost tens of milliseconds per fingerprint, and the repeat runs as the other
//! roles would triple the data), or when it calls a function in NEVER_COMMITTED (forget_user). For
//! every call:
//! - no error may have SQLSTATE class XX (internal error: a Rust panic or an internal failure)
//!   or 58, nor P0001 (a RAISE without a code); no timeout (57014, statement_timeout = 5s);
//! - no message, detail, hint or notice may show a backtrace or Rust internals, and no error
//!   may echo a huge value back (10,000 characters at most);
//! - a failed call leaves every table of schema memoriesdb exactly as it was (count and md5 over
//!   the rows, read by the superuser), apart from memory_event_outbox (the relay drains it
//!   concurrently) and memory_graph_clock;
//! - the server is up afterwards (the caller's connection still answers SELECT 1).
//! Accepted calls are fine: many bad inputs are legitimately accepted. Problems are collected and
//! reported together at the end, with a summary (calls per function, errors by SQLSTATE).
//!
//! No function is skipped: the index builders (create_vector_index, process_vindexing,
//! restore_vector_indexes) validate their arguments and only ever see this test's few rows, so
//! they are cheap; the only slow values (10 MB strings) are sent once per function parameter.

use memoriesdb_integration_tests::TestDb;
use postgres::{Client, Config, NoTls, SimpleQueryMessage};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The MemoriesDB roles a login role can hold, the plainest first (the first role that may
/// execute a function also gets the 10 MB values).
const MDB_ROLES: [&str; 4] = ["memoriesdb_user", "memoriesdb_trusted", "memoriesdb_worker", "memoriesdb_auditor"];

/// Tables left out of the half-write fingerprint: the relay drains the outbox concurrently, and
/// the graph clock carries no data.
const UNFINGERPRINTED: [&str; 2] = ["memory_event_outbox", "memory_graph_clock"];

/// Substrings that betray a backtrace or Rust internals in what a client is told.
const INTERNALS: [&str; 4] = ["backtrace", ".rs:", "rust_begin_unwind", "panicked"];

/// 57014 timeouts that are expected (none so far): (function name, reason).
const JUSTIFIED_TIMEOUTS: &[(&str, &str)] = &[];

/// Functions whose accepted calls are always rolled back: committed, they would erase the very
/// fixtures (or the user) every later call relies on. (function name, reason)
const NEVER_COMMITTED: &[(&str, &str)] = &[("forget_user", "its valid call erases the calling user, who makes every later call")];

/// The temporary text search configuration each caller connection creates (as itself).
const TEMP_CONFIG: &str = "pg_temp.genbad_cfg";

/// The 10 MB text value (two million words), built by the server.
const TEN_MB: &str = "repeat('word ', 2097152)";

struct Param {
    name: String,
    /// format_type() of the parameter's type
    ty: String,
    /// pg_get_function_arg_default(), if it has one
    default: Option<String>,
    variadic: bool,
}

struct Func {
    name: String,
    signature: String,
    procedure: bool,
    params: Vec<Param>,
    /// the MemoriesDB roles (of MDB_ROLES) that may execute it
    roles: Vec<String>,
}

/// A caller's own data: a session with two messages, a fork at the first, three free memories
/// with edges a -> b -> c, and an embedding on a.
#[derive(Clone, Copy)]
struct Fixtures {
    session: Uuid,
    m1: Uuid,
    m2: Uuid,
    fork: Uuid,
    a: Uuid,
    b: Uuid,
    c: Uuid,
}

impl Fixtures {
    fn memories(&self) -> Vec<Uuid> {
        vec![self.session, self.m1, self.m2, self.fork, self.a, self.b, self.c]
    }
}

struct Caller {
    mdb_role: &'static str,
    login: String,
    user: Uuid,
    client: Client,
    notices: Arc<Mutex<Vec<String>>>,
    fx: Fixtures,
}

fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn ulit(u: Uuid) -> String {
    format!("'{u}'")
}

fn db_error_text(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} | {} | {} | {}", d.code().code(), d.message(), d.detail().unwrap_or(""), d.hint().unwrap_or("")),
        None => format!("not a database error: {e}"),
    }
}

fn shorten(s: &str, max: usize) -> String {
    let s = s.replace('\n', "\\n");
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}... ({} chars)", &s[..i], s.chars().count()),
        None => s,
    }
}

/// A connection as `login` with statement_timeout = 5s (as a startup option, so that RESET ALL
/// keeps it), its notices collected in `notices`, and its temporary text search configuration.
fn connect(db: &TestDb, login: &str, notices: &Arc<Mutex<Vec<String>>>) -> Result<Client, postgres::Error> {
    let url = db.url_for_db(login, &db.name, "options='-c statement_timeout=5s'");
    let mut config: Config = url.parse()?;
    let sink = Arc::clone(notices);
    config.notice_callback(move |n| {
        sink.lock().unwrap().push(format!(
            "{} {} | {} | {} | {}",
            n.severity(),
            n.code().code(),
            n.message(),
            n.detail().unwrap_or(""),
            n.hint().unwrap_or("")
        ))
    });
    let mut client = config.connect(NoTls)?;
    // ordinary roles may create text search configurations in their temporary schema (if one
    // cannot, the palette's value fails to parse with 42704, which is harmless)
    if let Err(e) = client.batch_execute(&format!("CREATE TEXT SEARCH CONFIGURATION {TEMP_CONFIG} (COPY = simple)")) {
        eprintln!("{login} cannot create {TEMP_CONFIG}: {}", db_error_text(&e));
    }
    Ok(client)
}

/// Connect, retrying for up to a minute (the server may be restarting after a crash).
fn connect_retrying(db: &TestDb, login: &str, notices: &Arc<Mutex<Vec<String>>>) -> Client {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match connect(db, login, notices) {
            Ok(c) => return c,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("cannot reconnect as {login}: {}", db_error_text(&e)),
        }
    }
}

fn admin_retrying(db: &TestDb) -> Client {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match Client::connect(&db.url_for_db("postgres", &db.name, ""), NoTls) {
            Ok(c) => return c,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(500)),
            Err(e) => panic!("cannot reconnect as admin: {}", db_error_text(&e)),
        }
    }
}

fn make_fixtures(c: &mut Client, tag: &str) -> Fixtures {
    let one = |c: &mut Client, sql: &str| -> Uuid {
        c.query_one(sql, &[]).unwrap_or_else(|e| panic!("fixture {sql}: {}", db_error_text(&e))).get(0)
    };
    let session = one(c, &format!("SELECT memoriesdb.create_session({})", lit(&format!("genbad {tag} session"))));
    let m1 = one(c, &format!("SELECT memoriesdb.add_message_to_session({}, 'user', 'hello fixture one')", ulit(session)));
    let m2 = one(c, &format!("SELECT memoriesdb.add_message_to_session({}, 'assistant', 'hello fixture two')", ulit(session)));
    let fork = one(c, &format!("SELECT memoriesdb.fork_session({}, 'genbad fork', '{{}}', {})", ulit(session), ulit(m1)));
    let node = |c: &mut Client, content: &str| one(c, &format!("INSERT INTO memoriesdb.memories (content) VALUES ({}) RETURNING id", lit(content)));
    let (a, b, cc) = (node(c, "hello node a"), node(c, "hello node b"), node(c, "hello node c"));
    one(c, &format!("SELECT memoriesdb.add_edge({}, {}, 'relates_to')", ulit(a), ulit(b)));
    one(c, &format!("SELECT memoriesdb.add_edge({}, {}, 'relates_to')", ulit(b), ulit(cc)));
    c.batch_execute(&format!("UPDATE memoriesdb.memories SET content_embedding = '[0.1,0.9,0.2]' WHERE id = {}", ulit(a)))
        .unwrap_or_else(|e| panic!("fixture embedding: {}", db_error_text(&e)));
    Fixtures { session, m1, m2, fork, a, b, c: cc }
}

/// Are a caller's fixtures all still there (a successful delete_memory may have taken them)?
fn fixtures_alive(admin: &mut Client, fx: &Fixtures) -> bool {
    admin
        .query_one(
            "SELECT (SELECT count(*) FROM memoriesdb.memories WHERE id = ANY($1)) = 7
                AND (SELECT count(*) FROM memoriesdb.memory_edges
                      WHERE (source_id = $2 AND target_id = $3) OR (source_id = $3 AND target_id = $4)) >= 2",
            &[&fx.memories(), &fx.a, &fx.b, &fx.c],
        )
        .map(|r| r.get::<_, bool>(0))
        .unwrap_or(false)
}

/// The functions some MemoriesDB role may execute, with their input parameters.
fn catalog_functions(admin: &mut Client) -> Vec<Func> {
    let mut funcs: BTreeMap<u32, Func> = BTreeMap::new();
    for row in admin
        .query(
            "SELECT p.oid, p.proname::text, p.oid::regprocedure::text, p.prokind::text,
                    array(SELECT r FROM unnest($1::text[]) WITH ORDINALITY u(r, n)
                           WHERE pg_catalog.has_function_privilege(r, p.oid, 'EXECUTE') ORDER BY n)
               FROM pg_catalog.pg_proc p
              WHERE p.pronamespace = 'memoriesdb'::regnamespace
                AND EXISTS (SELECT 1 FROM unnest($1::text[]) r WHERE pg_catalog.has_function_privilege(r, p.oid, 'EXECUTE'))
              ORDER BY p.proname, p.oid",
            &[&MDB_ROLES.to_vec()],
        )
        .unwrap()
    {
        let kind: String = row.get(3);
        let signature: String = row.get(2);
        if kind != "f" && kind != "p" {
            // aggregates and window functions cannot be called on their own (none exist so far)
            eprintln!("skipped {signature}: prokind {kind} is neither a function nor a procedure");
            continue;
        }
        funcs.insert(
            row.get(0),
            Func { name: row.get(1), signature, procedure: kind == "p", params: Vec::new(), roles: row.get(4) },
        );
    }
    // input parameters (IN, INOUT, VARIADIC), by position among all arguments
    for row in admin
        .query(
            "SELECT p.oid, u.n::int, coalesce(p.proargnames[u.n], ''), pg_catalog.format_type(u.t, NULL),
                    pg_catalog.pg_get_function_arg_default(p.oid, u.n::int),
                    coalesce(p.proargmodes[u.n]::text, 'i') = 'v'
               FROM pg_catalog.pg_proc p,
                    unnest(coalesce(p.proallargtypes, p.proargtypes::oid[])) WITH ORDINALITY u(t, n)
              WHERE p.pronamespace = 'memoriesdb'::regnamespace
                AND (p.proargmodes IS NULL OR p.proargmodes[u.n]::text IN ('i', 'b', 'v'))
              ORDER BY p.oid, u.n",
            &[],
        )
        .unwrap()
    {
        if let Some(f) = funcs.get_mut(&row.get::<_, u32>(0)) {
            f.params.push(Param { name: row.get(2), ty: row.get(3), default: row.get(4), variadic: row.get(5) });
        }
    }
    funcs.into_values().collect()
}

/// Everything a failed call must leave as it was: per table, "name=count:md5 over its rows".
fn fingerprint_sql(admin: &mut Client) -> String {
    let tables: Vec<String> = admin
        .query(
            "SELECT relname::text FROM pg_catalog.pg_class
              WHERE relnamespace = 'memoriesdb'::regnamespace AND relkind IN ('r', 'p')
                AND relname <> ALL ($1) ORDER BY 1",
            &[&UNFINGERPRINTED.to_vec()],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(tables.len() >= 8, "schema memoriesdb has only these tables: {tables:?}");
    let parts: Vec<String> = tables
        .iter()
        .map(|t| {
            format!(
                "'{t}=' || (SELECT count(*) || ':' || coalesce(md5(string_agg(h, '' ORDER BY h)), '-')
                              FROM (SELECT md5(x::text) AS h FROM memoriesdb.\"{t}\" x) rows)"
            )
        })
        .collect();
    format!("SELECT ARRAY[{}]", parts.join(", "))
}

fn fingerprint(admin: &mut Client, sql: &str) -> Result<Vec<String>, postgres::Error> {
    Ok(admin.query_one(sql, &[])?.get(0))
}

/// The ids a palette can name.
struct Ids {
    own: Fixtures,
    own_user: Uuid,
    own_login: String,
    other: Fixtures,
    other_user: Uuid,
    other_login: String,
    random: Uuid,
}

/// A plausible valid value for a parameter (by its name, else its default, else by type).
fn plausible(p: &Param, ids: &Ids) -> String {
    let n = p.name.as_str();
    let by_name = match (p.ty.as_str(), n) {
        ("uuid", "session_id") => Some(ulit(ids.own.session)),
        ("uuid", "parent_message_id") => Some(ulit(ids.own.m1)),
        ("uuid", "target_id") => Some(ulit(ids.own.c)),
        ("uuid", "grantee") => Some(ulit(ids.other_user)),
        ("uuid", "user_id") => Some(ulit(ids.own_user)),
        ("uuid", _) => Some(ulit(ids.own.a)),
        ("text", "role") => Some("'user'".into()),
        ("text", "content" | "query") => Some("'hello'".into()),
        ("text", "title" | "new_title") => Some("'hello title'".into()),
        ("text", "relation") => Some("'relates_to'".into()),
        ("text", "direction") => Some("'both'".into()),
        ("text", "kind_filter") => Some("'message'".into()),
        ("text", "model") => Some("'genbad-model'".into()),
        ("text", "content_hash") => Some(format!("(SELECT content_hash FROM memoriesdb.memories WHERE id = {})", ulit(ids.own.a))),
        ("text", "error") => Some("'model timeout'".into()),
        ("text", "name") => Some("'genbad user'".into()),
        ("text", "role_name") => Some("'memoriesdb_user'".into()),
        ("text", "argument") => Some("'arg'".into()),
        ("jsonb", "messages") => Some(r#"'[{"role": "user", "content": "hello batch"}]'"#.into()),
        ("vector", _) => Some("'[0.1,0.8,0.3]'".into()),
        ("integer" | "bigint" | "smallint", "lim" | "batch_size" | "max_items") => Some("10".into()),
        ("integer" | "bigint" | "smallint", "max_depth" | "dimensions") => Some("3".into()),
        ("integer" | "bigint" | "smallint", "max_rows") => Some("100".into()),
        ("integer" | "bigint" | "smallint", "candidates") => Some("50".into()),
        ("double precision", "threshold") => Some("0".into()),
        ("regconfig", _) => Some("'english'".into()),
        ("oid", "config") => Some("'english'::regconfig::oid".into()),
        ("text[]", _) => Some("ARRAY['relates_to']".into()),
        ("uuid[]", _) => Some(format!("ARRAY[{}]::uuid[]", ulit(ids.own.a))),
        ("interval", _) => Some("'5 minutes'".into()),
        _ => None,
    };
    if let Some(v) = by_name {
        return v;
    }
    if let Some(d) = &p.default {
        return d.clone();
    }
    match p.ty.as_str() {
        "text" | "character varying" => "'hello'".into(),
        "jsonb" | "json" => "'{}'".into(),
        "integer" | "bigint" | "smallint" => "1".into(),
        "double precision" | "real" | "numeric" => "1".into(),
        "boolean" => "false".into(),
        "name" => lit(&ids.own_login),
        _ => "NULL".into(),
    }
}

/// Values whose rows, committed, would make every later fingerprint slow: calls with them are
/// rolled back even when accepted.
const HEAVY: [&str; 7] = [
    TEN_MB,
    "repeat('[', 10000) || repeat(']', 10000)",
    r#"repeat('{"a":', 10000) || '1' || repeat('}', 10000)"#,
    "array_fill(0.5::real, ARRAY[2001])::vector",
    "array_fill(0.5::real, ARRAY[16000])::vector",
    "array_fill('relates_to'::text, ARRAY[100000])",
    "(SELECT array_agg(gen_random_uuid()) FROM generate_series(1, 10000))",
];

/// A batch of 101 messages: one more than a batch that sends one event per message.
const BULK_BATCH: &str =
    "(SELECT jsonb_agg(jsonb_build_object('role', 'user', 'content', 'bulk ' || i)) FROM generate_series(1, 101) i)";

/// The bad values for a parameter's type; `primary`: this caller is the first that may execute
/// the function (it alone gets the 10 MB value).
/// Returns (SQL expression, heavy: roll back even when accepted); None for a type without a palette.
fn palette(p: &Param, ids: &Ids, primary: bool) -> Option<Vec<(String, bool)>> {
    let v = |list: &[&str]| -> Vec<(String, bool)> { list.iter().map(|s| (s.to_string(), HEAVY.contains(s))).collect() };
    let mut values = match p.ty.as_str() {
        "text" | "character varying" => {
            let mut t = v(&[
                "''",
                "' '",
                r#"'it''s a "quote" \ back\slash $$ dollar $x$ -- comment /* c */'"#,
                r"E'\\\\ \\x00 \\u0000 \\'",
                "'$$; SELECT pg_sleep(10); $$'",
                "'x''); DROP TABLE memoriesdb.memories; --'",
                "repeat('y', 300)",
                r"E'\x01\x02\x07\x08\x0b\x0c\x1b[31m\x7f end'",
                r"E'\r\n\t line\nbreak\r'",
                r"E'\u202e\u200b\ufeff' || chr(65533) || chr(128512)",
                r#"'{"a": '"#,
                "'{not json}'",
                "'%s%n%x%p'",
                "repeat('r', 64)",
                "repeat('r', 65)",
                "'memoriesdb_trusted'",
            ]);
            if primary {
                t.push((TEN_MB.to_string(), true));
            }
            t
        }
        "uuid" => vec![
            "'00000000-0000-0000-0000-000000000000'".to_string(),
            ulit(ids.random),
            ulit(ids.other.session),
            ulit(ids.other.m1),
            ulit(ids.other.fork),
            ulit(ids.other.a),
            ulit(ids.other_user),
            ulit(ids.own.session),
            ulit(ids.own.m2),
            ulit(ids.own.fork),
            ulit(ids.own.a),
            ulit(ids.own_user),
        ]
        .into_iter()
        .map(|s| (s, false))
        .collect(),
        "jsonb" | "json" => {
            let mut j = v(&[
                "'[]'",
                r#"'"s"'"#,
                "'1'",
                "'null'",
                "'{}'",
                "'true'",
                // PostgreSQL 15 accepts 10,000 levels (max_stack_depth 2MB)
                HEAVY[1],
                HEAVY[2],
                r#"'{"": "", " ": 1, "''; DROP TABLE x; --": 2, "$$": null, "\\": [], "\ud83d\ude00": {}, "a.b": {"c": {}}, "role": 42, "parent_message_id": "not-a-uuid", "metadata": "x"}'"#,
                r#"'{"a": '"#,
                r#"'"\u0000"'"#,
                "'1e100000'",
                r#"'[{}]'"#,
                r#"'[null]'"#,
                r#"'[{"role": "", "content": "x"}]'"#,
                r#"'[{"role": "user", "content": null}]'"#,
                r#"'[{"role": "user", "content": "x", "metadata": []}]'"#,
            ]);
            j.push((BULK_BATCH.to_string(), false));
            j.push((format!("jsonb_build_object('parent_message_id', {})", ulit(ids.other.m1)), false));
            j.push((format!("jsonb_build_object('parent_message_id', {})", ulit(ids.own.m2)), false));
            j
        }
        "vector" => v(&[
            "'[0,0,0]'",
            "'[1e-30,1e-30,1e-30]'",
            "'[-0,0,1e-45]'",
            HEAVY[3],
            HEAVY[4],
            "array_fill(0.5::real, ARRAY[16001])::vector",
            "'[3e38,3e38]'",
            "'[3e38,-3e38,3e38]'",
            "'[1,2]'",
            "'[1]'",
            "'[1,2,3,4,5]'",
            "'[NaN,1,1]'",
            "'[Infinity,1,1]'",
            "'[]'",
        ]),
        "integer" | "bigint" | "smallint" => v(&[
            "0",
            "-1",
            "1",
            "-2147483648",
            "2147483647",
            "9223372036854775807",
            "-9223372036854775808",
        ]),
        "double precision" | "real" | "numeric" => {
            v(&["'NaN'", "'Infinity'", "'-Infinity'", "-1", "2", "1e308", "0", "'-0'", "5e-324"])
        }
        "boolean" => v(&["true", "false"]),
        "regconfig" => {
            let mut r = v(&["'english'", "'simple'", "'pg_catalog.english'"]);
            r.push((lit(TEMP_CONFIG), false));
            // a dangling configuration OID: regconfig's input accepts any number
            r.push(("'99999'".to_string(), false));
            r
        }
        "text[]" => v(&[
            "'{}'",
            "'{NULL}'",
            "ARRAY['']",
            "ARRAY['relates_to', NULL]",
            "ARRAY[repeat('r', 300)]",
            "'{{a,b},{c,d}}'",
            HEAVY[5],
        ]),
        "uuid[]" => {
            let mut u = v(&[
                "'{}'",
                "'{NULL}'",
                HEAVY[6],
            ]);
            u.push((format!("ARRAY[{}, {}]::uuid[]", ulit(ids.own.a), ulit(ids.other.a)), false));
            u.push((format!("ARRAY[ARRAY[{}], ARRAY[{}]]::uuid[]", ulit(ids.own.a), ulit(ids.own.b)), false));
            u
        }
        "oid" => {
            let mut o = v(&["0", "1", "99999", "4294967295", "'-1'", "'english'::regconfig::oid", "'pg_catalog.pg_class'::regclass::oid"]);
            o.push((format!("{}::regconfig::oid", lit(TEMP_CONFIG)), false));
            o
        }
        "interval" => v(&[
            "'-1 second'",
            "'1000 years'",
            "'0'",
            "'1 microsecond'",
            "'178000000 years'",
            "'-178000000 years'",
        ]),
        "name" => {
            let mut n = v(&["''", "'postgres'", "repeat('n', 64)", "'memoriesdb_trusted'", "'PUBLIC'", "'no_such_role'"]);
            n.push((lit(&ids.other_login), false));
            n.push((lit(&ids.own_login), false));
            n
        }
        _ => return None,
    };
    values.insert(0, ("NULL".to_string(), false));
    Some(values)
}

fn call_sql(f: &Func, args: &[String]) -> String {
    let rendered: Vec<String> = f
        .params
        .iter()
        .zip(args)
        .map(|(p, a)| format!("{}({a})::{}", if p.variadic { "VARIADIC " } else { "" }, p.ty))
        .collect();
    if f.procedure {
        format!("CALL memoriesdb.{}({})", f.name, rendered.join(", "))
    } else {
        format!("SELECT * FROM memoriesdb.{}({})", f.name, rendered.join(", "))
    }
}

/// The calls for one function as one caller: (SQL, rolled back even when it succeeds).
fn generate(f: &Func, ids: &Ids, primary: bool, untyped: &mut BTreeMap<String, String>) -> Vec<(String, bool)> {
    let base: Vec<String> = f.params.iter().map(|p| plausible(p, ids)).collect();
    let mut calls = vec![(call_sql(f, &base), false)];
    if f.params.is_empty() {
        return calls;
    }
    calls.push((call_sql(f, &vec!["NULL".to_string(); f.params.len()]), false));
    for (i, p) in f.params.iter().enumerate() {
        let values = palette(p, ids, primary).unwrap_or_else(|| {
            untyped.insert(p.ty.clone(), format!("{}.{}", f.name, p.name));
            let mut only = vec![("NULL".to_string(), false)];
            if let Some(d) = &p.default {
                only.push((d.clone(), false));
            }
            only
        });
        for (value, heavy) in values {
            if value == base[i] {
                continue;
            }
            let mut args = base.clone();
            args[i] = value;
            calls.push((call_sql(f, &args), heavy));
        }
    }
    calls
}

fn internals_in(text: &str) -> Option<&'static str> {
    let lower = text.to_lowercase();
    INTERNALS.iter().copied().find(|needle| lower.contains(needle))
}

#[derive(Default)]
struct Stats {
    calls: usize,
    ok: usize,
    errors: usize,
}

#[test]
fn generated_bad_input_never_panics_half_writes_or_kills_the_server() {
    let started = Instant::now();
    let db = TestDb::new();
    let mut admin = db.admin();
    let funcs = catalog_functions(&mut admin);
    assert!(funcs.len() >= 20, "only {} functions found for the MemoriesDB roles", funcs.len());
    let fp_sql = fingerprint_sql(&mut admin);

    // the other tenant, with data whose ids the palettes offer
    let (other_login, other_user) = db.extra_role("other");
    let other_notices = Arc::new(Mutex::new(Vec::new()));
    let mut other_client = connect(&db, &other_login, &other_notices).unwrap();
    let other_fx_initial = make_fixtures(&mut other_client, "other");
    let mut other = Caller {
        mdb_role: "memoriesdb_user",
        login: other_login,
        user: other_user,
        client: other_client,
        notices: other_notices,
        fx: other_fx_initial,
    };

    // one ordinary login role per MemoriesDB role, each mapped to its own user with its own data
    let mut callers: Vec<Caller> = MDB_ROLES
        .iter()
        .map(|&mdb_role| {
            let (login, user) = if mdb_role == "memoriesdb_user" {
                (db.role.clone(), db.user)
            } else {
                let (login, user) = db.extra_role(mdb_role.trim_start_matches("memoriesdb_"));
                db.grant(mdb_role, &login);
                (login, user)
            };
            let notices = Arc::new(Mutex::new(Vec::new()));
            let mut client = connect(&db, &login, &notices).unwrap();
            let fx = make_fixtures(&mut client, mdb_role);
            Caller { mdb_role, login, user, client, notices, fx }
        })
        .collect();
    let random = Uuid::new_v4();

    let mut problems: Vec<String> = Vec::new();
    let mut stats: BTreeMap<String, Stats> = BTreeMap::new();
    let mut by_sqlstate: BTreeMap<String, usize> = BTreeMap::new();
    let mut untyped: BTreeMap<String, String> = BTreeMap::new();
    let mut slowest: Vec<(Duration, String)> = Vec::new();
    let mut fixture_rebuilds = 0usize;
    // not a failure, but worth knowing: errors that echo a huge bad value back to the client
    let mut total = 0usize;
    let mut cached_fp: Option<Vec<String>> = None;
    // where the time goes: (calls, fingerprints, fixture checks)
    let (mut t_calls, mut t_fp, mut t_fixtures) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);

    for f in &funcs {
        let mut primary = true;
        for ci in 0..callers.len() {
            if !f.roles.iter().any(|r| r == callers[ci].mdb_role) {
                continue;
            }
            let ids = Ids {
                own: callers[ci].fx,
                own_user: callers[ci].user,
                own_login: callers[ci].login.clone(),
                other: other.fx,
                other_user: other.user,
                other_login: other.login.clone(),
                random,
            };
            let calls = generate(f, &ids, primary, &mut untyped);
            let commits = primary && !NEVER_COMMITTED.iter().any(|(name, _)| *name == f.name);
            primary = false;
            let stat = stats.entry(format!("{} as {}", f.signature, callers[ci].mdb_role)).or_default();
            for (sql, heavy) in calls {
                let roll_back = heavy || !commits;
                total += 1;
                stat.calls += 1;
                let who = callers[ci].mdb_role;
                let label = format!("[as {who}] {sql}");
                // the state before the call: the fingerprint taken after the previous call when
                // that one failed or was rolled back (nothing else writes these tables), else a
                // fresh one
                let before = match cached_fp.take() {
                    Some(fp) => fp,
                    None => {
                        let t = Instant::now();
                        let fp = fingerprint(&mut admin, &fp_sql).unwrap_or_else(|e| panic!("fingerprint: {}", db_error_text(&e)));
                        t_fp += t.elapsed();
                        fp
                    }
                };
                let caller = &mut callers[ci];
                caller.notices.lock().unwrap().clear();
                if let Err(e) = caller.client.batch_execute("BEGIN") {
                    // not this call's doing: an earlier one must have taken the connection down
                    problems.push(format!("{label}: the connection was already dead before the call: {}", db_error_text(&e)));
                    caller.client = connect_retrying(&db, &caller.login, &caller.notices);
                    caller.client.batch_execute("BEGIN").unwrap();
                }
                let t0 = Instant::now();
                let result = match caller.client.simple_query(&sql) {
                    Ok(messages) => {
                        let rows = messages.iter().filter(|m| matches!(m, SimpleQueryMessage::Row(_))).count();
                        let end = if roll_back { "ROLLBACK" } else { "COMMIT" };
                        caller.client.batch_execute(end).map(|_| rows)
                    }
                    Err(e) => {
                        let _ = caller.client.batch_execute("ROLLBACK");
                        Err(e)
                    }
                };
                let elapsed = t0.elapsed();
                t_calls += elapsed;
                slowest.push((elapsed, label.clone()));
                if slowest.len() > 40 {
                    slowest.sort_by(|a, b| b.0.cmp(&a.0));
                    slowest.truncate(10);
                }

                // the server is up: this connection still answers (after undoing any session
                // setting the call made, e.g. set_memory_user(..., false))
                let alive = caller.client.batch_execute("RESET ALL").is_ok()
                    && matches!(caller.client.query_one("SELECT 1", &[]).map(|r| r.get::<_, i32>(0)), Ok(1));
                if !alive {
                    problems.push(format!(
                        "{label}: the connection died (server crash or backend exit); call result: {}",
                        match &result {
                            Ok(_) => "accepted".to_string(),
                            Err(e) => db_error_text(e),
                        }
                    ));
                    // reconnect everyone: a crash restarts every backend
                    for c in callers.iter_mut().chain(std::iter::once(&mut other)) {
                        if c.client.is_closed() || c.client.query_one("SELECT 1", &[]).is_err() {
                            c.client = connect_retrying(&db, &c.login, &c.notices);
                        }
                    }
                    if admin.is_closed() || admin.query_one("SELECT 1", &[]).is_err() {
                        admin = admin_retrying(&db);
                    }
                }
                let caller = &mut callers[ci];
                for notice in caller.notices.lock().unwrap().drain(..) {
                    if let Some(needle) = internals_in(&notice) {
                        problems.push(format!("{label}: a notice shows Rust internals ({needle:?}): {}", shorten(&notice, 400)));
                    }
                }

                match &result {
                    Ok(_) => {
                        stat.ok += 1;
                        *by_sqlstate.entry("(accepted)".into()).or_default() += 1;
                        if !roll_back {
                            // the state changed; a successful delete may have taken fixtures
                            cached_fp = None;
                            let t = Instant::now();
                            if !fixtures_alive(&mut admin, &caller.fx) {
                                caller.fx = make_fixtures(&mut caller.client, caller.mdb_role);
                                fixture_rebuilds += 1;
                            }
                            if !fixtures_alive(&mut admin, &other.fx) {
                                problems.push(format!("{label}: accepted, and another tenant's fixtures are gone"));
                                other.fx = make_fixtures(&mut other.client, "other");
                                fixture_rebuilds += 1;
                            }
                            t_fixtures += t.elapsed();
                        } else {
                            cached_fp = Some(before);
                        }
                    }
                    Err(e) => {
                        stat.errors += 1;
                        let code = e.code().map(|c| c.code().to_string()).unwrap_or_else(|| "(none)".to_string());
                        *by_sqlstate.entry(code.clone()).or_default() += 1;
                        let shown = shorten(&db_error_text(e), 300);
                        if e.as_db_error().is_none() {
                            problems.push(format!("{label}: not a database error: {shown}"));
                        } else if code.starts_with("XX") {
                            problems.push(format!("{label}: internal error {code}: {shown}"));
                        } else if code.starts_with("58") {
                            problems.push(format!("{label}: system error {code}: {shown}"));
                        } else if code == "P0001" {
                            problems.push(format!("{label}: RAISE without an error code (P0001): {shown}"));
                        } else if code == "57014" && !JUSTIFIED_TIMEOUTS.iter().any(|(name, _)| *name == f.name) {
                            problems.push(format!("{label}: timed out after {elapsed:?} (57014): {shown}"));
                        }
                        if let Some(db_err) = e.as_db_error() {
                            let told = format!("{} {} {}", db_err.message(), db_err.detail().unwrap_or(""), db_err.hint().unwrap_or(""));
                            if let Some(needle) = internals_in(&told) {
                                problems.push(format!("{label}: the error shows Rust internals ({needle:?}): {shown}"));
                            }
                            // an error names the bad value, but never echoes megabytes of it back
                            if told.len() > 10_000 {
                                problems.push(format!("{label}: an error of {} characters echoes the bad value back: {}", told.len(), shorten(&told, 200)));
                            }
                        }
                        // nothing half-written
                        let t = Instant::now();
                        let fp_after = fingerprint(&mut admin, &fp_sql);
                        t_fp += t.elapsed();
                        match fp_after {
                            Ok(after) => {
                                if after != before {
                                    let changed: Vec<String> = before
                                        .iter()
                                        .zip(&after)
                                        .filter(|(b, a)| b != a)
                                        .map(|(b, a)| format!("{b} -> {a}"))
                                        .collect();
                                    problems.push(format!("{label}: failed with {shown}, but changed {}", changed.join("; ")));
                                }
                                cached_fp = Some(after);
                            }
                            Err(fe) => problems.push(format!("{label}: fingerprint after the call failed: {}", db_error_text(&fe))),
                        }
                    }
                }
            }
        }
    }

    // summary
    let elapsed = started.elapsed();
    let mut summary = format!("{total} calls of {} functions in {:.1} s\n", funcs.len(), elapsed.as_secs_f64());
    summary.push_str(&format!(
        "time in calls {:.1} s, in fingerprints {:.1} s, in fixture checks {:.1} s\n",
        t_calls.as_secs_f64(),
        t_fp.as_secs_f64(),
        t_fixtures.as_secs_f64()
    ));
    summary.push_str("calls per function and role (accepted / errors):\n");
    for (name, s) in &stats {
        summary.push_str(&format!("  {:5} {name} ({} / {})\n", s.calls, s.ok, s.errors));
    }
    summary.push_str("outcomes by SQLSTATE:\n");
    for (code, n) in &by_sqlstate {
        summary.push_str(&format!("  {code}: {n}\n"));
    }
    slowest.sort_by(|a, b| b.0.cmp(&a.0));
    summary.push_str("slowest calls:\n");
    for (d, label) in slowest.iter().take(10) {
        summary.push_str(&format!("  {:6} ms {}\n", d.as_millis(), shorten(label, 200)));
    }
    if let Ok(fp) = fingerprint(&mut admin, &fp_sql) {
        let counts: Vec<String> = fp.iter().map(|t| t.split(':').next().unwrap_or("").to_string()).collect();
        summary.push_str(&format!("rows at the end: {}\n", counts.join(", ")));
    }
    summary.push_str(&format!("fixtures rebuilt after successful deletes: {fixture_rebuilds}\n"));
    if !untyped.is_empty() {
        summary.push_str(&format!("types without a palette (NULL and the default only): {untyped:?}\n"));
    }
    eprintln!("{summary}");

    if total < 2000 {
        problems.push(format!("only {total} calls were generated (at least 2,000 required)"));
    }
    assert!(
        problems.is_empty(),
        "{} problem(s) in {total} generated calls:\n  - {}",
        problems.len(),
        problems.join("\n  - ")
    );
}
