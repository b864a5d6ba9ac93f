-- The audit log is append-only for everyone but superusers, and it records writes made through the
-- API by ordinary (non-superuser) roles with that role's name.
--
-- Two layers keep audit_log append-only:
--   1. privileges: memoriesdb_user gets SELECT only; rows are written solely by the SECURITY DEFINER trigger
--      functions log_memory_change() and memories_inserted() (new memories), so nobody needs (or gets)
--      INSERT, UPDATE, DELETE or TRUNCATE;
--   2. the audit_log_append_only triggers, which refuse UPDATE, DELETE and TRUNCATE even to a role
--      that was granted those privileges (or owns the table).
-- Superusers pass the triggers on purpose: that is the intended trust boundary. A superuser can
-- disable triggers, drop the table or edit the files anyway, so refusing them would only pretend to
-- a guarantee PostgreSQL cannot give; it would also block legitimate retention and maintenance.
--
-- The roles are created inside this transaction and disappear with its ROLLBACK.
BEGIN;
SELECT plan(38);

CREATE ROLE memoriesdb_pgtap_writer NOLOGIN NOSUPERUSER;
CREATE ROLE memoriesdb_pgtap_auditor NOLOGIN NOSUPERUSER;
GRANT memoriesdb_user TO memoriesdb_pgtap_writer, memoriesdb_pgtap_auditor;
-- the auditor holds the privileges the trigger layer must still refuse, and reads every audit
-- row (memoriesdb_auditor), so row-level security does not hide the rows it aims at
GRANT UPDATE, DELETE, TRUNCATE ON audit_log TO memoriesdb_pgtap_auditor;
GRANT memoriesdb_auditor TO memoriesdb_pgtap_auditor;
SELECT create_user('Pgtap Writer', 'memoriesdb_pgtap_writer') AS writer_user \gset

-- an audit row written by the superuser, for the UPDATE/DELETE attempts to aim at
SELECT create_session('Written by the superuser') AS su_session \gset
SELECT id AS su_audit_id FROM audit_log WHERE row_id = :'su_session' AND operation = 'INSERT' \gset

SELECT ok(NOT (SELECT rolsuper FROM pg_roles WHERE rolname = 'memoriesdb_pgtap_writer'),
          'control: the writer role is not a superuser');

-- ---------------------------------------------------------------------------------------------
-- As an ordinary role without privileges on audit_log: every change is refused (42501)
-- ---------------------------------------------------------------------------------------------
SET ROLE memoriesdb_pgtap_writer;
SELECT is(current_user, 'memoriesdb_pgtap_writer'::name, 'control: running as the writer role');

SELECT throws_ok(format($$UPDATE audit_log SET db_role = 'forged' WHERE id = %s$$, :su_audit_id),
                 '42501', 'permission denied for table audit_log', 'a plain role cannot UPDATE audit_log');
SELECT throws_ok(format($$DELETE FROM audit_log WHERE id = %s$$, :su_audit_id),
                 '42501', 'permission denied for table audit_log', 'a plain role cannot DELETE from audit_log');
SELECT throws_ok($$TRUNCATE audit_log$$,
                 '42501', 'permission denied for table audit_log', 'a plain role cannot TRUNCATE audit_log');
SELECT throws_ok(format($$INSERT INTO audit_log (table_name, operation, row_id, db_role, txid)
                          VALUES ('memories', 'DELETE', %L, 'someone_else', 1)$$, :'su_session'),
                 '42501', 'permission denied for table audit_log', 'a plain role cannot forge an audit row by INSERT');
SELECT throws_ok($$ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only$$,
                 '42501', 'must be owner of table audit_log', 'a plain role cannot disable the append-only trigger');
RESET ROLE;
SELECT is((SELECT db_role FROM audit_log WHERE id = :su_audit_id), 'postgres'::name,
          'the superuser''s audit row is untouched');
SET ROLE memoriesdb_pgtap_writer;

-- ---------------------------------------------------------------------------------------------
-- ... yet its writes through the API are audited under its own name
-- ---------------------------------------------------------------------------------------------
SELECT coalesce(max(id), 0) AS mark FROM audit_log \gset

