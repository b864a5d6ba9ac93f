//! Query embeddings from SQL (src/embeddings.rs): embed_text(), semantic_search() and
//! hybrid_search() without an embedding, against real HTTP endpoints run by the test — one that
//! answers like OpenAI's /v1/embeddings, and misbehaving ones (errors, garbage, silence).
//!
//! The model filter is checked with two models' embeddings of the same vector: a search must
//! never return the other model's memory. The endpoint setting is an administrator's: a tenant
//! cannot point the database server elsewhere.

use memoriesdb_integration_tests::embedding_endpoint::{http, Stub};
use memoriesdb_integration_tests::{sqlstate, TestDb};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

/// The embedding the well-behaved stub gives a text: a fixed direction per topic word, so that
/// the test knows which memory is nearest.
fn topic_vector(text: &str) -> [f32; 3] {
    let text = text.to_lowercase();
    if text.contains("phone") || text.contains("mobile") {
        [1.0, 0.1, 0.0]
    } else if text.contains("tea") || text.contains("drink") {
        [0.0, 1.0, 0.1]
    } else {
        [0.1, 0.0, 1.0]
    }
}

fn openai_stub(model: &'static str) -> Stub {
    Stub::start(Arc::new(move |body: &str| {
        let request: serde_json::Value = serde_json::from_str(body).unwrap();
        let text = request["input"][0].as_str().unwrap().to_owned();
        let answer = serde_json::json!({
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": topic_vector(&text)}],
            "model": model,
        });
        Some(http("200 OK", &answer.to_string()))
    }))
}

/// A database whose memories have embeddings from two models, and the endpoint set to `url`.
fn database_with_embeddings(url: &str) -> (TestDb, Vec<(String, uuid::Uuid)>) {
    let db = TestDb::new();
    let mut admin = db.admin();
    admin.batch_execute(&format!("ALTER DATABASE {} SET memoriesdb.embedding_url = '{url}'", db.name)).unwrap();
    let mut client = db.connect();
    let session: uuid::Uuid = client.query_one("SELECT create_session('Design review')", &[]).unwrap().get(0);
    let mut ids = Vec::new();
    for (content, model) in [
        ("the phone layout needs bigger buttons", "stub-model"),
        ("we drink green tea at the office", "stub-model"),
        ("the release is planned for friday", "stub-model"),
        // the same direction as a phone question, from another model: never comparable
        ("mobile notes embedded by another model", "other-model"),
    ] {
        let id: uuid::Uuid =
            client.query_one("SELECT add_message_to_session($1, 'user', $2)", &[&session, &content]).unwrap().get(0);
        admin
            .execute(
                &format!(
                    "UPDATE memoriesdb.memories SET content_embedding = '{:?}', embedding_model = $2 WHERE id = $1",
                    topic_vector(content)
                ),
                &[&id, &model],
            )
            .unwrap();
        ids.push((content.to_owned(), id));
    }
    (db, ids)
}

