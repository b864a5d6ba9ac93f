-- MemoriesDB 0.1.0 -> 0.2.0. Run by ALTER EXTENSION memoriesdb UPDATE, never by hand.
-- Every change to the schema after 0.1.0 goes here, written so that the result equals a fresh
-- install of 0.2.0 (tests/upgrade.rs compares the two catalogs object by object).
\echo Use "ALTER EXTENSION memoriesdb UPDATE" to load this file. \quit

-- The append path in Rust (src/sessions.rs): add_message_to_session() and
-- add_messages_to_session() take positions themselves, so next_session_position() goes; the
-- batch's rules, with their errors, stay in SQL as check_message_batch().
CREATE OR REPLACE FUNCTION @extschema@.add_message_to_session(session_id uuid, role text, content text, metadata jsonb DEFAULT '{}')
RETURNS uuid LANGUAGE c SECURITY DEFINER AS 'MODULE_PATHNAME', 'add_message_to_session_native';
DROP FUNCTION @extschema@.next_session_position(uuid, bigint);
CREATE FUNCTION @extschema@.check_message_batch(messages jsonb) RETURNS integer
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    message jsonb;
    n bigint;
    extra text;
BEGIN
    IF pg_catalog.jsonb_typeof(messages) <> 'array' THEN
        RAISE EXCEPTION 'messages must be a JSON array of {"role", "content", "metadata"} objects, got %: %',
            pg_catalog.jsonb_typeof(messages), pg_catalog.left(messages::text, 80)
            USING ERRCODE = '22023';
    END IF;
    FOR message, n IN SELECT e.value, e.ordinality - 1 FROM pg_catalog.jsonb_array_elements(messages) WITH ORDINALITY e LOOP
        IF pg_catalog.jsonb_typeof(message) <> 'object' THEN
            RAISE EXCEPTION 'messages[%] must be a JSON object with role and content, got %: %',
                n, pg_catalog.jsonb_typeof(message), pg_catalog.left(message::text, 80)
                USING ERRCODE = '22023';
        END IF;
        SELECT k INTO extra FROM pg_catalog.jsonb_object_keys(message) k
         WHERE k NOT IN ('role', 'content', 'metadata') ORDER BY k LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'messages[%] has an unknown key "%"', n, extra
                USING ERRCODE = '22023', HINT = 'a message has role, content and (optionally) metadata';
        END IF;
        -- (a missing or JSON null role is reported by check_message_role() as NULL)
        IF pg_catalog.jsonb_typeof(message -> 'role') NOT IN ('string', 'null') THEN
            RAISE EXCEPTION 'messages[%].role must be a non-empty string, got %', n, pg_catalog.left((message -> 'role')::text, 80)
                USING ERRCODE = '22023';
        END IF;
        PERFORM @extschema@.check_message_role(message ->> 'role', pg_catalog.format('messages[%s].role', n));
        IF coalesce(message -> 'content', 'null') = 'null' THEN
            RAISE EXCEPTION 'messages[%].content must not be NULL', n USING ERRCODE = '22004';
        END IF;
        IF pg_catalog.jsonb_typeof(message -> 'content') <> 'string' THEN
            RAISE EXCEPTION 'messages[%].content must be a string, got %: %', n,
                pg_catalog.jsonb_typeof(message -> 'content'), pg_catalog.left((message -> 'content')::text, 80)
                USING ERRCODE = '22023';
        END IF;
        -- JSON null metadata means {}, as SQL NULL does for add_message_to_session
        PERFORM @extschema@.metadata_object(nullif(message -> 'metadata', 'null'), pg_catalog.format('messages[%s].metadata', n));
    END LOOP;

    RETURN pg_catalog.jsonb_array_length(messages);
END
$$;
REVOKE ALL ON FUNCTION @extschema@.check_message_batch(jsonb) FROM PUBLIC;
CREATE OR REPLACE FUNCTION @extschema@.add_messages_to_session(session_id uuid, messages jsonb)
RETURNS SETOF uuid LANGUAGE c SECURITY DEFINER AS 'MODULE_PATHNAME', 'add_messages_to_session_native';

