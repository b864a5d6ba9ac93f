-- The lifecycle contract as psql users see it: memory types, importance, expiry, session
-- retention and the sweep (sql/lifecycle.sql). Runs as the superuser, so row-level security
-- does not apply here; tests/lifecycle.rs covers ordinary roles, grantees and strangers.
BEGIN;
SELECT plan(63);

SELECT has_function('define_memory_type', ARRAY['text', 'text', 'real', 'interval'], 'define_memory_type(name, description, default_importance, default_ttl)');
SELECT has_function('set_session_retention', ARRAY['uuid', 'interval', 'boolean', 'integer'], 'set_session_retention(session_id, message_ttl, apply_to_existing, keep_last)');
SELECT has_function('sweep_expired_memories', ARRAY['integer'], 'sweep_expired_memories(lim)');
SELECT is((SELECT pg_catalog.array_to_string(p.proargnames, ',') FROM pg_catalog.pg_proc p
            WHERE p.oid = 'memoriesdb.set_session_retention'::regproc),
          'session_id,message_ttl,apply_to_existing,keep_last', 'set_session_retention''s argument names');
SELECT has_column('memories', 'importance', 'memories.importance');
SELECT col_type_is('memories', 'importance', 'real', 'importance is real');
SELECT has_column('memories', 'expires_at', 'memories.expires_at');
SELECT col_type_is('memories', 'expires_at', 'timestamp with time zone', 'expires_at is timestamptz');
SELECT has_column('memory_sessions', 'message_ttl', 'memory_sessions.message_ttl');
SELECT has_view('memory_types', 'the memory_types view');
SELECT has_index('memories', 'memories_expiring', 'the sweep''s index');
SELECT set_eq('SELECT name FROM memory_types WHERE builtin',
              ARRAY['memory', 'session', 'message', 'fact', 'preference', 'entity', 'summary', 'persona', 'tool', 'workflow'],
              'the built-in types');

-- types
SELECT throws_ok($$INSERT INTO memories (kind, content) VALUES ('nonexistent', 'x')$$, '22023', NULL, 'an unknown type is refused');
SELECT throws_ok($$SELECT define_memory_type('Bad Name')$$, '22023', NULL, 'a bad type name is refused');
SELECT throws_ok($$SELECT define_memory_type('t', NULL, 2)$$, '22023', NULL, 'an importance above 1 is refused');
SELECT throws_ok($$SELECT define_memory_type('t', NULL, 0.5, interval '-1 day')$$, '22023', NULL, 'a negative TTL is refused');
SELECT throws_ok($$SELECT define_memory_type('session', NULL, 0.5, interval '1 day')$$, '22023', NULL, 'sessions do not expire');
SELECT is((SELECT default_ttl FROM define_memory_type('note', 'a note', 0.4, interval '2 hours')), interval '2 hours',
          'a defined type');
INSERT INTO memories (kind, content) VALUES ('note', 'a note') RETURNING id AS note \gset
SELECT is((SELECT expires_at - _created_at FROM memories WHERE id = :'note'), interval '2 hours',
          'a new memory expires by its type''s default_ttl');
SELECT throws_ok($$INSERT INTO memories (content, importance) VALUES ('x', -0.1)$$, '23514', NULL, 'importance below 0 is refused');

-- retention and expiry: a superuser's transcript hides expired messages too
SELECT create_session('retention') AS s \gset
SELECT add_message_to_session(:'s', 'user', 'first') AS m1 \gset
SELECT throws_ok(format($$SELECT set_session_retention(%L, interval '0')$$, :'s'), '22023', NULL, 'a zero TTL is refused');
SELECT is(set_session_retention(:'s', interval '1 hour', true), 1::bigint, 'existing messages dated on request');
SELECT add_message_to_session(:'s', 'user', 'second') AS m2 \gset
SELECT is((SELECT expires_at - _created_at FROM memories WHERE id = :'m2'), interval '1 hour',
          'a new message lives for the session''s message_ttl');
