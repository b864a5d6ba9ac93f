-- Search: full-text, vector, hybrid; all branch-aware when restricted to a session. The three
-- search functions are Rust (src/search.rs): they run as the extension owner, so that the GIN and
-- HNSW indexes can drive them, and apply the memories read rule (src/policies.rs) themselves,
-- returning only rows their caller may see. search_limit(lim) (the limit rule: 10 for NULL, else
-- 1 .. 10000) is Rust too.
--
-- Common optional filters, with the same names everywhere:
--   session_id       only what that session's branch sees (its messages and the inherited prefix
--                    of its ancestors up to each fork point), exactly, without duplicates
--   kind_filter      only memories of this kind ('message', 'session', 'memory', ...)
--   metadata_filter  only memories whose _metadata contains this JSON object (@>)
--   lim              at most this many rows (1 .. 10000; default 10)
-- and the same ranking options (sql/ranking.sql):
--   importance_weight, recency_weight  in [0, 1], default 0: how much the memory's importance
--                    and its recency scale the score (0: not at all, the order is by relevance)
--   half_life        how fast recency decays: a memory last used half_life ago has recency 0.5
--   candidates       how many of the best matches by relevance the ranking orders (default:
--                    5 x lim for search_memories; lim for vector_search and semantic_search,
--                    where each candidate the HNSW index must find among other tenants' rows
--                    costs time; hybrid_search: every candidate either of its rankings found)
-- Each returns importance, recency and score beside its relevance (score = relevance x
-- (1 - importance_weight + importance_weight x importance) x (1 - recency_weight + recency_weight
-- x recency)), best score first. The searches are VOLATILE: each notes the memories it returned
-- (access tracking, sql/ranking.sql).