-- One BEFORE trigger in Rust (src/write_path.rs) derives content_hash, provenance and the
-- cleared embedding for every write, instead of update_content_hash(), stamp_provenance() and
-- invalidate_stale_embedding().
DROP TRIGGER memories_10_content_hash ON @extschema@.memories;
DROP TRIGGER memories_20_provenance ON @extschema@.memories;
DROP TRIGGER memories_30_invalidate_embedding ON @extschema@.memories;
DROP TRIGGER memory_edges_20_provenance ON @extschema@.memory_edges;
DROP FUNCTION @extschema@.update_content_hash();
DROP FUNCTION @extschema@.stamp_provenance();
DROP FUNCTION @extschema@.invalidate_stale_embedding();
CREATE FUNCTION @extschema@.derive_row_fields() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'derive_row_fields_guarded';
CREATE TRIGGER memories_10_derive_fields BEFORE INSERT OR UPDATE ON @extschema@.memories
    FOR EACH ROW EXECUTE FUNCTION @extschema@.derive_row_fields();
CREATE TRIGGER memory_edges_20_derive_fields BEFORE INSERT OR UPDATE ON @extschema@.memory_edges
    FOR EACH ROW EXECUTE FUNCTION @extschema@.derive_row_fields();
REVOKE ALL ON FUNCTION @extschema@.derive_row_fields() FROM PUBLIC;

-- The audit trigger in Rust (src/write_path.rs).
CREATE OR REPLACE FUNCTION @extschema@.log_memory_change() RETURNS trigger
    LANGUAGE c SECURITY DEFINER AS 'MODULE_PATHNAME', 'log_memory_change_guarded';

-- Events in Rust: the statement trigger on new memories (src/write_path.rs) and emit_events()
-- (src/events.rs).
CREATE OR REPLACE FUNCTION @extschema@.emit_events(channels text[], payloads text[])
RETURNS void VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'emit_events_native';
CREATE OR REPLACE FUNCTION @extschema@.memories_inserted() RETURNS trigger
    LANGUAGE c SECURITY DEFINER AS 'MODULE_PATHNAME', 'memories_inserted_guarded';

-- create_session() in Rust (src/sessions.rs).
CREATE OR REPLACE FUNCTION @extschema@.create_session(title text, metadata jsonb DEFAULT '{}')
RETURNS uuid LANGUAGE c SECURITY DEFINER AS 'MODULE_PATHNAME', 'create_session_native';

-- fork_session() in Rust (src/sessions.rs); it registers the fork itself, so register_session()
-- goes.
CREATE OR REPLACE FUNCTION @extschema@.fork_session(session_id uuid, new_title text, metadata jsonb DEFAULT '{}',
                                                    parent_message_id uuid DEFAULT NULL)
RETURNS uuid LANGUAGE c SECURITY DEFINER AS 'MODULE_PATHNAME', 'fork_session_native';
DROP FUNCTION @extschema@.register_session(uuid, uuid, bigint, uuid);

-- The audit chain's sealing and verification in Rust (src/audit.rs): the same chain, hashed in
-- one pass over a cursor.
CREATE OR REPLACE FUNCTION @extschema@.seal_audit_log(max_rows integer DEFAULT 100000)
RETURNS bigint LANGUAGE c SECURITY DEFINER AS 'MODULE_PATHNAME', 'seal_audit_log_native';
CREATE OR REPLACE FUNCTION @extschema@.verify_audit_chain()
RETURNS TABLE (intact boolean, sealed_rows bigint, unsealed_rows bigint, first_broken_position bigint,
               first_broken_audit_id bigint, problem text, last_hash text)
LANGUAGE c STABLE SECURITY DEFINER AS 'MODULE_PATHNAME', 'verify_audit_chain_native';

-- The cycle check's reachability query runs inside prevent_cycles() (src/graph.rs).
DROP FUNCTION @extschema@.edge_path_exists(uuid, uuid);

-- What the hub (and any client) needs, as API: the channel of a session, the caller's sessions,
-- one session's summary and a page of a transcript.
CREATE FUNCTION @extschema@.session_channel(session_id uuid) RETURNS text
    IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'session_channel_wrapper';