UPDATE memories SET expires_at = now() - interval '1 second' WHERE id = :'m1';
SELECT is((SELECT array_agg(content ORDER BY position) FROM get_formatted_conversation(:'s')), ARRAY['second'],
          'an expired message is not in the transcript, for a superuser either');
SELECT is(get_conversation_text(:'s'), 'user: second', 'nor in the text');
SELECT throws_ok(format($$UPDATE memories SET expires_at = now() WHERE id = %L$$, :'s'), '22023', NULL,
                 'a session does not expire by itself');

-- the sweep
SELECT throws_ok($$SELECT sweep_expired_memories(0)$$, '22023', NULL, 'the sweep''s limit is positive');
SELECT is(sweep_expired_memories(), 1::bigint, 'the sweep deletes the expired message');
SELECT is((SELECT count(*) FROM memories WHERE id = :'m1'), 0::bigint, 'it is gone');
SELECT is((SELECT old_row ? 'content' FROM audit_log WHERE row_id = :'m1' AND operation = 'DELETE'), false,
          'its audit row has no content');

-- facts
SELECT has_function('remember_fact', ARRAY['text', 'text', 'real', 'uuid', 'jsonb', 'uuid', 'timestamp with time zone'],
                    'remember_fact(subject, statement, confidence, source_message, metadata, supersedes, valid_from)');
SELECT has_function('facts', ARRAY['text', 'timestamp with time zone', 'boolean', 'integer'], 'facts(subject, as_of, include_superseded, lim)');
SELECT throws_ok($$SELECT remember_fact('x', 'y', 1.01)$$, '22023', NULL, 'a confidence above 1 is refused');
-- (as a user: a superuser acting as nobody gets a new fact each time)
SELECT set_memory_user(create_user('fact keeper'));
SELECT remember_fact('x', 'x is y', 0.4) AS f1 \gset
SELECT is(remember_fact('x', 'x is y', 0.6), :'f1'::uuid, 'the same statement is the same fact');
SELECT is((SELECT confidence || '/' || reinforcements FROM facts('x')), '0.6/2', 'reinforced, with the higher confidence');
SELECT is((SELECT count(*) FROM facts('x', as_of => now() - interval '1 hour')), 0::bigint, 'not valid before it was stated');

-- ranking and access tracking (sql/ranking.sql; tests/ranking.rs covers ordinary roles)
SELECT has_function('search_memories', ARRAY['text', 'uuid', 'text', 'jsonb', 'integer', 'regconfig', 'double precision',
                    'double precision', 'interval', 'integer'], 'search_memories(..., importance_weight, recency_weight, half_life, candidates)');
SELECT has_function('vector_search', ARRAY['vector', 'double precision', 'integer', 'uuid', 'text', 'jsonb', 'text',
                    'double precision', 'double precision', 'interval', 'integer'], 'vector_search(..., importance_weight, recency_weight, half_life, candidates)');
SELECT has_function('fold_memory_accesses', ARRAY['integer'], 'fold_memory_accesses(lim)');
SELECT has_table('memory_access', 'the access counts');
INSERT INTO memories (kind, content, importance) VALUES ('memory', 'ranking probe alpha', 0.9), ('memory', 'ranking probe beta', NULL);
SELECT is((SELECT array_agg(score = rank ORDER BY id) FROM search_memories('ranking probe')), ARRAY[true, true],
          'by default the score is the relevance');
SELECT is((SELECT array_agg(importance ORDER BY content) FROM search_memories('ranking probe')), ARRAY[0.9, 0.5]::real[],
          'importance: the memory''s own, else its type''s default');
SELECT is((SELECT content FROM search_memories('ranking probe', importance_weight => 1) LIMIT 1), 'ranking probe alpha',
          'the more important memory first');
