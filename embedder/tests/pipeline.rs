//! The embedder against a real cluster (the one scripts/test.sh starts): it fills the queue,
//! searches in plain words find the right messages, edits are re-embedded, deletions mid-flight
//! are skipped, an OpenAI-compatible service that fails in every way loses nothing and stores
//! nothing twice, and two embedders — one killed with SIGKILL in the middle of a batch — leave
//! every memory with exactly one current embedding.

mod support;

use memoriesdb_integration_tests::postgres::Client;
use memoriesdb_integration_tests::TestDb;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use support::{model_dir, Embedder};

/// A test database and a worker role (memoriesdb_worker) for the embedder to log in as.
fn database() -> (TestDb, String) {
    let db = TestDb::new();
    let worker = format!("{}_embedder", db.role);
    db.admin().batch_execute(&format!("DROP ROLE IF EXISTS {worker}; CREATE ROLE {worker} LOGIN NOSUPERUSER")).unwrap();
    db.grant("memoriesdb_worker", &worker);
    let url = db.url_for_db(&worker, &db.name, "");
    (db, url)
}

/// (waiting, done, dead) of the embedding queue.
fn queue(admin: &mut Client) -> (i64, i64, i64) {
    let row = admin
        .query_one("SELECT pending + processing + failed, done, dead FROM memoriesdb.embedding_queue_status", &[])
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

/// Wait until nothing waits in the queue and `done` items are done.
fn wait_for_queue(admin: &mut Client, done: i64, embedders: &[&Embedder], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let (waiting, finished, dead) = queue(admin);
        if waiting == 0 && finished >= done {
            return;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = embedders.iter().map(|e| e.log_text()).collect();
            panic!("queue not drained: {waiting} waiting, {finished} done, {dead} dead\n{}", logs.join("\n---\n"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn local_embedder(database_url: &str, extra: &[&str]) -> Embedder {
    let dir = model_dir();
    let mut args = vec!["--model-dir", dir.to_str().unwrap(), "--database-url", database_url, "--poll-interval", "200ms"];
    args.extend_from_slice(extra);
    Embedder::start(&args)
}

/// Messages about distinct things, and for each, a question that means the same in other words.
const LABELLED: [(&str, &str); 32] = [
    ("The mobile app needs larger tap targets for the send button.", "how should we change the phone interface?"),
    ("I am allergic to peanuts and shellfish.", "which foods make me sick?"),
    ("My daughter Maya turns seven next month.", "how old is my kid going to be?"),
    ("Our flight to Lisbon departs at 6:40 in the morning on Friday.", "when does the plane to Portugal leave?"),
    ("The database migration failed because of a duplicate key.", "why did the schema upgrade break?"),
    ("I prefer dark mode in every application I use.", "what colour theme do I like for software?"),
    ("Bob will review the security section by Thursday.", "who is checking the safety part of the document?"),
    ("Quarterly revenue grew twelve percent year over year.", "how did sales do this quarter?"),
    ("The cat knocked a glass of water off the kitchen table.", "which animal spilled a drink in the kitchen?"),
    ("Remind me to call my mother tomorrow at noon.", "when should I phone mom?"),
    ("We chose PostgreSQL to store everything, including the job queue.", "which database did we pick?"),
    ("The office coffee machine has been broken since Monday.", "is the espresso maker at work fixed?"),
    ("I run five kilometres every morning before work.", "what exercise do I do daily?"),
    ("The wedding is in June at a vineyard near Florence.", "where and when is the marriage ceremony?"),
    ("Our team writes the storage engine in Rust.", "what language is our storage layer coded in?"),
    ("The heating bill doubled this winter.", "how much more are we paying to keep the house warm?"),
    ("Alice wants the onboarding flow for new users cut down to three steps.", "how many steps should new user onboarding have?"),
    ("My passport expires in March, I need to renew it.", "when is my travel document no longer valid?"),
    ("The garden tomatoes were ruined by a late frost.", "what happened to the vegetables outside?"),
    ("I'm learning to play the cello, lessons are on Wednesdays.", "which musical instrument am I studying?"),
    ("The server ran out of disk space during the backup.", "why did the backup job crash the machine?"),
    ("We adopted a rescue dog named Biscuit.", "what is the name of our new puppy?"),
    ("The landlord is raising the rent by two hundred euros.", "how much more will the apartment cost?"),
    ("My favourite novel is One Hundred Years of Solitude.", "which book do I like best?"),
    ("The meeting with the client moved from Tuesday to Wednesday afternoon.", "to which day was the client meeting rescheduled?"),
    ("I take my coffee black with no sugar.", "how do I drink my morning brew?"),
    ("The new laptop has thirty-two gigabytes of memory.", "how much RAM does the computer have?"),
    ("Our hiking trip to the Alps was cancelled because of snow.", "why didn't we go to the mountains?"),
    ("The kids' school starts at eight fifteen.", "what time do classes begin for the children?"),
    ("I'm vegetarian but I eat eggs and cheese.", "what is my diet?"),
    ("The invoice for the design agency is overdue by a month.", "which bill have we not paid yet?"),
    ("The electric car charges to eighty percent in thirty minutes.", "how fast does the vehicle battery fill up?"),
];

#[test]
fn messages_get_embeddings_and_plain_words_find_them() {
    let (db, worker_url) = database();
    let mut client = db.connect();
    let session: uuid::Uuid = client.query_one("SELECT create_session('Things to remember')", &[]).unwrap().get(0);
    let mut ids = Vec::new();
    for (content, _) in LABELLED {
        let id: uuid::Uuid =
            client.query_one("SELECT add_message_to_session($1, 'user', $2)", &[&session, &content]).unwrap().get(0);
        ids.push(id);
    }
    let embedder = local_embedder(&worker_url, &[]);
    let mut admin = db.admin();
    // the session's title is a memory too
    wait_for_queue(&mut admin, LABELLED.len() as i64 + 1, &[&embedder], Duration::from_secs(120));
    let unembedded: i64 = admin
        .query_one("SELECT count(*) FROM memoriesdb.memories WHERE content_embedding IS NULL OR embedding_model <> 'all-MiniLM-L6-v2'", &[])
        .unwrap()
        .get(0);
    assert_eq!(unembedded, 0);
    assert!(embedder.get("/readyz").0 == 200, "the worker is connected");
    // (the embedder runs process_vindexing() after storing a batch, in a transaction of its own:
    // the index can appear a moment after the queue is done)
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let indexed = loop {
        let indexed: i64 = admin
            .query_one("SELECT count(*) FROM pg_indexes WHERE indexname = 'memories_embedding_hnsw_384'", &[])
            .unwrap()
            .get(0);
        if indexed == 1 || std::time::Instant::now() > deadline {
            break indexed;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(indexed, 1, "process_vindexing() built the HNSW index for 384 dimensions");

    admin
        .batch_execute(&format!("ALTER DATABASE {} SET memoriesdb.embedding_url = '{}/v1/embeddings'", db.name, embedder.url()))
        .unwrap();
    let mut client = db.connect();
    let mut wrong = Vec::new();
    for (content, question) in LABELLED {
        let rows = client.query("SELECT content FROM hybrid_search($1, kind_filter => 'message', lim => 3)", &[&question]).unwrap();
        let first: Option<String> = rows.first().map(|row| row.get(0));
        if first.as_deref() != Some(content) {
            wrong.push(format!("{question:?} found {first:?}, not {content:?}"));
        }
        let semantic: Option<String> =
            client.query("SELECT content FROM semantic_search($1, threshold => 0)", &[&question]).unwrap().first().map(|r| r.get(0));
        if semantic.as_deref() != Some(content) {
            wrong.push(format!("semantic_search {question:?} found {semantic:?}, not {content:?}"));
        }
    }
    assert!(wrong.is_empty(), "{} of {} questions ranked another message first:\n{}", wrong.len(), LABELLED.len(), wrong.join("\n"));

    // an edit is re-embedded: the old question no longer finds it, a new one does
    client.execute("UPDATE memoriesdb.memories SET content = 'We bought a sailing boat and keep it in the harbour.' WHERE id = $1", &[&ids[0]]).unwrap();
    wait_for_queue(&mut admin, LABELLED.len() as i64 + 1, &[&embedder], Duration::from_secs(60));
    let first: uuid::Uuid = client
        .query_one("SELECT id FROM semantic_search('where is our yacht moored?', threshold => 0) LIMIT 1", &[])
        .unwrap()
        .get(0);
    assert_eq!(first, ids[0], "the edited message was not re-embedded:\n{}", embedder.log_text());
    assert!(embedder.metric("memoriesdb_embedder_stored_total") >= LABELLED.len() as f64 + 2.0);
    let depth = embedder.metric("memoriesdb_embedder_queue_depth");
    assert!(depth >= 0.0);
}

/// Content longer than the model reads is embedded in overlapping passages (memory_chunks): a
/// fact deep inside a long memory is found by meaning, each memory comes back once with the
/// passage that matched, and an edit replaces the passages (the old ones are never served).
#[test]
fn a_long_memory_is_found_by_a_passage_deep_inside_it() {
    let (db, worker_url) = database();
    let mut client = db.connect();
    // a long document (about 1,400 tokens: six windows) of sections on one thing each; the
    // one the question is about comes late
    let section = |sentence: &str| [sentence; 10].join(" ");
    let server_room = "Access to the server room. The server room on the second floor is locked at all times, and only \
        the IT team carries a key card for it. If the card reader fails, the spare key to the server room is kept in the \
        blue drawer under the reception desk. Whoever takes the spare key signs the key log at reception and brings the \
        key back the same day. Visitors to the server room are always accompanied by someone from IT.";
    let long = [
        section("The tomatoes in the community garden need watering twice a week during the summer."),
        section("Our quarterly picnic moved to the lake because the park was booked for a concert."),
        section("Somebody suggested a sourdough workshop, and half the team signed up immediately."),
        section("The weather forecast promised rain all weekend, so the hiking trip was postponed."),
        server_room.to_string(),
        section("A new coffee grinder arrived, and everyone agreed the espresso tastes better now."),
        section("The book club picked a long novel about sailors for the next three months."),
    ]
    .join("\n\n");
    let insert = |client: &mut Client, content: &str| -> uuid::Uuid {
        client
            .query_one("INSERT INTO memoriesdb.memories (content, created_by) VALUES ($1, memoriesdb.current_memory_user()) RETURNING id", &[&content])
            .unwrap()
            .get(0)
    };
    let long_id = insert(&mut client, &long);
    for decoy in ["We talked about where to store the office plants.", "The reception desk got a new lamp."] {
        insert(&mut client, decoy);
    }
    let embedder = local_embedder(&worker_url, &[]);
    let mut admin = db.admin();
    wait_for_queue(&mut admin, 3, &[&embedder], Duration::from_secs(120));

    let chunks = admin
        .query(
            "SELECT c.start_char, c.end_char, c.embedding = m.content_embedding AND c.chunk_index = 0, char_length(m.content)
               FROM memoriesdb.memory_chunks c JOIN memoriesdb.memories m ON m.id = c.memory_id
              WHERE c.memory_id = $1 AND c.content_hash = m.content_hash ORDER BY c.chunk_index",
            &[&long_id],
        )
        .unwrap();
    assert!(chunks.len() >= 4, "{} chunks of a {}-character memory", chunks.len(), long.chars().count());
    let offsets: Vec<(i32, i32)> = chunks.iter().map(|r| (r.get(0), r.get(1))).collect();
    let length: i32 = chunks[0].get(3);
    assert!(chunks[0].get::<_, bool>(2), "the first passage's embedding is the memory's own");
    assert_eq!((offsets[0].0, offsets.last().unwrap().1), (0, length), "the passages cover the content: {offsets:?}");
    assert!(offsets.windows(2).all(|w| w[1].0 > w[0].0 && w[1].0 < w[0].1), "consecutive passages overlap: {offsets:?}");
    let decoys_chunked: i64 = admin.query_one("SELECT count(*) FROM memoriesdb.memory_chunks WHERE memory_id <> $1", &[&long_id]).unwrap().get(0);
    assert_eq!(decoys_chunked, 0, "a short memory is one embedding, not chunks");

    admin
        .batch_execute(&format!("ALTER DATABASE {} SET memoriesdb.embedding_url = '{}/v1/embeddings'", db.name, embedder.url()))
        .unwrap();
    let mut client = db.connect();
    let question = "where can I find the key for the server room?";
    let found = client
        .query("SELECT id, substr(content, chunk_start + 1, chunk_end - chunk_start) FROM semantic_search($1, threshold => 0)", &[&question])
        .unwrap();
    let ids: Vec<uuid::Uuid> = found.iter().map(|r| r.get(0)).collect();
    assert_eq!(ids.first(), Some(&long_id), "the long memory is found first");
    assert_eq!(ids.len(), 3, "each memory once: {ids:?}");
    let passage: String = found[0].get(1);
    assert!(passage.contains("blue drawer"), "the passage that matched: {passage:?}");
    let hybrid = client
        .query_one("SELECT id, substr(content, chunk_start + 1, chunk_end - chunk_start) FROM hybrid_search($1) LIMIT 1", &[&question])
        .unwrap();
    assert_eq!(hybrid.get::<_, uuid::Uuid>(0), long_id);
    assert!(hybrid.get::<_, String>(1).contains("blue drawer"));

    // an edit: until the new content is embedded, the old passages are not served ...
    let mut transaction = client.transaction().unwrap();
    transaction.execute("UPDATE memoriesdb.memories SET content = 'A short note about lunch.' WHERE id = $1", &[&long_id]).unwrap();
    let stale: i64 = transaction
        .query_one("SELECT count(*) FROM semantic_search($1, threshold => 0) WHERE id = $2", &[&question, &long_id])
        .unwrap()
        .get(0);
    assert_eq!(stale, 0, "the edited memory is found through the passages of its old content");
    transaction.commit().unwrap();
    // ... and then they are replaced: the short content is one embedding
    wait_for_queue(&mut admin, 3, &[&embedder], Duration::from_secs(60));
    let left: i64 = admin.query_one("SELECT count(*) FROM memoriesdb.memory_chunks WHERE memory_id = $1", &[&long_id]).unwrap().get(0);
    assert_eq!(left, 0, "the old passages were not removed");
    let whole = client
        .query_one("SELECT chunk_start, chunk_end FROM semantic_search('lunch', threshold => 0) WHERE id = $1", &[&long_id])
        .unwrap();
    assert_eq!((whole.get::<_, i32>(0), whole.get::<_, i32>(1)), (0, 25), "a memory embedded whole matches as a whole");
}

/// An in-test HTTP server speaking OpenAI's /v1/embeddings, whose answer to the n-th request
/// (counting from 0) is chosen by `answer`: Some(raw HTTP) or None (never answer).
struct FlakyApi {
    port: u16,
    requests: Arc<AtomicUsize>,
    /// the Authorization header of every request ("" when none)
    authorizations: Arc<Mutex<Vec<String>>>,
}

type Answer = Arc<dyn Fn(usize, &serde_json::Value) -> Option<Vec<u8>> + Send + Sync>;

impl FlakyApi {
    fn start(answer: Answer) -> FlakyApi {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let authorizations = Arc::new(Mutex::new(Vec::new()));
        let (counter, seen) = (Arc::clone(&requests), Arc::clone(&authorizations));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (answer, counter, seen) = (Arc::clone(&answer), Arc::clone(&counter), Arc::clone(&seen));
                std::thread::spawn(move || handle(stream, &*answer, &counter, &seen));
            }
        });
        FlakyApi { port, requests, authorizations }
    }

    fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }
}

fn handle(
    mut stream: TcpStream,
    answer: &(dyn Fn(usize, &serde_json::Value) -> Option<Vec<u8>> + Send + Sync),
    counter: &AtomicUsize,
    authorizations: &Mutex<Vec<String>>,
) {
    loop {
        let mut bytes = Vec::new();
        let mut buffer = [0u8; 8192];
        let body = loop {
            match stream.read(&mut buffer) {
                Ok(0) | Err(_) => return,
                Ok(n) => bytes.extend_from_slice(&buffer[..n]),
            }
            let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
            let head = String::from_utf8_lossy(&bytes[..end]).to_lowercase();
            let length: usize =
                head.lines().find_map(|l| l.strip_prefix("content-length:")).map_or(0, |v| v.trim().parse().unwrap());
            if bytes.len() >= end + 4 + length {
                let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
                let authorization = head
                    .lines()
                    .find_map(|l| l.split_once(':').filter(|(name, _)| name.eq_ignore_ascii_case("authorization")).map(|(_, v)| v.trim().to_owned()))
                    .unwrap_or_default();
                authorizations.lock().unwrap().push(authorization);
                break serde_json::from_slice::<serde_json::Value>(&bytes[end + 4..end + 4 + length]).unwrap();
            }
        };
        let n = counter.fetch_add(1, Ordering::SeqCst);
        match answer(n, &body) {
            Some(reply) => {
                if stream.write_all(&reply).is_err() {
                    return;
                }
            }
            None => {
                std::thread::sleep(Duration::from_secs(30));
                return;
            }
        }
    }
}

fn http(status: &str, extra_headers: &str, body: &str) -> Vec<u8> {
    format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra_headers}\r\n{body}", body.len())
        .into_bytes()
}

/// A deterministic 8-dimensional embedding of a text (for checking what was stored).
fn fake_embedding(text: &str) -> Vec<f32> {
    let mut v = vec![0.1f32; 8];
    for (i, b) in text.bytes().enumerate() {
        v[i % 8] += f32::from(b) / 255.0;
    }
    v
}

fn ok_answer(request: &serde_json::Value) -> Vec<u8> {
    let data: Vec<serde_json::Value> = request["input"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, text)| serde_json::json!({"object": "embedding", "index": i, "embedding": fake_embedding(text.as_str().unwrap())}))
        .collect();
    http("200 OK", "", &serde_json::json!({"object": "list", "data": data, "model": "fake-8"}).to_string())
}

#[test]
fn an_openai_compatible_service_that_fails_every_way_loses_nothing_and_stores_nothing_twice() {
    let (db, worker_url) = database();
    let mut client = db.connect();
    let session: uuid::Uuid = client.query_one("SELECT create_session('flaky')", &[]).unwrap().get(0);
    let contents: Vec<String> = (0..20).map(|i| format!("message number {i} about topic {}", i * 7)).collect();
    let batch = serde_json::Value::Array(contents.iter().map(|c| serde_json::json!({"role": "user", "content": c})).collect());
    client.query("SELECT add_messages_to_session($1, $2)", &[&session, &batch]).unwrap();
    let mut admin = db.admin();

    // 429 with Retry-After, 500, silence past the timeout, malformed JSON, the wrong count, then good
    let api = FlakyApi::start(Arc::new(|n, request| match n {
        0 => Some(http("429 Too Many Requests", "Retry-After: 0\r\n", r#"{"error":{"message":"slow down"}}"#)),
        1 => Some(http("500 Internal Server Error", "", r#"{"error":{"message":"boom"}}"#)),
        2 => None,
        3 => Some(http("200 OK", "", "{\"data\": [")),
        4 => Some(http("200 OK", "", r#"{"data":[],"model":"fake-8"}"#)),
        _ => Some(ok_answer(request)),
    }));
    let base = api.base_url();
    let embedder = Embedder::start(&[
        "--backend", "openai", "--api-url", &base, "--api-model", "fake-8", "--api-timeout", "1s", "--api-retries", "10",
        "--database-url", &worker_url, "--poll-interval", "200ms",
    ]);
    wait_for_queue(&mut admin, contents.len() as i64 + 1, &[&embedder], Duration::from_secs(60));
    assert!(api.requests.load(Ordering::SeqCst) >= 6, "every failure was met");
    for content in &contents {
        let stored: String = admin
            .query_one("SELECT content_embedding::text FROM memoriesdb.memories WHERE content = $1 AND embedding_model = 'fake-8'", &[content])
            .unwrap()
            .get(0);
        let expected: Vec<String> = fake_embedding(content).iter().map(|x| x.to_string()).collect();
        assert_eq!(stored, format!("[{}]", expected.join(",")), "{content}");
    }
    // stored once each (an embedding store writes no audit row: the embedder counts its stores)
    let memories: i64 = admin.query_one("SELECT count(*) FROM memoriesdb.memories", &[]).unwrap().get(0);
    let stored = embedder.metric("memoriesdb_embedder_stored_total");
    assert_eq!(stored, memories as f64, "stores for {memories} memories\n{}", embedder.log_text());
    assert_eq!(embedder.metric("memoriesdb_embedder_stale_total"), 0.0);
    drop(embedder);

    // a service that always fails: retried with backoff, then dead (retry_dead_embeddings() revives)
    client.query_one("SELECT add_message_to_session($1, 'user', 'doomed')", &[&session]).unwrap();
    let down = FlakyApi::start(Arc::new(|_, _| Some(http("503 Service Unavailable", "", "down"))));
    let base = down.base_url();
    let embedder = Embedder::start(&[
        "--backend", "openai", "--api-url", &base, "--api-model", "fake-8", "--api-retries", "1", "--max-attempts", "2",
        "--database-url", &worker_url, "--poll-interval", "200ms",
    ]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let (status, error): (String, String) = loop {
        let row = admin
            .query_one(
                "SELECT q.status, coalesce(q.last_error, '') FROM memoriesdb.embedding_schedule q
                   JOIN memoriesdb.memories m ON m.id = q.memory_id WHERE m.content = 'doomed'",
                &[],
            )
            .unwrap();
        let status: String = row.get(0);
        if status == "dead" || Instant::now() > deadline {
            break (status, row.get(1));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status, "dead", "{}", embedder.log_text());
    assert!(error.contains("503"), "{error}");
    assert_eq!(down.requests.load(Ordering::SeqCst), 2, "one request per attempt, two attempts");
}

#[test]
fn a_memory_deleted_while_its_embedding_is_computed_is_skipped() {
    let (db, worker_url) = database();
    let mut client = db.connect();
    let session: uuid::Uuid = client.query_one("SELECT create_session('deleting')", &[]).unwrap().get(0);
    let mut admin = db.admin();
    let doomed: uuid::Uuid = client.query_one("SELECT add_message_to_session($1, 'user', 'delete me')", &[&session]).unwrap().get(0);

    // the service holds its answer until the test has deleted the memory
    let (asked, asked_rx) = mpsc::channel::<()>();
    let (go, go_rx) = mpsc::channel::<()>();
    let gate = Arc::new(Mutex::new((asked, go_rx)));
    let api = FlakyApi::start(Arc::new(move |_, request| {
        let gate = gate.lock().unwrap();
        let _ = gate.0.send(());
        let _ = gate.1.recv_timeout(Duration::from_secs(20));
        Some(ok_answer(request))
    }));
    let base = api.base_url();
    let embedder = Embedder::start(&[
        "--backend", "openai", "--api-url", &base, "--api-model", "fake-8", "--database-url", &worker_url, "--poll-interval", "200ms",
    ]);
    asked_rx.recv_timeout(Duration::from_secs(20)).expect("the embedder asked for the embedding");
    client.query_one("SELECT delete_memory($1)", &[&doomed]).unwrap();
    go.send(()).unwrap();

    // the next memory is embedded normally: the worker went on
    let _ = asked_rx.try_recv();
    let next: uuid::Uuid = client.query_one("SELECT add_message_to_session($1, 'user', 'keep me')", &[&session]).unwrap().get(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let _ = asked_rx.try_recv();
        let _ = go.send(());
        let done: bool = admin
            .query_one("SELECT content_embedding IS NOT NULL FROM memoriesdb.memories WHERE id = $1", &[&next])
            .unwrap()
            .get(0);
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "the worker stopped after the deletion:\n{}", embedder.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(embedder.metric("memoriesdb_embedder_deleted_total"), 1.0, "{}", embedder.log_text());
    assert!(!embedder.log_text().contains("ERROR"), "{}", embedder.log_text());
}

#[test]
fn two_embedders_and_a_sigkill_leave_every_memory_exactly_one_current_embedding() {
    let (db, worker_url) = database();
    let mut client = db.connect();
    let session: uuid::Uuid = client.query_one("SELECT create_session('many')", &[]).unwrap().get(0);
    let sentence = "the quick brown fox jumps over the lazy dog while the committee debates the budget ";
    let messages: Vec<serde_json::Value> =
        (0..300).map(|i| serde_json::json!({"role": "user", "content": format!("{i}: {}", sentence.repeat(3))})).collect();
    client.query("SELECT add_messages_to_session($1, $2)", &[&session, &serde_json::Value::Array(messages)]).unwrap();
    let mut admin = db.admin();

    let lease = ["--lease", "2s", "--claim-batch", "32"];
    let mut doomed = local_embedder(&worker_url, &lease);
    let survivor = local_embedder(&worker_url, &lease);
    // kill one in the middle of a batch: it has claimed, and stored part of the work at most
    let deadline = Instant::now() + Duration::from_secs(60);
    while doomed.metric("memoriesdb_embedder_claimed_total") < 1.0 {
        assert!(Instant::now() < deadline, "the first embedder claimed nothing:\n{}", doomed.log_text());
        std::thread::sleep(Duration::from_millis(5));
    }
    kill_9(&mut doomed);
    let (waiting, _, _) = queue(&mut admin);
    assert!(waiting > 0, "the kill came too late to test anything");

    wait_for_queue(&mut admin, 301, &[&survivor], Duration::from_secs(180));
    let row = admin
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE m.content_embedding IS NOT NULL AND m.embedding_model = 'all-MiniLM-L6-v2'),
                    count(*) FILTER (WHERE q.status = 'done' AND q.content_hash = m.content_hash)
               FROM memoriesdb.memories m JOIN memoriesdb.embedding_schedule q ON q.memory_id = m.id",
            &[],
        )
        .unwrap();
    let (all, embedded, done): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!((all, embedded, done), (301, 301, 301));
    // and each embedding is its content's (spot checks against the endpoint)
    for n in [0, 150, 299] {
        let content = format!("{n}: {}", sentence.repeat(3));
        let (status, body) = survivor.post("/v1/embeddings", serde_json::json!({"input": content}).to_string().as_bytes());
        assert_eq!(status, 200);
        let value: serde_json::Value = serde_json::from_str(&body).unwrap();
        let expected: Vec<f64> = value["data"][0]["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        let stored: String =
            admin.query_one("SELECT content_embedding::text FROM memoriesdb.memories WHERE content = $1", &[&content]).unwrap().get(0);
        let stored: Vec<f64> = serde_json::from_str(&stored).unwrap();
        let max_difference = stored.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(max_difference < 1e-5, "message {n}: {max_difference}");
    }
}

fn kill_9(embedder: &mut Embedder) {
    // Child::kill sends SIGKILL on Unix
    embedder.child.kill().unwrap();
    embedder.child.wait().unwrap();
}

#[test]
fn a_huge_message_and_a_poisoned_item_cannot_stop_the_worker() {
    let (db, worker_url) = database();
    let mut client = db.connect();
    let session: uuid::Uuid = client.query_one("SELECT create_session('huge')", &[]).unwrap().get(0);
    // 16 MB of short words: tokenised whole, this took the embedder's memory to gigabytes
    let huge: uuid::Uuid =
        client.query_one("SELECT add_message_to_session($1, 'user', repeat('a ', 8000000))", &[&session]).unwrap().get(0);
    let normal: uuid::Uuid = client.query_one("SELECT add_message_to_session($1, 'user', 'a normal message')", &[&session]).unwrap().get(0);
    // an item whose earlier claims never ended (as if embedders had died holding it)
    let poisoned: uuid::Uuid = client.query_one("SELECT add_message_to_session($1, 'user', 'poisoned')", &[&session]).unwrap().get(0);
    let mut admin = db.admin();
    admin
        .execute(
            "UPDATE memoriesdb.embedding_schedule SET status = 'processing', attempts = 9, locked_until = now() - interval '1 second'
              WHERE memory_id = $1",
            &[&poisoned],
        )
        .unwrap();

    let embedder = local_embedder(&worker_url, &["--max-attempts", "5"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = admin
            .query("SELECT memory_id, status, coalesce(last_error, '') FROM memoriesdb.embedding_schedule ORDER BY enqueued_at", &[])
            .unwrap();
        let status = |id: &uuid::Uuid| rows.iter().find(|r| r.get::<_, uuid::Uuid>(0) == *id).map(|r| r.get::<_, String>(1));
        if status(&huge).as_deref() == Some("done") && status(&normal).as_deref() == Some("done") && status(&poisoned).as_deref() == Some("dead") {
            let error: String = rows.iter().find(|r| r.get::<_, uuid::Uuid>(0) == poisoned).unwrap().get(2);
            assert!(error.contains("without finishing"), "{error}");
            break;
        }
        assert!(Instant::now() < deadline, "{rows:?}\n{}", embedder.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(embedder.rss_kib() < 1024 * 1024, "the embedder holds {} KiB", embedder.rss_kib());
    // its passages: as many as --max-chunks allows (64), from its beginning
    let (chunks, first, last): (i64, i32, i32) = admin
        .query_one("SELECT count(*), min(start_char), max(end_char) FROM memoriesdb.memory_chunks WHERE memory_id = $1", &[&huge])
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .unwrap();
    assert_eq!((chunks, first), (64, 0));
    assert!(last > 20000 && last < 40000, "64 windows of 254 tokens end at character {last}");
    // the huge message's embedding is that of its beginning, as sentence-transformers truncates
    let (status, body) = embedder.post("/v1/embeddings", serde_json::json!({"input": "a ".repeat(300)}).to_string().as_bytes());
    assert_eq!(status, 200);
    let expected: serde_json::Value = serde_json::from_str(&body).unwrap();
    let stored: String = admin.query_one("SELECT content_embedding::text FROM memoriesdb.memories WHERE id = $1", &[&huge]).unwrap().get(0);
    let stored: Vec<f64> = serde_json::from_str(&stored).unwrap();
    let expected: Vec<f64> = expected["data"][0]["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    let max_difference = stored.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(max_difference < 1e-5, "{max_difference}");
}

#[test]
fn the_openai_client_path_against_the_embedders_own_endpoint_stores_what_the_local_model_computes() {
    let (db, worker_url) = database();
    let mut client = db.connect();
    let session: uuid::Uuid = client.query_one("SELECT create_session('through the API')", &[]).unwrap().get(0);
    let contents = ["the phone layout needs bigger buttons", "we drink green tea at the office", "la réunion est jeudi"];
    for content in contents {
        client.query_one("SELECT add_message_to_session($1, 'user', $2)", &[&session, &content]).unwrap();
    }
    // one embedder serves the local model (no database); another works the queue through it,
    // as with any OpenAI-compatible service
    let dir = model_dir();
    let server = Embedder::start(&["--model-dir", dir.to_str().unwrap()]);
    let api = format!("{}/v1", server.url());
    let key_file = std::env::temp_dir().join(format!("memoriesdb-embedder-key-{}", std::process::id()));
    std::fs::write(&key_file, "sk-test-secret\n").unwrap();
    let worker = Embedder::start(&[
        "--backend", "openai", "--api-url", &api, "--api-model", "all-MiniLM-L6-v2", "--api-key-file", key_file.to_str().unwrap(),
        "--database-url", &worker_url, "--poll-interval", "200ms",
    ]);
    let mut admin = db.admin();
    wait_for_queue(&mut admin, contents.len() as i64 + 1, &[&worker, &server], Duration::from_secs(60));
    for content in contents {
        let (status, body) = server.post("/v1/embeddings", serde_json::json!({"input": content}).to_string().as_bytes());
        assert_eq!(status, 200);
        let expected: serde_json::Value = serde_json::from_str(&body).unwrap();
        let expected: Vec<f64> = expected["data"][0]["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        let row = admin
            .query_one("SELECT content_embedding::text, embedding_model FROM memoriesdb.memories WHERE content = $1", &[&content])
            .unwrap();
        let (stored, model): (String, String) = (row.get(0), row.get(1));
        assert_eq!(model, "all-MiniLM-L6-v2");
        let stored: Vec<f64> = serde_json::from_str(&stored).unwrap();
        let max_difference = stored.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(max_difference < 1e-6, "{content}: {max_difference}");
    }
    assert!(!worker.log_text().contains("sk-test-secret"), "the key was logged:\n{}", worker.log_text());
    let _ = std::fs::remove_file(&key_file);
    drop(worker);

    // the key goes to the service as a bearer token (and nowhere else)
    let keyed = FlakyApi::start(Arc::new(|_, request| Some(ok_answer(request))));
    std::fs::write(&key_file, "sk-other\n").unwrap();
    client.query_one("SELECT add_message_to_session($1, 'user', 'one more')", &[&session]).unwrap();
    let base = keyed.base_url();
    let worker = Embedder::start(&[
        "--backend", "openai", "--api-url", &base, "--api-model", "fake-8", "--api-key-file", key_file.to_str().unwrap(),
        "--database-url", &worker_url, "--poll-interval", "200ms",
    ]);
    wait_for_queue(&mut admin, contents.len() as i64 + 2, &[&worker], Duration::from_secs(60));
    let _ = std::fs::remove_file(&key_file);
    assert_eq!(keyed.authorizations.lock().unwrap().first().map(String::as_str), Some("Bearer sk-other"));
    assert!(!worker.log_text().contains("sk-other"));
}
