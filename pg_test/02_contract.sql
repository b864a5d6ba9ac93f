-- The SQL contract: function signatures and argument names (callers use named arguments), the
-- trigger functions and where they are attached, the tables and their columns, registration for
-- pg_dump, content hashing checked against PostgreSQL's own sha256(), the audit trail and the
-- embedding queue.
BEGIN;
-- (indexing 1 MB of one "word" makes full-text search print a harmless NOTICE)
SET LOCAL client_min_messages = warning;
SELECT plan(109);

-- ---------------------------------------------------------------------------------------------
-- Functions: names and argument types
-- ---------------------------------------------------------------------------------------------
SELECT has_function('create_session', ARRAY['text', 'jsonb'], 'create_session(text, jsonb) exists');
SELECT has_function('add_message_to_session', ARRAY['uuid', 'text', 'text', 'jsonb'],
                    'add_message_to_session(uuid, text, text, jsonb) exists');
SELECT has_function('fork_session', ARRAY['uuid', 'text', 'jsonb', 'uuid'],
                    'fork_session(uuid, text, jsonb, uuid) exists');
SELECT has_function('get_formatted_conversation', ARRAY['uuid', 'boolean'],
                    'get_formatted_conversation(uuid, boolean) exists');
SELECT has_function('get_conversation_text', ARRAY['uuid'], 'get_conversation_text(uuid) exists');
SELECT has_function('verify_memory_integrity', ARRAY[]::name[], 'verify_memory_integrity() exists');
SELECT has_function('current_memory_user', ARRAY[]::name[], 'current_memory_user() exists');
SELECT has_function('set_memory_user', ARRAY['uuid', 'boolean'], 'set_memory_user(uuid, boolean) exists');
SELECT has_function('create_user', ARRAY['text', 'name', 'jsonb'], 'create_user(text, name, jsonb) exists');
SELECT has_function('content_sha256', ARRAY['text'], 'content_sha256(text) exists');

-- Argument names, defaults and results: the exact text PostgreSQL prints for them.
SELECT is(pg_get_function_arguments('create_session(text,jsonb)'::regprocedure),
          $$title text, metadata jsonb DEFAULT '{}'::jsonb$$, 'create_session(title, metadata = {})');
SELECT is(pg_get_function_arguments('add_message_to_session(uuid,text,text,jsonb)'::regprocedure),
          $$session_id uuid, role text, content text, metadata jsonb DEFAULT '{}'::jsonb$$,
          'add_message_to_session(session_id, role, content, metadata = {})');
SELECT is(pg_get_function_arguments('fork_session(uuid,text,jsonb,uuid)'::regprocedure),
          $$session_id uuid, new_title text, metadata jsonb DEFAULT '{}'::jsonb, parent_message_id uuid DEFAULT NULL::uuid$$,
          'fork_session(session_id, new_title, metadata = {}, parent_message_id = NULL)');
SELECT is(pg_get_function_arguments('get_formatted_conversation(uuid,boolean)'::regprocedure),
          'session_id uuid, include_metadata boolean DEFAULT false',
          'get_formatted_conversation(session_id, include_metadata = false)');
SELECT is(pg_get_function_arguments('get_conversation_text(uuid)'::regprocedure), 'session_id uuid',
          'get_conversation_text(session_id)');
SELECT is(pg_get_function_arguments('set_memory_user(uuid,boolean)'::regprocedure),
          'user_id uuid, is_local boolean DEFAULT true', 'set_memory_user(user_id, is_local = true)');
SELECT is(pg_get_function_arguments('create_user(text,name,jsonb)'::regprocedure),
          $$name text, db_role name DEFAULT NULL::name, metadata jsonb DEFAULT '{}'::jsonb$$,
          'create_user(name, db_role = NULL, metadata = {})');

SELECT is(pg_get_function_result('create_session(text,jsonb)'::regprocedure), 'uuid', 'create_session returns uuid');
SELECT is(pg_get_function_result('add_message_to_session(uuid,text,text,jsonb)'::regprocedure), 'uuid',
          'add_message_to_session returns uuid');
SELECT is(pg_get_function_result('fork_session(uuid,text,jsonb,uuid)'::regprocedure), 'uuid', 'fork_session returns uuid');
SELECT is(pg_get_function_result('get_conversation_text(uuid)'::regprocedure), 'text', 'get_conversation_text returns text');
SELECT is(pg_get_function_result('get_formatted_conversation(uuid,boolean)'::regprocedure),
          'TABLE("position" bigint, role text, content text, message_id uuid, origin_session_id uuid, created_at timestamp with time zone, metadata jsonb)',
          'get_formatted_conversation returns position, role, content, message_id, origin_session_id, created_at, metadata');
