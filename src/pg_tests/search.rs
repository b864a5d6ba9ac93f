//! Full-text, vector and hybrid search, traversal and the embedding queue on known data.

#[pgrx::pg_schema]
mod tests {
    use crate::pg_tests::{one, uuid_of};
    use pgrx::prelude::*;

    fn memory(content: &str, embedding: &str) -> String {
        uuid_of(&format!(
            "INSERT INTO memories (content, content_embedding) VALUES ('{content}', '{embedding}') RETURNING id"
        ))
    }

    fn ids(sql: &str) -> Vec<String> {
        // read-write SPI: sees everything the test did before (see `one`)
        Spi::connect_mut(|c| {
            c.update(sql, None, &[])
                .unwrap()
                .map(|row| row.get::<pgrx::Uuid>(1).unwrap().unwrap().to_string())
                .collect()
        })
    }

    #[pg_test]
    fn full_text_search_understands_web_search_syntax() {
        let a = memory("the quick brown fox jumps", "[1,0,0]");
        let b = memory("a brown dog sleeps", "[1,0,0]");
        let c = memory("quick thinking saves the day", "[1,0,0]");
        assert_eq!(ids("SELECT id FROM search_memories('\"quick brown\"')"), vec![a.clone()]);
        let mut either = ids("SELECT id FROM search_memories('fox or dog')");
        either.sort();
        let mut expected = vec![a.clone(), b.clone()];
        expected.sort();
        assert_eq!(either, expected);
        assert_eq!(ids("SELECT id FROM search_memories('quick -brown')"), vec![c.clone()]);
        // stemming (english by default): "jumping" finds "jumps"
        assert_eq!(ids("SELECT id FROM search_memories('jumping')"), vec![a.clone()]);
        // anything a user types is accepted; no searchable words means no rows
        assert_eq!(one::<i64>("SELECT count(*) FROM search_memories('&&& ((( !!! ''')"), 0);
        assert_eq!(one::<i64>("SELECT count(*) FROM search_memories('')"), 0);
        // the snippet highlights the match
        let snippet = one::<String>("SELECT snippet FROM search_memories('dog')");
        assert!(snippet.contains("<b>dog</b>"), "{snippet}");
        // filters: kind and metadata
        Spi::run(&format!("UPDATE memories SET _metadata = '{{\"topic\": \"pets\"}}' WHERE id = '{b}'")).unwrap();
        assert_eq!(ids("SELECT id FROM search_memories('brown', metadata_filter => '{\"topic\": \"pets\"}')"), vec![b]);
        assert_eq!(one::<i64>("SELECT count(*) FROM search_memories('brown', kind_filter => 'message')"), 0);
    }

    #[pg_test]
    fn search_within_a_session_sees_exactly_its_branch() {
        let root = uuid_of("SELECT create_session('root')");
        let mut root_messages = Vec::new();
        for i in 1..=4 {
            root_messages.push(uuid_of(&format!("SELECT add_message_to_session('{root}', 'user', 'alpha r{i}')")));
        }
        let child = uuid_of(&format!("SELECT fork_session('{root}', 'child', '{{}}', '{}')", root_messages[1]));
        let f3 = uuid_of(&format!("SELECT add_message_to_session('{child}', 'user', 'alpha f3')"));
        let grandchild = uuid_of(&format!("SELECT fork_session('{child}', 'grandchild')"));
        let g4 = uuid_of(&format!("SELECT add_message_to_session('{grandchild}', 'user', 'alpha g4')"));
        let sibling = uuid_of(&format!("SELECT fork_session('{root}', 'sibling', '{{}}', '{}')", root_messages[0]));
        uuid_of(&format!("SELECT add_message_to_session('{sibling}', 'user', 'alpha s2')"));
        Spi::run("UPDATE memories SET content_embedding = '[1,1,0]' WHERE kind = 'message'").unwrap();

        let mut expected = vec![root_messages[0].clone(), root_messages[1].clone(), f3, g4];
        expected.sort();
        let mut text = ids(&format!("SELECT id FROM search_memories('alpha', session_id => '{grandchild}', lim => 100)"));
        text.sort();
        assert_eq!(text, expected, "full-text: the branch's own messages and its inherited prefix, nothing else");
        let mut vector = ids(&format!("SELECT id FROM vector_search('[1,1,0]', 0.5, 100, '{grandchild}')"));
        vector.sort();
        assert_eq!(vector, expected, "vector: the same exact set");
        let mut hybrid = ids(&format!("SELECT id FROM hybrid_search('alpha', '[1,1,0]', 100, '{grandchild}')"));
        hybrid.sort();
        assert_eq!(hybrid, expected, "hybrid: the same exact set, no duplicates");
    }

