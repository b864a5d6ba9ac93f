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

-- session_lineage() in Rust (src/sessions.rs): the same walk and the same answer, without
-- PL/pgSQL's own call and search_path switch (the visibility check, session_visible_to(), is
-- still one PL/pgSQL call for users other than workers and roles that bypass row-level security).
CREATE OR REPLACE FUNCTION @extschema@.session_lineage(session_id uuid)
RETURNS TABLE (lineage_session_id uuid, visible_upto bigint, generation integer)
LANGUAGE c STABLE SECURITY DEFINER COST 100 AS 'MODULE_PATHNAME', 'session_lineage_native';

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
-- The searches gain the ranking options (importance_weight, recency_weight, half_life: see
-- sql/ranking.sql) and return importance, recency and score; they become VOLATILE (they note the
-- memories they return). vector_search and hybrid_search gain `model` (compare only with that
-- model's embeddings) and the matched passage's offsets (chunk_start, chunk_end), and
-- hybrid_search's embedding becomes optional (NULL: embedded by the configured endpoint).
DROP FUNCTION @extschema@.search_memories(text, uuid, text, jsonb, integer, regconfig);
CREATE FUNCTION @extschema@.search_memories(
    query text, session_id uuid DEFAULT NULL, kind_filter text DEFAULT NULL, metadata_filter jsonb DEFAULT NULL,
    lim integer DEFAULT 10, config regconfig DEFAULT NULL, importance_weight double precision DEFAULT 0,
    recency_weight double precision DEFAULT 0, half_life interval DEFAULT '30 days', candidates integer DEFAULT NULL)
RETURNS TABLE (id uuid, content text, kind text, role text, origin_session_id uuid, "position" bigint,
               rank real, snippet text, importance real, recency double precision, score double precision)
LANGUAGE c VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET jit = off
AS 'MODULE_PATHNAME', 'search_memories_native';
DROP FUNCTION @extschema@.vector_search(vector, double precision, integer, uuid, text, jsonb);
CREATE FUNCTION @extschema@.vector_search(
    embedding vector, threshold double precision DEFAULT 0.7, lim integer DEFAULT 10, session_id uuid DEFAULT NULL,
    kind_filter text DEFAULT NULL, metadata_filter jsonb DEFAULT NULL, model text DEFAULT NULL,
    importance_weight double precision DEFAULT 0, recency_weight double precision DEFAULT 0,
    half_life interval DEFAULT '30 days', candidates integer DEFAULT NULL)
RETURNS TABLE (id uuid, content text, kind text, role text, origin_session_id uuid, "position" bigint,
               similarity double precision, chunk_start integer, chunk_end integer,
               importance real, recency double precision, score double precision)
LANGUAGE c VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp SET jit = off SET hnsw.iterative_scan = 'relaxed_order' SET hnsw.ef_search = 200
AS 'MODULE_PATHNAME', 'vector_search_native';
DROP FUNCTION @extschema@.hybrid_search(text, vector, integer, uuid, text, jsonb, double precision, double precision,
                                        integer, integer, regconfig);
CREATE FUNCTION @extschema@.hybrid_search(
    query text, embedding vector DEFAULT NULL, lim integer DEFAULT 10, session_id uuid DEFAULT NULL,
    kind_filter text DEFAULT NULL, metadata_filter jsonb DEFAULT NULL, text_weight double precision DEFAULT 1.0,
    vector_weight double precision DEFAULT 1.0, rrf_k integer DEFAULT 60, candidates integer DEFAULT NULL,
    config regconfig DEFAULT NULL, model text DEFAULT NULL, importance_weight double precision DEFAULT 0,
    recency_weight double precision DEFAULT 0, half_life interval DEFAULT '30 days')
RETURNS TABLE (id uuid, content text, kind text, role text, origin_session_id uuid, "position" bigint,
               score double precision, text_rank bigint, text_score real,
               vector_rank bigint, vector_similarity double precision, chunk_start integer, chunk_end integer,
               fused_score double precision, importance real, recency double precision)
LANGUAGE c VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp SET jit = off SET hnsw.iterative_scan = 'relaxed_order' SET hnsw.ef_search = 200
AS 'MODULE_PATHNAME', 'hybrid_search_native';

-- Query embeddings from SQL (src/embeddings.rs): embed_text() and semantic_search().
CREATE FUNCTION @extschema@.semantic_search(
    query text, threshold double precision DEFAULT 0.3, lim integer DEFAULT 10, session_id uuid DEFAULT NULL,
    kind_filter text DEFAULT NULL, metadata_filter jsonb DEFAULT NULL, importance_weight double precision DEFAULT 0,
    recency_weight double precision DEFAULT 0, half_life interval DEFAULT '30 days', candidates integer DEFAULT NULL)
RETURNS TABLE (id uuid, content text, kind text, role text, origin_session_id uuid, "position" bigint,
               similarity double precision, chunk_start integer, chunk_end integer,
               importance real, recency double precision, score double precision)
LANGUAGE c VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp SET jit = off SET hnsw.iterative_scan = 'relaxed_order' SET hnsw.ef_search = 200
AS 'MODULE_PATHNAME', 'semantic_search_native';
CREATE FUNCTION @extschema@.embed_text(input text) RETURNS vector
LANGUAGE c STABLE STRICT AS 'MODULE_PATHNAME', 'embed_text_native';
REVOKE ALL ON FUNCTION @extschema@.search_memories(text, uuid, text, jsonb, integer, regconfig, double precision, double precision, interval, integer),
    @extschema@.vector_search(vector, double precision, integer, uuid, text, jsonb, text, double precision, double precision, interval, integer),
    @extschema@.hybrid_search(text, vector, integer, uuid, text, jsonb, double precision, double precision, integer, integer, regconfig, text,
        double precision, double precision, interval),
    @extschema@.semantic_search(text, double precision, integer, uuid, text, jsonb, double precision, double precision, interval, integer),
    @extschema@.embed_text(text)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.search_memories(text, uuid, text, jsonb, integer, regconfig, double precision, double precision, interval, integer),
    @extschema@.vector_search(vector, double precision, integer, uuid, text, jsonb, text, double precision, double precision, interval, integer),
    @extschema@.hybrid_search(text, vector, integer, uuid, text, jsonb, double precision, double precision, integer, integer, regconfig, text,
        double precision, double precision, interval),
    @extschema@.semantic_search(text, double precision, integer, uuid, text, jsonb, double precision, double precision, interval, integer),
    @extschema@.embed_text(text)
    TO memoriesdb_user;

-- The memories read rule has one definition (src/policies.rs): the memories_read policy and
-- memory_visible_to() are re-created from its text, as a fresh install creates them.
-- (expires_at: the rule refuses an expired memory, see the lifecycle below)
ALTER TABLE @extschema@.memories
    ADD COLUMN importance real CONSTRAINT memories_importance_in_range CHECK (importance BETWEEN 0 AND 1),
    ADD COLUMN expires_at timestamptz,
    ADD COLUMN valid_from timestamptz,
    ADD COLUMN valid_to timestamptz,
    ADD CONSTRAINT memories_validity_in_order CHECK (valid_to >= valid_from);
CREATE FUNCTION @extschema@.memories_read_rule_sql(id text, created_by text, session_id text, "position" text, expires_at text,
                                                   me text, worker text)
RETURNS text IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'memories_read_rule_sql_wrapper';
REVOKE ALL ON FUNCTION @extschema@.memories_read_rule_sql(text, text, text, text, text, text, text) FROM PUBLIC;
DROP FUNCTION @extschema@.memory_visible_to(uuid, uuid, uuid, bigint, uuid);
DROP POLICY memories_read ON @extschema@.memories;
DO $$
BEGIN
    EXECUTE pg_catalog.format(
        'CREATE FUNCTION @extschema@.memory_visible_to(me uuid, owner uuid, session uuid, message_position bigint, memory uuid,
                                                      expires timestamptz)
         RETURNS boolean LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS %L',
        'BEGIN RETURN memory_visible_to.me IS NOT NULL AND '
            OPERATOR(pg_catalog.||) @extschema@.memories_read_rule_sql(
                'memory_visible_to.memory', 'memory_visible_to.owner', 'memory_visible_to.session',
                'memory_visible_to.message_position', 'memory_visible_to.expires', 'memory_visible_to.me', 'false')
            OPERATOR(pg_catalog.||) '; END');
END
$$;
DO $$
BEGIN
    EXECUTE pg_catalog.format(
        'CREATE POLICY memories_read ON @extschema@.memories FOR SELECT USING %s',
        @extschema@.memories_read_rule_sql(
            'memories.id', 'memories.created_by', 'memories.session_id', 'memories.position', 'memories.expires_at',
            '(SELECT @extschema@.current_memory_user())', '(SELECT @extschema@.acting_role_is(''memoriesdb_worker''))'));
END
$$;
REVOKE ALL ON FUNCTION @extschema@.memory_visible_to(uuid, uuid, uuid, bigint, uuid, timestamptz) FROM PUBLIC;

-- A new memory's audit row is written with its queue rows by memories_inserted(), once per
-- INSERT statement (one statement instead of one per row); the row triggers keep DELETE, and
-- UPDATEs that change more than the stored embedding (sql/audit.sql).
DROP TRIGGER memories_50_audit ON @extschema@.memories;
-- An UPDATE is audited unless it is an embedding worker storing an embedding: content_embedding
-- and embedding_model are derived from the content (recomputed whenever it changes), and
-- updated_by and _updated_at are stamped by every UPDATE. Otherwise each memory's embedding, once
-- stored, would add an audit row holding its content twice over. Anyone else's change of the
-- embedding (a user or a write grantee ranking a memory first, or hiding it from searches by
-- model) is audited like any change.
CREATE TRIGGER memories_50_audit AFTER DELETE ON @extschema@.memories
    FOR EACH ROW EXECUTE FUNCTION @extschema@.log_memory_change();
CREATE TRIGGER memories_50_audit_update AFTER UPDATE ON @extschema@.memories
    FOR EACH ROW
    WHEN ((OLD.id, OLD.kind, OLD.content, OLD.content_hash, OLD.search_config, OLD._metadata, OLD.session_id,
           OLD.position, OLD.role, OLD.created_by, OLD._created_at, OLD.importance, OLD.expires_at,
           OLD.valid_from, OLD.valid_to)
          IS DISTINCT FROM
          (NEW.id, NEW.kind, NEW.content, NEW.content_hash, NEW.search_config, NEW._metadata, NEW.session_id,
           NEW.position, NEW.role, NEW.created_by, NEW._created_at, NEW.importance, NEW.expires_at,
           NEW.valid_from, NEW.valid_to)
          OR NOT @extschema@.acting_role_is('memoriesdb_worker'))
    EXECUTE FUNCTION @extschema@.log_memory_change();