SELECT is(pg_get_function_result('verify_memory_integrity()'::regprocedure),
          'TABLE(memory_id uuid, stored_hash text, computed_hash text)',
          'verify_memory_integrity returns memory_id, stored_hash, computed_hash');
SELECT is(pg_get_function_result('current_memory_user()'::regprocedure), 'uuid', 'current_memory_user returns uuid');

-- ---------------------------------------------------------------------------------------------
-- Named-argument calls
-- ---------------------------------------------------------------------------------------------
SELECT create_session(title => 'Named', metadata => '{"via": "named"}') AS named_s \gset
SELECT add_message_to_session(session_id => :'named_s', role => 'user', content => 'first') AS named_m1 \gset
SELECT add_message_to_session(content => 'second', role => 'assistant', session_id => :'named_s',
                              metadata => '{"n": 2}') AS named_m2 \gset
SELECT is(get_conversation_text(session_id => :'named_s'), E'user: first\nassistant: second',
          'add_message_to_session and get_conversation_text accept named arguments, in any order');
SELECT is((SELECT _metadata FROM memories WHERE id = :'named_s'), '{"via": "named"}'::jsonb,
          'create_session(title =>, metadata =>) stores the metadata');
SELECT fork_session(session_id => :'named_s', new_title => 'Named fork', parent_message_id => :'named_m1') AS named_f \gset
SELECT is(get_conversation_text(:'named_f'), 'user: first',
          'fork_session(parent_message_id => ...) forks at that message');
SELECT is((SELECT metadata FROM get_formatted_conversation(session_id => :'named_s', include_metadata => true)
            WHERE message_id = :'named_m2'),
          '{"n": 2}'::jsonb, 'get_formatted_conversation(session_id =>, include_metadata =>) works');
SELECT create_user(name => 'Named User', db_role => NULL, metadata => '{"team": "qa"}') AS named_u \gset
SELECT is((SELECT name || '|' || _metadata::text FROM users WHERE id = :'named_u'), 'Named User|{"team": "qa"}',
          'create_user(name =>, db_role =>, metadata =>) creates the user');
SELECT is(set_memory_user(user_id => :'named_u', is_local => true), :'named_u'::uuid,
          'set_memory_user(user_id =>, is_local =>) returns the user id');
SELECT is(current_memory_user(), :'named_u'::uuid, 'current_memory_user() returns the user just set');
SELECT add_message_to_session(:'named_s', 'user', 'by a user') AS by_user \gset
SELECT is((SELECT created_by::text || '|' || updated_by::text FROM memories WHERE id = :'by_user'),
          :'named_u' || '|' || :'named_u', 'a new memory is stamped with the acting user');
SELECT is(set_memory_user(NULL), NULL, 'set_memory_user(NULL) clears the acting user');
SELECT is(current_memory_user(), NULL, 'with no user set and no role mapping the acting user is NULL');
-- The documented, quoted form of the specification's SET app.current_user = '...'
SET LOCAL app."current_user" = 'b1c2d3e4-0000-4000-8000-000000000001';
SELECT is(current_memory_user(), 'b1c2d3e4-0000-4000-8000-000000000001'::uuid,
          'SET app."current_user" = ''<uuid>'' sets the acting user');
SET LOCAL app."current_user" = '';

-- Provenance cannot be forged by the values a caller supplies.
SELECT set_memory_user(:'named_u') IS NOT NULL AS ignored \gset
INSERT INTO memories (content, created_by, updated_by)
VALUES ('forged provenance', 'b1c2d3e4-0000-4000-8000-0000000000ff', 'b1c2d3e4-0000-4000-8000-0000000000ff')
RETURNING id AS forged_id \gset
SELECT is((SELECT created_by FROM memories WHERE id = :'forged_id'), :'named_u'::uuid,
          'created_by supplied by the caller is replaced by the acting user');
UPDATE memories SET created_by = 'b1c2d3e4-0000-4000-8000-0000000000ff' WHERE id = :'forged_id';
SELECT is((SELECT created_by FROM memories WHERE id = :'forged_id'), :'named_u'::uuid,
          'created_by cannot be changed by an UPDATE');
SELECT set_memory_user(NULL) IS NULL AS ignored \gset