SELECT create_session('Written by a plain role', '{"by": "writer"}') AS ws \gset
SELECT add_message_to_session(:'ws', 'user', 'hello from a plain role') AS wm \gset
SELECT fork_session(:'ws', 'Plain fork') AS wf \gset
INSERT INTO memories (content) VALUES ('plain x') RETURNING id AS x \gset
INSERT INTO memories (content) VALUES ('plain y') RETURNING id AS y \gset
INSERT INTO memories (content) VALUES ('plain z') RETURNING id AS z \gset
INSERT INTO memory_edges (source_id, target_id, relation) VALUES (:'x', :'y', 'relates_to');
-- y already has an incoming edge: this one takes the serialised cycle check (memory_graph_clock)
INSERT INTO memory_edges (source_id, target_id, relation) VALUES (:'y', :'z', 'relates_to');

SELECT is(get_conversation_text(:'wf'), 'user: hello from a plain role',
          'a plain role can create, write to and fork sessions');
SELECT set_eq(
    format($$SELECT table_name, operation, row_id FROM audit_log WHERE id > %s$$, :mark),
    format($$SELECT 'memories'::text AS table_name, 'INSERT'::text AS operation, id AS row_id FROM memories WHERE id IN (%L, %L, %L, %L, %L, %L)
             UNION ALL
             SELECT 'memory_edges', 'INSERT', id FROM memory_edges WHERE source_id IN (%L, %L, %L, %L)$$,
           :'ws', :'wm', :'wf', :'x', :'y', :'z', :'wm', :'wf', :'x', :'y'),
    'every memory and edge the plain role wrote has exactly one audit row');
SELECT is((SELECT count(*) FROM audit_log WHERE id > :mark), 8::bigint,
          'eight audit rows: 6 memories (3 sessions/messages via the API, 3 direct) and 2 edges (belongs_to and forked_from are implied by the session tables, not stored)');
SELECT is(ARRAY(SELECT DISTINCT db_role FROM audit_log WHERE id > :mark), ARRAY['memoriesdb_pgtap_writer']::name[],
          'all of them name the plain role as db_role');
SELECT is(ARRAY(SELECT DISTINCT acting_user FROM audit_log WHERE id > :mark), ARRAY[:'writer_user']::uuid[],
          'all of them name the user mapped to that role as acting_user');
SELECT is(ARRAY(SELECT DISTINCT txid FROM audit_log WHERE id > :mark), ARRAY[txid_current()],
          'all of them carry this transaction''s id');
SELECT is((SELECT new_row ->> 'content' FROM audit_log WHERE row_id = :'wm'), 'hello from a plain role',
          'the audit row holds the message as written');
SELECT is((SELECT created_by FROM memories WHERE id = :'ws'), :'writer_user'::uuid,
          'the plain role''s memories are created_by its mapped user');
RESET ROLE;  -- the queue is visible to workers (and superusers) only
SELECT is((SELECT status FROM embedding_schedule WHERE memory_id = :'wm'), 'pending',
          'the plain role''s message is queued for embedding (through the SECURITY DEFINER trigger)');
SET ROLE memoriesdb_pgtap_writer;

UPDATE memories SET content = 'plain x, edited' WHERE id = :'x';
SELECT remove_edge(:'y', :'z', 'relates_to');
SELECT results_eq(
    format($$SELECT table_name, operation, db_role = 'memoriesdb_pgtap_writer', old_row IS NOT NULL, new_row IS NOT NULL
               FROM audit_log WHERE id > %s AND operation <> 'INSERT' ORDER BY id$$, :mark),
    $$VALUES ('memories'::text, 'UPDATE'::text, true, true, true),
             ('memory_edges', 'DELETE', true, true, false)$$,
    'the plain role''s UPDATE and DELETE are audited with old/new rows and its name');

-- ---------------------------------------------------------------------------------------------
-- A rolled-back savepoint leaves no audit row (no assertion runs inside the savepoint: pgTAP's
-- own bookkeeping would be rolled back with it)
-- ---------------------------------------------------------------------------------------------
SELECT count(*) AS audit_before_savepoint FROM audit_log \gset
SELECT last_position AS ws_last_before FROM memory_sessions WHERE id = :'ws' \gset
SAVEPOINT doomed;
SELECT add_message_to_session(:'ws', 'user', 'this message is rolled back') AS doomed_msg \gset
INSERT INTO memories (content) VALUES ('doomed free memory') RETURNING id AS doomed_mem \gset
UPDATE memories SET content = 'plain y, doomed edit' WHERE id = :'y';
ROLLBACK TO SAVEPOINT doomed;
RELEASE SAVEPOINT doomed;

