//! Sessions, forks, hashing, cycles, audit.

#[pgrx::pg_schema]
mod tests {
    use crate::pg_tests::{one, session_with, transcript, uuid_of};
    use pgrx::prelude::*;

    #[pg_test]
    fn content_hash_is_sha256_and_cannot_be_forged() {
        let id = uuid_of("INSERT INTO memories (content, content_hash) VALUES ('abc', 'forged') RETURNING id");
        let hash = one::<String>(&format!("SELECT content_hash FROM memories WHERE id = '{id}'"));
        assert_eq!(hash, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        Spi::run(&format!("UPDATE memories SET content_hash = 'x' WHERE id = '{id}'")).unwrap();
        Spi::run(&format!("UPDATE memories SET content = '' WHERE id = '{id}'")).unwrap();
        let hash = one::<String>(&format!("SELECT content_hash FROM memories WHERE id = '{id}'"));
        assert_eq!(hash, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(one::<i64>("SELECT count(*) FROM verify_memory_integrity()"), 0);
    }

    #[pg_test]
    fn integrity_check_reports_tampering() {
        let id = uuid_of("INSERT INTO memories (content) VALUES ('original') RETURNING id");
        Spi::run("ALTER TABLE memories DISABLE TRIGGER memories_10_derive_fields").unwrap();
        Spi::run(&format!("UPDATE memories SET content = 'tampered' WHERE id = '{id}'")).unwrap();
        Spi::run("ALTER TABLE memories ENABLE TRIGGER memories_10_derive_fields").unwrap();
        let reported = uuid_of("SELECT memory_id FROM verify_memory_integrity()");
        assert_eq!(reported, id);
    }

    #[pg_test]
    fn transcript_orders_messages_and_includes_fields() {
        let s = session_with(3);
        assert_eq!(transcript(&s), "user: m1\nassistant: m2\nuser: m3");
        let positions = one::<String>(&format!(
            "SELECT string_agg(position::text || role, ',' ORDER BY position) FROM get_formatted_conversation('{s}')"
        ));
        assert_eq!(positions, "1user,2assistant,3user");
        assert!(Spi::get_one::<pgrx::JsonB>(&format!("SELECT metadata FROM get_formatted_conversation('{s}') LIMIT 1"))
            .unwrap()
            .is_none());
        let with_meta = one::<i64>(&format!(
            "SELECT count(*) FROM get_formatted_conversation('{s}', true) WHERE metadata = '{{}}'::jsonb"
        ));
        assert_eq!(with_meta, 3);
    }

    #[pg_test]
    fn fork_at_latest_and_at_earlier_message_and_forks_of_forks() {
        let s = session_with(4);
        let latest = uuid_of(&format!("SELECT fork_session('{s}', 'latest')"));
        assert_eq!(transcript(&latest), transcript(&s));

        let m2 = uuid_of(&format!("SELECT message_id FROM get_formatted_conversation('{s}') WHERE position = 2"));
        let early = uuid_of(&format!("SELECT fork_session('{s}', 'early', '{{\"parent_message_id\": \"{m2}\"}}')"));
        Spi::run(&format!("SELECT add_message_to_session('{early}', 'user', 'e3')")).unwrap();
        assert_eq!(transcript(&early), "user: m1\nassistant: m2\nuser: e3");
        // the parent is untouched and keeps growing independently
        Spi::run(&format!("SELECT add_message_to_session('{s}', 'user', 'm5')")).unwrap();
        assert_eq!(transcript(&s), "user: m1\nassistant: m2\nuser: m3\nassistant: m4\nuser: m5");
        assert_eq!(transcript(&latest), "user: m1\nassistant: m2\nuser: m3\nassistant: m4");

        // a fork of the fork, at an inherited message (m1, which lives in the root session)
        let m1 = uuid_of(&format!("SELECT message_id FROM get_formatted_conversation('{early}') WHERE position = 1"));
        let deeper = uuid_of(&format!("SELECT fork_session('{early}', 'deeper', '{{}}', '{m1}')"));
        Spi::run(&format!("SELECT add_message_to_session('{deeper}', 'assistant', 'd2')")).unwrap();
        assert_eq!(transcript(&deeper), "user: m1\nassistant: d2");
        let e3 = uuid_of(&format!("SELECT message_id FROM get_formatted_conversation('{early}') WHERE position = 3"));
        let deepest = uuid_of(&format!("SELECT fork_session('{early}', 'deepest', '{{}}', '{e3}')"));
        assert_eq!(transcript(&deepest), "user: m1\nassistant: m2\nuser: e3");
        // fork copied nothing: 5 + 1 + 1 messages in total
        assert_eq!(one::<i64>("SELECT count(*) FROM memories WHERE kind = 'message'"), 7);
        // and the graph says so
        let forked_from = one::<i64>(&format!(
            "SELECT count(*) FROM memory_graph_edges WHERE source_id = '{deeper}' AND target_id = '{early}' AND relation = 'forked_from'"
        ));
        assert_eq!(forked_from, 1);
        // ... derived from the session tables, not stored as a second copy
        assert_eq!(one::<i64>("SELECT count(*) FROM memory_edges"), 0);
        let belongs = one::<i64>(&format!(
            "SELECT count(*) FROM memory_graph WHERE id = '{s}' AND relation = 'belongs_to' AND direction = 'incoming'"
        ));
        assert_eq!(belongs, 5);
    }

    #[pg_test(error = "message 00000000-0000-0000-0000-000000000000 does not exist")]
    fn fork_at_unknown_message_fails() {
        let s = session_with(1);
        Spi::run(&format!("SELECT fork_session('{s}', 'x', '{{}}', '00000000-0000-0000-0000-000000000000')")).unwrap();
    }

    #[pg_test(error = "edge 00000000-0000-0000-0000-00000000000a -[related_to]-> 00000000-0000-0000-0000-00000000000a is a self-loop")]
    fn self_loop_is_rejected() {
        let id = uuid_of("INSERT INTO memories (id, content) VALUES ('00000000-0000-0000-0000-00000000000a', 'a') RETURNING id");
        Spi::run(&format!("INSERT INTO memory_edges (source_id, target_id, relation) VALUES ('{id}', '{id}', 'related_to')"))
            .unwrap();
    }

    #[pg_test(error = "edge 00000000-0000-0000-0000-00000000005e -[summarized_by]-> 00000000-0000-0000-0000-00000000003e would close a cycle")]
    fn implied_edges_count_in_the_cycle_check() {
        // the message belongs_to its session (an implied edge), so session -> message closes a cycle
        Spi::run(
            "INSERT INTO memories (id, kind, content) VALUES ('00000000-0000-0000-0000-00000000005e', 'session', 's');
             INSERT INTO memory_sessions (id) VALUES ('00000000-0000-0000-0000-00000000005e');
             INSERT INTO memories (id, kind, content, session_id, position, role)
             VALUES ('00000000-0000-0000-0000-00000000003e', 'message', 'm', '00000000-0000-0000-0000-00000000005e', 1, 'user');",
        )
        .unwrap();
        Spi::run(
            "SELECT add_edge('00000000-0000-0000-0000-00000000005e', '00000000-0000-0000-0000-00000000003e', 'summarized_by')",
        )
        .unwrap();
    }

    /// A 10,000-edge chain n0 -> n1 -> ... -> n10000, built in one statement.
    fn build_chain() {
        Spi::run(
            "CREATE TEMP TABLE chain AS
             SELECT g, ('00000000-0000-0000-0000-' || lpad(g::text, 12, '0'))::uuid AS id
               FROM generate_series(0, 10000) g;
             INSERT INTO memories (id, content) SELECT id, 'n' || g FROM chain;
             INSERT INTO memory_edges (source_id, target_id, relation)
             SELECT a.id, b.id, 'next' FROM chain a JOIN chain b ON b.g = a.g + 1;",
        )
        .unwrap();
        assert_eq!(one::<i64>("SELECT count(*) FROM memory_edges WHERE relation = 'next'"), 10000);
    }

    #[pg_test]
    fn long_chain_accepts_edges_along_its_direction() {
        build_chain();
        Spi::run(
            "INSERT INTO memory_edges (source_id, target_id, relation)
             SELECT (SELECT id FROM chain WHERE g = 0), (SELECT id FROM chain WHERE g = 10000), 'shortcut'",
        )
        .unwrap();
    }

    #[pg_test(error = "edge 00000000-0000-0000-0000-000000010000 -[next]-> 00000000-0000-0000-0000-000000000000 would close a cycle")]
    fn closing_a_10000_edge_cycle_is_rejected() {
        build_chain();
        Spi::run(
            "INSERT INTO memory_edges (source_id, target_id, relation)
             SELECT (SELECT id FROM chain WHERE g = 10000), (SELECT id FROM chain WHERE g = 0), 'next'",
        )
        .unwrap();
    }

    #[pg_test]
    fn audit_records_every_change_with_before_and_after() {
        let id = uuid_of("INSERT INTO memories (content) VALUES ('v1') RETURNING id");
        Spi::run(&format!("UPDATE memories SET content = 'v2' WHERE id = '{id}'")).unwrap();
        Spi::run(&format!("DELETE FROM memories WHERE id = '{id}'")).unwrap();
        let ops = one::<String>(&format!(
            "SELECT string_agg(operation || ':' || coalesce(old_row->>'content', '-') || '>' || coalesce(new_row->>'content', '-'), ' ' ORDER BY id)
               FROM audit_log WHERE row_id = '{id}'"
        ));
        assert_eq!(ops, "INSERT:->v1 UPDATE:v1>v2 DELETE:v2>-");
        let txids = one::<i64>(&format!("SELECT count(*) FROM audit_log WHERE row_id = '{id}' AND txid = txid_current()"));
        assert_eq!(txids, 3);
    }

    #[pg_test(error = "role must be a non-empty string, got ''")]
    fn empty_role_is_rejected() {
        let s = session_with(0);
        Spi::run(&format!("SELECT add_message_to_session('{s}', '', 'x')")).unwrap();
    }

    #[pg_test(error = "metadata must be a JSON object, got array [1]")]
    fn non_object_metadata_is_rejected() {
        let s = session_with(0);
        Spi::run(&format!("SELECT add_message_to_session('{s}', 'user', 'x', '[1]')")).unwrap();
    }
}