-- ---------------------------------------------------------------------------------------------
-- Trigger functions and their triggers
-- ---------------------------------------------------------------------------------------------
SELECT function_returns('derive_row_fields', ARRAY[]::name[], 'trigger', 'derive_row_fields() is a trigger function');
SELECT function_returns('prevent_cycles', ARRAY[]::name[], 'trigger', 'prevent_cycles() is a trigger function');
SELECT function_returns('log_memory_change', ARRAY[]::name[], 'trigger', 'log_memory_change() is a trigger function');
SELECT trigger_is('memories', 'memories_10_derive_fields', 'derive_row_fields',
                  'memories has the trigger deriving content hash and provenance');
SELECT trigger_is('memory_edges', 'memory_edges_20_derive_fields', 'derive_row_fields',
                  'memory_edges has the trigger deriving provenance');
SELECT trigger_is('memories', 'memories_50_audit', 'log_memory_change', 'memories has the audit trigger');
SELECT trigger_is('memories', 'memories_50_audit_update', 'log_memory_change', 'memories has the audit trigger for updates');
SELECT trigger_is('memory_edges', 'memory_edges_10_prevent_cycles', 'prevent_cycles',
                  'memory_edges has the cycle prevention trigger');
SELECT trigger_is('memory_edges', 'memory_edges_50_audit', 'log_memory_change', 'memory_edges has the audit trigger');
SELECT trigger_is('audit_log', 'audit_log_append_only', 'audit_log_append_only',
                  'audit_log has the append-only trigger');
SELECT ok((SELECT tgtype & 1 = 0 FROM pg_trigger WHERE tgrelid = 'audit_log'::regclass AND tgname = 'audit_log_append_only'),
          'the append-only trigger is statement-level, so it fires even when RLS leaves no rows');
SELECT set_eq(
    $$SELECT event_object_table::text, trigger_name::text, action_timing::text, event_manipulation::text,
             action_orientation::text
        FROM information_schema.triggers
       WHERE event_object_schema = (SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'memoriesdb')
         AND event_object_table IN ('memories', 'memory_edges', 'audit_log')
         AND trigger_name IN ('memories_10_derive_fields', 'memories_50_audit', 'memories_50_audit_update', 'memories_70_inserted',
                              'memory_edges_10_prevent_cycles',
                              'memory_edges_50_audit', 'audit_log_append_only')$$,
    $$VALUES ('memories', 'memories_10_derive_fields', 'BEFORE', 'INSERT', 'ROW'),
             ('memories', 'memories_10_derive_fields', 'BEFORE', 'UPDATE', 'ROW'),
             ('memories', 'memories_70_inserted', 'AFTER', 'INSERT', 'STATEMENT'),
             ('memories', 'memories_50_audit_update', 'AFTER', 'UPDATE', 'ROW'),
             ('memories', 'memories_50_audit', 'AFTER', 'DELETE', 'ROW'),
             ('memory_edges', 'memory_edges_10_prevent_cycles', 'BEFORE', 'INSERT', 'ROW'),
             ('memory_edges', 'memory_edges_10_prevent_cycles', 'BEFORE', 'UPDATE', 'ROW'),
             ('memory_edges', 'memory_edges_50_audit', 'AFTER', 'INSERT', 'ROW'),
             ('memory_edges', 'memory_edges_50_audit', 'AFTER', 'UPDATE', 'ROW'),
             ('memory_edges', 'memory_edges_50_audit', 'AFTER', 'DELETE', 'ROW'),
             ('audit_log', 'audit_log_append_only', 'BEFORE', 'UPDATE', 'STATEMENT'),
             ('audit_log', 'audit_log_append_only', 'BEFORE', 'DELETE', 'STATEMENT')$$,
    'hash and cycle checks run BEFORE each row write, the audit AFTER each insert (for memories: once per '
    'statement, over its new rows), update and delete');
SELECT ok((SELECT tgtype & 32 <> 0 FROM pg_trigger WHERE tgrelid = 'audit_log'::regclass AND tgname = 'audit_log_append_only'),
          'audit_log_append_only also fires on TRUNCATE');
SELECT is_definer('log_memory_change', ARRAY[]::name[],
                  'log_memory_change() is SECURITY DEFINER (nobody needs INSERT on audit_log)');

