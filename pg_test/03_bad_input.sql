-- Bad input: every kind of wrong argument gets its own SQLSTATE and a message that names the bad
-- value, and a failed call writes nothing.
--
-- throws_ok(sql, errcode, message, description) checks both SQLSTATE and the exact message; where
-- the message contains generated ids it is built with format() from the same ids. Every call
-- runs in its own subtransaction (pgTAP's EXCEPTION block), exactly as a failed statement of an
-- application would be rolled back.
BEGIN;
SELECT plan(77);

\set unknown_id '00000000-0000-4000-8000-00000000dead'
\set unknown_user '00000000-0000-4000-8000-00000000beef'

-- ---------------------------------------------------------------------------------------------
-- Setup (all successful writes happen here, before the "nothing was written" mark)
-- ---------------------------------------------------------------------------------------------
SELECT create_session('Bad input target') AS s \gset
SELECT add_message_to_session(:'s', 'user', 'one') AS m1 \gset
SELECT add_message_to_session(:'s', 'assistant', 'two') AS m2 \gset
-- positive controls at the limits of what is accepted
SELECT add_message_to_session(:'s', repeat('r', 64), 'a 64-character role') AS m64 \gset
SELECT add_message_to_session(:'s', repeat('é', 64), 'a 64-character multibyte role') AS m64u \gset
SELECT add_message_to_session(:'s', 'system', '', NULL) AS m_empty \gset
SELECT create_session('Another conversation') AS other \gset
SELECT add_message_to_session(:'other', 'user', 'elsewhere') AS om \gset
-- a fork of s at its first message: s's later messages are not part of it
SELECT fork_session(:'s', 'Fork at one', parent_message_id => :'m1') AS f \gset
-- free memories for the graph tests, with a chain a -> b -> c
INSERT INTO memories (content) VALUES ('node a') RETURNING id AS a \gset
INSERT INTO memories (content) VALUES ('node b') RETURNING id AS b \gset
INSERT INTO memories (content) VALUES ('node c') RETURNING id AS c \gset
INSERT INTO memory_edges (source_id, target_id, relation) VALUES (:'a', :'b', 'relates_to');
INSERT INTO memory_edges (source_id, target_id, relation) VALUES (:'b', :'c', 'relates_to') RETURNING id AS bc \gset

-- The state that must survive every failed call below.
SELECT coalesce(max(id), 0) AS audit_mark FROM audit_log \gset
SELECT count(*) AS memories_before FROM memories \gset
SELECT count(*) AS edges_before FROM memory_edges \gset
SELECT count(*) AS sessions_before FROM memory_sessions \gset
SELECT count(*) AS queue_before FROM embedding_schedule \gset
SELECT count(*) AS users_before FROM users \gset
SELECT last_position AS s_last_before FROM memory_sessions WHERE id = :'s' \gset
SELECT get_conversation_text(:'s') AS s_text_before \gset

SELECT is(length((SELECT role FROM memories WHERE id = :'m64')), 64, 'control: a 64-character role is accepted');
SELECT is((SELECT role FROM memories WHERE id = :'m64u'), repeat('é', 64),
          'control: the 64-character limit counts characters, not bytes');
SELECT is((SELECT _metadata FROM memories WHERE id = :'m_empty'), '{}'::jsonb,
          'control: NULL metadata means {} and empty content is a valid message');

-- ---------------------------------------------------------------------------------------------
-- NULL session ids: 22004
-- ---------------------------------------------------------------------------------------------
SELECT throws_ok($$SELECT add_message_to_session(NULL, 'user', 'hi')$$, '22004', 'session_id must not be NULL',
                 'add_message_to_session(NULL, ...) raises 22004');
SELECT throws_ok($$SELECT fork_session(NULL, 'branch')$$, '22004', 'session_id must not be NULL',
                 'fork_session(NULL, ...) raises 22004');
SELECT throws_ok($$SELECT * FROM get_formatted_conversation(NULL)$$, '22004', 'session_id must not be NULL',
                 'get_formatted_conversation(NULL) raises 22004');
SELECT throws_ok($$SELECT get_conversation_text(NULL)$$, '22004', 'session_id must not be NULL',
                 'get_conversation_text(NULL) raises 22004');

-- ---------------------------------------------------------------------------------------------
-- Unknown sessions and messages: P0002
-- ---------------------------------------------------------------------------------------------
SELECT throws_ok(format($$SELECT add_message_to_session(%L, 'user', 'hi')$$, :'unknown_id'),
                 'P0002', format('session %s does not exist', :'unknown_id'),
                 'add_message_to_session to an unknown session raises P0002');
SELECT throws_ok(format($$SELECT fork_session(%L, 'branch')$$, :'unknown_id'),
                 'P0002', format('session %s does not exist', :'unknown_id'),
                 'fork_session of an unknown session raises P0002');
SELECT throws_ok(format($$SELECT * FROM get_formatted_conversation(%L, true)$$, :'unknown_id'),
                 'P0002', format('session %s does not exist', :'unknown_id'),
                 'get_formatted_conversation of an unknown session raises P0002');
SELECT throws_ok(format($$SELECT get_conversation_text(%L)$$, :'unknown_id'),
                 'P0002', format('session %s does not exist', :'unknown_id'),
                 'get_conversation_text of an unknown session raises P0002 (not an empty transcript)');
SELECT throws_ok(format($$SELECT add_message_to_session(%L, 'user', 'hi')$$, :'m1'),
                 'P0002', format('session %s does not exist', :'m1'),
                 'a message id is not a session id: P0002');
SELECT throws_ok(format($$SELECT fork_session(%L, 'branch', parent_message_id => %L)$$, :'s', :'unknown_id'),
                 'P0002', format('message %s does not exist', :'unknown_id'),
                 'fork_session at an unknown parent_message_id raises P0002');
SELECT throws_ok(format($$SELECT fork_session(%L, 'branch', '{"parent_message_id": "%s"}')$$, :'s', :'unknown_id'),
                 'P0002', format('message %s does not exist', :'unknown_id'),
                 'fork_session at an unknown metadata.parent_message_id raises P0002');
SELECT throws_ok(format($$SELECT fork_session(%L, 'branch', parent_message_id => %L)$$, :'s', :'other'),
                 'P0002', format('message %s does not exist', :'other'),
                 'a session id is not a message id: P0002');

-- ---------------------------------------------------------------------------------------------
-- Fork points the session does not show: 22023
-- ---------------------------------------------------------------------------------------------
SELECT throws_ok(format($$SELECT fork_session(%L, 'branch', parent_message_id => %L)$$, :'s', :'om'),
                 '22023', format('message %s is not part of session %s', :'om', :'s'),
                 'a parent message from another session raises 22023');
SELECT throws_ok(format($$SELECT fork_session(%L, 'branch', '{"parent_message_id": "%s"}')$$, :'s', :'om'),
                 '22023', format('message %s is not part of session %s', :'om', :'s'),
                 'the same through metadata.parent_message_id');
SELECT throws_ok(format($$SELECT fork_session(%L, 'branch', parent_message_id => %L)$$, :'f', :'m2'),
                 '22023', format('message %s is not part of session %s', :'m2', :'f'),
                 'a parent-session message after the fork point is not part of the fork: 22023');

-- metadata.parent_message_id that is not a uuid string: 22023
SELECT throws_ok(format($$SELECT fork_session(%L, 'Mobile Design Discussion',
                                              '{"parent_message_id": "msg123", "focus": "mobile_design"}')$$, :'s'),
                 '22023', 'metadata.parent_message_id is not a message id: "msg123"',
                 'the spec''s literal "msg123" raises 22023, naming the value');
SELECT throws_ok(format($$SELECT fork_session(%L, 'branch', '{"parent_message_id": 123}')$$, :'s'),
                 '22023', 'metadata.parent_message_id is not a message id: 123',
                 'a number as metadata.parent_message_id raises 22023');
SELECT throws_ok(format($$SELECT fork_session(%L, 'branch', '{"parent_message_id": null}')$$, :'s'),
                 '22023', 'metadata.parent_message_id is not a message id: null',
                 'JSON null as metadata.parent_message_id raises 22023');
SELECT throws_ok(format($$SELECT fork_session(%L, 'branch', jsonb_build_object('parent_message_id', ARRAY[%L]))$$,
                        :'s', :'m1'),
                 '22023', format('metadata.parent_message_id is not a message id: ["%s"]', :'m1'),
                 'an array holding a message id is not a message id: 22023');
SELECT throws_ok(format($$SELECT fork_session(%L, 'branch', '{"parent_message_id": ""}')$$, :'s'),
                 '22023', 'metadata.parent_message_id is not a message id: ""',
                 'an empty string as metadata.parent_message_id raises 22023');
SELECT throws_ok(format($$SELECT fork_session(%L, 'branch', jsonb_build_object('parent_message_id', '{' || %L))$$,
                        :'s', :'m1'),
                 '22023', NULL, 'an unbalanced brace in metadata.parent_message_id raises 22023');

-- ---------------------------------------------------------------------------------------------
-- Roles, content, metadata, titles
-- ---------------------------------------------------------------------------------------------
SELECT throws_ok(format($$SELECT add_message_to_session(%L, '', 'hi')$$, :'s'),
                 '22023', $$role must be a non-empty string, got ''$$, 'an empty role raises 22023');
SELECT throws_ok(format($$SELECT add_message_to_session(%L, '   ', 'hi')$$, :'s'),
                 '22023', $$role must be a non-empty string, got '   '$$, 'a blank role raises 22023');
SELECT throws_ok(format($$SELECT add_message_to_session(%L, NULL, 'hi')$$, :'s'),
                 '22023', 'role must be a non-empty string, got NULL', 'a NULL role raises 22023');
SELECT throws_ok(format($$SELECT add_message_to_session(%L, E'\t\n', 'hi')$$, :'s'),
                 '22023', NULL, 'a role of tabs and newlines raises 22023');
SELECT throws_ok(format($$SELECT add_message_to_session(%L, E'\u00a0\u3000', 'hi')$$, :'s'),
                 '22023', NULL, 'a role of Unicode spaces raises 22023');
SELECT throws_ok(format($$SELECT add_message_to_session(%L, E'us\ner', 'hi')$$, :'s'),
                 '22023', NULL, 'a role with a control character raises 22023');
SELECT throws_ok(format($$SELECT add_message_to_session(%L, repeat('r', 65), 'hi')$$, :'s'),
                 '22001', format('role is 65 characters long; at most 64 are allowed: "%s..."', repeat('r', 40)),
                 'a 65-character role raises 22001');
SELECT throws_ok(format($$SELECT add_message_to_session(%L, repeat('é', 65), 'hi')$$, :'s'),
                 '22001', format('role is 65 characters long; at most 64 are allowed: "%s..."', repeat('é', 40)),
                 'a 65-character multibyte role raises 22001');
SELECT throws_ok(format($$SELECT add_message_to_session(%L, repeat('x', 100000), 'hi')$$, :'s'),
                 '22001', format('role is 100000 characters long; at most 64 are allowed: "%s..."', repeat('x', 40)),
                 'a huge role raises 22001 with a short message');
SELECT throws_ok(format($$SELECT add_message_to_session(%L, 'user', NULL)$$, :'s'),
                 '22004', 'content must not be NULL', 'NULL content raises 22004');
SELECT throws_ok(format($$SELECT add_message_to_session(%L, 'user', 'hi', '{bad')$$, :'s'),
                 '22P02', 'invalid input syntax for type json', 'metadata text that is not JSON raises 22P02');
SELECT throws_ok(format($$SELECT add_message_to_session(%L, 'user', 'hi', '[1]')$$, :'s'),
                 '22023', 'metadata must be a JSON object, got array [1]', 'array metadata raises 22023');
SELECT throws_ok(format($$SELECT add_message_to_session(%L, 'user', 'hi', '"x"')$$, :'s'),
                 '22023', 'metadata must be a JSON object, got string "x"', 'string metadata raises 22023');
SELECT throws_ok(format($$SELECT add_message_to_session(%L, 'user', 'hi', '3')$$, :'s'),
                 '22023', 'metadata must be a JSON object, got number 3', 'number metadata raises 22023');
SELECT throws_ok(format($$SELECT add_message_to_session(%L, 'user', 'hi', 'null')$$, :'s'),
                 '22023', 'metadata must be a JSON object, got null null', 'JSON null metadata raises 22023');
SELECT throws_ok($$SELECT create_session('t', '[1]')$$,
                 '22023', 'metadata must be a JSON object, got array [1]', 'create_session with array metadata raises 22023');
SELECT throws_ok($$SELECT create_session('t', '{bad')$$,
                 '22P02', 'invalid input syntax for type json', 'create_session with invalid JSON raises 22P02');
SELECT throws_ok(format($$SELECT fork_session(%L, 'branch', '"x"')$$, :'s'),
                 '22023', 'metadata must be a JSON object, got string "x"', 'fork_session with string metadata raises 22023');
SELECT throws_ok($$SELECT create_session(NULL)$$, '22004', 'title must not be NULL', 'a NULL title raises 22004');
SELECT throws_ok($$SELECT create_session(NULL, '{"tags": []}')$$, '22004', 'title must not be NULL',
                 'a NULL title with metadata raises 22004');
SELECT throws_ok(format($$SELECT fork_session(%L, NULL)$$, :'s'), '22004', 'new_title must not be NULL',
                 'a NULL fork title raises 22004');

-- ---------------------------------------------------------------------------------------------
-- Graph integrity: self-loops and cycles (23514)
-- ---------------------------------------------------------------------------------------------
SELECT throws_ok(format($$INSERT INTO memory_edges (source_id, target_id, relation) VALUES (%L, %L, 'relates_to')$$,
                        :'a', :'a'),
                 '23514', format('edge %s -[relates_to]-> %s is a self-loop', :'a', :'a'),
                 'a self-loop edge raises 23514');
SELECT throws_ok(format($$INSERT INTO memory_edges (source_id, target_id, relation) VALUES (%L, %L, 'relates_to')$$,
                        :'b', :'a'),
                 '23514', format('edge %s -[relates_to]-> %s would close a cycle', :'b', :'a'),
                 'b -> a closes the 2-edge cycle a -> b -> a: 23514');
SELECT throws_ok(format($$INSERT INTO memory_edges (source_id, target_id, relation) VALUES (%L, %L, 'relates_to')$$,
                        :'c', :'a'),
                 '23514', format('edge %s -[relates_to]-> %s would close a cycle', :'c', :'a'),
                 'c -> a closes the 3-edge cycle a -> b -> c -> a: 23514');
SELECT throws_ok(format($$INSERT INTO memory_edges (source_id, target_id, relation) VALUES (%L, %L, 'inspired_by')$$,
                        :'c', :'a'),
                 '23514', format('edge %s -[inspired_by]-> %s would close a cycle', :'c', :'a'),
                 'a cycle through edges of different relations is a cycle too');
SELECT throws_ok(format($$UPDATE memory_edges SET target_id = %L WHERE id = %L$$, :'a', :'bc'),
                 '23514', format('edge %s -[relates_to]-> %s would close a cycle', :'b', :'a'),
                 'redirecting an existing edge to close a cycle raises 23514');
SELECT throws_ok(format($$UPDATE memory_edges SET target_id = source_id WHERE id = %L$$, :'bc'),
                 '23514', format('edge %s -[relates_to]-> %s is a self-loop', :'b', :'b'),
                 'turning an edge into a self-loop raises 23514');
SELECT throws_ok(format($$INSERT INTO memory_edges (source_id, target_id, relation, weight) VALUES (%L, %L, 'relates_to', 'NaN')$$,
                        :'a', :'c'),
                 '23514', NULL, 'a NaN edge weight raises 23514');
SELECT throws_ok(format($$INSERT INTO memory_edges (source_id, target_id, relation) VALUES (%L, %L, 'Not A Relation')$$,
                        :'a', :'c'),
                 '23514', NULL, 'a relation that is not a lower-case identifier raises 23514');
SELECT throws_ok(format($$INSERT INTO memories (kind, content, session_id) VALUES ('message', 'orphan', %L)$$, :'s'),
                 '23514', NULL, 'a message without position and role cannot be inserted directly: 23514');

-- ---------------------------------------------------------------------------------------------
-- Identity: a malformed app.current_user, bad users
-- ---------------------------------------------------------------------------------------------
SELECT set_config('app.current_user', 'not-a-uuid', true) AS ignored \gset
SELECT throws_ok($$SELECT create_session('as nobody')$$,
                 '22023', 'app.current_user is not a valid user id: "not-a-uuid"',
                 'a write with app.current_user set to a non-uuid raises 22023');
SELECT throws_ok(format($$SELECT add_message_to_session(%L, 'user', 'hi')$$, :'s'),
                 '22023', 'app.current_user is not a valid user id: "not-a-uuid"',
                 'so does add_message_to_session');
SELECT throws_ok($$SELECT current_memory_user()$$,
                 '22023', 'app.current_user is not a valid user id: "not-a-uuid"',
                 'and current_memory_user() itself');
SELECT set_config('app.current_user', 'msg123', true) AS ignored \gset
SELECT throws_ok(format($$INSERT INTO memory_edges (source_id, target_id, relation) VALUES (%L, %L, 'relates_to')$$,
                        :'a', :'c'),
                 '22023', 'app.current_user is not a valid user id: "msg123"',
                 'an edge write with a malformed app.current_user raises 22023');
SELECT set_config('app.current_user', ' ' || :'unknown_user', true) AS ignored \gset
SELECT throws_ok($$SELECT create_session('x')$$, '22023', NULL, 'app.current_user with a leading space raises 22023');
SELECT set_config('app.current_user', '{' || :'unknown_user', true) AS ignored \gset
SELECT throws_ok($$SELECT create_session('x')$$, '22023', NULL, 'app.current_user with an unbalanced brace raises 22023');
SELECT set_config('app.current_user', '', true) AS ignored \gset

SELECT throws_ok($$SELECT create_user('')$$, '22023', 'user name must not be empty', 'create_user with an empty name raises 22023');
SELECT throws_ok($$SELECT create_user('   ')$$, '22023', 'user name must not be empty', 'create_user with a blank name raises 22023');
SELECT throws_ok($$SELECT create_user(NULL)$$, '22023', 'user name must not be empty', 'create_user with a NULL name raises 22023');
SELECT throws_ok($$SELECT create_user('Nobody', 'memoriesdb_no_such_role')$$,
                 '42704', 'database role "memoriesdb_no_such_role" does not exist',
                 'create_user with an unknown db_role raises 42704');
SELECT throws_ok($$SELECT create_user('Nobody', NULL, '[]')$$,
                 '22023', 'metadata must be a JSON object, got array []', 'create_user with array metadata raises 22023');
SELECT throws_ok(format($$SELECT set_memory_user(%L)$$, :'unknown_user'),
                 'P0002', format('user %s does not exist', :'unknown_user'),
                 'set_memory_user with an unknown user raises P0002');
SELECT is(current_memory_user(), NULL, 'a failed set_memory_user leaves no acting user behind');

-- ---------------------------------------------------------------------------------------------
-- Nothing was half-written by any of the failed calls
-- ---------------------------------------------------------------------------------------------
SELECT is((SELECT count(*) FROM audit_log WHERE id > :audit_mark), 0::bigint,
          'no audit row was written by the failed calls');
SELECT is((SELECT last_position FROM memory_sessions WHERE id = :'s'), :s_last_before::bigint,
          'the session''s last_position is unchanged');
SELECT is((SELECT count(*) FROM memories WHERE session_id = :'s'), :s_last_before::bigint,
          'the session still has exactly as many messages as its last position');
SELECT is(get_conversation_text(:'s'), :'s_text_before', 'the session''s transcript is unchanged');
SELECT is((SELECT count(*) FROM memories), :memories_before::bigint, 'no memory was written');
SELECT is((SELECT count(*) FROM memory_edges), :edges_before::bigint, 'no edge was written');
SELECT is((SELECT count(*) FROM memory_sessions), :sessions_before::bigint, 'no session row was written');
SELECT is((SELECT count(*) FROM embedding_schedule), :queue_before::bigint, 'nothing was enqueued for embedding');
SELECT is((SELECT count(*) FROM users), :users_before::bigint, 'no user was created');
SELECT is((SELECT target_id FROM memory_edges WHERE id = :'bc'), :'c'::uuid, 'the edge b -> c was not redirected');

SELECT * FROM finish();
ROLLBACK;