#[test]
fn plain_text_searches_use_the_endpoints_embedding_and_only_its_models_memories() {
    let stub = openai_stub("stub-model");
    let (db, ids) = database_with_embeddings(&stub.url());
    let mut client = db.connect();

    let embedded: String = client.query_one("SELECT embed_text('my phone')::text", &[]).unwrap().get(0);
    assert_eq!(embedded, "[1,0.1,0]");

    let found: Vec<(String, f64)> = client
        .query("SELECT content, similarity FROM semantic_search('how should the mobile screen look?', threshold => 0.5)", &[])
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(found.len(), 1, "only the stub model's phone memory: {found:?}");
    assert_eq!(found[0].0, ids[0].0);

    let hybrid: Vec<String> =
        client.query("SELECT content FROM hybrid_search('which drink do we like?')", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(hybrid.first(), Some(&ids[1].0), "{hybrid:?}");
    assert!(!hybrid.contains(&ids[3].0), "another model's memory was compared: {hybrid:?}");

    // vector_search compares every model's embeddings unless told the query's model
    let any_model: i64 =
        client.query_one("SELECT count(*) FROM vector_search('[1,0.1,0]', threshold => 0.99)", &[]).unwrap().get(0);
    let one_model: i64 = client
        .query_one("SELECT count(*) FROM vector_search('[1,0.1,0]', threshold => 0.99, model => 'stub-model')", &[])
        .unwrap()
        .get(0);
    assert_eq!((any_model, one_model), (2, 1));

    // asking hybrid_search for another model than the endpoint's is refused, not compared
    let err = client.query("SELECT * FROM hybrid_search('phone', model => 'other-model')", &[]).unwrap_err();
    assert_eq!(sqlstate(&err), "22023", "{err:?}");

    // the request carries the configured model name when one is set
    client.batch_execute("SET memoriesdb.embedding_model = 'stub-model'").unwrap();
    client.query_one("SELECT embed_text('tea')", &[]).unwrap();
    let last = stub.requests.lock().unwrap().last().cloned().unwrap();
    let last: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!((last["model"].as_str(), last["input"][0].as_str()), (Some("stub-model"), Some("tea")));
}

#[test]
fn an_unconfigured_unreachable_or_silent_endpoint_is_a_clear_error() {
    let db = TestDb::new();
    let mut client = db.connect();
    let err = client.query_one("SELECT embed_text('x')", &[]).unwrap_err();
    assert_eq!(sqlstate(&err), "55000", "{err:?}");
    assert!(format!("{err:?}").contains("memoriesdb.embedding_url"), "the hint names the setting: {err:?}");
    let err = client.query("SELECT * FROM semantic_search('x')", &[]).unwrap_err();
    assert_eq!(sqlstate(&err), "55000");

    let mut admin = db.admin();
    let set = |admin: &mut postgres::Client, url: &str| {
        admin.batch_execute(&format!("ALTER DATABASE {} SET memoriesdb.embedding_url = '{url}'", db.name)).unwrap();
    };

    // nobody listens
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    set(&mut admin, &format!("http://127.0.0.1:{closed_port}/v1/embeddings"));
    let err = db.connect().query_one("SELECT embed_text('x')", &[]).unwrap_err();
    assert_eq!(sqlstate(&err), "08001", "{err:?}");

    // https is not spoken by the backend
    set(&mut admin, "https://api.example.com/v1/embeddings");
    let err = db.connect().query_one("SELECT embed_text('x')", &[]).unwrap_err();
    assert_eq!(sqlstate(&err), "22023", "{err:?}");

    // a silent endpoint: the setting's timeout, statement_timeout and a cancel request all end the wait
    let silent = Stub::start(Arc::new(|_: &str| None));
    set(&mut admin, &silent.url());
    let mut client = db.connect();
    client.batch_execute("SET memoriesdb.embedding_timeout = 300").unwrap();
    let started = std::time::Instant::now();
    let err = client.query_one("SELECT embed_text('x')", &[]).unwrap_err();
    assert_eq!(sqlstate(&err), "57014", "{err:?}");
    assert!(format!("{err:?}").contains("did not answer within 300 ms"), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));

    client.batch_execute("SET memoriesdb.embedding_timeout = 60000; SET statement_timeout = 300").unwrap();
    let err = client.query_one("SELECT embed_text('x')", &[]).unwrap_err();
    assert_eq!(sqlstate(&err), "57014", "{err:?}");
    assert!(format!("{err:?}").contains("statement timeout"), "{err:?}");

    client.batch_execute("RESET statement_timeout").unwrap();
    let cancel = client.cancel_token();
    let canceller = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        cancel.cancel_query(postgres::NoTls).unwrap();
    });
    let started = std::time::Instant::now();
    let err = client.query_one("SELECT * FROM hybrid_search('x')", &[]).unwrap_err();
    canceller.join().unwrap();
    assert_eq!(sqlstate(&err), "57014", "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "the cancel request was not seen for {:?}", started.elapsed());
    // the backend is fine afterwards
    assert_eq!(client.query_one("SELECT 1", &[]).unwrap().get::<_, i32>(0), 1);
}