-- Chunking: long memories get an embedding per passage (memory_chunks); the vector indexes
-- cover them, and store_embedding_chunks() stores them.
-- The passages of memories too long for their embedding model's window, each with its own
-- embedding (memoriesdb-embedder splits such content into overlapping token windows). The first
-- chunk's embedding is also the memory's content_embedding, so a memory of one window needs no
-- rows here. Vector search looks at memories and chunks and returns each memory once, with its
-- best passage. A chunk is current only while its content_hash is the memory's: a changed
-- content is never served through old chunks, and the next stored embedding replaces them.
CREATE TABLE @extschema@.memory_chunks (
    memory_id       uuid NOT NULL REFERENCES @extschema@.memories (id) ON DELETE CASCADE,
    chunk_index     integer NOT NULL CHECK (chunk_index >= 0),
    -- the passage: characters [start_char, end_char) of the content, 0-based, so that
    -- substr(content, start_char + 1, end_char - start_char) is its text
    start_char      integer NOT NULL CHECK (start_char >= 0),
    end_char        integer NOT NULL,
    content_hash    text NOT NULL,
    -- (the operator qualified: resolved at install, where pgvector's schema is on the path)
    embedding       vector NOT NULL CHECK (vector_norm(embedding) OPERATOR(pg_catalog.>=) 1e-10::pg_catalog.float8),
    embedding_model text NOT NULL,
    PRIMARY KEY (memory_id, chunk_index),
    CHECK (end_char > start_char)
);
COMMENT ON TABLE @extschema@.memory_chunks IS 'Embedded passages of memories longer than the embedding model reads at once';

SELECT pg_catalog.pg_extension_config_dump('@extschema@.memory_chunks', '');
ALTER TABLE @extschema@.memory_chunks ENABLE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.memory_chunks FORCE ROW LEVEL SECURITY;
-- chunks: no role but the owner reads or writes them (finalize.sql grants nothing; the search
-- functions and store_embedding_chunks() run as the owner). Should a role be granted SELECT, it
-- sees the passages of memories it may read (the subquery reads memories through
-- memories_read, the one read rule), of their current content only.
CREATE POLICY memory_chunks_read ON @extschema@.memory_chunks FOR SELECT
    USING (EXISTS (SELECT 1 FROM @extschema@.memories m
                    WHERE m.id = memory_chunks.memory_id AND m.content_hash = memory_chunks.content_hash));

-- Store the embeddings of a memory's passages (memory_chunks), computed for `content_hash`:
-- embeddings[i] is the embedding of characters [chunk_starts[i], chunk_ends[i]) of the content
-- (0-based, end excluded; passages in order, they may overlap). embeddings[1] is also stored as
-- the memory's content_embedding, and the memory's earlier chunks are replaced. Without offsets
-- (NULL), one embedding of the whole content (store_embedding). Returns false, storing nothing,
-- when the content has changed since; like store_embedding, queues the dimension's HNSW index.
-- Runs as the extension owner, so that workers need no DELETE on memory_chunks (a privilege that
-- would also let them LOCK the table and stall every search); granted to memoriesdb_worker only.
CREATE FUNCTION @extschema@.store_embedding_chunks(memory_id uuid, content_hash text, model text,
    embeddings vector[], chunk_starts integer[] DEFAULT NULL, chunk_ends integer[] DEFAULT NULL)
RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    chunks integer := pg_catalog.cardinality(embeddings);
    with_offsets boolean := chunk_starts IS NOT NULL OR chunk_ends IS NOT NULL;
    dims integer;
    content_chars integer;
    bad integer;
BEGIN
    IF store_embedding_chunks.memory_id IS NULL OR store_embedding_chunks.content_hash IS NULL THEN
        RAISE EXCEPTION 'memory_id and content_hash must not be NULL' USING ERRCODE = '22004';
    END IF;
    IF model IS NULL OR pg_catalog.btrim(model) = '' OR pg_catalog.length(model) > 200 THEN
        RAISE EXCEPTION 'model must name the embedding model (1..200 characters), got %', pg_catalog.quote_nullable(pg_catalog.left(model, 80))
            USING ERRCODE = '22023';
    END IF;
    IF chunks IS NULL OR chunks = 0 OR pg_catalog.array_ndims(embeddings) <> 1 THEN
        RAISE EXCEPTION 'embeddings must be a one-dimensional array of at least one embedding' USING ERRCODE = '22023';
    END IF;
    IF chunks > 10000 THEN
        RAISE EXCEPTION 'a memory can have at most 10000 chunks, got %', chunks USING ERRCODE = '22023';
    END IF;
    IF chunks > 1 AND NOT with_offsets THEN
        RAISE EXCEPTION 'chunk_starts and chunk_ends must give the passage of each of the % embeddings', chunks
            USING ERRCODE = '22023';
    END IF;
    dims := @extschema@.require_usable_embedding(embeddings[1], CASE WHEN with_offsets THEN 'embeddings[1]' ELSE 'embedding' END);
    FOR i IN 2 .. chunks LOOP
        IF @extschema@.require_usable_embedding(embeddings[i], pg_catalog.format('embeddings[%s]', i)) <> dims THEN
            RAISE EXCEPTION 'embeddings[%] has % dimensions, embeddings[1] has %: one model embeds all passages', i,
                memoriesdb_pgvector.vector_dims(embeddings[i]), dims USING ERRCODE = '22023';
        END IF;
    END LOOP;
    IF dims > 16000 THEN
        RAISE EXCEPTION 'embedding has % dimensions; at most 16000 are supported', dims USING ERRCODE = '22023';
    END IF;
    UPDATE @extschema@.memories m
       SET content_embedding = embeddings[1], embedding_model = model
     WHERE m.id = store_embedding_chunks.memory_id AND m.content_hash = store_embedding_chunks.content_hash
    RETURNING CASE WHEN with_offsets THEN pg_catalog.char_length(m.content) END INTO content_chars;
    IF NOT FOUND THEN
        IF NOT EXISTS (SELECT 1 FROM @extschema@.memories m WHERE m.id = store_embedding_chunks.memory_id) THEN
            RAISE EXCEPTION 'memory % does not exist', store_embedding_chunks.memory_id USING ERRCODE = 'P0002';
        END IF;
        RETURN false;  -- stale: computed from content that has changed since
    END IF;
    DELETE FROM @extschema@.memory_chunks c WHERE c.memory_id = store_embedding_chunks.memory_id;
    IF with_offsets THEN
        IF pg_catalog.cardinality(chunk_starts) IS DISTINCT FROM chunks OR pg_catalog.cardinality(chunk_ends) IS DISTINCT FROM chunks
           OR pg_catalog.array_ndims(chunk_starts) <> 1 OR pg_catalog.array_ndims(chunk_ends) <> 1 THEN
            RAISE EXCEPTION 'chunk_starts and chunk_ends must give the passage of each of the % embeddings', chunks
                USING ERRCODE = '22023';
        END IF;
        SELECT c.i INTO bad
          FROM (SELECT s, e, i, pg_catalog.lag(s) OVER (ORDER BY i) AS previous_start
                  FROM ROWS FROM (pg_catalog.unnest(chunk_starts), pg_catalog.unnest(chunk_ends)) WITH ORDINALITY AS u(s, e, i)) c
         WHERE c.s IS NULL OR c.e IS NULL OR c.s < 0 OR c.e <= c.s OR c.e > content_chars OR c.s <= c.previous_start
         ORDER BY c.i LIMIT 1;
        IF bad IS NOT NULL THEN
            RAISE EXCEPTION 'chunk % ([%, %)) is not a passage of the content (% characters) after the one before it',
                bad, chunk_starts[bad], chunk_ends[bad], content_chars USING ERRCODE = '22023',
                HINT = 'offsets count characters from 0, end excluded; passages are in order of their start';
        END IF;
        INSERT INTO @extschema@.memory_chunks (memory_id, chunk_index, start_char, end_char, content_hash, embedding, embedding_model)
        SELECT store_embedding_chunks.memory_id, u.i - 1, u.s, u.e, store_embedding_chunks.content_hash, u.v, model
          FROM ROWS FROM (pg_catalog.unnest(chunk_starts), pg_catalog.unnest(chunk_ends), pg_catalog.unnest(embeddings))
               WITH ORDINALITY AS u(s, e, v, i);
    END IF;
    UPDATE @extschema@.embedding_schedule q
       SET status = 'done', locked_until = NULL, last_error = NULL, updated_at = now()
     WHERE q.memory_id = store_embedding_chunks.memory_id AND q.content_hash = store_embedding_chunks.content_hash;
    IF dims <= 2000 AND NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_class c
         WHERE c.relname = 'memory_chunks_embedding_hnsw_' || dims AND c.relnamespace = '@extschema@'::regnamespace) THEN
        INSERT INTO @extschema@.vindexing_schedule (target, dimensions) VALUES ('vector_index', dims)
        ON CONFLICT (target, dimensions) WHERE status IN ('pending', 'processing') DO NOTHING;
    END IF;
    RETURN true;
END
$$;

-- Store the embedding computed for `content_hash`. Returns false, storing nothing, when the
-- memory's content has changed since (the queue already holds the newer content, so the work
-- is redone). Storing an embedding of a dimension that has no HNSW index yet queues its creation.
-- The memory's chunks, if it had any, are removed: this embedding is of its whole content.
CREATE OR REPLACE FUNCTION @extschema@.store_embedding(memory_id uuid, embedding vector, model text, content_hash text)
RETURNS boolean LANGUAGE sql SET search_path = pg_catalog, pg_temp
RETURN @extschema@.store_embedding_chunks(memory_id, content_hash, model, ARRAY[embedding]);

REVOKE ALL ON FUNCTION @extschema@.store_embedding_chunks(uuid, text, text, vector[], integer[], integer[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.store_embedding_chunks(uuid, text, text, vector[], integer[], integer[]) TO memoriesdb_worker;
-- Creates (if missing) the HNSW indexes for embeddings of one dimension, on memories and on
-- memory_chunks, using pgvector's expression + partial index pattern, so embeddings of different
-- dimensions coexist in one column and each dimension gets its own index. Returns the name of
-- the index on memories.
CREATE OR REPLACE FUNCTION @extschema@.create_vector_index(dimensions integer, m integer DEFAULT 16, ef_construction integer DEFAULT 64)
RETURNS text LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    index_name text := 'memories_embedding_hnsw_' || dimensions;
BEGIN
    IF dimensions IS NULL OR dimensions < 1 OR dimensions > 2000 THEN
        RAISE EXCEPTION 'dimensions must be between 1 and 2000 (pgvector''s HNSW limit), got %', dimensions
            USING ERRCODE = '22023';
    END IF;
    IF m IS NULL OR m < 2 OR m > 100 OR ef_construction IS NULL OR ef_construction < 4 OR ef_construction > 1000 THEN
        RAISE EXCEPTION 'm must be 2..100 and ef_construction 4..1000, got % and %', m, ef_construction
            USING ERRCODE = '22023';
    END IF;
    -- the passages' index first: the index on memories holds a SHARE lock on memories (writes
    -- wait) until the transaction ends, so it is built last
    EXECUTE format(
        'CREATE INDEX IF NOT EXISTS %I ON %I.memory_chunks USING hnsw ((embedding::%s.vector(%s)) %s.vector_cosine_ops)'
        ' WITH (m = %s, ef_construction = %s) WHERE %s.vector_dims(embedding) = %s',
        'memory_chunks_embedding_hnsw_' || dimensions, '@extschema@', 'memoriesdb_pgvector', dimensions,
        'memoriesdb_pgvector', m, ef_construction, 'memoriesdb_pgvector', dimensions);
    EXECUTE format(
        'CREATE INDEX IF NOT EXISTS %I ON %I.memories USING hnsw ((content_embedding::%s.vector(%s)) %s.vector_cosine_ops)'
        ' WITH (m = %s, ef_construction = %s) WHERE %s.vector_dims(content_embedding) = %s',
        index_name, '@extschema@', 'memoriesdb_pgvector', dimensions, 'memoriesdb_pgvector', m, ef_construction,
        'memoriesdb_pgvector', dimensions);
    INSERT INTO @extschema@.vector_indexes AS v (dimensions, m, ef_construction)
    VALUES (create_vector_index.dimensions, create_vector_index.m, create_vector_index.ef_construction)
    ON CONFLICT ON CONSTRAINT vector_indexes_pkey DO NOTHING;
    RETURN index_name;
END
$$;

-- Rebuild the HNSW indexes listed in vector_indexes that do not exist, e.g. after pg_restore
-- (pg_dump does not dump indexes on an extension's tables). Returns how many it built.
CREATE OR REPLACE FUNCTION @extschema@.restore_vector_indexes() RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v record;
    built integer := 0;
BEGIN
    FOR v IN SELECT * FROM @extschema@.vector_indexes ORDER BY dimensions LOOP
        IF to_regclass(format('%I.%I', '@extschema@', 'memories_embedding_hnsw_' || v.dimensions)) IS NULL
           OR to_regclass(format('%I.%I', '@extschema@', 'memory_chunks_embedding_hnsw_' || v.dimensions)) IS NULL THEN
            PERFORM @extschema@.create_vector_index(v.dimensions, v.m, v.ef_construction);
            built := built + 1;
        END IF;
    END LOOP;
    RETURN built;
END
$$;

-- The functions above name pgvector through the placeholder schema memoriesdb_pgvector: bound to
-- pgvector's real schema as finalize.sql does at install (the functions 0.1.0 installed are
-- already bound, so only the new ones change).
DO $$
DECLARE
    vector_schema text := (SELECT pg_catalog.quote_ident(n.nspname::text)
                             FROM pg_catalog.pg_extension e
                             JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) e.extnamespace
                            WHERE e.extname OPERATOR(pg_catalog.=) 'vector');
    f oid;
BEGIN
    FOR f IN SELECT p.oid FROM pg_catalog.pg_proc p
              WHERE p.pronamespace OPERATOR(pg_catalog.=) '@extschema@'::regnamespace
                AND p.prosrc OPERATOR(pg_catalog.~~) '%memoriesdb\_pgvector%' LOOP
        EXECUTE pg_catalog.replace(pg_catalog.pg_get_functiondef(f), 'memoriesdb_pgvector', vector_schema);
    END LOOP;
END
$$;
-- A memory's passages go when its content changes. Searches already ignore them (they are of
-- another content_hash), but their embeddings — from which text can partly be recovered — would
-- otherwise stay until the new content is embedded, and forever if it never is (emptied, or
-- dead in the queue).
CREATE FUNCTION @extschema@.forget_memory_chunks() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM @extschema@.memory_chunks c WHERE c.memory_id = NEW.id;
    RETURN NULL;
END
$$;
CREATE TRIGGER memories_62_forget_chunks AFTER UPDATE OF content ON @extschema@.memories
    FOR EACH ROW WHEN (OLD.content_hash IS DISTINCT FROM NEW.content_hash)
    EXECUTE FUNCTION @extschema@.forget_memory_chunks();
REVOKE ALL ON FUNCTION @extschema@.forget_memory_chunks() FROM PUBLIC;

-- The near-zero CHECK with its operator qualified (0.1.0 resolved `>=` for float8 and numeric
-- through the install's search_path, where pgvector's schema is).
ALTER TABLE @extschema@.memories DROP CONSTRAINT memories_embedding_not_near_zero;
ALTER TABLE @extschema@.memories ADD CONSTRAINT memories_embedding_not_near_zero
    CHECK (content_embedding IS NULL OR vector_norm(content_embedding) OPERATOR(pg_catalog.>=) 1e-10::pg_catalog.float8);

-- the chunk index of every dimension that has a vector index
SELECT @extschema@.restore_vector_indexes();

-- ---------------------------------------------------------------------------------------------
-- Memory lifecycle (sql/lifecycle.sql): types, importance, expiry and retention.
-- ---------------------------------------------------------------------------------------------
-- Memory types: what kind of thing a memory is. Every memory's kind is one of these (checked by
-- derive_row_fields(), src/write_path.rs: a foreign key would make every append take a share
-- lock on its type's row). The built-in types are listed in the memory_types view; an
-- administrator adds types, or changes a built-in one's defaults, with define_memory_type(),
-- which writes here. (A table of its own, empty at install, so that pg_dump keeps every row of
-- it and a restore never collides with the built-in list.) A type, once defined, stays.
--   default_importance  the importance of a memory of this type that does not set its own
--                       (ranking: see the search functions)
--   default_ttl         how long a new memory of this type lives unless it says otherwise
--                       (expires_at); NULL: for ever. A session's message_ttl comes first for
--                       its messages.
CREATE TABLE @extschema@.memory_type_definitions (
    name               text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]{0,62}$'),
    description        text NOT NULL DEFAULT '',
    default_importance real NOT NULL DEFAULT 0.5
                       CONSTRAINT memory_types_importance_in_range CHECK (default_importance BETWEEN 0 AND 1),
    default_ttl        interval
                       CONSTRAINT memory_types_ttl_positive CHECK (default_ttl > interval '0'),
    -- a session does not expire by itself (its messages do: message_ttl)
    CONSTRAINT memory_types_session_never_expires CHECK (name <> 'session' OR default_ttl IS NULL)
);
COMMENT ON TABLE @extschema@.memory_type_definitions IS 'Memory types defined by an administrator, and changed defaults of built-in ones (see memory_types)';