SELECT is(current_user, 'memoriesdb_pgtap_writer'::name, 'control: still the writer role after the rollback');
SELECT is((SELECT count(*) FROM audit_log WHERE row_id IN (:'doomed_msg', :'doomed_mem')), 0::bigint,
          'the rolled-back inserts left no audit row');
SELECT is((SELECT count(*) FROM audit_log WHERE row_id = :'y' AND operation = 'UPDATE'), 0::bigint,
          'the rolled-back update left no audit row');
SELECT is((SELECT count(*) FROM audit_log), :audit_before_savepoint::bigint,
          'the audit log has exactly as many rows as before the savepoint');
SELECT is((SELECT last_position FROM memory_sessions WHERE id = :'ws'), :ws_last_before::bigint,
          'the rolled-back message did not advance the session');
RESET ROLE;
SELECT is((SELECT count(*) FROM embedding_schedule WHERE memory_id IN (:'doomed_msg', :'doomed_mem')), 0::bigint,
          'the rolled-back memories are not queued for embedding');
SET ROLE memoriesdb_pgtap_writer;
SELECT add_message_to_session(:'ws', 'user', 'after the rollback') AS after_msg \gset
SELECT is((SELECT position FROM memories WHERE id = :'after_msg'), :ws_last_before::bigint + 1,
          'the next message takes the position the rolled-back one would have had');
SELECT is((SELECT db_role FROM audit_log WHERE row_id = :'after_msg'), 'memoriesdb_pgtap_writer'::name,
          'and is audited under the plain role');

-- ---------------------------------------------------------------------------------------------
-- A role that WAS granted UPDATE/DELETE/TRUNCATE is still refused, by the trigger (42501)
-- ---------------------------------------------------------------------------------------------
RESET ROLE;
SELECT count(*) AS audit_before_auditor FROM audit_log \gset
SET ROLE memoriesdb_pgtap_auditor;
SELECT is(current_user, 'memoriesdb_pgtap_auditor'::name, 'control: running as the privileged auditor role');
SELECT throws_ok(format($$UPDATE audit_log SET db_role = 'forged' WHERE id = %s$$, :su_audit_id),
                 '42501', 'audit_log is append-only: UPDATE is not allowed',
                 'the append-only trigger refuses UPDATE to a role holding the privilege');
SELECT throws_ok(format($$DELETE FROM audit_log WHERE id = %s$$, :su_audit_id),
                 '42501', 'audit_log is append-only: DELETE is not allowed',
                 'the append-only trigger refuses DELETE to a role holding the privilege');
SELECT throws_ok($$TRUNCATE audit_log$$,
                 '42501', 'audit_log is append-only: TRUNCATE is not allowed',
                 'the append-only trigger refuses TRUNCATE to a role holding the privilege');
SELECT is((SELECT count(*) FROM audit_log), :audit_before_auditor::bigint,
          'the audit log is intact after the refused attempts');
RESET ROLE;

-- ---------------------------------------------------------------------------------------------
-- Superusers pass the trigger: the intended trust boundary (see the comment at the top)
-- ---------------------------------------------------------------------------------------------
SELECT is(current_user, 'postgres'::name, 'control: back to the superuser');
SELECT lives_ok(format($$UPDATE audit_log SET db_role = 'edited_by_superuser' WHERE id = %s$$, :su_audit_id),
                'a superuser may UPDATE audit_log');
SELECT is((SELECT db_role FROM audit_log WHERE id = :su_audit_id), 'edited_by_superuser'::name,
          'the superuser''s UPDATE took effect');
SELECT lives_ok(format($$DELETE FROM audit_log WHERE id = %s$$, :su_audit_id), 'a superuser may DELETE from audit_log');
SELECT is((SELECT count(*) FROM audit_log WHERE id = :su_audit_id), 0::bigint, 'the superuser''s DELETE took effect');
SELECT lives_ok($$TRUNCATE audit_log$$, 'a superuser may TRUNCATE audit_log');
SELECT is((SELECT count(*) FROM audit_log), 0::bigint, 'the superuser''s TRUNCATE took effect');

SELECT * FROM finish();
ROLLBACK;