-- Full-text search with websearch_to_tsquery semantics: quoted phrases, -exclusion, "or".
-- Any text a user types is accepted; a query with no searchable words (empty, only stop words
-- or punctuation) returns no rows. Ranked by ts_rank_cd, which looks only at each row and its
-- query (no corpus-wide statistics that could leak one tenant's vocabulary to another).
-- snippet highlights the matches with <b>...</b>.
CREATE FUNCTION @extschema@.search_memories(
    query text,
    session_id uuid DEFAULT NULL,
    kind_filter text DEFAULT NULL,
    metadata_filter jsonb DEFAULT NULL,
    lim integer DEFAULT 10,
    config regconfig DEFAULT NULL,
    importance_weight double precision DEFAULT 0,
    recency_weight double precision DEFAULT 0,
    half_life interval DEFAULT '30 days',
    candidates integer DEFAULT NULL)
RETURNS TABLE (id uuid, content text, kind text, role text, origin_session_id uuid, "position" bigint,
               rank real, snippet text, importance real, recency double precision, score double precision)
LANGUAGE c VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET jit = off
AS 'MODULE_PATHNAME', 'search_memories_native';

-- Checks a query embedding: finite (pgvector already rejects NaN and infinity on input) and
-- not (nearly) all zeros, for which cosine similarity is undefined. Search results also leave
-- out NaN similarities, which stored embeddings written directly could still produce.
CREATE FUNCTION @extschema@.require_usable_embedding(embedding vector, argument text DEFAULT 'embedding')
RETURNS integer LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF embedding IS NULL THEN
        RAISE EXCEPTION '% must not be NULL', argument USING ERRCODE = '22004';
    END IF;
    -- pgvector computes cosine distance in single precision, where the squares of components
    -- below about 1e-19 vanish: a vector that short (1e-30 in every component, say) would give
    -- NaN similarities, which compare above every threshold
    IF memoriesdb_pgvector.vector_norm(embedding) < 1e-10 THEN
        RAISE EXCEPTION '% is (nearly) the zero vector (norm %): cosine similarity is undefined', argument,
            memoriesdb_pgvector.vector_norm(embedding) USING ERRCODE = '22023';
    END IF;
    RETURN memoriesdb_pgvector.vector_dims(embedding);
END
$$;

-- Creates (if missing) the HNSW indexes for embeddings of one dimension, on memories and on
-- memory_chunks, using pgvector's expression + partial index pattern, so embeddings of different
-- dimensions coexist in one column and each dimension gets its own index. Returns the name of
-- the index on memories.
CREATE FUNCTION @extschema@.create_vector_index(dimensions integer, m integer DEFAULT 16, ef_construction integer DEFAULT 64)
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
CREATE FUNCTION @extschema@.restore_vector_indexes() RETURNS integer
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

-- Vector search: similarity = 1 - cosine distance, highest first, at most lim rows with
-- similarity >= threshold. Without a session it uses the HNSW index of the query's dimension
-- (create_vector_index) with pgvector's iterative index scan, so selective filters still return
-- lim rows when that many qualify; with a session it is an exact scan of that branch.
-- Only memories whose embedding has the query's dimension are compared.
-- Each memory is returned once, at its best passage: a memory longer than its model reads has
-- an embedding per passage (memory_chunks), and chunk_start, chunk_end are the character
-- offsets of the passage that matched (0-based, end excluded; the whole content for a memory
-- embedded whole): substr(content, chunk_start + 1, chunk_end - chunk_start).
CREATE FUNCTION @extschema@.vector_search(
    embedding vector,
    threshold double precision DEFAULT 0.7,
    lim integer DEFAULT 10,
    session_id uuid DEFAULT NULL,
    kind_filter text DEFAULT NULL,
    metadata_filter jsonb DEFAULT NULL,
    model text DEFAULT NULL,
    importance_weight double precision DEFAULT 0,
    recency_weight double precision DEFAULT 0,
    half_life interval DEFAULT '30 days',
    candidates integer DEFAULT NULL)
RETURNS TABLE (id uuid, content text, kind text, role text, origin_session_id uuid, "position" bigint,
               similarity double precision, chunk_start integer, chunk_end integer,
               importance real, recency double precision, score double precision)
LANGUAGE c VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET jit = off
SET hnsw.iterative_scan = 'relaxed_order'
SET hnsw.ef_search = 200
AS 'MODULE_PATHNAME', 'vector_search_native';

-- Search by meaning in plain words: vector_search() with the embedding of `query` from the
-- configured embedding endpoint (memoriesdb.embedding_url; embed_text()), among memories
-- embedded by the same model. A separate name rather than a text overload of vector_search:
-- vector_search('[0.1, 0.2]') must keep meaning a vector, not a text to embed.
CREATE FUNCTION @extschema@.semantic_search(
    query text,
    threshold double precision DEFAULT 0.3,
    lim integer DEFAULT 10,
    session_id uuid DEFAULT NULL,
    kind_filter text DEFAULT NULL,
    metadata_filter jsonb DEFAULT NULL,
    importance_weight double precision DEFAULT 0,
    recency_weight double precision DEFAULT 0,
    half_life interval DEFAULT '30 days',
    candidates integer DEFAULT NULL)
RETURNS TABLE (id uuid, content text, kind text, role text, origin_session_id uuid, "position" bigint,
               similarity double precision, chunk_start integer, chunk_end integer,
               importance real, recency double precision, score double precision)
LANGUAGE c VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET jit = off
SET hnsw.iterative_scan = 'relaxed_order'
SET hnsw.ef_search = 200
AS 'MODULE_PATHNAME', 'semantic_search_native';

-- Hybrid search: reciprocal-rank fusion of the full-text and the vector ranking.
--   fused_score = text_weight / (rrf_k + text_rank) + vector_weight / (rrf_k + vector_rank)
-- (score: fused_score scaled by importance and recency as above; equal to it by default)
-- where a ranking a row is missing from contributes 0, so a row found by only one method still
-- appears. Each component's rank and score is returned beside the fused score. Each ranking
-- contributes its top `candidates` rows (default 5 x lim). One statement. chunk_start and
-- chunk_end: the passage the vector ranking matched, as in vector_search (NULL without one).
-- Without an embedding (hybrid_search('what did alice say about the design')), the query text's
-- embedding comes from the configured endpoint, as in semantic_search().
-- model: compare only with embeddings computed by this model (vector_search too).
CREATE FUNCTION @extschema@.hybrid_search(
    query text,
    embedding vector DEFAULT NULL,
    lim integer DEFAULT 10,
    session_id uuid DEFAULT NULL,
    kind_filter text DEFAULT NULL,
    metadata_filter jsonb DEFAULT NULL,
    text_weight double precision DEFAULT 1.0,
    vector_weight double precision DEFAULT 1.0,
    rrf_k integer DEFAULT 60,
    candidates integer DEFAULT NULL,
    config regconfig DEFAULT NULL,
    model text DEFAULT NULL,
    importance_weight double precision DEFAULT 0,
    recency_weight double precision DEFAULT 0,
    half_life interval DEFAULT '30 days')
RETURNS TABLE (id uuid, content text, kind text, role text, origin_session_id uuid, "position" bigint,
               score double precision, text_rank bigint, text_score real,
               vector_rank bigint, vector_similarity double precision, chunk_start integer, chunk_end integer,
               fused_score double precision, importance real, recency double precision)
LANGUAGE c VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET jit = off
SET hnsw.iterative_scan = 'relaxed_order'
SET hnsw.ef_search = 200
AS 'MODULE_PATHNAME', 'hybrid_search_native';