#[test]
fn an_endpoint_that_answers_badly_is_a_clear_error() {
    let db = TestDb::new();
    let mut admin = db.admin();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("an error", http("500 Internal Server Error", r#"{"error":{"message":"model exploded"}}"#), "model exploded"),
        ("rate limited", http("429 Too Many Requests", "slow down"), "HTTP 429"),
        ("not JSON", http("200 OK", "<html>hello</html>"), "not JSON"),
        ("no embedding", http("200 OK", r#"{"data":[],"model":"m"}"#), "data[0].embedding"),
        ("an empty embedding", http("200 OK", r#"{"data":[{"embedding":[]}],"model":"m"}"#), "0 dimensions"),
        ("not numbers", http("200 OK", r#"{"data":[{"embedding":[1,"x",3]}],"model":"m"}"#), "finite numbers"),
        ("no model", http("200 OK", r#"{"data":[{"embedding":[1,2,3]}]}"#), "which model"),
        ("not HTTP", b"SSH-2.0-OpenSSH_9.2\r\n\r\n".to_vec(), "valid HTTP"),
        ("cut short", b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"data\"".to_vec(), "valid HTTP"),
    ];
    for (what, answer, expected) in cases {
        let answer = Arc::new(answer);
        let stub = Stub::start(Arc::new(move |_: &str| Some(answer.to_vec())));
        admin.batch_execute(&format!("ALTER DATABASE {} SET memoriesdb.embedding_url = '{}'", db.name, stub.url())).unwrap();
        let err = db.connect().query_one("SELECT embed_text('x')", &[]).unwrap_err();
        assert_eq!(sqlstate(&err), "58000", "{what}: {err:?}");
        assert!(format!("{err:?}").contains(expected), "{what}: expected {expected:?} in {err:?}");
    }

    // the zero vector has no direction: refused as it is from a caller (22023), by every search
    let zero = Stub::start(Arc::new(|_: &str| Some(http("200 OK", r#"{"data":[{"embedding":[0,0,0]}],"model":"m"}"#))));
    admin.batch_execute(&format!("ALTER DATABASE {} SET memoriesdb.embedding_url = '{}'", db.name, zero.url())).unwrap();
    for search in ["SELECT * FROM semantic_search('x')", "SELECT * FROM hybrid_search('x')"] {
        let err = db.connect().query(search, &[]).unwrap_err();
        assert_eq!(sqlstate(&err), "22023", "{search}: {err:?}");
    }

    // a chunked answer is read whole
    let chunked = Stub::start(Arc::new(|_: &str| {
        let body = r#"{"data":[{"embedding":[0.5,0.5]}],"model":"m"}"#;
        let (first, second) = body.split_at(10);
        Some(
            format!(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{first}\r\n{:x}\r\n{second}\r\n0\r\n\r\n",
                first.len(),
                second.len()
            )
            .into_bytes(),
        )
    }));
    admin.batch_execute(&format!("ALTER DATABASE {} SET memoriesdb.embedding_url = '{}'", db.name, chunked.url())).unwrap();
    let embedded: String = db.connect().query_one("SELECT embed_text('x')::text", &[]).unwrap().get(0);
    assert_eq!(embedded, "[0.5,0.5]");
}

/// A tenant cannot choose where the database server connects: the setting is superuser-only,
/// whether set before or after the library is loaded in the session.
#[test]
fn a_tenant_cannot_redirect_the_endpoint() {
    let configured = openai_stub("stub-model");
    let attacker = openai_stub("attacker-model");
    let (db, _) = database_with_embeddings(&configured.url());

    // before the library is loaded: a placeholder, discarded with a warning when it loads
    let mut client = db.connect();
    client.batch_execute(&format!("SET memoriesdb.embedding_url = '{}'", attacker.url())).unwrap();
    client.query_one("SELECT embed_text('phone')", &[]).unwrap();
    // after: refused outright
    let err = client.batch_execute(&format!("SET memoriesdb.embedding_url = '{}'", attacker.url())).unwrap_err();
    assert_eq!(sqlstate(&err), "42501", "{err:?}");
    let err = client.query_one(&format!("SELECT set_config('memoriesdb.embedding_url', '{}', false)", attacker.url()), &[]).unwrap_err();
    assert_eq!(sqlstate(&err), "42501", "{err:?}");
    client.query("SELECT * FROM hybrid_search('phone')", &[]).unwrap();

    // nor see where it points (an internal address)
    let err = client.query_one("SHOW memoriesdb.embedding_url", &[]).unwrap_err();
    assert_eq!(sqlstate(&err), "42501", "{err:?}");
    let shown: Option<String> =
        client.query_one("SELECT current_setting('memoriesdb.embedding_url', true)", &[]).map(|r| r.get(0)).unwrap_or(None);
    assert_eq!(shown, None);

    assert_eq!(attacker.request_count(), 0, "the attacker's endpoint was called");
    assert!(configured.request_count() >= 2);
}