SELECT throws_ok($$SELECT * FROM search_memories('x', recency_weight => 2)$$, '22023', NULL, 'a weight above 1 is refused');
SELECT throws_ok($$SELECT * FROM search_memories('x', half_life => '0 days')$$, '22023', NULL, 'a half-life must be positive');

-- context for a prompt (sql/context.sql; tests/context.rs covers roles, forks and budgets)
SELECT has_function('get_context', ARRAY['uuid', 'integer', 'integer', 'text', 'integer', 'integer', 'boolean',
                    'double precision', 'double precision', 'interval'], 'get_context(session_id, max_tokens, last_n, query, ...)');
SELECT is(estimate_tokens('How long is this in a prompt?'), 12, 'estimate_tokens: 4 characters a token, + 4');
SELECT create_session('context probe') AS cs \gset
SELECT add_messages_to_session(:'cs', '[{"role": "user", "content": "one"}, {"role": "assistant", "content": "two"},
                                        {"role": "user", "content": "three"}]');
SELECT is((SELECT array_agg(content ORDER BY position) FROM get_recent_messages(:'cs', 2)), ARRAY['two', 'three'],
          'get_recent_messages: the newest, in order');
SELECT is((SELECT array_agg(section || ':' || content ORDER BY ordinal) FROM get_context(:'cs')),
          ARRAY['message:one', 'message:two', 'message:three'], 'get_context: the transcript when everything fits');
SELECT add_session_summary(:'cs', 'counting', 2) IS NOT NULL AS summarised \gset
SELECT is((SELECT array_agg(section || ':' || content ORDER BY ordinal) FROM get_context(:'cs')),
          ARRAY['summary:counting', 'message:three'], 'a summary stands in for the messages it covers');
SELECT throws_ok(format($$SELECT add_session_summary(%L, 'x', 4)$$, :'cs'), '22023', NULL, 'a summary covers positions of the session');
SELECT throws_ok(format($$SELECT * FROM get_context(%L, max_tokens => 0)$$, :'cs'), '22023', NULL, 'the budget is positive');

-- erasure (sql/erasure.sql; tests/erasure.rs covers roles, forks and the audit log)
SELECT has_function('forget_user', ARRAY['uuid'], 'forget_user(user_id)');
SELECT has_function('delete_session', ARRAY['uuid', 'boolean'], 'delete_session(session_id, cascade)');
SELECT has_column('audit_log', 'erased_at', 'audit_log.erased_at');
SELECT create_session('erase probe') AS es \gset
SELECT add_message_to_session(:'es', 'user', 'erase probe words');
SELECT is(delete_session(:'es'), 2::bigint, 'delete_session: the session and its message');
SELECT is((SELECT count(*) FROM audit_log WHERE row_id = :'es' AND new_row ? 'content'), 0::bigint,
          'its content is gone from the audit log');
SELECT throws_ok($$SELECT forget_user(NULL)$$, '22004', NULL, 'forget_user needs a user');

-- retention (sql/lifecycle.sql; tests/retention.rs covers forks, policies and roles)
SELECT has_function('set_retention_policy', ARRAY['text', 'integer', 'interval', 'real', 'text'],
                    'set_retention_policy(kind, keep_last, max_age, keep_if_importance, action)');
SELECT has_function('apply_retention_policies', ARRAY['integer'], 'apply_retention_policies(lim)');
SELECT create_session('trim probe') AS ts \gset
SELECT add_messages_to_session(:'ts', '[{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                                        {"role": "user", "content": "c"}]');
SELECT set_session_retention(:'ts', NULL, keep_last => 1);
SELECT cmp_ok(apply_retention_policies(), '>=', 2::bigint, 'the job trims the session');
SELECT is((SELECT array_agg(content ORDER BY position) FROM get_formatted_conversation(:'ts')), ARRAY['c'],
          'the session keeps its last message');
SELECT throws_ok($$SELECT set_retention_policy('session', 1)$$, '22023', NULL, 'sessions are not subject to policies');

SELECT * FROM finish();
ROLLBACK;