-- ---------------------------------------------------------------------------------------------
-- Tables and columns
-- ---------------------------------------------------------------------------------------------
-- Each table must have (at least) the columns schema.sql gives it; the diagnostic lists any that
-- are missing. Columns added later do not break the contract.
CREATE TEMP TABLE expected_columns (tbl name, cols name[]) ON COMMIT DROP;
INSERT INTO expected_columns VALUES
    ('memories', ARRAY['id', 'kind', 'content', 'content_hash', 'content_embedding', '_metadata', 'session_id',
                       'position', 'role', '_created_at', '_updated_at', 'created_by', 'updated_by']),
    ('memory_edges', ARRAY['id', 'source_id', 'target_id', 'relation', 'weight', '_metadata', '_created_at',
                           'created_by']),
    ('audit_log', ARRAY['id', 'table_name', 'operation', 'row_id', 'old_row', 'new_row', 'acting_user', 'db_role',
                        'txid', 'changed_at']),
    ('users', ARRAY['id', 'name', 'db_role', '_metadata', '_created_at']),
    ('embedding_schedule', ARRAY['memory_id', 'content_hash', 'status', 'attempts', 'last_error', 'locked_until',
                                 'enqueued_at', 'updated_at']),
    ('vindexing_schedule', ARRAY['id', 'target', 'memory_id', 'status', 'attempts', 'last_error', 'enqueued_at']),
    ('memory_sessions', ARRAY['id', 'parent_id', 'fork_position', 'fork_message_id', 'depth', 'last_position']);
SELECT is(ARRAY(SELECT c FROM unnest(e.cols) AS c
                EXCEPT
                SELECT a.attname FROM pg_attribute a
                 WHERE a.attrelid = (SELECT c.oid FROM pg_class c JOIN pg_extension x ON x.extnamespace = c.relnamespace
                                      WHERE x.extname = 'memoriesdb' AND c.relname = e.tbl)
                   AND a.attnum > 0 AND NOT a.attisdropped
                ORDER BY 1),
          '{}'::name[],
          e.tbl || ' exists and has the columns of schema.sql (missing ones listed)')
  FROM expected_columns e ORDER BY e.tbl;
SELECT col_type_is('memories', 'id', 'uuid', 'memories.id is a uuid');
SELECT col_type_is('memories', 'content_embedding', 'vector', 'memories.content_embedding is a pgvector vector');
SELECT col_type_is('memories', '_metadata', 'jsonb', 'memories._metadata is jsonb');
SELECT col_type_is('memories', '_created_at', 'timestamp with time zone', 'memories._created_at is timestamptz');
SELECT col_type_is('memory_edges', 'weight', 'double precision', 'memory_edges.weight is double precision');
SELECT col_type_is('audit_log', 'old_row', 'jsonb', 'audit_log.old_row is jsonb');
SELECT col_type_is('audit_log', 'new_row', 'jsonb', 'audit_log.new_row is jsonb');
SELECT col_is_pk('memories', 'id', 'memories.id is the primary key');
SELECT has_view('memory_graph', 'memory_graph exists');

-- ---------------------------------------------------------------------------------------------
-- pg_dump keeps the data: every data table (and the sequences behind identity columns) is
-- registered in pg_extension.extconfig
-- ---------------------------------------------------------------------------------------------
SELECT ok(t::regclass::oid = ANY ((SELECT extconfig FROM pg_extension WHERE extname = 'memoriesdb')::oid[]),
          t || ' is registered with pg_extension_config_dump')
  FROM unnest(ARRAY['memories', 'memory_edges', 'audit_log', 'users', 'embedding_schedule', 'vindexing_schedule',
                    'memory_sessions', 'audit_log_id_seq', 'vindexing_schedule_id_seq']) AS t;

-- ---------------------------------------------------------------------------------------------
-- content_hash = SHA-256 of the UTF-8 content, checked against PostgreSQL's own sha256()
-- ---------------------------------------------------------------------------------------------
CREATE TEMP TABLE hash_cases (label text, memory_id uuid) ON COMMIT DROP;
WITH contents(label, content) AS (
    VALUES ('the empty string', ''),
           ('ASCII text', 'The quick brown fox jumps over the lazy dog'),
           ('Latin-1 accents', 'héllo wörld — ça va?'),
           ('CJK and emoji (4-byte UTF-8)', '日本語のテキスト 🚀🧠✨ 한국어'),
           ('a decomposed é (e + U+0301)', E'e\u0301'),
           ('newlines, tabs and CRLF', E'line 1\nline 2\r\n\tindented'),
           ('1 MB of ASCII', repeat('x', 1048576)),
           ('1 MB of 2-byte characters', repeat('ä', 524288)),
           ('about 1 MB of mixed unicode', repeat('aé日🚀', 104858))
), inserted AS (
    INSERT INTO memories (content) SELECT content FROM contents ORDER BY label RETURNING id, content
)
INSERT INTO hash_cases SELECT c.label, i.id FROM contents c JOIN inserted i USING (content);