    #[pg_test]
    fn vector_search_orders_by_cosine_similarity_and_applies_the_threshold() {
        let a = memory("a", "[1,0,0]");
        let c = memory("c", "[0.9,0.1,0]");
        let b = memory("b", "[0,1,0]");
        let _d = memory("d", "[-1,0,0]");
        let _other_dimension = memory("e", "[1,0,0,0]");
        assert_eq!(ids("SELECT id FROM vector_search('[1,0,0]', 0.5, 10)"), vec![a.clone(), c.clone()]);
        assert_eq!(ids("SELECT id FROM vector_search('[1,0,0]', -0.5, 3)"), vec![a.clone(), c, b]);
        let similarity = one::<f64>(&format!("SELECT similarity FROM vector_search('[2,0,0]', 0.7, 1) WHERE id = '{a}'"));
        assert!((similarity - 1.0).abs() < 1e-6, "{similarity}");
        // embeddings of another dimension never mix in
        assert_eq!(one::<i64>("SELECT count(*) FROM vector_search('[1,0,0,0]', -1, 10)"), 1);
    }

    #[pg_test]
    fn vector_search_with_a_one_percent_filter_still_fills_the_limit() {
        Spi::run(
            "SELECT setseed(0.42);
             INSERT INTO memories (content, content_embedding, _metadata)
             SELECT 'row ' || g,
                    (SELECT array_agg(random())::real[] FROM generate_series(1, 8) WHERE g > 0)::vector,
                    CASE WHEN g % 100 = 0 THEN '{\"tag\": \"rare\"}'::jsonb ELSE '{}'::jsonb END
               FROM generate_series(1, 2000) g;
             SELECT create_vector_index(8);",
        )
        .unwrap();
        let n = one::<i64>(
            "SELECT count(*) FROM vector_search(array_fill(0.5::real, ARRAY[8])::vector, -1, 10,
                                                 metadata_filter => '{\"tag\": \"rare\"}')",
        );
        assert_eq!(n, 10, "20 rows qualify, so lim = 10 must be filled");
    }

    #[pg_test]
    fn hybrid_search_fuses_ranks_as_computed_by_hand() {
        // text 'apple': b has two occurrences (rank 1), a one (rank 2); c and d do not match.
        // vector [1,0,0]: a (1), c (2), b (3), d (4).
        let a = memory("apple banana", "[1,0,0]");
        let b = memory("apple pie with apple", "[0,1,0]");
        let c = memory("cherry", "[0.9,0.1,0]");
        let d = memory("durian", "[-1,0,0]");
        // k = 60, equal weights: a = 1/62 + 1/61, b = 1/61 + 1/63, c = 1/62, d = 1/64
        assert_eq!(
            ids("SELECT id FROM hybrid_search('apple', '[1,0,0]', 10)"),
            vec![a.clone(), b.clone(), c.clone(), d.clone()]
        );
        let fused = one::<f64>(&format!("SELECT score FROM hybrid_search('apple', '[1,0,0]', 10) WHERE id = '{a}'"));
        assert!((fused - (1.0 / 62.0 + 1.0 / 61.0)).abs() < 1e-12, "{fused}");
        let ranks = one::<String>(&format!(
            "SELECT text_rank || '/' || vector_rank FROM hybrid_search('apple', '[1,0,0]', 10) WHERE id = '{b}'"
        ));
        assert_eq!(ranks, "1/3");
        let text_only = one::<String>(&format!(
            "SELECT coalesce(text_rank::text, 'none') || '/' || vector_rank FROM hybrid_search('apple', '[1,0,0]', 10) WHERE id = '{c}'"
        ));
        assert_eq!(text_only, "none/2", "a row found by one method only still appears");
        // text weighted 3x: b = 3/61 + 1/63 > a = 3/62 + 1/61
        assert_eq!(
            ids("SELECT id FROM hybrid_search('apple', '[1,0,0]', 2, text_weight => 3)"),
            vec![b, a]
        );
    }

    #[pg_test]
    fn traversal_visits_each_memory_once_with_depth_and_path() {
        let a = memory("a", "[1,0,0]");
        let b = memory("b", "[1,0,0]");
        let c = memory("c", "[1,0,0]");
        let d = memory("d", "[1,0,0]");
        for (s, t, r) in [(&a, &b, "leads_to"), (&a, &c, "leads_to"), (&b, &d, "leads_to"), (&c, &d, "cites")] {
            Spi::run(&format!("SELECT add_edge('{s}', '{t}', '{r}')")).unwrap();
        }
        let rows = one::<String>(&format!(
            "SELECT string_agg(content || depth || ':' || array_length(path, 1), ' ' ORDER BY depth, content)
               FROM traverse_memory_graph('{a}', max_depth => 5) t JOIN memories m ON m.id = t.memory_id"
        ));
        assert_eq!(rows, "a0:1 b1:2 c1:2 d2:3");
        let only_leads = one::<i64>(&format!(
            "SELECT count(*) FROM traverse_memory_graph('{c}', ARRAY['leads_to'], 'outgoing', 5)"
        ));
        assert_eq!(only_leads, 1, "c reaches d only by 'cites'");
        // undirected walk over the diamond terminates and visits each memory once
        let both = one::<i64>(&format!("SELECT count(*) FROM traverse_memory_graph('{d}', direction => 'both', max_depth => 10)"));
        assert_eq!(both, 4);
        let depth_limited = one::<i64>(&format!("SELECT count(*) FROM traverse_memory_graph('{a}', max_depth => 1)"));
        assert_eq!(depth_limited, 3);
        let path = one::<String>(&format!(
            "SELECT array_to_string(path, ',') FROM traverse_memory_graph('{a}', max_depth => 5) WHERE memory_id = '{d}'"
        ));
        assert_eq!(path, format!("{a},{b},{d}"));
    }

    #[pg_test(error = "direction must be 'outgoing', 'incoming' or 'both', got 'sideways'")]
    fn traversal_rejects_an_unknown_direction() {
        let a = memory("a", "[1,0,0]");
        Spi::run(&format!("SELECT * FROM traverse_memory_graph('{a}', direction => 'sideways')")).unwrap();
    }

    #[pg_test]
    fn embedding_queue_lifecycle() {
        let id = uuid_of("INSERT INTO memories (content) VALUES ('embed me') RETURNING id");
        let hash = one::<String>(&format!("SELECT content_hash FROM memories WHERE id = '{id}'"));
        assert_eq!(one::<i64>("SELECT count(*) FROM embedding_schedule WHERE status = 'pending'"), 1, "queued on insert");
        let claimed = ids("SELECT memory_id FROM claim_embedding_batch(10)");
        assert_eq!(claimed, vec![id.clone()]);
        assert_eq!(one::<i64>("SELECT count(*) FROM claim_embedding_batch(10)"), 0, "leased items are not handed out twice");
        // a stale result (wrong hash) is refused
        assert!(!one::<bool>(&format!("SELECT store_embedding('{id}', '[1,2,3,4,5]', 'test-model', 'not-the-hash')")));
        assert!(one::<bool>(&format!("SELECT store_embedding('{id}', '[1,2,3,4,5]', 'test-model', '{hash}')")));
        assert_eq!(one::<String>(&format!("SELECT status FROM embedding_schedule WHERE memory_id = '{id}'")), "done");
        // the new dimension queued its index, and processing the queue creates it
        assert_eq!(one::<i64>("SELECT count(*) FROM vindexing_schedule WHERE dimensions = 5 AND status = 'pending'"), 1);
        assert_eq!(one::<i32>("SELECT process_vindexing()"), 1);
        assert!(one::<bool>("SELECT to_regclass('memories_embedding_hnsw_5') IS NOT NULL"));
        // changing the content drops the embedding and queues the memory again
        Spi::run(&format!("UPDATE memories SET content = 'changed' WHERE id = '{id}'")).unwrap();
        assert!(one::<bool>(&format!("SELECT content_embedding IS NULL AND embedding_model IS NULL FROM memories WHERE id = '{id}'")));
        assert_eq!(one::<String>(&format!("SELECT status FROM embedding_schedule WHERE memory_id = '{id}'")), "pending");
        assert!(!one::<bool>(&format!("SELECT store_embedding('{id}', '[1,2,3,4,5]', 'test-model', '{hash}')")),
            "an embedding of the old content is stale");
        // failures back off and end in the dead-letter state
        ids("SELECT memory_id FROM claim_embedding_batch(10)");
        assert_eq!(one::<String>(&format!("SELECT fail_embedding('{id}', 'boom', 2)")), "failed");
        Spi::run(&format!("UPDATE embedding_schedule SET locked_until = now() - interval '1 second', attempts = 2 WHERE memory_id = '{id}'")).unwrap();
        assert_eq!(one::<String>(&format!("SELECT fail_embedding('{id}', 'boom again', 2)")), "dead");
        assert_eq!(one::<i64>("SELECT dead FROM embedding_queue_status"), 1);
        assert_eq!(one::<i64>("SELECT retry_dead_embeddings()"), 1);
        assert_eq!(one::<i64>("SELECT pending FROM embedding_queue_status"), 1);
    }
}