CREATE FUNCTION @extschema@.list_sessions(lim integer DEFAULT 50)
RETURNS TABLE (session_id uuid, title text, created_at timestamptz, parent_id uuid, fork_position bigint,
               last_position bigint, channel text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT m.id, m.content, m._created_at, s.parent_id, s.fork_position, s.last_position,
           @extschema@.session_channel(m.id)
      FROM (SELECT x.id, x.content, x._created_at FROM @extschema@.memories x
             WHERE x.kind = 'session' ORDER BY x._created_at DESC, x.id DESC
             LIMIT @extschema@.search_limit(lim)) m
      JOIN @extschema@.memory_sessions s ON s.id = m.id
     ORDER BY m._created_at DESC, m.id DESC
$$;
CREATE FUNCTION @extschema@.get_session(session_id uuid)
RETURNS TABLE (title text, created_at timestamptz, parent_id uuid, fork_message_id uuid, fork_position bigint,
               last_position bigint, channel text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    PERFORM @extschema@.require_session(get_session.session_id);
    RETURN QUERY
    SELECT m.content, m._created_at, s.parent_id, s.fork_message_id, s.fork_position, s.last_position,
           @extschema@.session_channel(m.id)
      FROM @extschema@.memory_sessions s JOIN @extschema@.memories m ON m.id = s.id
     WHERE s.id = get_session.session_id;
END
$$;
CREATE FUNCTION @extschema@.get_conversation_page(session_id uuid, after_position bigint DEFAULT 0,
                                                  lim integer DEFAULT 100, include_metadata boolean DEFAULT false)
RETURNS TABLE ("position" bigint, role text, content text, message_id uuid, origin_session_id uuid,
               created_at timestamptz, metadata jsonb)
LANGUAGE c STABLE SET jit = off AS 'MODULE_PATHNAME', 'get_conversation_page_native';
REVOKE ALL ON FUNCTION @extschema@.session_channel(uuid), @extschema@.list_sessions(integer),
    @extschema@.get_session(uuid), @extschema@.get_conversation_page(uuid, bigint, integer, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.session_channel(uuid), @extschema@.list_sessions(integer),
    @extschema@.get_session(uuid), @extschema@.get_conversation_page(uuid, bigint, integer, boolean) TO memoriesdb_user;

-- Does this user exist? For the roles trusted to assert identities (the hub refuses a token for
-- a user that does not exist). Runs as the caller: row-level security on users decides.
CREATE FUNCTION @extschema@.user_exists(user_id uuid) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (SELECT FROM @extschema@.users u WHERE u.id = user_exists.user_id)
$$;
REVOKE ALL ON FUNCTION @extschema@.user_exists(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.user_exists(uuid) TO memoriesdb_trusted;

-- Transcripts in Rust (src/transcripts.rs), as their caller under row-level security.
CREATE OR REPLACE FUNCTION @extschema@.get_formatted_conversation(session_id uuid, include_metadata boolean DEFAULT false)
RETURNS TABLE ("position" bigint, role text, content text, message_id uuid, origin_session_id uuid,
               created_at timestamptz, metadata jsonb)
LANGUAGE c STABLE SET jit = off AS 'MODULE_PATHNAME', 'get_formatted_conversation_native';
CREATE OR REPLACE FUNCTION @extschema@.get_conversation_text(session_id uuid)
RETURNS text LANGUAGE c STABLE SET jit = off AS 'MODULE_PATHNAME', 'get_conversation_text_native';

-- Search in Rust (src/search.rs): one statement per search (vector: per dimension, from one
-- text), the memories read rule from its one definition, rows straight into the result.
CREATE OR REPLACE FUNCTION @extschema@.search_limit(lim integer) RETURNS integer
    IMMUTABLE PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'search_limit_wrapper';
CREATE OR REPLACE FUNCTION @extschema@.search_memories(
    query text, session_id uuid DEFAULT NULL, kind_filter text DEFAULT NULL, metadata_filter jsonb DEFAULT NULL,
    lim integer DEFAULT 10, config regconfig DEFAULT NULL)
RETURNS TABLE (id uuid, content text, kind text, role text, origin_session_id uuid, "position" bigint,
               rank real, snippet text)
LANGUAGE c STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET jit = off
AS 'MODULE_PATHNAME', 'search_memories_native';
-- vector_search and hybrid_search gain `model` (compare only with that model's embeddings), and
-- hybrid_search's embedding becomes optional (NULL: embedded by the configured endpoint).
DROP FUNCTION @extschema@.vector_search(vector, double precision, integer, uuid, text, jsonb);
CREATE FUNCTION @extschema@.vector_search(
    embedding vector, threshold double precision DEFAULT 0.7, lim integer DEFAULT 10, session_id uuid DEFAULT NULL,
    kind_filter text DEFAULT NULL, metadata_filter jsonb DEFAULT NULL, model text DEFAULT NULL)
RETURNS TABLE (id uuid, content text, kind text, role text, origin_session_id uuid, "position" bigint,
               similarity double precision)
LANGUAGE c STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp SET jit = off SET hnsw.iterative_scan = 'relaxed_order' SET hnsw.ef_search = 200
AS 'MODULE_PATHNAME', 'vector_search_native';
DROP FUNCTION @extschema@.hybrid_search(text, vector, integer, uuid, text, jsonb, double precision, double precision,
                                        integer, integer, regconfig);
CREATE FUNCTION @extschema@.hybrid_search(
    query text, embedding vector DEFAULT NULL, lim integer DEFAULT 10, session_id uuid DEFAULT NULL,
    kind_filter text DEFAULT NULL, metadata_filter jsonb DEFAULT NULL, text_weight double precision DEFAULT 1.0,
    vector_weight double precision DEFAULT 1.0, rrf_k integer DEFAULT 60, candidates integer DEFAULT NULL,
    config regconfig DEFAULT NULL, model text DEFAULT NULL)
RETURNS TABLE (id uuid, content text, kind text, role text, origin_session_id uuid, "position" bigint,
               score double precision, text_rank bigint, text_score real,
               vector_rank bigint, vector_similarity double precision)
LANGUAGE c STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp SET jit = off SET hnsw.iterative_scan = 'relaxed_order' SET hnsw.ef_search = 200
AS 'MODULE_PATHNAME', 'hybrid_search_native';

-- Query embeddings from SQL (src/embeddings.rs): embed_text() and semantic_search().
CREATE FUNCTION @extschema@.semantic_search(
    query text, threshold double precision DEFAULT 0.3, lim integer DEFAULT 10, session_id uuid DEFAULT NULL,
    kind_filter text DEFAULT NULL, metadata_filter jsonb DEFAULT NULL)
RETURNS TABLE (id uuid, content text, kind text, role text, origin_session_id uuid, "position" bigint,
               similarity double precision)
LANGUAGE c STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp SET jit = off SET hnsw.iterative_scan = 'relaxed_order' SET hnsw.ef_search = 200
AS 'MODULE_PATHNAME', 'semantic_search_native';
CREATE FUNCTION @extschema@.embed_text(input text) RETURNS vector
LANGUAGE c STABLE STRICT AS 'MODULE_PATHNAME', 'embed_text_native';
REVOKE ALL ON FUNCTION @extschema@.vector_search(vector, double precision, integer, uuid, text, jsonb, text),
    @extschema@.hybrid_search(text, vector, integer, uuid, text, jsonb, double precision, double precision, integer, integer, regconfig, text),
    @extschema@.semantic_search(text, double precision, integer, uuid, text, jsonb),
    @extschema@.embed_text(text)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.vector_search(vector, double precision, integer, uuid, text, jsonb, text),
    @extschema@.hybrid_search(text, vector, integer, uuid, text, jsonb, double precision, double precision, integer, integer, regconfig, text),
    @extschema@.semantic_search(text, double precision, integer, uuid, text, jsonb),
    @extschema@.embed_text(text)
    TO memoriesdb_user;

-- The memories read rule has one definition (src/policies.rs): the memories_read policy and
-- memory_visible_to() are re-created from its text, as a fresh install creates them.
CREATE FUNCTION @extschema@.memories_read_rule_sql(id text, created_by text, session_id text, "position" text, me text, worker text)
RETURNS text IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'memories_read_rule_sql_wrapper';
REVOKE ALL ON FUNCTION @extschema@.memories_read_rule_sql(text, text, text, text, text, text) FROM PUBLIC;
DROP FUNCTION @extschema@.memory_visible_to(uuid, uuid, uuid, bigint, uuid);
DROP POLICY memories_read ON @extschema@.memories;
DO $$
BEGIN
    EXECUTE pg_catalog.format(
        'CREATE FUNCTION @extschema@.memory_visible_to(me uuid, owner uuid, session uuid, message_position bigint, memory uuid)
         RETURNS boolean LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS %L',
        'SELECT me IS NOT NULL AND '
            OPERATOR(pg_catalog.||) @extschema@.memories_read_rule_sql('memory', 'owner', 'session', 'message_position', 'me', 'false'));
END
$$;
DO $$
BEGIN
    EXECUTE pg_catalog.format(
        'CREATE POLICY memories_read ON @extschema@.memories FOR SELECT USING %s',
        @extschema@.memories_read_rule_sql(
            'memories.id', 'memories.created_by', 'memories.session_id', 'memories.position',
            '(SELECT @extschema@.current_memory_user())', '(SELECT @extschema@.acting_role_is(''memoriesdb_worker''))'));
END
$$;
REVOKE ALL ON FUNCTION @extschema@.memory_visible_to(uuid, uuid, uuid, bigint, uuid) FROM PUBLIC;

-- A new memory's audit row is written with its queue rows by memories_inserted(), once per
-- INSERT statement (one statement instead of one per row); the row trigger keeps UPDATE and
-- DELETE.
DROP TRIGGER memories_50_audit ON @extschema@.memories;
CREATE TRIGGER memories_50_audit AFTER UPDATE OR DELETE ON @extschema@.memories
    FOR EACH ROW EXECUTE FUNCTION @extschema@.log_memory_change();