-- Every memory type: the built-in ones (with an administrator's changes) and the defined ones.
CREATE VIEW @extschema@.memory_types AS
SELECT b.name, coalesce(d.description, b.description) AS description,
       coalesce(d.default_importance, b.default_importance) AS default_importance,
       d.default_ttl, true AS builtin
  FROM (VALUES
        ('memory',     'a free memory (the default type)', 0.5::real),
        ('session',    'a conversation (create_session, fork_session)', 0.5),
        ('message',    'a message of a conversation (add_message_to_session)', 0.3),
        ('fact',       'a statement about a subject, with a confidence (remember_fact)', 0.8),
        ('preference', 'what a user likes, wants or avoids', 0.8),
        ('entity',     'a person, place, organisation or thing', 0.6),
        ('summary',    'an episodic summary of (part of) a conversation', 0.7),
        ('persona',    'who an assistant is, or how it should behave', 0.9),
        ('tool',       'a tool an assistant can use, and how', 0.5),
        ('workflow',   'a procedure an assistant follows', 0.5)) b (name, description, default_importance)
  LEFT JOIN @extschema@.memory_type_definitions d ON d.name = b.name
UNION ALL
SELECT d.name, d.description, d.default_importance, d.default_ttl, false
  FROM @extschema@.memory_type_definitions d
 WHERE d.name NOT IN ('memory', 'session', 'message', 'fact', 'preference', 'entity', 'summary', 'persona', 'tool', 'workflow');
COMMENT ON VIEW @extschema@.memory_types IS 'The types a memory can have, with their default importance and time to live';

SELECT pg_catalog.pg_extension_config_dump('@extschema@.memory_type_definitions', '');
ALTER TABLE @extschema@.memory_type_definitions ENABLE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.memory_type_definitions FORCE ROW LEVEL SECURITY;
CREATE POLICY memory_type_definitions_read ON @extschema@.memory_type_definitions FOR SELECT USING (true);
ALTER VIEW @extschema@.memory_types SET (security_invoker = true);
GRANT SELECT ON @extschema@.memory_types, @extschema@.memory_type_definitions TO memoriesdb_user;
-- every kind already in use becomes a defined type, so that nothing written before stops working
INSERT INTO @extschema@.memory_type_definitions (name, description)
SELECT DISTINCT m.kind, 'in use before memory types (defined by the upgrade to 0.2.0)'
  FROM @extschema@.memories m
 WHERE NOT EXISTS (SELECT 1 FROM @extschema@.memory_types t WHERE t.name = m.kind);

-- (memories.importance and expires_at are added above, with the read rule)
DROP INDEX @extschema@.memories_created_by;
CREATE INDEX memories_created_by ON @extschema@.memories (created_by, kind);
CREATE INDEX memories_expiring ON @extschema@.memories (expires_at) WHERE expires_at IS NOT NULL;
GRANT UPDATE (importance, expires_at, valid_from, valid_to) ON @extschema@.memories TO memoriesdb_user;

ALTER TABLE @extschema@.memory_sessions
    ADD COLUMN message_ttl interval CONSTRAINT memory_sessions_ttl_positive CHECK (message_ttl > interval '0');
ALTER TABLE @extschema@.memory_sessions DROP CONSTRAINT memory_sessions_fork_message_id_fkey;
ALTER TABLE @extschema@.memory_sessions ADD CONSTRAINT memory_sessions_fork_message_id_fkey
    FOREIGN KEY (fork_message_id) REFERENCES @extschema@.memories (id) ON DELETE SET NULL;
CREATE INDEX memory_sessions_fork_message ON @extschema@.memory_sessions (fork_message_id) WHERE fork_message_id IS NOT NULL;

-- edges: only those between memories the reader can see (an edge to an expired memory is gone)
DROP POLICY memory_edges_read ON @extschema@.memory_edges;
CREATE POLICY memory_edges_read ON @extschema@.memory_edges FOR SELECT
    USING (EXISTS (SELECT 1 FROM @extschema@.memories m WHERE m.id = memory_edges.source_id)
           AND EXISTS (SELECT 1 FROM @extschema@.memories m WHERE m.id = memory_edges.target_id));

-- memory_visible_to() takes the expiry now
CREATE OR REPLACE FUNCTION @extschema@.share_memory(memory_id uuid, grantee uuid, can_write boolean DEFAULT false)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    me uuid := @extschema@.current_memory_user();
    target @extschema@.memories;
BEGIN
    IF share_memory.memory_id IS NULL OR share_memory.grantee IS NULL OR share_memory.can_write IS NULL THEN
        RAISE EXCEPTION 'memory_id, grantee and can_write must not be NULL' USING ERRCODE = '22004';
    END IF;
    SELECT m.* INTO target FROM @extschema@.memories m WHERE m.id = share_memory.memory_id;
    IF NOT FOUND OR NOT @extschema@.memory_visible_to(me, target.created_by, target.session_id, target.position, target.id, target.expires_at) THEN
        RAISE EXCEPTION 'memory % does not exist', share_memory.memory_id USING ERRCODE = 'P0002';
    END IF;
    IF target.created_by IS DISTINCT FROM me THEN
        RAISE EXCEPTION 'only the owner of memory % can share it', share_memory.memory_id USING ERRCODE = '42501';
    END IF;
    IF share_memory.grantee = me THEN
        RAISE EXCEPTION 'memory % already belongs to user %', share_memory.memory_id, me USING ERRCODE = '22023';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM @extschema@.users u WHERE u.id = share_memory.grantee) THEN
        RAISE EXCEPTION 'user % does not exist', share_memory.grantee USING ERRCODE = 'P0002';
    END IF;
    INSERT INTO @extschema@.memory_shares AS s (memory_id, grantee, can_write, granted_by)
    VALUES (share_memory.memory_id, share_memory.grantee, share_memory.can_write, me)
    ON CONFLICT ON CONSTRAINT memory_shares_pkey
    DO UPDATE SET can_write = EXCLUDED.can_write, granted_at = now();
    IF target.kind = 'session' THEN
        DELETE FROM @extschema@.memory_share_segments g
         WHERE g.grantee = share_memory.grantee AND g.shared_memory = share_memory.memory_id;
        -- Each session of the lineage that is the sharer's own, up to what the branch shows. Only
        -- an owner grants access to its messages: sharing a fork of someone else's session shares
        -- the fork's own messages, not the inherited prefix (which the sharer may see only
        -- through a share of their own, and which its owner can take back at any time).
        INSERT INTO @extschema@.memory_share_segments (grantee, session_id, visible_upto, shared_memory, can_write)
        SELECT share_memory.grantee, l.lineage_session_id, l.visible_upto, share_memory.memory_id,
               share_memory.can_write AND l.lineage_session_id = share_memory.memory_id
          FROM @extschema@.session_lineage(share_memory.memory_id) l
          JOIN @extschema@.memory_sessions s ON s.id = l.lineage_session_id
         WHERE s.owner_id = me;
    END IF;
END
$$;

-- an expired message may go even when forks inherit it
CREATE OR REPLACE FUNCTION @extschema@.protect_forked_history() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- an expired message is already gone from every transcript, the forks' included
    IF OLD.expires_at <= now() THEN
        RETURN OLD;
    END IF;
    IF OLD.kind = 'session'
       AND EXISTS (SELECT 1 FROM @extschema@.memory_sessions f WHERE f.parent_id = OLD.id) THEN
        RAISE EXCEPTION 'session % has forks and cannot be deleted', OLD.id
            USING ERRCODE = '2BP01',
                  HINT = 'delete its forks first (also forks other users made of it while it was shared with them)';
    END IF;
    IF OLD.kind = 'message'
       AND EXISTS (SELECT 1 FROM @extschema@.memory_sessions f
                    WHERE f.parent_id = OLD.session_id AND f.fork_position >= OLD.position) THEN
        RAISE EXCEPTION 'message % is history a fork inherits and cannot be deleted', OLD.id
            USING ERRCODE = '2BP01',
                  HINT = 'messages after the last fork point can be deleted; delete the forks to delete the rest';
    END IF;
    RETURN OLD;
END
$$;

-- Define a memory type, or change the defaults of an existing one (built-in ones included).
-- For an administrator: nobody may execute it but the extension's owner (a superuser) unless
-- granted (GRANT EXECUTE ON FUNCTION memoriesdb.define_memory_type TO <role>). The type's
-- defaults apply to memories written from then on (default_ttl) or ranked from then on
-- (default_importance of memories that have none of their own). A description left NULL keeps
-- the type's current one.
CREATE FUNCTION @extschema@.define_memory_type(
    name text,
    description text DEFAULT NULL,
    default_importance real DEFAULT 0.5,
    default_ttl interval DEFAULT NULL)
RETURNS SETOF @extschema@.memory_types
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF define_memory_type.name IS NULL THEN
        RAISE EXCEPTION 'name must not be NULL' USING ERRCODE = '22004';
    END IF;
    IF define_memory_type.name !~ '^[a-z][a-z0-9_]{0,62}$' THEN
        RAISE EXCEPTION 'invalid memory type name "%"', left(define_memory_type.name, 64)
            USING ERRCODE = '22023',
                  HINT = 'a type name is 1 to 63 lowercase letters, digits and _, starting with a letter';
    END IF;
    IF define_memory_type.default_importance IS NULL
       OR NOT (define_memory_type.default_importance BETWEEN 0 AND 1) THEN
        RAISE EXCEPTION 'default_importance must be between 0 and 1, not %', coalesce(define_memory_type.default_importance::text, 'NULL')
            USING ERRCODE = '22023';
    END IF;
    IF define_memory_type.default_ttl <= interval '0' OR define_memory_type.default_ttl > interval '1000 years' THEN
        RAISE EXCEPTION 'default_ttl must be positive and at most 1000 years, not %', define_memory_type.default_ttl
            USING ERRCODE = '22023', HINT = 'NULL means memories of the type never expire';
    END IF;
    IF define_memory_type.name = 'session' AND define_memory_type.default_ttl IS NOT NULL THEN
        RAISE EXCEPTION 'a session does not expire by itself'
            USING ERRCODE = '22023',
                  HINT = 'set how long messages live with define_memory_type(''message'', ...) or per session with set_session_retention()';
    END IF;
    INSERT INTO @extschema@.memory_type_definitions AS d (name, description, default_importance, default_ttl)
    SELECT define_memory_type.name,
           coalesce(define_memory_type.description, t.description, ''),
           define_memory_type.default_importance, define_memory_type.default_ttl
      FROM (SELECT 1) one
      LEFT JOIN @extschema@.memory_types t ON t.name = define_memory_type.name
    ON CONFLICT ON CONSTRAINT memory_type_definitions_pkey DO UPDATE
       SET description = EXCLUDED.description, default_importance = EXCLUDED.default_importance,
           default_ttl = EXCLUDED.default_ttl;
    RETURN QUERY SELECT t.* FROM @extschema@.memory_types t WHERE t.name = define_memory_type.name;
END
$$;

