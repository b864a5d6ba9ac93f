//! Context for a prompt (get_context, add_session_summary, get_recent_messages) on a real
//! cluster: ordinary roles under row-level security, a grantee of a shared session, forks, a
//! stranger, expired messages and bad input.

use memoriesdb_integration_tests::{error_shape, expect_error, one, TestDb};
use postgres::Client;
use uuid::Uuid;

/// A context row: (ordinal, section, content, position, tokens, details).
type Item = (i32, String, String, Option<i64>, i32, Option<serde_json::Value>);

fn context(c: &mut Client, call: &str) -> Vec<Item> {
    let sql = format!("SELECT ordinal, section, content, position, tokens, details FROM {call}");
    c.query(&sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {}", error_shape(&e, &[])))
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
        .collect()
}

fn sections(items: &[Item]) -> Vec<(String, String)> {
    items.iter().map(|i| (i.1.clone(), i.2.clone())).collect()
}

fn s(section: &str, content: &str) -> (String, String) {
    (section.to_string(), content.to_string())
}

/// A session of `c`'s with these messages (alternating user and assistant).
fn conversation(c: &mut Client, messages: &[&str]) -> Uuid {
    let session: Uuid = one(c, "SELECT create_session('trip')");
    for (i, m) in messages.iter().enumerate() {
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        c.execute("SELECT add_message_to_session($1, $2, $3)", &[&session, &role, m]).unwrap();
    }
    session
}

const TRIP: [&str; 5] = [
    "I want to plan a trip to Lisbon in May",
    "Lisbon in May is lovely. Any budget?",
    "Around 2000 euros, and I hate early flights",
    "Noted: no early flights.",
    "Which hotels near the river would you suggest?",
];

#[test]
fn the_context_holds_the_latest_turns_relevant_facts_and_memories_and_a_summary_within_the_budget() {
    let db = TestDb::new();
    let mut alice = db.connect();
    let session = conversation(&mut alice, &TRIP);
    alice.batch_execute("SELECT remember_fact('alice', 'alice hates early flights', 0.9)").unwrap();
    alice.batch_execute("SELECT remember_fact('alice', 'alice likes hotels by the river', 0.7)").unwrap();
    alice
        .batch_execute(
            "INSERT INTO memories (kind, content, importance) VALUES
               ('preference', 'a river view matters more than the price', 0.9),
               ('memory', 'the dentist is on tuesday', 0.5)",
        )
        .unwrap();
    let call = |options: &str| format!("get_context('{session}'{options})");

    // everything fits: facts, memories, then the whole transcript in order
    let items = context(&mut alice, &call(""));
    assert_eq!(
        sections(&items),
        vec![
            s("fact", "alice likes hotels by the river"),
            s("memory", "a river view matters more than the price"),
            s("message", TRIP[0]),
            s("message", TRIP[1]),
            s("message", TRIP[2]),
            s("message", TRIP[3]),
            s("message", TRIP[4]),
        ],
        "relevant to the latest user turn (river, hotels); the dentist is not"
    );
    assert_eq!(items.iter().map(|i| i.0).collect::<Vec<_>>(), (1..=7).collect::<Vec<_>>(), "ordinals");
    let fact = &items[0].5.as_ref().expect("a fact has details");
    assert_eq!((fact["subject"].as_str(), fact["confidence"].as_f64()), (Some("alice"), Some(0.7)));
    for item in &items {
        let expected: i32 = one(&mut alice, &format!("SELECT estimate_tokens($${}$$)", item.2));
        assert_eq!(item.4, expected, "tokens of {}", item.2);
    }

    // an explicit query; facts only
    let items = context(&mut alice, &call(", query => 'early flights', memories_limit => 0, last_n => 1"));
    assert_eq!(sections(&items), vec![s("fact", "alice hates early flights"), s("message", TRIP[4])]);

    // a tight budget: the latest turn first, then what fits, never more than the budget
    for budget in [5, 16, 20, 31, 40, 60, 80, 100] {
        let items = context(&mut alice, &call(&format!(", max_tokens => {budget}")));
        let spent: i32 = items.iter().map(|i| i.4).sum();
        assert!(spent <= budget, "{budget}: {spent} tokens: {items:?}");
        if budget >= 16 {
            assert_eq!(items.last().unwrap().2, TRIP[4], "{budget}: the latest turn is in: {items:?}");
        }
        // the messages are the newest ones, without holes
        let positions: Vec<i64> = items.iter().filter(|i| i.1 == "message").filter_map(|i| i.3).collect();
        assert!(positions.windows(2).all(|w| w[1] == w[0] + 1), "{budget}: {positions:?}");
        assert!(positions.last().is_none_or(|p| *p == 5));
    }
    assert!(context(&mut alice, &call(", max_tokens => 5")).is_empty(), "nothing fits in 5 tokens");

    // a summary of the first three messages stands in for them
    let summary: Uuid = one(
        &mut alice,
        &format!("SELECT add_session_summary('{session}', 'Alice plans a May trip to Lisbon for 2000 euros.', 3)"),
    );
    let items = context(&mut alice, &call(", facts_limit => 0, memories_limit => 0"));
    assert_eq!(
        sections(&items),
        vec![s("summary", "Alice plans a May trip to Lisbon for 2000 euros."), s("message", TRIP[3]), s("message", TRIP[4])]
    );
    assert_eq!(items[0].3, Some(3), "a summary's position is the last it covers");
    assert_eq!(one::<String>(&mut alice, &format!("SELECT kind FROM memories WHERE id = '{summary}'")), "summary");
    // last_n counts messages; the summary still comes
    let items = context(&mut alice, &call(", facts_limit => 0, memories_limit => 0, last_n => 1"));
    assert_eq!(sections(&items), vec![s("summary", "Alice plans a May trip to Lisbon for 2000 euros."), s("message", TRIP[4])]);
    // a summary that does not fit is left out, and the messages it covers come back as they fit
    // (the latest summary of the furthest reach is the one used)
    let long = "a".repeat(100);
    alice.batch_execute(&format!("SELECT add_session_summary('{session}', '{long}', 3)")).unwrap();
    let items = context(&mut alice, &call(", facts_limit => 0, memories_limit => 0, max_tokens => 60"));
    assert_eq!(sections(&items), vec![s("summary", &long), s("message", TRIP[3]), s("message", TRIP[4])]);
    let items = context(&mut alice, &call(", facts_limit => 0, memories_limit => 0, max_tokens => 44"));
    assert_eq!(sections(&items), vec![s("message", TRIP[2]), s("message", TRIP[3]), s("message", TRIP[4])]);
}

#[test]
fn forks_grantees_and_strangers_see_the_context_their_reads_allow() {
    let db = TestDb::new();
    let mut alice = db.connect();
    let (bob_role, bob_user) = db.extra_role("bob");
    let mut bob = db.connect_as(&bob_role);
    let (stranger_role, _) = db.extra_role("stranger");
    let mut stranger = db.connect_as(&stranger_role);
    let session = conversation(&mut alice, &TRIP);
    alice.batch_execute(&format!("SELECT add_session_summary('{session}', 'the first three turns', 3)")).unwrap();
    alice.batch_execute(&format!("SELECT add_session_summary('{session}', 'the first five turns', 5)")).unwrap();
    alice.batch_execute("SELECT remember_fact('alice', 'alice likes hotels by the river', 0.7)").unwrap();

    // a fork at message 4 inherits the summary up to 3 (its transcript shares 1..4), not the one to 5
    let fork: Uuid = one(&mut alice, &format!("SELECT fork_session('{session}', 'fork', '{{}}', (SELECT message_id FROM get_formatted_conversation('{session}') WHERE position = 4))"));
    alice.execute("SELECT add_message_to_session($1, 'user', 'and hotels near the castle?')", &[&fork]).unwrap();
    let items = context(&mut alice, &format!("get_context('{fork}', facts_limit => 0, memories_limit => 0)"));
    assert_eq!(
        sections(&items),
        vec![s("summary", "the first three turns"), s("message", TRIP[3]), s("message", "and hotels near the castle?")]
    );
    // (in the session itself, the summary up to 5 covers the latest message: the one up to 3 is used)
    let items = context(&mut alice, &format!("get_context('{session}', facts_limit => 0, memories_limit => 0)"));
    assert_eq!(items[0].2, "the first three turns");

    // bob, with the session shared: its messages, but not alice's facts or summaries (hers alone)
    alice.batch_execute(&format!("SELECT share_memory('{session}', '{bob_user}')")).unwrap();
    let items = context(&mut bob, &format!("get_context('{session}')"));
    assert_eq!(sections(&items), TRIP.iter().map(|m| s("message", m)).collect::<Vec<_>>());
    // bob may summarise what he can read, for himself
    bob.batch_execute(&format!("SELECT add_session_summary('{session}', 'bob''s summary', 2)")).unwrap();
    let items = context(&mut bob, &format!("get_context('{session}', last_n => 2)"));
    assert_eq!(sections(&items), vec![s("summary", "bob's summary"), s("message", TRIP[3]), s("message", TRIP[4])]);
    let items = context(&mut alice, &format!("get_context('{session}', facts_limit => 0, memories_limit => 0)"));
    assert_eq!(items[0].2, "the first three turns", "bob's summary is not alice's");

    // a grantee of a fork alone sees a prefix of its ancestor, and must learn nothing more of it:
    // the ancestor "does not exist" for summaries, whatever position is asked
    let (carol_role, carol_user) = db.extra_role("carol");
    let mut carol = db.connect_as(&carol_role);
    alice.batch_execute(&format!("SELECT share_memory('{fork}', '{carol_user}')")).unwrap();
    for upto in [1, 5, 100000] {
        expect_error(&mut carol, &format!("SELECT add_session_summary('{session}', 'x', {upto})"), "P0002");
    }
    // a stranger: the session does not exist, for every function
    for sql in [
        format!("SELECT * FROM get_context('{session}')"),
        format!("SELECT * FROM get_recent_messages('{session}')"),
        format!("SELECT add_session_summary('{session}', 'x', 1)"),
    ] {
        expect_error(&mut stranger, &sql, "P0002");
    }
    // an expired message is gone from the context too, for everyone
    let mut admin = db.admin();
    admin
        .batch_execute(&format!(
            "UPDATE memoriesdb.memories SET expires_at = now() - interval '1 second' WHERE session_id = '{session}' AND position = 5"
        ))
        .unwrap();
    for c in [&mut alice, &mut bob] {
        let items = context(c, &format!("get_context('{session}', facts_limit => 0, memories_limit => 0, last_n => 1)"));
        assert_eq!(items.last().unwrap().2, TRIP[3]);
    }
    let latest: String = one(&mut admin, &format!("SELECT content FROM memoriesdb.get_recent_messages('{session}', 1)"));
    assert_eq!(latest, TRIP[3], "for a superuser too");
}

#[test]
fn recent_messages_and_context_arguments_are_checked() {
    let db = TestDb::new();
    let mut alice = db.connect();
    let session = conversation(&mut alice, &TRIP);
    let positions = |c: &mut Client, sql: &str| -> Vec<i64> {
        c.query(sql, &[]).unwrap().iter().map(|r| r.get(0)).collect()
    };
    assert_eq!(positions(&mut alice, &format!("SELECT position FROM get_recent_messages('{session}', 2)")), vec![4, 5]);
    assert_eq!(
        positions(&mut alice, &format!("SELECT position FROM get_recent_messages('{session}', 2, before_position => 4)")),
        vec![2, 3],
        "scrolling back"
    );
    assert_eq!(
        positions(&mut alice, &format!("SELECT position FROM get_recent_messages('{session}', 10, after_position => 3)")),
        vec![4, 5]
    );
    for (sql, state) in [
        (format!("SELECT * FROM get_recent_messages('{session}', NULL)"), "22004"),
        (format!("SELECT * FROM get_recent_messages('{session}', 0)"), "22023"),
        (format!("SELECT * FROM get_recent_messages('{session}', 10001)"), "22023"),
        ("SELECT * FROM get_recent_messages(NULL)".into(), "22004"),
        ("SELECT * FROM get_context(NULL)".into(), "22004"),
        (format!("SELECT * FROM get_context('{}')", Uuid::new_v4()), "P0002"),
        (format!("SELECT * FROM get_context('{session}', max_tokens => 0)"), "22023"),
        (format!("SELECT * FROM get_context('{session}', max_tokens => NULL)"), "22023"),
        (format!("SELECT * FROM get_context('{session}', last_n => 0)"), "22023"),
        (format!("SELECT * FROM get_context('{session}', facts_limit => -1)"), "22023"),
        (format!("SELECT * FROM get_context('{session}', memories_limit => 101)"), "22023"),
        (format!("SELECT * FROM get_context('{session}', semantic => NULL)"), "22004"),
        (format!("SELECT * FROM get_context('{session}', importance_weight => 2)"), "22023"),
        // semantic retrieval needs the embedding endpoint (none is configured here)
        (format!("SELECT * FROM get_context('{session}', semantic => true)"), "55000"),
        (format!("SELECT add_session_summary('{session}', 'x', 0)"), "22023"),
        (format!("SELECT add_session_summary('{session}', 'x', 6)"), "22023"),
        (format!("SELECT add_session_summary('{session}', '  ', 1)"), "22023"),
        (format!("SELECT add_session_summary('{session}', NULL, 1)"), "22004"),
        (format!("SELECT add_session_summary('{session}', 'x', 1, '[1]')"), "22023"),
    ] {
        expect_error(&mut alice, &sql, state);
    }
    // nothing half-written by the refused summaries
    assert_eq!(one::<i64>(&mut alice, "SELECT count(*) FROM memories WHERE kind = 'summary'"), 0);
    assert_eq!(one::<i64>(&mut alice, "SELECT count(*) FROM memory_summaries"), 0);
    // queries of any text work: punctuation, operators, only stop words, nothing searchable
    for query in ["\"quoted\" -minus or", "the and of", "!!! ???", "", "émigré naïve 東京"] {
        alice.execute("SELECT count(*) FROM get_context($1, query => $2)", &[&session, &query]).unwrap();
    }
}