SELECT is(m.content_hash, encode(sha256(convert_to(m.content, 'UTF8')), 'hex'),
          'content_hash matches PostgreSQL sha256() for ' || h.label)
  FROM hash_cases h JOIN memories m ON m.id = h.memory_id ORDER BY h.label;
SELECT is((SELECT content_hash FROM memories m JOIN hash_cases h ON h.memory_id = m.id
            WHERE h.label = 'the empty string'),
          'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
          'content_hash of the empty string is the well-known SHA-256 value');
SELECT isnt((SELECT content_hash FROM memories m JOIN hash_cases h ON h.memory_id = m.id
              WHERE h.label = 'a decomposed é (e + U+0301)'),
            encode(sha256(convert_to('é', 'UTF8')), 'hex'),
            'content is hashed as stored: a decomposed é does not hash like a precomposed one');
SELECT is(content_sha256('abc'), 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad',
          'content_sha256(''abc'') is the FIPS 180-2 test vector');

-- a caller-supplied hash is never trusted
INSERT INTO memories (content, content_hash) VALUES ('trust me', repeat('0', 64)) RETURNING id AS liar_id \gset
SELECT is((SELECT content_hash FROM memories WHERE id = :'liar_id'), encode(sha256('trust me'::bytea), 'hex'),
          'a wrong content_hash given on INSERT is replaced by the true hash');
UPDATE memories SET content_hash = 'deadbeef' WHERE id = :'liar_id';
SELECT is((SELECT content_hash FROM memories WHERE id = :'liar_id'), encode(sha256('trust me'::bytea), 'hex'),
          'an UPDATE setting a wrong content_hash is overwritten');
UPDATE memories SET content = 'trust me, changed' WHERE id = :'liar_id';
SELECT is((SELECT content_hash FROM memories WHERE id = :'liar_id'), encode(sha256('trust me, changed'::bytea), 'hex'),
          'changing the content recomputes the hash');
SELECT is_empty('SELECT * FROM verify_memory_integrity()', 'verify_memory_integrity() reports nothing while hashes are right');
-- a hash changed behind the triggers' back (superuser only: replica mode skips triggers) is caught
SET LOCAL session_replication_role = replica;
UPDATE memories SET content_hash = 'tampered' WHERE id = :'liar_id';
SET LOCAL session_replication_role = origin;
SELECT results_eq('SELECT memory_id, stored_hash, computed_hash FROM verify_memory_integrity()',
                  format($$VALUES (%L::uuid, 'tampered'::text, %L::text)$$,
                         :'liar_id', encode(sha256('trust me, changed'::bytea), 'hex')),
                  'verify_memory_integrity() reports a memory whose stored hash does not match its content');
UPDATE memories SET content_hash = '' WHERE id = :'liar_id';  -- any write repairs it
SELECT is_empty('SELECT * FROM verify_memory_integrity()', 'a write through the triggers repairs the hash');

-- ---------------------------------------------------------------------------------------------
-- Audit trail: one row per insert/update/delete, with before and after state
-- ---------------------------------------------------------------------------------------------
INSERT INTO memories (content, _metadata) VALUES ('audited v1', '{"v": 1}') RETURNING id AS audited \gset
UPDATE memories SET content = 'audited v2' WHERE id = :'audited';
DELETE FROM memories WHERE id = :'audited';
SELECT results_eq(
    format($$SELECT table_name, operation, old_row ->> 'content', new_row ->> 'content'
               FROM audit_log WHERE row_id = %L ORDER BY id$$, :'audited'),
    $$VALUES ('memories'::text, 'INSERT'::text, NULL::text, 'audited v1'::text),
             ('memories', 'UPDATE', 'audited v1', 'audited v2'),
             ('memories', 'DELETE', 'audited v2', NULL)$$,
    'insert, update and delete are audited with old_row and new_row');
SELECT is((SELECT new_row -> '_metadata' FROM audit_log WHERE row_id = :'audited' AND operation = 'INSERT'),
          '{"v": 1}'::jsonb, 'new_row holds the whole row, metadata included');
SELECT is((SELECT old_row ->> 'content_hash' FROM audit_log WHERE row_id = :'audited' AND operation = 'DELETE'),
          encode(sha256('audited v2'::bytea), 'hex'), 'old_row of a delete holds the row as it was (with its hash)');
