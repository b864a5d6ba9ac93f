-- add_messages_to_session(): several messages in one call. They land in array order at
-- consecutive positions, are hashed, audited and queued like single messages, and a bad element
-- anywhere in the batch writes nothing at all.
BEGIN;
SELECT plan(37);

\set unknown_id '00000000-0000-4000-8000-00000000dead'

SELECT has_function('add_messages_to_session', ARRAY['uuid', 'jsonb'], 'add_messages_to_session(uuid, jsonb) exists');
SELECT is(pg_get_function_arguments('add_messages_to_session(uuid,jsonb)'::regprocedure),
          'session_id uuid, messages jsonb', 'add_messages_to_session(session_id, messages)');
SELECT is(pg_get_function_result('add_messages_to_session(uuid,jsonb)'::regprocedure), 'SETOF uuid',
          'it returns the new message ids');

-- ---------------------------------------------------------------------------------------------
-- A batch after a single message
-- ---------------------------------------------------------------------------------------------
SELECT create_session('Batch target') AS s \gset
SELECT add_message_to_session(:'s', 'system', 'be brief') AS first \gset
SELECT max(id) AS audit_mark FROM audit_log \gset
CREATE TEMP TABLE batch AS
SELECT b.id, b.n FROM add_messages_to_session(:'s', $$[
    {"role": "user", "content": "What is the capital of France?", "metadata": {"lang": "en"}},
    {"role": "assistant", "content": "Paris.", "metadata": null},
    {"role": "user", "content": ""}
]$$) WITH ORDINALITY b(id, n);

SELECT is((SELECT count(*) FROM batch), 3::bigint, 'three ids for three messages');
SELECT is((SELECT array_agg(m.position ORDER BY b.n) FROM batch b JOIN memories m ON m.id = b.id),
          ARRAY[2, 3, 4]::bigint[], 'the ids come back in array order, at the next consecutive positions');
SELECT is((SELECT array_agg(m.role ORDER BY m.position) FROM batch b JOIN memories m ON m.id = b.id),
          ARRAY['user', 'assistant', 'user'], 'roles as given');
SELECT is((SELECT array_agg(m._metadata ORDER BY m.position) FROM batch b JOIN memories m ON m.id = b.id),
          ARRAY['{"lang": "en"}', '{}', '{}']::jsonb[], 'metadata as given; JSON null and a missing key mean {}');
SELECT is((SELECT bool_and(m.session_id = :'s' AND m.kind = 'message') FROM batch b JOIN memories m ON m.id = b.id),
          true, 'all are messages of the session');
SELECT is((SELECT last_position FROM memory_sessions WHERE id = :'s'), 4::bigint, 'the session''s last position moved by three');
SELECT is(get_conversation_text(:'s'),
          E'system: be brief\nuser: What is the capital of France?\nassistant: Paris.\nuser: ',
          'the transcript shows them after the earlier message, in order');

-- a batch the fast check in Rust is unsure of (a role without an ASCII letter) goes to the SQL
-- rules, which accept it: the same rows as any batch
CREATE TEMP TABLE unsure AS
SELECT b.id, b.n FROM add_messages_to_session(create_session('unsure'),
    '[{"role": "éé", "content": "a"}, {"content": "b", "role": "user", "metadata": null}]') WITH ORDINALITY b(id, n);
SELECT is((SELECT array_agg(m.role || ':' || m.content || ':' || m.position ORDER BY b.n) FROM unsure b JOIN memories m ON m.id = b.id),
          ARRAY['éé:a:1', 'user:b:2'], 'a batch the SQL rules decide lands like any other, in order');
SELECT is((SELECT bool_and(m.content_hash = encode(sha256(convert_to(m.content, 'UTF8')), 'hex'))
             FROM batch b JOIN memories m ON m.id = b.id), true, 'each is hashed');
SELECT is((SELECT count(*) FROM audit_log a JOIN batch b ON a.row_id = b.id
            WHERE a.id > :audit_mark AND a.operation = 'INSERT' AND a.new_row ->> 'content' IS NOT NULL),
          3::bigint, 'each has its own audit row with its after state');
SELECT is((SELECT count(*) FROM embedding_schedule q JOIN batch b ON q.memory_id = b.id), 2::bigint,
          'the two with content are queued for embedding, the empty one is not');
SELECT add_message_to_session(:'s', 'assistant', 'after the batch') AS after \gset
SELECT is((SELECT position FROM memories WHERE id = :'after'), 5::bigint, 'a single message after a batch takes the next position');

-- a fork sees the batch as inherited messages, like any other
SELECT fork_session(:'s', 'Batch fork', parent_message_id => (SELECT id FROM batch WHERE n = 2)) AS f \gset
SELECT add_messages_to_session(:'f', '[{"role": "user", "content": "And of Italy?"}]') AS f_msg \gset
SELECT is((SELECT array_agg(position || ':' || role ORDER BY position) FROM get_formatted_conversation(:'f')),
          ARRAY['1:system', '2:user', '3:assistant', '4:user'], 'a batch in a fork continues from the fork point');