-- How long the messages of one of your sessions live: message_ttl for each new message (NULL:
-- the message type's default_ttl), and with apply_to_existing also for the messages already
-- written in it (each expires message_ttl after it was written; messages it inherits from the
-- session it was forked from are the other session's, and keep theirs); and keep_last, how many
-- of its newest messages apply_retention_policies() keeps (NULL: all; messages a fork inherits
-- are always kept). A fork made later starts with the same retention. Returns the number of
-- existing messages given a new expiry. Only the session's owner may change it (42501 for a
-- grantee, P0002 for anyone else).
CREATE FUNCTION @extschema@.set_session_retention(
    session_id uuid,
    message_ttl interval,
    apply_to_existing boolean DEFAULT false,
    keep_last integer DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    me uuid := @extschema@.require_acting_user();
    unrestricted boolean := @extschema@.acting_role_bypasses_rls();
    changed bigint := 0;
BEGIN
    IF set_session_retention.session_id IS NULL THEN
        RAISE EXCEPTION 'session_id must not be NULL' USING ERRCODE = '22004';
    END IF;
    -- (at most 1000 years: now() + message_ttl must stay a timestamp)
    IF set_session_retention.message_ttl <= interval '0' OR set_session_retention.message_ttl > interval '1000 years' THEN
        RAISE EXCEPTION 'message_ttl must be positive and at most 1000 years, not %', set_session_retention.message_ttl
            USING ERRCODE = '22023', HINT = 'NULL means the message type''s default (memory_types)';
    END IF;
    IF set_session_retention.keep_last < 1 THEN
        RAISE EXCEPTION 'keep_last must be at least 1, not %', set_session_retention.keep_last
            USING ERRCODE = '22023', HINT = 'NULL keeps every message';
    END IF;
    UPDATE @extschema@.memory_sessions s
       SET message_ttl = set_session_retention.message_ttl, keep_last = set_session_retention.keep_last
     WHERE s.id = set_session_retention.session_id AND (unrestricted OR s.owner_id = me);
    IF NOT FOUND THEN
        IF @extschema@.session_listed_for(me, set_session_retention.session_id) THEN
            RAISE EXCEPTION 'only the owner of session % can change its retention', set_session_retention.session_id
                USING ERRCODE = '42501';
        END IF;
        RAISE EXCEPTION 'session % does not exist', set_session_retention.session_id
            USING ERRCODE = 'P0002', HINT = 'create one with create_session(title)';
    END IF;
    IF apply_to_existing THEN
        UPDATE @extschema@.memories m
           SET expires_at = m._created_at + set_session_retention.message_ttl
         WHERE m.session_id = set_session_retention.session_id
           AND m.expires_at IS DISTINCT FROM m._created_at + set_session_retention.message_ttl
           AND (m.expires_at IS NULL OR m.expires_at > now());
        GET DIAGNOSTICS changed = ROW_COUNT;
    END IF;
    RETURN changed;
END
$$;

-- A fork's history stays as it was when the fork was made (protect_forked_history(), in
-- sessions.sql) — except for what expires: an expired message is already gone from every
-- transcript, the forks' included, so deleting it changes nothing anyone sees.

-- Delete up to `lim` expired memories (those whose expires_at has passed), oldest expiry first,
-- and return how many: each with what hangs off it, its content erased from the audit log as
-- well (remove_memories(), sql/erasure.sql), so that expiry ends the content's life. Rows another
-- transaction holds are skipped (a later sweep gets them), so sweeps never wait on writers and
-- several may run at once. Safe to run as often as you like, e.g. every minute from pg_cron:
--   SELECT cron.schedule('memoriesdb-sweep', '* * * * *', 'SELECT memoriesdb.sweep_expired_memories()');
-- For a backlog, call it until it returns less than lim. For workers and administrators.
CREATE FUNCTION @extschema@.sweep_expired_memories(lim integer DEFAULT 10000)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    doomed uuid[];
BEGIN
    IF lim IS NULL OR lim < 1 THEN
        RAISE EXCEPTION 'lim must be a positive number of memories, not %', coalesce(lim::text, 'NULL')
            USING ERRCODE = '22023';
    END IF;
    -- (sessions never expire: derive_row_fields() refuses an expiry on one)
    SELECT pg_catalog.array_agg(x.id) INTO doomed
      FROM (SELECT m.id FROM @extschema@.memories m
             WHERE m.expires_at <= now() AND m.kind <> 'session'
             ORDER BY m.expires_at
             LIMIT lim
               FOR UPDATE SKIP LOCKED) x;
    IF doomed IS NULL THEN
        RETURN 0;
    END IF;

    -- deleted with what hangs off them, and their content erased from the audit log too
    RETURN @extschema@.remove_memories(doomed, true);
END
$$;

REVOKE ALL ON FUNCTION @extschema@.define_memory_type(text, text, real, interval),
    @extschema@.set_session_retention(uuid, interval, boolean, integer),
    @extschema@.sweep_expired_memories(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.set_session_retention(uuid, interval, boolean, integer) TO memoriesdb_user;
GRANT EXECUTE ON FUNCTION @extschema@.sweep_expired_memories(integer) TO memoriesdb_worker;

-- ---------------------------------------------------------------------------------------------
-- Facts (sql/facts.sql). (memories.valid_from and valid_to are added above, with the read rule)
-- ---------------------------------------------------------------------------------------------
CREATE TABLE @extschema@.memory_facts (
    memory_id      uuid PRIMARY KEY REFERENCES @extschema@.memories (id) ON DELETE CASCADE,
    -- the fact's owner (its memory's creator), here so that a user's facts are one index range
    owner_id       uuid REFERENCES @extschema@.users (id),
    subject        text NOT NULL CHECK (length(btrim(subject)) BETWEEN 1 AND 500),
    confidence     real NOT NULL CONSTRAINT memory_facts_confidence_in_range CHECK (confidence BETWEEN 0 AND 1),
    reinforcements integer NOT NULL DEFAULT 1 CHECK (reinforcements >= 1),
    last_stated_at timestamptz NOT NULL DEFAULT now(),
    source_message uuid REFERENCES @extschema@.memories (id) ON DELETE SET NULL,
    superseded_by  uuid REFERENCES @extschema@.memories (id) ON DELETE SET NULL
);
COMMENT ON TABLE @extschema@.memory_facts IS 'Facts: subject, confidence, reinforcements, source and successor of memories of type fact';
CREATE INDEX memory_facts_subject ON @extschema@.memory_facts (owner_id, lower(subject));
CREATE INDEX memory_facts_source ON @extschema@.memory_facts (source_message) WHERE source_message IS NOT NULL;
CREATE INDEX memory_facts_successor ON @extschema@.memory_facts (superseded_by) WHERE superseded_by IS NOT NULL;
-- remember_fact()'s lookup of a statement the user already holds
CREATE INDEX memories_facts_by_hash ON @extschema@.memories (created_by, content_hash) WHERE kind = 'fact';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.memory_facts', '');

-- Remember a fact: `statement` about `subject`, with `confidence` in [0, 1], optionally taken from
-- `source_message` (a message you can see), valid from `valid_from` (default now), replacing the
-- fact `supersedes` (one of yours, still valid: it gets valid_to = now and superseded_by = the new
-- fact). Returns the fact's id. If you already hold a valid fact with the same statement, that
-- fact is returned instead of a new one: its reinforcements go up by one and its confidence to
-- the higher of the two (and a `supersedes` given points to it).
CREATE FUNCTION @extschema@.remember_fact(
    subject text,
    statement text,
    confidence real DEFAULT 0.8,
    source_message uuid DEFAULT NULL,
    metadata jsonb DEFAULT '{}',
    supersedes uuid DEFAULT NULL,
    valid_from timestamptz DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    me uuid := @extschema@.require_acting_user();
    unrestricted boolean := @extschema@.acting_role_bypasses_rls();
    clean_metadata jsonb := @extschema@.metadata_object(remember_fact.metadata, 'metadata');
    hash text;
    fact uuid;
    replaced record;
BEGIN
    IF remember_fact.subject IS NULL OR remember_fact.statement IS NULL THEN
        RAISE EXCEPTION '% must not be NULL', CASE WHEN remember_fact.subject IS NULL THEN 'subject' ELSE 'statement' END
            USING ERRCODE = '22004';
    END IF;
    IF length(btrim(remember_fact.subject)) NOT BETWEEN 1 AND 500 THEN
        RAISE EXCEPTION 'subject must be 1 to 500 characters, not blank' USING ERRCODE = '22023';
    END IF;
    IF btrim(remember_fact.statement) = '' THEN
        RAISE EXCEPTION 'statement must not be blank' USING ERRCODE = '22023';
    END IF;
    IF remember_fact.confidence IS NULL OR NOT (remember_fact.confidence BETWEEN 0 AND 1) THEN
        RAISE EXCEPTION 'confidence must be between 0 and 1, not %', coalesce(remember_fact.confidence::text, 'NULL')
            USING ERRCODE = '22023';
    END IF;
    IF remember_fact.source_message IS NOT NULL AND NOT EXISTS (
           SELECT 1 FROM @extschema@.memories m
            WHERE m.id = remember_fact.source_message AND m.kind = 'message'
              AND (unrestricted OR @extschema@.memory_visible_to(me, m.created_by, m.session_id, m.position, m.id, m.expires_at))) THEN
        RAISE EXCEPTION 'message % does not exist', remember_fact.source_message USING ERRCODE = 'P0002';
    END IF;
    -- one statement of a user's at a time: the lookup below and the insert are one step (a row
    -- lock that foreign-key checks of the user's other writes do not wait for)
    PERFORM 1 FROM @extschema@.users u WHERE u.id = me FOR NO KEY UPDATE;
    IF remember_fact.supersedes IS NOT NULL THEN
        SELECT m.id, m.valid_to, f.superseded_by INTO replaced
          FROM @extschema@.memories m JOIN @extschema@.memory_facts f ON f.memory_id = m.id
         WHERE m.id = remember_fact.supersedes AND (unrestricted OR m.created_by = me)
           AND (m.expires_at IS NULL OR m.expires_at > now())
           FOR UPDATE OF m;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'fact % does not exist', remember_fact.supersedes
                USING ERRCODE = 'P0002', HINT = 'supersedes names one of your own facts';
        END IF;
        IF replaced.valid_to IS NOT NULL AND replaced.valid_to <= now() THEN
            RAISE EXCEPTION 'fact % is no longer valid (superseded by %)', remember_fact.supersedes,
                coalesce(replaced.superseded_by::text, 'nothing') USING ERRCODE = '22023';
        END IF;
    END IF;

    hash := @extschema@.content_sha256(remember_fact.statement);
    SELECT m.id INTO fact
      FROM @extschema@.memories m
     WHERE m.kind = 'fact' AND m.created_by = me AND m.content_hash = hash
       AND m.content = remember_fact.statement
       AND (m.valid_to IS NULL OR m.valid_to > now()) AND (m.expires_at IS NULL OR m.expires_at > now())
     ORDER BY m._created_at LIMIT 1;
    IF FOUND THEN
        UPDATE @extschema@.memory_facts f
           SET reinforcements = f.reinforcements + 1, last_stated_at = now(),
               confidence = greatest(f.confidence, remember_fact.confidence)
         WHERE f.memory_id = fact;
    ELSE
        fact := @extschema@.uuid_generate_v7();
        INSERT INTO @extschema@.memories (id, kind, content, _metadata, valid_from)
        VALUES (fact, 'fact', remember_fact.statement, clean_metadata, coalesce(remember_fact.valid_from, now()));
        INSERT INTO @extschema@.memory_facts (memory_id, owner_id, subject, confidence, source_message)
        VALUES (fact, me, btrim(remember_fact.subject), remember_fact.confidence, remember_fact.source_message);
    END IF;
    IF remember_fact.supersedes IS NOT NULL AND remember_fact.supersedes <> fact THEN
        UPDATE @extschema@.memories m SET valid_to = now() WHERE m.id = remember_fact.supersedes;
        UPDATE @extschema@.memory_facts f SET superseded_by = fact WHERE f.memory_id = remember_fact.supersedes;
    END IF;
    RETURN fact;
END
$$;

-- The facts you can see, most confident first: about `subject` (any letter case; NULL: all),
-- valid at `as_of` (default now: the current ones), or every version with include_superseded.
-- Runs as the caller, under row-level security.
CREATE FUNCTION @extschema@.facts(
    subject text DEFAULT NULL,
    as_of timestamptz DEFAULT NULL,
    include_superseded boolean DEFAULT false,
    lim integer DEFAULT 100)
RETURNS TABLE (fact_id uuid, subject text, statement text, confidence real, reinforcements integer,
               valid_from timestamptz, valid_to timestamptz, superseded_by uuid, source_message uuid,
               owner_id uuid, created_at timestamptz)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT m.id, f.subject, m.content, f.confidence, f.reinforcements, m.valid_from, m.valid_to,
           f.superseded_by, f.source_message, f.owner_id, m._created_at
      FROM @extschema@.memory_facts f
      JOIN @extschema@.memories m ON m.id = f.memory_id
     WHERE (facts.subject IS NULL OR lower(f.subject) = lower(btrim(facts.subject)))
       AND (facts.include_superseded
            OR ((m.valid_from IS NULL OR m.valid_from <= coalesce(facts.as_of, now()))
                AND (m.valid_to IS NULL OR m.valid_to > coalesce(facts.as_of, now()))))
     ORDER BY f.confidence DESC, m._created_at DESC, m.id
     LIMIT @extschema@.search_limit(facts.lim)
$$;
ALTER TABLE @extschema@.memory_facts ENABLE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.memory_facts FORCE ROW LEVEL SECURITY;
CREATE POLICY memory_facts_read ON @extschema@.memory_facts FOR SELECT
    USING (EXISTS (SELECT 1 FROM @extschema@.memories m WHERE m.id = memory_facts.memory_id));
GRANT SELECT ON @extschema@.memory_facts TO memoriesdb_user;
REVOKE ALL ON FUNCTION @extschema@.remember_fact(text, text, real, uuid, jsonb, uuid, timestamptz),
    @extschema@.facts(text, timestamptz, boolean, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.remember_fact(text, text, real, uuid, jsonb, uuid, timestamptz),
    @extschema@.facts(text, timestamptz, boolean, integer) TO memoriesdb_user;

-- Ranking by importance and recency, and access tracking (sql/ranking.sql).
-- How often searches by each user returned each memory, and when last (folded from the log).
-- Per user: recency is the reader's own (when did *I* last use it), and nobody learns from it
-- what another user searched for.
CREATE TABLE @extschema@.memory_access (
    memory_id        uuid NOT NULL REFERENCES @extschema@.memories (id) ON DELETE CASCADE,
    user_id          uuid NOT NULL REFERENCES @extschema@.users (id) ON DELETE CASCADE,
    access_count     bigint NOT NULL CHECK (access_count >= 1),
    last_accessed_at timestamptz NOT NULL,
    PRIMARY KEY (memory_id, user_id)
);
COMMENT ON TABLE @extschema@.memory_access IS 'How often searches by each user returned each memory, and when last (fold_memory_accesses)';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.memory_access', '');

-- Searches' accesses not yet folded: append-only, unlogged (lost in a crash: only statistics),
-- without a foreign key (whose check would lock the memory's row for every search).
CREATE UNLOGGED TABLE @extschema@.memory_access_log (
    memory_id   uuid NOT NULL,
    user_id     uuid NOT NULL,
    accessed_at timestamptz NOT NULL
);
COMMENT ON TABLE @extschema@.memory_access_log IS 'Accesses recorded by searches, until fold_memory_accesses() counts them';

-- Count up to `lim` logged accesses into memory_access (access_count up, last_accessed_at to the
-- latest) and remove them from the log; returns how many it took from the log. Accesses of
-- memories (or by users) that no longer exist are dropped. Rows another fold holds are skipped, so folds never wait on each
-- other; logging searches never wait on a fold. For workers and administrators, e.g. every
-- minute from pg_cron:
--   SELECT cron.schedule('memoriesdb-accesses', '* * * * *', 'SELECT memoriesdb.fold_memory_accesses()');
CREATE FUNCTION @extschema@.fold_memory_accesses(lim integer DEFAULT 100000)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    counted bigint;
BEGIN
    IF lim IS NULL OR lim < 1 THEN
        RAISE EXCEPTION 'lim must be a positive number of accesses, not %', coalesce(lim::text, 'NULL')
            USING ERRCODE = '22023';
    END IF;
    WITH taken AS (
           DELETE FROM @extschema@.memory_access_log l
            WHERE l.ctid = ANY (ARRAY(SELECT x.ctid FROM @extschema@.memory_access_log x LIMIT lim FOR UPDATE SKIP LOCKED))
           RETURNING l.memory_id, l.user_id, l.accessed_at),
         counted_accesses AS (
           SELECT t.memory_id, t.user_id, count(*) AS n, max(t.accessed_at) AS last_at
             FROM taken t GROUP BY t.memory_id, t.user_id),
         -- (in key order: two folds upserting the same rows lock them in the same order)
         folded AS (
           INSERT INTO @extschema@.memory_access AS a (memory_id, user_id, access_count, last_accessed_at)
           SELECT c.memory_id, c.user_id, c.n, c.last_at
             FROM counted_accesses c
            WHERE EXISTS (SELECT 1 FROM @extschema@.memories m WHERE m.id = c.memory_id)
              AND EXISTS (SELECT 1 FROM @extschema@.users u WHERE u.id = c.user_id)
            ORDER BY c.memory_id, c.user_id
           ON CONFLICT ON CONSTRAINT memory_access_pkey DO UPDATE
              SET access_count = a.access_count + EXCLUDED.access_count,
                  last_accessed_at = greatest(a.last_accessed_at, EXCLUDED.last_accessed_at)
           RETURNING 1)
    SELECT coalesce(sum(c.n), 0) INTO counted FROM counted_accesses c;
    RETURN counted;
END
$$;
ALTER TABLE @extschema@.memory_access ENABLE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.memory_access FORCE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.memory_access_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.memory_access_log FORCE ROW LEVEL SECURITY;
CREATE POLICY memory_access_read ON @extschema@.memory_access FOR SELECT
    USING (user_id = (SELECT @extschema@.current_memory_user())
           AND EXISTS (SELECT 1 FROM @extschema@.memories m WHERE m.id = memory_access.memory_id));
GRANT SELECT ON @extschema@.memory_access TO memoriesdb_user;
REVOKE ALL ON FUNCTION @extschema@.fold_memory_accesses(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.fold_memory_accesses(integer) TO memoriesdb_worker;

-- Context for a prompt (sql/context.sql) and the transcript's newest messages (sql/sessions.sql).
-- get_recent_messages: the last lim messages of a session's transcript (after after_position and
-- before before_position, NULL: to the end), in order, as get_formatted_conversation() returns
-- them: the latest turns for a prompt, or the page before one a client shows (scrolling back).
-- Each segment is read backwards from its end, so it costs what it returns.
CREATE FUNCTION @extschema@.get_recent_messages(session_id uuid, lim integer DEFAULT 20, after_position bigint DEFAULT 0,
                                                before_position bigint DEFAULT NULL, include_metadata boolean DEFAULT false)
RETURNS TABLE ("position" bigint, role text, content text, message_id uuid, origin_session_id uuid,
               created_at timestamptz, metadata jsonb)
LANGUAGE c STABLE SET jit = off AS 'MODULE_PATHNAME', 'get_recent_messages_native';

-- Summaries of the start of a session's transcript (episodic summaries): a memory of type
-- 'summary' (its content the summary; the summary is its writer's memory, like any other) that
-- stands for the session's transcript up to upto_position. Written by add_session_summary().
CREATE TABLE @extschema@.memory_summaries (
    memory_id     uuid PRIMARY KEY REFERENCES @extschema@.memories (id) ON DELETE CASCADE,
    session_id    uuid NOT NULL REFERENCES @extschema@.memory_sessions (id) ON DELETE CASCADE,
    upto_position bigint NOT NULL CHECK (upto_position >= 1)
);
COMMENT ON TABLE @extschema@.memory_summaries IS 'Summaries (memories of type summary) of sessions'' transcripts up to a position';
CREATE INDEX memory_summaries_session ON @extschema@.memory_summaries (session_id, upto_position);
SELECT pg_catalog.pg_extension_config_dump('@extschema@.memory_summaries', '');

-- How many tokens a text is estimated to take in a prompt: one per 4 characters, rounded up,
-- plus 4 for the item around it (role, separators) — the rule of thumb of OpenAI's tokenizers
-- for English; other scripts and code take more tokens per character, so leave a margin.
CREATE FUNCTION @extschema@.estimate_tokens(content text) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT (ceil(pg_catalog.char_length(estimate_tokens.content) / 4.0) + 4)::integer
$$;

-- Store a summary of session_id's transcript up to position upto_position (1 .. the session's
-- last position), for get_context() to use in place of those messages. Any user the session is
-- listed for (its owner, or a grantee it is shared with) may summarise it; the summary is a memory of theirs (type 'summary', with
-- `metadata`), visible to whom they share it with. Returns its id. A later summary reaching
-- further replaces an earlier one in get_context (both are kept).
CREATE FUNCTION @extschema@.add_session_summary(
    session_id uuid,
    summary text,
    upto_position bigint,
    metadata jsonb DEFAULT '{}')
RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    me uuid := @extschema@.require_acting_user();
    clean_metadata jsonb := @extschema@.metadata_object(add_session_summary.metadata, 'metadata');
    last_position bigint;
    summary_id uuid := @extschema@.uuid_generate_v7();
BEGIN
    IF add_session_summary.session_id IS NULL OR add_session_summary.summary IS NULL OR add_session_summary.upto_position IS NULL THEN
        RAISE EXCEPTION 'session_id, summary and upto_position must not be NULL' USING ERRCODE = '22004';
    END IF;
    -- (listed, not merely visible: a grantee of a fork sees a prefix of its ancestors, and must
    -- learn nothing of how far they went on after the fork point)
    IF NOT (@extschema@.acting_role_bypasses_rls() OR @extschema@.session_listed_for(me, add_session_summary.session_id)) THEN
        RAISE EXCEPTION 'session % does not exist', add_session_summary.session_id
            USING ERRCODE = 'P0002', HINT = 'create one with create_session(title)';
    END IF;
    IF btrim(add_session_summary.summary) = '' THEN
        RAISE EXCEPTION 'summary must not be blank' USING ERRCODE = '22023';
    END IF;
    SELECT s.last_position INTO last_position FROM @extschema@.memory_sessions s WHERE s.id = add_session_summary.session_id;
    IF add_session_summary.upto_position NOT BETWEEN 1 AND last_position THEN
        RAISE EXCEPTION 'upto_position must be a position of the session (1 .. %), not %', last_position,
            add_session_summary.upto_position USING ERRCODE = '22023';
    END IF;
    INSERT INTO @extschema@.memories (id, kind, content, _metadata)
    VALUES (summary_id, 'summary', add_session_summary.summary, clean_metadata);
    INSERT INTO @extschema@.memory_summaries (memory_id, session_id, upto_position)
    VALUES (summary_id, add_session_summary.session_id, add_session_summary.upto_position);
    RETURN summary_id;
END
$$;

-- What get_context() returns, one row per item, in prompt order (ordinal): the facts, then the
-- memories (each best first), then the summary, then the messages (in transcript order).
CREATE TYPE @extschema@.context_item AS (
    ordinal           integer,           -- 1, 2, ...: the order to put the items in a prompt
    section           text,              -- 'fact', 'memory', 'summary' or 'message'
    id                uuid,              -- the memory
    kind              text,
    role              text,              -- a message's role
    content           text,
    origin_session_id uuid,              -- the session a message (or a summarised transcript) is from
    "position"        bigint,            -- a message's position; a summary's upto_position
    created_at        timestamptz,
    score             double precision,  -- a fact's or memory's ranking score (the searches')
    tokens            integer,           -- estimate_tokens(content)
    details           jsonb              -- a fact's subject, confidence and source message
);

-- The context for the next turn of session_id, within max_tokens (estimate_tokens() of each
-- item, summed):
--   1. the latest message (the turn to answer), if it fits;
--   2. facts (type 'fact', valid now) and 3. other memories relevant to `query` (default: the
--      latest user message), at most facts_limit and memories_limit, best score first, each if
--      it fits — full-text relevance (any of the query's words), or with semantic => true the
--      hybrid of full-text and meaning (embed_text: needs the embedding endpoint), ranked with
--      importance and recency as the searches rank (importance_weight, recency_weight,
--      half_life); messages of this conversation are left out (they are the transcript);
--   4. the latest summary of the transcript (add_session_summary; its own or an ancestor's
--      inherited part), if it fits: the messages it covers are then left out;
--   5. the messages before the latest, newest first, while they fit (at most last_n messages
--      in all, NULL: no limit) — a window without holes.
CREATE FUNCTION @extschema@.get_context(
    session_id uuid,
    max_tokens integer DEFAULT 2000,
    last_n integer DEFAULT NULL,
    query text DEFAULT NULL,
    facts_limit integer DEFAULT 5,
    memories_limit integer DEFAULT 5,
    semantic boolean DEFAULT false,
    importance_weight double precision DEFAULT 0.3,
    recency_weight double precision DEFAULT 0.3,
    half_life interval DEFAULT '30 days')
RETURNS SETOF @extschema@.context_item
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp SET jit = off AS $$
DECLARE
    session @extschema@.memory_sessions;
    budget integer := get_context.max_tokens;
    chosen @extschema@.context_item[] := '{}';
    item @extschema@.context_item;
    latest record;
    latest_position bigint;
    summary record;
    summary_upto bigint;
    more integer;
    words text;
    retrieved_facts integer := 0;
    retrieved_memories integer := 0;
BEGIN
    session := @extschema@.require_session(get_context.session_id);
    IF get_context.max_tokens IS NULL OR get_context.max_tokens NOT BETWEEN 1 AND 1000000 THEN
        RAISE EXCEPTION 'max_tokens must be between 1 and 1000000, not %', coalesce(get_context.max_tokens::text, 'NULL')
            USING ERRCODE = '22023';
    END IF;
    IF get_context.last_n IS NOT NULL AND get_context.last_n NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION 'last_n must be between 1 and 10000 (or NULL: as many as fit), not %', get_context.last_n
            USING ERRCODE = '22023';
    END IF;
    IF get_context.facts_limit IS NULL OR get_context.facts_limit NOT BETWEEN 0 AND 100
       OR get_context.memories_limit IS NULL OR get_context.memories_limit NOT BETWEEN 0 AND 100 THEN
        RAISE EXCEPTION 'facts_limit and memories_limit must be between 0 and 100, not % and %',
            coalesce(get_context.facts_limit::text, 'NULL'), coalesce(get_context.memories_limit::text, 'NULL')
            USING ERRCODE = '22023';
    END IF;
    IF get_context.semantic IS NULL THEN
        RAISE EXCEPTION 'semantic must not be NULL' USING ERRCODE = '22004';
    END IF;

    -- 1. the latest message
    SELECT r.* INTO latest FROM @extschema@.get_recent_messages(get_context.session_id, 1) r;
    IF FOUND AND @extschema@.estimate_tokens(latest.content) <= budget THEN
        chosen := chosen || ROW(NULL, 'message', latest.message_id, 'message', latest.role, latest.content,
                                latest.origin_session_id, latest.position, latest.created_at, NULL,
                                @extschema@.estimate_tokens(latest.content), NULL)::@extschema@.context_item;
        budget := budget - @extschema@.estimate_tokens(latest.content);
        latest_position := latest.position;
    END IF;

    -- 2, 3. relevant facts and memories: any of the query's words (punctuation, which the search
    -- syntax would read as operators, dropped), ranked
    IF get_context.query IS NULL THEN
        SELECT r.content INTO get_context.query
          FROM @extschema@.get_recent_messages(get_context.session_id, 20) r
         ORDER BY r.role = 'user' DESC, r.position DESC LIMIT 1;
    END IF;
    words := pg_catalog.regexp_replace(
                 pg_catalog.btrim(pg_catalog.regexp_replace(pg_catalog.left(get_context.query, 2000), '[^[:alnum:]]+', ' ', 'g')),
                 ' +', ' or ', 'g');
    IF words <> '' AND (get_context.facts_limit > 0 OR get_context.memories_limit > 0) THEN
        FOR item IN
            WITH found AS (
                   SELECT s.id, s.kind, s.role, s.content, s.origin_session_id, s.position, s.score
                     FROM @extschema@.search_memories(words, lim => 100, importance_weight => get_context.importance_weight,
                                                      recency_weight => get_context.recency_weight,
                                                      half_life => get_context.half_life) s
                    WHERE NOT get_context.semantic
                   UNION ALL
                   SELECT h.id, h.kind, h.role, h.content, h.origin_session_id, h.position, h.score
                     FROM @extschema@.hybrid_search(words, @extschema@.embed_text(get_context.query), lim => 100,
                                                    importance_weight => get_context.importance_weight,
                                                    recency_weight => get_context.recency_weight,
                                                    half_life => get_context.half_life) h
                    WHERE get_context.semantic)
            SELECT NULL::integer, CASE WHEN f.kind = 'fact' THEN 'fact' ELSE 'memory' END, f.id, f.kind, f.role, f.content,
                   f.origin_session_id, f.position, m._created_at, f.score, @extschema@.estimate_tokens(f.content),
                   CASE WHEN f.kind = 'fact' THEN
                       (SELECT pg_catalog.jsonb_build_object('subject', x.subject, 'confidence', x.confidence,
                                                             'reinforcements', x.reinforcements, 'source_message', x.source_message)
                          FROM @extschema@.memory_facts x WHERE x.memory_id = f.id)
                   END
              FROM found f
              JOIN @extschema@.memories m ON m.id = f.id
             WHERE f.kind NOT IN ('session', 'summary')
               -- not a message of this conversation's transcript
               AND NOT EXISTS (SELECT 1 FROM @extschema@.session_lineage(get_context.session_id) l
                                WHERE l.lineage_session_id = f.origin_session_id AND f.position <= l.visible_upto)
             ORDER BY f.kind = 'fact' DESC, f.score DESC, f.id
        LOOP
            CONTINUE WHEN item.tokens > budget;
            IF item.section = 'fact' THEN
                CONTINUE WHEN retrieved_facts >= get_context.facts_limit;
                retrieved_facts := retrieved_facts + 1;
            ELSE
                CONTINUE WHEN retrieved_memories >= get_context.memories_limit;
                retrieved_memories := retrieved_memories + 1;
            END IF;
            chosen := chosen || item;
            budget := budget - item.tokens;
        END LOOP;
    END IF;

    -- 4. the latest summary of (a part of) this transcript the caller can see
    SELECT m.id, m.content, m._created_at, s.session_id, s.upto_position INTO summary
      FROM @extschema@.session_lineage(get_context.session_id) l
      JOIN @extschema@.memory_summaries s ON s.session_id = l.lineage_session_id AND s.upto_position <= l.visible_upto
      JOIN @extschema@.memories m ON m.id = s.memory_id
     WHERE s.upto_position < coalesce(latest_position, pg_catalog.int8in('9223372036854775807'))
     ORDER BY s.upto_position DESC, m._created_at DESC
     LIMIT 1;
    IF FOUND AND @extschema@.estimate_tokens(summary.content) <= budget THEN
        chosen := chosen || ROW(NULL, 'summary', summary.id, 'summary', NULL, summary.content, summary.session_id,
                                summary.upto_position, summary._created_at, NULL,
                                @extschema@.estimate_tokens(summary.content), NULL)::@extschema@.context_item;
        budget := budget - @extschema@.estimate_tokens(summary.content);
        summary_upto := summary.upto_position;
    END IF;

    -- 5. the messages before the latest, newest first, while they fit (each takes at least 5
    -- tokens: no more than max_tokens / 5 can)
    more := least(coalesce(get_context.last_n, 10000) - 1, get_context.max_tokens / 5);
    IF latest_position IS NOT NULL AND more >= 1 THEN
        FOR item IN
            SELECT NULL::integer, 'message', r.message_id, 'message', r.role, r.content, r.origin_session_id, r.position,
                   r.created_at, NULL::double precision, @extschema@.estimate_tokens(r.content), NULL::jsonb
              FROM @extschema@.get_recent_messages(get_context.session_id, more,
                       after_position => coalesce(summary_upto, 0), before_position => latest_position) r
             ORDER BY r.position DESC
        LOOP
            EXIT WHEN item.tokens > budget;
            chosen := chosen || item;
            budget := budget - item.tokens;
        END LOOP;
    END IF;

    RETURN QUERY
    SELECT (pg_catalog.row_number() OVER (ORDER BY c.o))::integer, c.section, c.id, c.kind, c.role, c.content,
           c.origin_session_id, c.position, c.created_at, c.score, c.tokens, c.details
      FROM (SELECT x.*, pg_catalog.row_number() OVER (
                    ORDER BY pg_catalog.array_position(ARRAY['fact', 'memory', 'summary', 'message'], x.section),
                             x.score DESC NULLS LAST, x.position, x.id) AS o
              FROM pg_catalog.unnest(chosen) x) c
     ORDER BY c.o;
END
$$;
ALTER TABLE @extschema@.memory_summaries ENABLE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.memory_summaries FORCE ROW LEVEL SECURITY;
CREATE POLICY memory_summaries_read ON @extschema@.memory_summaries FOR SELECT
    USING (EXISTS (SELECT 1 FROM @extschema@.memories m WHERE m.id = memory_summaries.memory_id));
GRANT SELECT ON @extschema@.memory_summaries TO memoriesdb_user;
REVOKE ALL ON FUNCTION @extschema@.get_recent_messages(uuid, integer, bigint, bigint, boolean),
    @extschema@.estimate_tokens(text), @extschema@.add_session_summary(uuid, text, bigint, jsonb),
    @extschema@.get_context(uuid, integer, integer, text, integer, integer, boolean, double precision, double precision, interval)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.get_recent_messages(uuid, integer, bigint, bigint, boolean),
    @extschema@.estimate_tokens(text), @extschema@.add_session_summary(uuid, text, bigint, jsonb),
    @extschema@.get_context(uuid, integer, integer, text, integer, integer, boolean, double precision, double precision, interval)
    TO memoriesdb_user;

-- Statistics (sql/statistics.sql).
-- Per user: what they wrote (created_by), by type, how much text, how much embedded, and their
-- activity.
-- (each view reads a function with jit = off: row-level security inflates the plans' cost
-- estimates past jit_above_cost, and compiling them took 0.9 s for a 5 ms query)
CREATE FUNCTION @extschema@.user_statistics_rows()
RETURNS TABLE (user_id uuid, memories bigint, sessions bigint, messages bigint, facts bigint, by_kind jsonb,
               content_bytes bigint, embedded bigint, embedded_percent numeric, expiring bigint,
               messages_last_day bigint, messages_last_week bigint, first_written_at timestamptz,
               last_written_at timestamptz)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp SET jit = off AS $$
WITH per_kind AS (
    SELECT m.created_by, m.kind,
           count(*) AS memories,
           sum(pg_catalog.octet_length(m.content)) AS content_bytes,
           count(m.content_embedding) AS embedded,
           count(*) FILTER (WHERE m.expires_at IS NOT NULL) AS expiring,
           count(*) FILTER (WHERE m._created_at > now() - interval '1 day') AS last_day,
           count(*) FILTER (WHERE m._created_at > now() - interval '7 days') AS last_week,
           min(m._created_at) AS first_written_at,
           max(m._created_at) AS last_written_at
      -- (two branches, each behind a one-time filter, rather than "bypasses OR created_by = me",
      -- which no index can serve: a user's figures read their rows through memories_created_by)
      FROM (SELECT x.* FROM @extschema@.memories x
             WHERE NOT (SELECT @extschema@.acting_role_bypasses_rls())
               AND x.created_by = (SELECT @extschema@.current_memory_user())
            UNION ALL
            SELECT x.* FROM @extschema@.memories x
             WHERE (SELECT @extschema@.acting_role_bypasses_rls()) AND x.created_by IS NOT NULL) m
     GROUP BY m.created_by, m.kind)
SELECT k.created_by AS user_id,
       sum(k.memories)::bigint AS memories,
       coalesce(sum(k.memories) FILTER (WHERE k.kind = 'session'), 0)::bigint AS sessions,
       coalesce(sum(k.memories) FILTER (WHERE k.kind = 'message'), 0)::bigint AS messages,
       coalesce(sum(k.memories) FILTER (WHERE k.kind = 'fact'), 0)::bigint AS facts,
       pg_catalog.jsonb_object_agg(k.kind, k.memories) AS by_kind,
       sum(k.content_bytes)::bigint AS content_bytes,
       sum(k.embedded)::bigint AS embedded,
       round(100.0 * sum(k.embedded) / sum(k.memories), 1) AS embedded_percent,
       sum(k.expiring)::bigint AS expiring,
       coalesce(sum(k.last_day) FILTER (WHERE k.kind = 'message'), 0)::bigint AS messages_last_day,
       coalesce(sum(k.last_week) FILTER (WHERE k.kind = 'message'), 0)::bigint AS messages_last_week,
       min(k.first_written_at) AS first_written_at,
       max(k.last_written_at) AS last_written_at
  FROM per_kind k
 GROUP BY k.created_by
$$;
CREATE VIEW @extschema@.user_statistics AS SELECT * FROM @extschema@.user_statistics_rows();
COMMENT ON VIEW @extschema@.user_statistics IS 'Per user: memories by type, text size, embedding coverage, expiring memories and message activity (your own; every user''s for administrators)';

-- Per session the caller can see: its own messages (not those it inherits from the session it was
-- forked from), their size, embedding coverage and rate.
CREATE FUNCTION @extschema@.session_statistics_rows()
RETURNS TABLE (session_id uuid, title text, owner_id uuid, parent_id uuid, fork_position bigint, last_position bigint,
               messages bigint, content_bytes bigint, embedded bigint, expiring bigint, first_message_at timestamptz,
               last_message_at timestamptz, messages_last_day bigint, messages_per_day numeric)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp SET jit = off AS $$
SELECT s.id AS session_id,
       sm.content AS title,
       s.owner_id,
       s.parent_id,
       s.fork_position,
       s.last_position,
       c.messages,
       c.content_bytes,
       c.embedded,
       c.expiring,
       c.first_message_at,
       c.last_message_at,
       c.messages_last_day,
       round((c.messages / greatest(extract(epoch FROM c.last_message_at - c.first_message_at) / 86400, 1))::numeric, 1)
           AS messages_per_day
  FROM @extschema@.memory_sessions s
  JOIN @extschema@.memories sm ON sm.id = s.id
 CROSS JOIN LATERAL (
       SELECT count(*) AS messages,
              coalesce(sum(pg_catalog.octet_length(m.content)), 0) AS content_bytes,
              count(m.content_embedding) AS embedded,
              count(*) FILTER (WHERE m.expires_at IS NOT NULL) AS expiring,
              min(m._created_at) AS first_message_at,
              max(m._created_at) AS last_message_at,
              count(*) FILTER (WHERE m._created_at > now() - interval '1 day') AS messages_last_day
         FROM @extschema@.memories m
        WHERE m.session_id = s.id AND m.position > coalesce(s.fork_position, 0)) c
$$;
CREATE VIEW @extschema@.session_statistics AS SELECT * FROM @extschema@.session_statistics_rows();
COMMENT ON VIEW @extschema@.session_statistics IS 'Per session you can see: its own messages, their size, embedding coverage and rate';

-- The store as a whole, for administrators and workers (not granted to users): sizes, embedding
-- coverage, and the backlogs of sweep_expired_memories(), the embedding workers and
-- fold_memory_accesses(). Reads as its owner: every tenant's rows.
CREATE VIEW @extschema@.memory_statistics AS
SELECT (SELECT count(*) FROM @extschema@.users) AS users,
       (SELECT count(*) FROM @extschema@.memory_sessions) AS sessions,
       t.memories,
       t.content_bytes,
       t.embedded,
       round(100.0 * t.embedded / greatest(t.memories, 1), 1) AS embedded_percent,
       (SELECT count(*) FROM @extschema@.memories e WHERE e.expires_at <= now()) AS expired_awaiting_sweep,
       (SELECT count(*) FROM @extschema@.memories e
         WHERE e.expires_at > now() AND e.expires_at <= now() + interval '1 day') AS expiring_within_day,
       (SELECT count(*) FROM @extschema@.embedding_schedule q WHERE q.status IN ('pending', 'failed', 'processing'))
           AS embeddings_waiting,
       (SELECT count(*) FROM @extschema@.embedding_schedule q WHERE q.status = 'dead') AS embeddings_dead,
       (SELECT count(*) FROM @extschema@.memory_access_log) AS accesses_awaiting_fold,
       pg_catalog.pg_total_relation_size('@extschema@.memories'::regclass) AS memories_table_bytes
  FROM (SELECT count(*) AS memories, sum(pg_catalog.octet_length(m.content)) AS content_bytes,
               count(m.content_embedding) AS embedded
          FROM @extschema@.memories m) t;
COMMENT ON VIEW @extschema@.memory_statistics IS 'The whole store: sizes, embedding coverage, and the backlogs of the sweep, the embedding queue and the access log (administrators and workers)';
ALTER VIEW @extschema@.user_statistics SET (security_invoker = true);
ALTER VIEW @extschema@.session_statistics SET (security_invoker = true);
GRANT SELECT ON @extschema@.user_statistics, @extschema@.session_statistics TO memoriesdb_user;
GRANT SELECT ON @extschema@.memory_statistics TO memoriesdb_worker;
GRANT EXECUTE ON FUNCTION @extschema@.acting_role_bypasses_rls() TO memoriesdb_user;
REVOKE ALL ON FUNCTION @extschema@.user_statistics_rows(), @extschema@.session_statistics_rows() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.user_statistics_rows(), @extschema@.session_statistics_rows() TO memoriesdb_user;

-- Erasure (sql/erasure.sql) and the audit chain's version 2 (sql/audit.sql): the chain commits to
-- each row's erasable content through its digest, so that erasure leaves it verifiable.
ALTER TABLE @extschema@.audit_log ADD COLUMN erasable_digest text, ADD COLUMN erased_at timestamptz;
ALTER TABLE @extschema@.memory_sessions ADD COLUMN inherited_erased_at timestamptz;
-- The chain's history: one row per change of how the chain is computed (an upgrade that re-seals
-- the log under a new chain version), with what the old chain was when it ended: compare
-- last_hash with a value recorded outside the database before the upgrade.
CREATE TABLE @extschema@.audit_chain_history (
    changed_at   timestamptz NOT NULL DEFAULT now(),
    from_version integer NOT NULL,
    to_version   integer NOT NULL,
    sealed_rows  bigint NOT NULL,
    last_hash    text,
    intact       boolean NOT NULL,
    problem      text
);
COMMENT ON TABLE @extschema@.audit_chain_history IS 'Changes of the audit chain''s version, with the old chain''s end and whether it verified';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.audit_chain_history', '');
ALTER TABLE @extschema@.audit_chain_history ENABLE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.audit_chain_history FORCE ROW LEVEL SECURITY;
CREATE POLICY audit_chain_history_read ON @extschema@.audit_chain_history FOR SELECT USING (true);
GRANT SELECT ON @extschema@.audit_chain_history TO memoriesdb_auditor;
DROP FUNCTION @extschema@.audit_row_text(@extschema@.audit_log);
-- The chain (chain version 2) commits to each audit row in two parts, so that erasure can remove
-- personal content from the log later and the chain still verifies:
--   audit_row_text(row)      everything but the erasable parts: its text is hashed into the link
--   audit_erasable_text(row) the erasable parts (content, content_embedding and _metadata of the
--                            row before and after): only its SHA-256, audit_log.erasable_digest,
--                            is hashed into the link
-- chain_hash = sha256(previous chain_hash || audit_row_text || erasable_digest). Verification
-- recomputes erasable_digest from the row unless the row was erased (erased_at), so changed
-- content is still detected until it is erased, and every other field always.
-- jsonb's text form is canonical; the time is hashed in UTC so that the text, and so the chain,
-- is the same whatever the session's TimeZone.
CREATE FUNCTION @extschema@.audit_row_text(a @extschema@.audit_log) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_catalog.jsonb_build_array(a.id, a.table_name, a.operation, a.row_id,
                                        a.old_row OPERATOR(pg_catalog.-) '{content,content_embedding,_metadata}'::text[],
                                        a.new_row OPERATOR(pg_catalog.-) '{content,content_embedding,_metadata}'::text[],
                                        a.acting_user, a.subject_user, a.db_role, a.txid,
                                        a.changed_at AT TIME ZONE 'UTC')::text
$$;
CREATE FUNCTION @extschema@.audit_erasable_text(a @extschema@.audit_log) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_catalog.jsonb_build_array(a.old_row -> 'content', a.old_row -> 'content_embedding', a.old_row -> '_metadata',
                                        a.new_row -> 'content', a.new_row -> 'content_embedding', a.new_row -> '_metadata')::text
$$;

-- The chain sealed by 0.1.0 (version 1: sha256(previous || the whole row's text)) is verified
-- one last time, its end and verdict recorded in audit_chain_history, and the log re-sealed under
-- version 2, in the same order. Whoever recorded the old chain's last hash outside the database
-- can check it against the history row.
DO $migrate$
DECLARE
    previous text := '';
    expected bigint := 0;
    r record;
    problem text;
BEGIN
    FOR r IN SELECT a.chain_position, a.chain_hash,
                    pg_catalog.jsonb_build_array(a.id, a.table_name, a.operation, a.row_id, a.old_row, a.new_row,
                                                 a.acting_user, a.subject_user, a.db_role, a.txid,
                                                 a.changed_at AT TIME ZONE 'UTC')::text AS row_text
               FROM @extschema@.audit_log a WHERE a.chain_position IS NOT NULL ORDER BY a.chain_position LOOP
        expected := expected + 1;
        IF r.chain_position <> expected THEN
            problem := pg_catalog.format('chain position %s is missing (next present: %s): rows were removed', expected, r.chain_position);
            EXIT;
        END IF;
        previous := @extschema@.content_sha256(previous || r.row_text);
        IF previous IS DISTINCT FROM r.chain_hash THEN
            problem := pg_catalog.format('row at chain position %s was changed after sealing', expected);
            EXIT;
        END IF;
    END LOOP;
    IF expected > 0 THEN
        INSERT INTO @extschema@.audit_chain_history (from_version, to_version, sealed_rows, last_hash, intact, problem)
        SELECT 1, 2, (SELECT pg_catalog.count(*) FROM @extschema@.audit_log x WHERE x.chain_position IS NOT NULL),
               (SELECT x.chain_hash FROM @extschema@.audit_log x WHERE x.chain_position IS NOT NULL
                 ORDER BY x.chain_position DESC LIMIT 1),
               problem IS NULL, problem;
        UPDATE @extschema@.audit_log a SET chain_position = NULL, chain_hash = NULL WHERE a.chain_position IS NOT NULL;
        PERFORM @extschema@.seal_audit_log(NULL);
    END IF;
END
$migrate$;
-- Remove the erasable content (content, content_embedding, _metadata of the row before and after)
-- from every audit row of these rows of table `table_name` ('memories' or 'memory_edges'),
-- marking them erased_at. Internal. (The table matters: ids are unique per table only, and a
-- user can choose a new row's id — an edge's id can be another user's memory's id.)
CREATE FUNCTION @extschema@.erase_audit_rows(table_name text, row_ids uuid[]) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    erased bigint;
BEGIN
    UPDATE @extschema@.audit_log a
       SET old_row = a.old_row OPERATOR(pg_catalog.-) '{content,content_embedding,_metadata}'::text[],
           new_row = a.new_row OPERATOR(pg_catalog.-) '{content,content_embedding,_metadata}'::text[],
           erased_at = now()
     WHERE a.table_name = erase_audit_rows.table_name AND a.row_id = ANY (row_ids) AND a.erased_at IS NULL
       -- (rows without erasable content, e.g. those of a memory written with an expiry, are left
       -- as they are: nothing to erase, and no new row version to write)
       AND (a.old_row OPERATOR(pg_catalog.?|) '{content,content_embedding,_metadata}'::text[]
            OR a.new_row OPERATOR(pg_catalog.?|) '{content,content_embedding,_metadata}'::text[]);
    GET DIAGNOSTICS erased = ROW_COUNT;
    RETURN erased;
END
$$;

-- Delete the memories `doomed` (locked by the caller) with everything that hangs off them, and
-- return how many. With `erase`, their content (and their edges') also leaves the audit log.
-- Sessions among them lose their session rows; forks of them that survive are detached and
-- marked inherited_erased_at. Internal: for the sweep and the erasure functions, which decide
-- who may delete what.
--
-- Set-based, for speed: row by row, each deleted memory would cost a dozen trigger calls (the
-- audit row, the forked-history check and one referential action per foreign key to memories).
-- So the function runs with session_replication_role = replica, which skips them for its own
-- statements only, and does their work itself, one statement per table. Everything it must do
-- instead is listed here; tests/lifecycle.rs checks the list against the catalog (every foreign
-- key to memories and every delete trigger of the tables touched), so a new one cannot be
-- forgotten. Other transactions keep their checks: an edge written concurrently to a memory
-- being deleted waits for the row lock the caller took and then fails its foreign key.
CREATE FUNCTION @extschema@.remove_memories(doomed uuid[], erase boolean)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET session_replication_role = replica AS $$
DECLARE
    me uuid := @extschema@.current_memory_user();
    actor name := @extschema@.acting_db_role();
    tx bigint := txid_current();
    edges uuid[];
    sessions uuid[];
    fork record;
BEGIN
    IF doomed IS NULL OR pg_catalog.cardinality(doomed) = 0 THEN
        RETURN 0;
    END IF;
    -- a session goes with its messages (memories.session_id: CASCADE)
    SELECT doomed || coalesce(pg_catalog.array_agg(m.id), '{}') INTO doomed
      FROM (SELECT m.id FROM @extschema@.memories m
             WHERE m.session_id = ANY (doomed) AND m.id <> ALL (doomed) ORDER BY m.id FOR UPDATE) m;
    SELECT pg_catalog.array_agg(e.id) INTO edges
      FROM @extschema@.memory_edges e WHERE e.source_id = ANY (doomed) OR e.target_id = ANY (doomed);
    -- their earlier audit rows first (the rows written below carry no erasable content)
    IF erase THEN
        PERFORM @extschema@.erase_audit_rows('memories', doomed);
        PERFORM @extschema@.erase_audit_rows('memory_edges', coalesce(edges, '{}'));
    END IF;

    -- the memories, audited as log_memory_change() audits an expired memory's deletion: the row
    -- without search_tsv, content, content_embedding and _metadata, marked content_redacted
    -- (built from the other columns rather than by removing those from to_jsonb(row), which would
    -- first convert them; tests/lifecycle.rs checks that both ways write the same row)
    WITH gone AS (DELETE FROM @extschema@.memories m WHERE m.id = ANY (doomed)
                  RETURNING m.id, m.kind, m.content_hash, m.embedding_model, m.search_config,
                            m.session_id, m.position, m.role, m._created_at, m._updated_at, m.created_by,
                            m.updated_by, m.importance, m.expires_at, m.valid_from, m.valid_to)
    INSERT INTO @extschema@.audit_log (table_name, operation, row_id, old_row, new_row, acting_user, subject_user, db_role, txid)
    SELECT 'memories', 'DELETE', g.id, pg_catalog.to_jsonb(g) || '{"content_redacted": true}'::jsonb,
           NULL, me, g.created_by, actor, tx
      FROM gone g ORDER BY g.expires_at, g.id;
    -- memory_edges (source_id, target_id: ON DELETE CASCADE), audited by memory_edges_50_audit
    WITH gone AS (DELETE FROM @extschema@.memory_edges e WHERE e.id = ANY (edges) RETURNING e.*)
    INSERT INTO @extschema@.audit_log (table_name, operation, row_id, old_row, new_row, acting_user, subject_user, db_role, txid)
    SELECT 'memory_edges', 'DELETE', g.id,
           pg_catalog.to_jsonb(g) OPERATOR(pg_catalog.-) CASE WHEN erase THEN '{_metadata}'::text[] ELSE '{}'::text[] END,
           NULL, me, g.created_by, actor, tx
      FROM gone g ORDER BY g.id;
    -- memory_shares (memory_id: CASCADE), audited by memory_shares_50_audit, and what a share of a
    -- session derived (memory_share_segments: CASCADE from memory_shares)
    WITH gone AS (DELETE FROM @extschema@.memory_shares s WHERE s.memory_id = ANY (doomed) RETURNING s.*)
    INSERT INTO @extschema@.audit_log (table_name, operation, row_id, old_row, new_row, acting_user, subject_user, db_role, txid)
    SELECT 'memory_shares', 'DELETE', g.memory_id, pg_catalog.to_jsonb(g), NULL, me, g.granted_by, actor, tx
      FROM gone g ORDER BY g.memory_id, g.grantee;
    DELETE FROM @extschema@.memory_share_segments g WHERE g.shared_memory = ANY (doomed);
    -- CASCADE
    DELETE FROM @extschema@.memory_chunks c WHERE c.memory_id = ANY (doomed);
    DELETE FROM @extschema@.embedding_schedule q WHERE q.memory_id = ANY (doomed);
    DELETE FROM @extschema@.vindexing_schedule v WHERE v.memory_id = ANY (doomed);
    DELETE FROM @extschema@.memory_facts f WHERE f.memory_id = ANY (doomed);
    DELETE FROM @extschema@.memory_access a WHERE a.memory_id = ANY (doomed);
    DELETE FROM @extschema@.memory_summaries s WHERE s.memory_id = ANY (doomed);
    -- SET NULL
    UPDATE @extschema@.memory_facts f SET source_message = NULL WHERE f.source_message = ANY (doomed);
    UPDATE @extschema@.memory_facts f SET superseded_by = NULL WHERE f.superseded_by = ANY (doomed);
    UPDATE @extschema@.memory_sessions s SET fork_message_id = NULL WHERE s.fork_message_id = ANY (doomed);

    -- sessions (memory_sessions.id: CASCADE), with what refers to them: share segments and
    -- summaries (CASCADE) and forks (RESTRICT: the surviving ones are detached first)
    SELECT pg_catalog.array_agg(s.id) INTO sessions FROM @extschema@.memory_sessions s WHERE s.id = ANY (doomed);
    IF sessions IS NOT NULL THEN
        FOR fork IN SELECT f.id, f.depth FROM @extschema@.memory_sessions f
                     WHERE f.parent_id = ANY (sessions) AND f.id <> ALL (sessions) LOOP
            -- the fork becomes a root: its descendants move up by its depth
            WITH RECURSIVE below AS (
                SELECT c.id FROM @extschema@.memory_sessions c WHERE c.parent_id = fork.id
                UNION ALL
                SELECT c.id FROM @extschema@.memory_sessions c JOIN below b ON c.parent_id = b.id)
            UPDATE @extschema@.memory_sessions c SET depth = c.depth - fork.depth FROM below b WHERE c.id = b.id;
            UPDATE @extschema@.memory_sessions f
               SET parent_id = NULL, depth = 0, fork_message_id = NULL, inherited_erased_at = now()
             WHERE f.id = fork.id;
        END LOOP;
        DELETE FROM @extschema@.memory_share_segments g WHERE g.session_id = ANY (sessions);
        DELETE FROM @extschema@.memory_summaries x WHERE x.session_id = ANY (sessions);
        DELETE FROM @extschema@.memory_sessions s WHERE s.id = ANY (sessions);
    END IF;
    RETURN pg_catalog.cardinality(doomed);
END
$$;

-- Delete a conversation: the session, its messages (whoever wrote them) and the summaries of it,
-- with everything that hangs off them, their content erased from the audit log too. Only the
-- session's owner (or an administrator) may: 42501 for a grantee, P0002 for anyone else. Forks
-- the owner made of it go with it when `cascade` (and are refused with 2BP01 otherwise); forks
-- other users made keep their own messages and are marked inherited_erased_at. Returns the number
-- of memories deleted.
CREATE FUNCTION @extschema@.delete_session(session_id uuid, cascade boolean DEFAULT false)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    me uuid := @extschema@.require_acting_user();
    unrestricted boolean := @extschema@.acting_role_bypasses_rls();
    owner uuid;
    sessions uuid[];
    doomed uuid[];
BEGIN
    IF delete_session.session_id IS NULL OR delete_session.cascade IS NULL THEN
        RAISE EXCEPTION 'session_id and cascade must not be NULL' USING ERRCODE = '22004';
    END IF;
    SELECT s.owner_id INTO owner FROM @extschema@.memory_sessions s
     WHERE s.id = delete_session.session_id AND (unrestricted OR s.owner_id = me)
       FOR UPDATE;
    IF NOT FOUND THEN
        IF @extschema@.session_listed_for(me, delete_session.session_id) THEN
            RAISE EXCEPTION 'only the owner of session % can delete it', delete_session.session_id USING ERRCODE = '42501';
        END IF;
        RAISE EXCEPTION 'session % does not exist', delete_session.session_id
            USING ERRCODE = 'P0002', HINT = 'create one with create_session(title)';
    END IF;
    -- the session and the owner's forks of it, forks of those included
    WITH RECURSIVE tree AS (
        SELECT delete_session.session_id AS id
        UNION
        SELECT f.id FROM @extschema@.memory_sessions f JOIN tree t ON f.parent_id = t.id WHERE f.owner_id = owner)
    SELECT pg_catalog.array_agg(t.id) INTO sessions FROM tree t;
    IF NOT delete_session.cascade AND pg_catalog.cardinality(sessions) > 1 THEN
        RAISE EXCEPTION 'session % has forks of its owner''s', delete_session.session_id
            USING ERRCODE = '2BP01', HINT = 'delete_session(session_id, cascade => true) deletes them too';
    END IF;
    SELECT pg_catalog.array_agg(x.id) INTO doomed FROM (
        SELECT m.id FROM @extschema@.memories m WHERE m.id = ANY (sessions)
        UNION
        SELECT m.id FROM @extschema@.memories m WHERE m.session_id = ANY (sessions)
        UNION
        SELECT s.memory_id FROM @extschema@.memory_summaries s WHERE s.session_id = ANY (sessions)) x;
    PERFORM 1 FROM @extschema@.memories m WHERE m.id = ANY (doomed) ORDER BY m.id FOR UPDATE;
    RETURN @extschema@.remove_memories(doomed, true);
END
$$;

-- Erase a user (a right-to-be-forgotten request): every memory they wrote, every conversation
-- they own (with the messages others wrote in it and its summaries), the edges they drew, the
-- shares to and from them, their access counts, their users row (name, role mapping, metadata),
-- and the content of every audit row about their data. The erasure itself is audited (a users
-- DELETE row: who asked, how many memories). Other users' forks of their conversations keep
-- their own messages (inherited_erased_at). A user may erase themself; an administrator anyone
-- (42501 otherwise; P0002 for a user that does not exist). Returns the number of memories deleted.
CREATE FUNCTION @extschema@.forget_user(user_id uuid)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET session_replication_role = replica AS $$
DECLARE
    me uuid := @extschema@.current_memory_user();
    actor name := @extschema@.acting_db_role();
    tx bigint := txid_current();
    doomed uuid[];
    edges uuid[];
    removed bigint;
BEGIN
    IF forget_user.user_id IS NULL THEN
        RAISE EXCEPTION 'user_id must not be NULL' USING ERRCODE = '22004';
    END IF;
    IF NOT (@extschema@.acting_role_bypasses_rls() OR forget_user.user_id = me) THEN
        RAISE EXCEPTION 'only an administrator or the user themself can erase user %', forget_user.user_id
            USING ERRCODE = '42501';
    END IF;
    -- (their row, locked: their writes, which check it as a foreign key, wait for the erasure)
    PERFORM 1 FROM @extschema@.users u WHERE u.id = forget_user.user_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'user % does not exist', forget_user.user_id USING ERRCODE = 'P0002';
    END IF;
    SELECT pg_catalog.array_agg(x.id) INTO doomed FROM (
        SELECT m.id FROM @extschema@.memories m WHERE m.created_by = forget_user.user_id
        UNION
        SELECT m.id FROM @extschema@.memories m JOIN @extschema@.memory_sessions s ON s.id = m.session_id
         WHERE s.owner_id = forget_user.user_id
        UNION
        SELECT x.memory_id FROM @extschema@.memory_summaries x JOIN @extschema@.memory_sessions s ON s.id = x.session_id
         WHERE s.owner_id = forget_user.user_id) x;
    PERFORM 1 FROM @extschema@.memories m WHERE m.id = ANY (doomed) ORDER BY m.id FOR UPDATE;
    removed := @extschema@.remove_memories(coalesce(doomed, '{}'), true);

    -- what else is theirs: edges they drew between other users' memories
    SELECT pg_catalog.array_agg(e.id) INTO edges FROM @extschema@.memory_edges e WHERE e.created_by = forget_user.user_id;
    PERFORM @extschema@.erase_audit_rows('memory_edges', coalesce(edges, '{}'));
    WITH gone AS (DELETE FROM @extschema@.memory_edges e WHERE e.id = ANY (edges) RETURNING e.*)
    INSERT INTO @extschema@.audit_log (table_name, operation, row_id, old_row, new_row, acting_user, subject_user, db_role, txid)
    SELECT 'memory_edges', 'DELETE', g.id, pg_catalog.to_jsonb(g) OPERATOR(pg_catalog.-) '_metadata'::text,
           NULL, me, g.created_by, actor, tx
      FROM gone g ORDER BY g.id;
    -- shares to and from them (memory_shares.grantee, granted_by: CASCADE), audited as always
    WITH gone AS (DELETE FROM @extschema@.memory_shares s
                   WHERE s.grantee = forget_user.user_id OR s.granted_by = forget_user.user_id RETURNING s.*)
    INSERT INTO @extschema@.audit_log (table_name, operation, row_id, old_row, new_row, acting_user, subject_user, db_role, txid)
    SELECT 'memory_shares', 'DELETE', g.memory_id, pg_catalog.to_jsonb(g), NULL, me, g.granted_by, actor, tx
      FROM gone g ORDER BY g.memory_id, g.grantee;
    DELETE FROM @extschema@.memory_share_segments g WHERE g.grantee = forget_user.user_id;
    -- (their facts went with their memories; memory_facts.owner_id: nothing may be left)
    DELETE FROM @extschema@.memory_facts f WHERE f.owner_id = forget_user.user_id;
    -- (memory_retention_policies.user_id, memory_access.user_id: CASCADE)
    DELETE FROM @extschema@.memory_retention_policies r WHERE r.user_id = forget_user.user_id;
    DELETE FROM @extschema@.memory_access a WHERE a.user_id = forget_user.user_id;
    -- other users' memories they changed keep their change, no longer attributed to anyone
    UPDATE @extschema@.memories m SET updated_by = NULL WHERE m.updated_by = forget_user.user_id;
    -- the content of every audit row about their data
    UPDATE @extschema@.audit_log a
       SET old_row = a.old_row OPERATOR(pg_catalog.-) '{content,content_embedding,_metadata}'::text[],
           new_row = a.new_row OPERATOR(pg_catalog.-) '{content,content_embedding,_metadata}'::text[],
           erased_at = now()
     WHERE a.subject_user = forget_user.user_id AND a.erased_at IS NULL;
    DELETE FROM @extschema@.users u WHERE u.id = forget_user.user_id;
    -- the erasure itself
    INSERT INTO @extschema@.audit_log (table_name, operation, row_id, old_row, new_row, acting_user, subject_user, db_role, txid)
    VALUES ('users', 'DELETE', forget_user.user_id,
            pg_catalog.jsonb_build_object('id', forget_user.user_id, 'erased', true, 'memories_deleted', removed),
            NULL, me, forget_user.user_id, actor, tx);
    RETURN removed;
END
$$;
REVOKE ALL ON FUNCTION @extschema@.audit_row_text(@extschema@.audit_log), @extschema@.audit_erasable_text(@extschema@.audit_log),
    @extschema@.erase_audit_rows(text, uuid[]), @extschema@.remove_memories(uuid[], boolean),
    @extschema@.delete_session(uuid, boolean), @extschema@.forget_user(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.delete_session(uuid, boolean), @extschema@.forget_user(uuid) TO memoriesdb_user;

-- Retention policies and session trimming (sql/lifecycle.sql).
ALTER TABLE @extschema@.memory_sessions
    ADD COLUMN keep_last integer CONSTRAINT memory_sessions_keep_last_positive CHECK (keep_last >= 1);
-- Retention policies: per user and memory type, keep at most the newest keep_last and none older
-- than max_age (either may be NULL: no such limit) — except those whose importance (their own,
-- else their type's default) is at least keep_if_importance — and either delete the rest (action 'delete': they expire at once, and
-- the sweep deletes them) or archive them (action 'archive': valid_to is set, so the searches and
-- get_context no longer recall them, while transcripts and direct reads still show them). Applied
-- by apply_retention_policies(). Messages a fork inherits are never removed.
CREATE TABLE @extschema@.memory_retention_policies (
    user_id            uuid NOT NULL REFERENCES @extschema@.users (id) ON DELETE CASCADE,
    kind               text NOT NULL,
    keep_last          integer CHECK (keep_last >= 1),
    max_age            interval CHECK (max_age > interval '0'),
    keep_if_importance real CHECK (keep_if_importance BETWEEN 0 AND 1),
    action             text NOT NULL DEFAULT 'delete' CHECK (action IN ('delete', 'archive')),
    PRIMARY KEY (user_id, kind),
    CHECK (keep_last IS NOT NULL OR max_age IS NOT NULL)
);
COMMENT ON TABLE @extschema@.memory_retention_policies IS 'Per user and memory type: how many and how old memories to keep, and what to do with the rest';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.memory_retention_policies', '');

-- Set your retention policy for memories of type `kind` (see memory_retention_policies); with
-- neither keep_last nor max_age, remove it. Returns whether a policy is now in place.
CREATE FUNCTION @extschema@.set_retention_policy(
    kind text,
    keep_last integer DEFAULT NULL,
    max_age interval DEFAULT NULL,
    keep_if_importance real DEFAULT NULL,
    action text DEFAULT 'delete')
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    me uuid := @extschema@.current_memory_user();
BEGIN
    IF me IS NULL THEN
        RAISE EXCEPTION 'role "%" acts as no MemoriesDB user', @extschema@.acting_db_role()
            USING ERRCODE = '42501', HINT = 'a retention policy is a user''s';
    END IF;
    IF set_retention_policy.kind IS NULL OR set_retention_policy.action IS NULL THEN
        RAISE EXCEPTION 'kind and action must not be NULL' USING ERRCODE = '22004';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM @extschema@.memory_types t WHERE t.name = set_retention_policy.kind) THEN
        RAISE EXCEPTION 'unknown memory type "%"', pg_catalog.left(set_retention_policy.kind, 64)
            USING ERRCODE = '22023', HINT = 'the types are listed in memory_types';
    END IF;
    IF set_retention_policy.kind = 'session' THEN
        RAISE EXCEPTION 'sessions are not removed by retention policies'
            USING ERRCODE = '22023', HINT = 'delete_session() deletes a conversation; set_session_retention() limits its messages';
    END IF;
    IF set_retention_policy.keep_last < 1 OR set_retention_policy.max_age <= interval '0'
       OR set_retention_policy.max_age > interval '1000 years'
       OR NOT (set_retention_policy.keep_if_importance BETWEEN 0 AND 1)
       OR set_retention_policy.action NOT IN ('delete', 'archive') THEN
        RAISE EXCEPTION 'keep_last must be at least 1, max_age between 0 and 1000 years, keep_if_importance between 0 and 1 and action delete or archive'
            USING ERRCODE = '22023';
    END IF;
    IF set_retention_policy.keep_last IS NULL AND set_retention_policy.max_age IS NULL THEN
        DELETE FROM @extschema@.memory_retention_policies p WHERE p.user_id = me AND p.kind = set_retention_policy.kind;
        RETURN false;
    END IF;
    INSERT INTO @extschema@.memory_retention_policies AS p (user_id, kind, keep_last, max_age, keep_if_importance, action)
    VALUES (me, set_retention_policy.kind, set_retention_policy.keep_last, set_retention_policy.max_age,
            set_retention_policy.keep_if_importance, set_retention_policy.action)
    ON CONFLICT ON CONSTRAINT memory_retention_policies_pkey DO UPDATE
       SET keep_last = EXCLUDED.keep_last, max_age = EXCLUDED.max_age,
           keep_if_importance = EXCLUDED.keep_if_importance, action = EXCLUDED.action;
    RETURN true;
END
$$;

-- Apply the retention policies and the sessions' keep_last to at most `lim` memories, and return
-- how many it removed or archived: removed ones expire at once (gone from every read; the sweep
-- deletes them and erases their content), archived ones get valid_to. Messages a fork inherits
-- (positions up to a fork point of their session) are never removed. Each change is audited like
-- any UPDATE. For workers and administrators, e.g. every minute from pg_cron, before the sweep:
--   SELECT cron.schedule('memoriesdb-retention', '* * * * *', 'SELECT memoriesdb.apply_retention_policies()');
CREATE FUNCTION @extschema@.apply_retention_policies(lim integer DEFAULT 10000)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    done bigint := 0;
    changed bigint;
    p record;
BEGIN
    IF lim IS NULL OR lim < 1 THEN
        RAISE EXCEPTION 'lim must be a positive number of memories, not %', coalesce(lim::text, 'NULL')
            USING ERRCODE = '22023';
    END IF;
    -- sessions' keep_last: their own messages before the newest keep_last, except those forks inherit
    WITH doomed AS (
        SELECT old.id
          FROM @extschema@.memory_sessions s
         CROSS JOIN LATERAL (
               SELECT m.id, m.position FROM @extschema@.memories m
                WHERE m.session_id = s.id AND (m.expires_at IS NULL OR m.expires_at > now())
                ORDER BY m.position DESC OFFSET s.keep_last) old
         WHERE s.keep_last IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM @extschema@.memory_sessions f
                            WHERE f.parent_id = s.id AND f.fork_position >= old.position)
         LIMIT lim)
    UPDATE @extschema@.memories m SET expires_at = now() FROM doomed d WHERE m.id = d.id;
    GET DIAGNOSTICS done = ROW_COUNT;
    -- the users' policies
    FOR p IN SELECT * FROM @extschema@.memory_retention_policies ORDER BY user_id, kind LOOP
        EXIT WHEN done >= lim;
        WITH ranked AS (
            SELECT m.id, m.session_id, m.position, m._created_at,
                   pg_catalog.row_number() OVER (ORDER BY m._created_at DESC, m.id DESC) AS newest,
                   coalesce(m.importance, t.default_importance) AS importance
              FROM @extschema@.memories m
              LEFT JOIN @extschema@.memory_types t ON t.name = m.kind
             WHERE m.created_by = p.user_id AND m.kind = p.kind
               AND (m.expires_at IS NULL OR m.expires_at > now())
               AND (p.action = 'delete' OR m.valid_to IS NULL OR m.valid_to > now())),
             doomed AS (
            SELECT r.id FROM ranked r
             WHERE (r.newest > p.keep_last OR r._created_at < now() - p.max_age)
               AND NOT coalesce(r.importance >= p.keep_if_importance, false)
               AND NOT EXISTS (SELECT 1 FROM @extschema@.memory_sessions f
                                WHERE f.parent_id = r.session_id AND f.fork_position >= r.position)
             LIMIT lim - done)
        UPDATE @extschema@.memories m
           SET expires_at = CASE WHEN p.action = 'delete' THEN now() ELSE m.expires_at END,
               -- (not before it became valid: valid_to >= valid_from)
               valid_to = CASE WHEN p.action = 'archive' THEN greatest(now(), m.valid_from) ELSE m.valid_to END
          FROM doomed d WHERE m.id = d.id;
        GET DIAGNOSTICS changed = ROW_COUNT;
        done := done + changed;
    END LOOP;
    RETURN done;
END
$$;
ALTER TABLE @extschema@.memory_retention_policies ENABLE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.memory_retention_policies FORCE ROW LEVEL SECURITY;
CREATE POLICY memory_retention_policies_read ON @extschema@.memory_retention_policies FOR SELECT
    USING (user_id = (SELECT @extschema@.current_memory_user()));
GRANT SELECT ON @extschema@.memory_retention_policies TO memoriesdb_user;
REVOKE ALL ON FUNCTION @extschema@.set_retention_policy(text, integer, interval, real, text),
    @extschema@.apply_retention_policies(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.set_retention_policy(text, integer, interval, real, text) TO memoriesdb_user;
GRANT EXECUTE ON FUNCTION @extschema@.apply_retention_policies(integer) TO memoriesdb_worker;