SELECT is((SELECT count(DISTINCT txid) FROM audit_log WHERE row_id = :'audited'), 1::bigint,
          'the three audit rows of this transaction share one txid');
SELECT is((SELECT txid FROM audit_log WHERE row_id = :'audited' LIMIT 1), txid_current(),
          'audit_log.txid is the writing transaction');
SELECT is((SELECT db_role FROM audit_log WHERE row_id = :'audited' AND operation = 'INSERT'), current_user::name,
          'audit_log.db_role is the database role that wrote');
SELECT set_memory_user(:'named_u') IS NOT NULL AS ignored \gset
INSERT INTO memories (content) VALUES ('audited with a user') RETURNING id AS audited_u \gset
SELECT set_memory_user(NULL) IS NULL AS ignored \gset
SELECT is((SELECT acting_user FROM audit_log WHERE row_id = :'audited_u'), :'named_u'::uuid,
          'audit_log.acting_user is the acting MemoriesDB user');

INSERT INTO memories (content) VALUES ('edge a') RETURNING id AS ea \gset
INSERT INTO memories (content) VALUES ('edge b') RETURNING id AS eb \gset
INSERT INTO memory_edges (source_id, target_id, relation, weight) VALUES (:'ea', :'eb', 'relates_to', 0.5)
RETURNING id AS edge_id \gset
UPDATE memory_edges SET weight = 0.75 WHERE id = :'edge_id';
DELETE FROM memory_edges WHERE id = :'edge_id';
SELECT results_eq(
    format($$SELECT table_name, operation, (old_row ->> 'weight')::float8, (new_row ->> 'weight')::float8
               FROM audit_log WHERE row_id = %L ORDER BY id$$, :'edge_id'),
    $$VALUES ('memory_edges'::text, 'INSERT'::text, NULL::float8, 0.5::float8),
             ('memory_edges', 'UPDATE', 0.5, 0.75),
             ('memory_edges', 'DELETE', 0.75, NULL)$$,
    'edge inserts, updates and deletes are audited too');

-- ---------------------------------------------------------------------------------------------
-- Embedding queue: enqueued on insert and on content change, not on metadata-only change
-- ---------------------------------------------------------------------------------------------
INSERT INTO memories (content, _metadata) VALUES ('to embed', '{"k": 1}') RETURNING id AS q \gset
SELECT is((SELECT status || '|' || content_hash || '|' || attempts FROM embedding_schedule WHERE memory_id = :'q'),
          'pending|' || encode(sha256('to embed'::bytea), 'hex') || '|0',
          'a new memory is enqueued, pending, with its content hash');
INSERT INTO memories (content) VALUES ('') RETURNING id AS q_empty \gset
SELECT is((SELECT count(*) FROM embedding_schedule WHERE memory_id = :'q_empty'), 0::bigint,
          'a memory with empty content is not enqueued');

-- a worker finished it
UPDATE embedding_schedule SET status = 'done', attempts = 2, last_error = 'old error' WHERE memory_id = :'q';

UPDATE memories SET _metadata = '{"k": 2}' WHERE id = :'q';
SELECT is((SELECT status || '|' || content_hash FROM embedding_schedule WHERE memory_id = :'q'),
          'done|' || encode(sha256('to embed'::bytea), 'hex'),
          'a metadata-only change does not re-enqueue');
UPDATE memories SET content = 'to embed' WHERE id = :'q';
SELECT is((SELECT status FROM embedding_schedule WHERE memory_id = :'q'), 'done',
          'rewriting the same content does not re-enqueue');

UPDATE memories SET content = 'to embed, edited' WHERE id = :'q';
SELECT is((SELECT status || '|' || content_hash || '|' || attempts || '|' || coalesce(last_error, '<null>')
             FROM embedding_schedule WHERE memory_id = :'q'),
          'pending|' || encode(sha256('to embed, edited'::bytea), 'hex') || '|0|<null>',
          'a content change re-arms the queue entry: new hash, pending, attempts and error reset');
SELECT is((SELECT content_hash FROM embedding_schedule WHERE memory_id = :'q'),
          (SELECT content_hash FROM memories WHERE id = :'q'),
          'the queued hash is the memory''s current hash');
SELECT is((SELECT count(*) FROM embedding_schedule WHERE memory_id = :'q'), 1::bigint,
          'one queue row per memory, however often it changes');

SELECT * FROM finish();
ROLLBACK;