-- an empty batch writes nothing and returns nothing
SELECT is((SELECT count(*) FROM add_messages_to_session(:'s', '[]')), 0::bigint, 'an empty batch returns no ids');
SELECT is((SELECT last_position FROM memory_sessions WHERE id = :'s'), 5::bigint, 'and takes no position');

-- ---------------------------------------------------------------------------------------------
-- Bad input: clear errors, and nothing written (not even the good elements before a bad one)
-- ---------------------------------------------------------------------------------------------
SELECT count(*) AS memories_before FROM memories \gset
SELECT max(id) AS audit_before FROM audit_log \gset

SELECT throws_ok($$SELECT add_messages_to_session(NULL, '[]')$$, '22004', 'session_id must not be NULL',
                 'a NULL session raises 22004');
SELECT throws_ok(format($$SELECT add_messages_to_session(%L, NULL)$$, :'s'), '22004', 'messages must not be NULL',
                 'NULL messages raise 22004');
SELECT throws_ok(format($$SELECT add_messages_to_session(%L, '[{')$$, :'s'), '22P02', NULL,
                 'messages that are not JSON raise 22P02');
SELECT throws_ok(format($$SELECT add_messages_to_session(%L, '{"role": "user", "content": "hi"}')$$, :'s'),
                 '22023', 'messages must be a JSON array of {"role", "content", "metadata"} objects, got object: {"role": "user", "content": "hi"}',
                 'a single object instead of an array raises 22023');
SELECT throws_ok(format($$SELECT add_messages_to_session(%L, '[{"role": "user", "content": "ok"}, 5]')$$, :'s'),
                 '22023', 'messages[1] must be a JSON object with role and content, got number: 5',
                 'an element that is not an object raises 22023, naming its index');
SELECT throws_ok(format($$SELECT add_messages_to_session(%L, '[{"role": "user", "content": "ok", "rol": "x"}]')$$, :'s'),
                 '22023', 'messages[0] has an unknown key "rol"', 'a misspelt key raises 22023 rather than being ignored');
SELECT throws_ok(format($$SELECT add_messages_to_session(%L, '[{"role": "user", "content": "ok"}, {"content": "hi"}]')$$, :'s'),
                 '22023', 'messages[1].role must be a non-empty string, got NULL', 'a missing role raises 22023');
SELECT throws_ok(format($$SELECT add_messages_to_session(%L, '[{"role": null, "content": "hi"}]')$$, :'s'),
                 '22023', 'messages[0].role must be a non-empty string, got NULL', 'a JSON null role raises 22023');
SELECT throws_ok(format($$SELECT add_messages_to_session(%L, '[{"role": " ", "content": "hi"}]')$$, :'s'),
                 '22023', $$messages[0].role must be a non-empty string, got ' '$$, 'a blank role raises 22023');
SELECT throws_ok(format($$SELECT add_messages_to_session(%L, '[{"role": 5, "content": "hi"}]')$$, :'s'),
                 '22023', 'messages[0].role must be a non-empty string, got 5', 'a number as role raises 22023');
SELECT throws_ok(format($$SELECT add_messages_to_session(%L, jsonb_build_array(jsonb_build_object('role', repeat('r', 65), 'content', 'hi')))$$, :'s'),
                 '22001', format('messages[0].role is 65 characters long; at most 64 are allowed: "%s..."', repeat('r', 40)),
                 'a 65-character role raises 22001');
SELECT throws_ok(format($$SELECT add_messages_to_session(%L, '[{"role": "user"}]')$$, :'s'),
                 '22004', 'messages[0].content must not be NULL', 'a missing content raises 22004');
SELECT throws_ok(format($$SELECT add_messages_to_session(%L, '[{"role": "user", "content": 42}]')$$, :'s'),
                 '22023', 'messages[0].content must be a string, got number: 42', 'a number as content raises 22023');
SELECT throws_ok(format($$SELECT add_messages_to_session(%L, '[{"role": "user", "content": "hi", "metadata": [1]}]')$$, :'s'),
                 '22023', 'messages[0].metadata must be a JSON object, got array [1]', 'array metadata raises 22023');
SELECT throws_ok(format($$SELECT add_messages_to_session(%L, '[{"role": "user", "content": "hi"}]')$$, :'unknown_id'),
                 'P0002', format('session %s does not exist', :'unknown_id'), 'an unknown session raises P0002');
SELECT throws_ok(format($$SELECT add_messages_to_session(%L, '[]')$$, :'unknown_id'),
                 'P0002', format('session %s does not exist', :'unknown_id'), 'so does an empty batch for an unknown session');

SELECT is((SELECT count(*) FROM memories), :memories_before::bigint, 'no memory was written by the failed calls');
SELECT is((SELECT coalesce(max(id), 0) FROM audit_log), coalesce(:audit_before, 0)::bigint, 'no audit row was written');
SELECT is((SELECT last_position FROM memory_sessions WHERE id = :'s'), 5::bigint, 'the session''s last position is unchanged');

SELECT * FROM finish();
ROLLBACK;
