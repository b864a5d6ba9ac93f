-- Search: full-text, vector, hybrid; all branch-aware when restricted to a session.
--
-- Common optional filters, with the same names everywhere:
--   session_id       only what that session's branch sees (its messages and the inherited prefix
--                    of its ancestors up to each fork point), exactly, without duplicates
--   kind_filter      only memories of this kind ('message', 'session', 'memory', ...)
--   metadata_filter  only memories whose _metadata contains this JSON object (@>)
--   lim              at most this many rows (1 .. 10000; default 10)

-- Validation shared by the search functions; returns the effective limit.
CREATE FUNCTION @extschema@.search_limit(lim integer) RETURNS integer
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF lim IS NULL THEN
        RETURN 10;
    END IF;
    IF lim < 1 OR lim > 10000 THEN
        RAISE EXCEPTION 'lim must be between 1 and 10000, got %', lim USING ERRCODE = '22023';
    END IF;
    RETURN lim;
END
$$;

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
    config regconfig DEFAULT NULL)
RETURNS TABLE (id uuid, content text, kind text, role text, origin_session_id uuid, "position" bigint,
               rank real, snippet text)
-- Row-level security cannot let the planner use the GIN index (the @@ operator is not leakproof,
-- so it may not run before the policy), which would turn every search into a scan of all
-- tenants' rows. So this function runs as the extension owner and applies the rule of the
-- memories_read policy itself, as an ordinary condition after the index match (the same rule as
-- in policies.sql; change them together). It decides for its caller, whose role and settings it
-- still sees, and returns only rows the caller may see.
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET jit = off AS $$
#variable_conflict use_column
DECLARE
    cfg regconfig := coalesce(config, @extschema@.default_search_config());
    n integer := @extschema@.search_limit(lim);
    q tsquery;
    me uuid := @extschema@.current_memory_user();
    worker boolean := @extschema@.acting_role_bypasses_rls() OR @extschema@.acting_role_is('memoriesdb_worker');
BEGIN
    IF query IS NULL THEN
        RAISE EXCEPTION 'query must not be NULL' USING ERRCODE = '22004';
    END IF;
    -- parsing a huge query costs seconds and can exhaust the stack; nobody types 10,000 characters
    IF length(query) > 10000 THEN
        RAISE EXCEPTION 'query is % characters long; at most 10000 are allowed', length(query)
            USING ERRCODE = '22023';
    END IF;
    IF search_memories.session_id IS NOT NULL AND NOT worker
       AND NOT @extschema@.session_listed_for(me, search_memories.session_id) THEN
        RAISE EXCEPTION 'session % does not exist', search_memories.session_id
            USING ERRCODE = 'P0002', HINT = 'create one with create_session(title)';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_ts_config c WHERE c.oid = cfg) THEN
        RAISE EXCEPTION 'text search configuration % does not exist', cfg::oid USING ERRCODE = '22023';
    END IF;
    BEGIN
        q := websearch_to_tsquery(cfg, query);
    EXCEPTION WHEN internal_error THEN
        -- PostgreSQL's parser gives up on more than 32 operators in a row ("tsquery stack too
        -- small", XX000); that is the query's fault, not the server's
        IF SQLERRM <> 'tsquery stack too small' THEN
            RAISE;
        END IF;
        RAISE EXCEPTION 'query has too many operators in a row (e.g. "-" signs) to search: %', left(query, 80)
            USING ERRCODE = '22023', HINT = 'at most 32 operators may follow each other';
    END;
    IF numnode(q) = 0 THEN
        RETURN;
    END IF;
    -- Both queries rank only (id, rank) pairs and fetch the other columns for the lim rows
    -- returned: carrying content through the ranking of thousands of matches cost 10%.
    IF search_memories.session_id IS NULL THEN
        RETURN QUERY
        WITH hits AS (
            SELECT m.id, ts_rank_cd(m.search_tsv, q) AS r
              FROM @extschema@.memories m
             WHERE m.search_tsv @@ q
               AND (worker OR m.created_by = me
                    OR (m.session_id IS NOT NULL AND EXISTS (
                            SELECT 1 FROM @extschema@.memory_sessions s WHERE s.id = m.session_id AND s.owner_id = me))
                    OR (m.session_id IS NOT NULL AND EXISTS (
                            SELECT 1 FROM @extschema@.memory_share_segments g
                             WHERE g.grantee = me AND g.session_id = m.session_id AND m.position <= g.visible_upto))
                    OR EXISTS (SELECT 1 FROM @extschema@.memory_shares g WHERE g.memory_id = m.id AND g.grantee = me))
               AND (kind_filter IS NULL OR m.kind = kind_filter)
               AND (metadata_filter IS NULL OR m._metadata @> metadata_filter)
             ORDER BY r DESC, m.id
             LIMIT n)
        SELECT h.id, m.content, m.kind, m.role, m.session_id, m.position, h.r,
               ts_headline(cfg, @extschema@.searchable_text(m.content), q, 'MaxFragments=2, MaxWords=20, MinWords=5')
          FROM hits h JOIN @extschema@.memories m ON m.id = h.id
         ORDER BY h.r DESC, h.id;
    ELSE
        RETURN QUERY
        WITH hits AS (
            SELECT m.id, ts_rank_cd(m.search_tsv, q) AS r
              FROM @extschema@.session_lineage(search_memories.session_id) l
              JOIN @extschema@.memories m
                ON m.session_id = l.lineage_session_id AND m.position <= l.visible_upto
             WHERE m.search_tsv @@ q
               AND (worker OR m.created_by = me
                    OR (m.session_id IS NOT NULL AND EXISTS (
                            SELECT 1 FROM @extschema@.memory_sessions s WHERE s.id = m.session_id AND s.owner_id = me))
                    OR (m.session_id IS NOT NULL AND EXISTS (
                            SELECT 1 FROM @extschema@.memory_share_segments g
                             WHERE g.grantee = me AND g.session_id = m.session_id AND m.position <= g.visible_upto))
                    OR EXISTS (SELECT 1 FROM @extschema@.memory_shares g WHERE g.memory_id = m.id AND g.grantee = me))
               AND (kind_filter IS NULL OR m.kind = kind_filter)
               AND (metadata_filter IS NULL OR m._metadata @> metadata_filter)
             ORDER BY r DESC, m.id
             LIMIT n)
        SELECT h.id, m.content, m.kind, m.role, m.session_id, m.position, h.r,
               ts_headline(cfg, @extschema@.searchable_text(m.content), q, 'MaxFragments=2, MaxWords=20, MinWords=5')
          FROM hits h JOIN @extschema@.memories m ON m.id = h.id
         ORDER BY h.r DESC, h.id;
    END IF;
END
$$;

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

-- Creates (if missing) the HNSW index for embeddings of one dimension, using pgvector's
-- expression + partial index pattern, so embeddings of different dimensions coexist in one
-- column and each dimension gets its own index. Returns the index name.
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
        IF to_regclass(format('%I.%I', '@extschema@', 'memories_embedding_hnsw_' || v.dimensions)) IS NULL THEN
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
CREATE FUNCTION @extschema@.vector_search(
    embedding vector,
    threshold double precision DEFAULT 0.7,
    lim integer DEFAULT 10,
    session_id uuid DEFAULT NULL,
    kind_filter text DEFAULT NULL,
    metadata_filter jsonb DEFAULT NULL)
RETURNS TABLE (id uuid, content text, kind text, role text, origin_session_id uuid, "position" bigint,
               similarity double precision)
-- Runs as the extension owner and applies the memories_read rule itself, like search_memories(),
-- so that the HNSW index can drive the search instead of a scan under row-level security; it
-- returns only rows the caller may see.
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET jit = off
SET hnsw.iterative_scan = 'relaxed_order'
SET hnsw.ef_search = 200
AS $$
#variable_conflict use_column
DECLARE
    dims integer := @extschema@.require_usable_embedding(embedding);
    n integer := @extschema@.search_limit(lim);
    min_similarity double precision := coalesce(threshold, -1);
    me uuid := @extschema@.current_memory_user();
    worker boolean := @extschema@.acting_role_bypasses_rls() OR @extschema@.acting_role_is('memoriesdb_worker');
BEGIN
    IF min_similarity < -1 OR min_similarity > 1 OR min_similarity = 'NaN' THEN
        RAISE EXCEPTION 'threshold must be between -1 and 1 (cosine similarity), got %', threshold
            USING ERRCODE = '22023';
    END IF;
    IF vector_search.session_id IS NOT NULL AND NOT worker
       AND NOT @extschema@.session_listed_for(me, vector_search.session_id) THEN
        RAISE EXCEPTION 'session % does not exist', vector_search.session_id
            USING ERRCODE = 'P0002', HINT = 'create one with create_session(title)';
    END IF;
    IF vector_search.session_id IS NOT NULL THEN
        RETURN QUERY
        SELECT * FROM (
            SELECT m.id, m.content, m.kind, m.role, m.session_id, m.position,
                   1 - (m.content_embedding OPERATOR(memoriesdb_pgvector.<=>) embedding) AS sim
              FROM @extschema@.session_lineage(vector_search.session_id) l
              JOIN @extschema@.memories m
                ON m.session_id = l.lineage_session_id AND m.position <= l.visible_upto
             WHERE memoriesdb_pgvector.vector_dims(m.content_embedding) = dims
               AND (worker OR m.created_by = me
                    OR (m.session_id IS NOT NULL AND EXISTS (
                            SELECT 1 FROM @extschema@.memory_sessions s WHERE s.id = m.session_id AND s.owner_id = me))
                    OR (m.session_id IS NOT NULL AND EXISTS (
                            SELECT 1 FROM @extschema@.memory_share_segments g
                             WHERE g.grantee = me AND g.session_id = m.session_id AND m.position <= g.visible_upto))
                    OR EXISTS (SELECT 1 FROM @extschema@.memory_shares g WHERE g.memory_id = m.id AND g.grantee = me))
               AND (kind_filter IS NULL OR m.kind = kind_filter)
               AND (metadata_filter IS NULL OR m._metadata @> metadata_filter)
             ORDER BY sim DESC, m.id
             LIMIT n) hits
         WHERE hits.sim >= min_similarity AND hits.sim <> 'NaN'::float8;
        RETURN;
    END IF;
    -- Static statements for the common dimensions keep their cached plans; others are planned
    -- per call. The ORDER BY expression matches the index expression of create_vector_index.
    -- Ordering by distance and then cutting at the threshold returns exactly the top rows above
    -- the threshold, because similarity falls monotonically along that order.
    CASE dims
    WHEN 384 THEN
        RETURN QUERY SELECT * FROM (
            SELECT m.id, m.content, m.kind, m.role, m.session_id, m.position,
                   1 - (m.content_embedding::memoriesdb_pgvector.vector(384) OPERATOR(memoriesdb_pgvector.<=>) embedding::memoriesdb_pgvector.vector(384)) AS sim
              FROM @extschema@.memories m
             WHERE memoriesdb_pgvector.vector_dims(m.content_embedding) = 384
               AND (worker OR m.created_by = me
                    OR (m.session_id IS NOT NULL AND EXISTS (
                            SELECT 1 FROM @extschema@.memory_sessions s WHERE s.id = m.session_id AND s.owner_id = me))
                    OR (m.session_id IS NOT NULL AND EXISTS (
                            SELECT 1 FROM @extschema@.memory_share_segments g
                             WHERE g.grantee = me AND g.session_id = m.session_id AND m.position <= g.visible_upto))
                    OR EXISTS (SELECT 1 FROM @extschema@.memory_shares g WHERE g.memory_id = m.id AND g.grantee = me))
               AND (kind_filter IS NULL OR m.kind = kind_filter)
               AND (metadata_filter IS NULL OR m._metadata @> metadata_filter)
             ORDER BY m.content_embedding::memoriesdb_pgvector.vector(384) OPERATOR(memoriesdb_pgvector.<=>) embedding::memoriesdb_pgvector.vector(384)
             LIMIT n) hits
         WHERE hits.sim >= min_similarity AND hits.sim <> 'NaN'::float8 ORDER BY hits.sim DESC;
    WHEN 768 THEN
        RETURN QUERY SELECT * FROM (
            SELECT m.id, m.content, m.kind, m.role, m.session_id, m.position,
                   1 - (m.content_embedding::memoriesdb_pgvector.vector(768) OPERATOR(memoriesdb_pgvector.<=>) embedding::memoriesdb_pgvector.vector(768)) AS sim
              FROM @extschema@.memories m
             WHERE memoriesdb_pgvector.vector_dims(m.content_embedding) = 768
               AND (worker OR m.created_by = me
                    OR (m.session_id IS NOT NULL AND EXISTS (
                            SELECT 1 FROM @extschema@.memory_sessions s WHERE s.id = m.session_id AND s.owner_id = me))
                    OR (m.session_id IS NOT NULL AND EXISTS (
                            SELECT 1 FROM @extschema@.memory_share_segments g
                             WHERE g.grantee = me AND g.session_id = m.session_id AND m.position <= g.visible_upto))
                    OR EXISTS (SELECT 1 FROM @extschema@.memory_shares g WHERE g.memory_id = m.id AND g.grantee = me))
               AND (kind_filter IS NULL OR m.kind = kind_filter)
               AND (metadata_filter IS NULL OR m._metadata @> metadata_filter)
             ORDER BY m.content_embedding::memoriesdb_pgvector.vector(768) OPERATOR(memoriesdb_pgvector.<=>) embedding::memoriesdb_pgvector.vector(768)
             LIMIT n) hits
         WHERE hits.sim >= min_similarity AND hits.sim <> 'NaN'::float8 ORDER BY hits.sim DESC;
    WHEN 1024 THEN
        RETURN QUERY SELECT * FROM (
            SELECT m.id, m.content, m.kind, m.role, m.session_id, m.position,
                   1 - (m.content_embedding::memoriesdb_pgvector.vector(1024) OPERATOR(memoriesdb_pgvector.<=>) embedding::memoriesdb_pgvector.vector(1024)) AS sim
              FROM @extschema@.memories m
             WHERE memoriesdb_pgvector.vector_dims(m.content_embedding) = 1024
               AND (worker OR m.created_by = me
                    OR (m.session_id IS NOT NULL AND EXISTS (
                            SELECT 1 FROM @extschema@.memory_sessions s WHERE s.id = m.session_id AND s.owner_id = me))
                    OR (m.session_id IS NOT NULL AND EXISTS (
                            SELECT 1 FROM @extschema@.memory_share_segments g
                             WHERE g.grantee = me AND g.session_id = m.session_id AND m.position <= g.visible_upto))
                    OR EXISTS (SELECT 1 FROM @extschema@.memory_shares g WHERE g.memory_id = m.id AND g.grantee = me))
               AND (kind_filter IS NULL OR m.kind = kind_filter)
               AND (metadata_filter IS NULL OR m._metadata @> metadata_filter)
             ORDER BY m.content_embedding::memoriesdb_pgvector.vector(1024) OPERATOR(memoriesdb_pgvector.<=>) embedding::memoriesdb_pgvector.vector(1024)
             LIMIT n) hits
         WHERE hits.sim >= min_similarity AND hits.sim <> 'NaN'::float8 ORDER BY hits.sim DESC;
    WHEN 1536 THEN
        RETURN QUERY SELECT * FROM (
            SELECT m.id, m.content, m.kind, m.role, m.session_id, m.position,
                   1 - (m.content_embedding::memoriesdb_pgvector.vector(1536) OPERATOR(memoriesdb_pgvector.<=>) embedding::memoriesdb_pgvector.vector(1536)) AS sim
              FROM @extschema@.memories m
             WHERE memoriesdb_pgvector.vector_dims(m.content_embedding) = 1536
               AND (worker OR m.created_by = me
                    OR (m.session_id IS NOT NULL AND EXISTS (
                            SELECT 1 FROM @extschema@.memory_sessions s WHERE s.id = m.session_id AND s.owner_id = me))
                    OR (m.session_id IS NOT NULL AND EXISTS (
                            SELECT 1 FROM @extschema@.memory_share_segments g
                             WHERE g.grantee = me AND g.session_id = m.session_id AND m.position <= g.visible_upto))
                    OR EXISTS (SELECT 1 FROM @extschema@.memory_shares g WHERE g.memory_id = m.id AND g.grantee = me))
               AND (kind_filter IS NULL OR m.kind = kind_filter)
               AND (metadata_filter IS NULL OR m._metadata @> metadata_filter)
             ORDER BY m.content_embedding::memoriesdb_pgvector.vector(1536) OPERATOR(memoriesdb_pgvector.<=>) embedding::memoriesdb_pgvector.vector(1536)
             LIMIT n) hits
         WHERE hits.sim >= min_similarity AND hits.sim <> 'NaN'::float8 ORDER BY hits.sim DESC;
    ELSE
        RETURN QUERY EXECUTE format(
            'SELECT * FROM (
                SELECT m.id, m.content, m.kind, m.role, m.session_id, m.position,
                       1 - (m.content_embedding::%3$s.vector(%2$s) OPERATOR(%3$s.<=>) $1::%3$s.vector(%2$s)) AS sim
                  FROM %1$I.memories m
                 WHERE %3$s.vector_dims(m.content_embedding) = %2$s
                   AND ($6 OR m.created_by = $7
                        OR (m.session_id IS NOT NULL AND EXISTS (
                                SELECT 1 FROM %1$I.memory_sessions s WHERE s.id = m.session_id AND s.owner_id = $7))
                        OR (m.session_id IS NOT NULL AND EXISTS (
                                SELECT 1 FROM %1$I.memory_share_segments g
                                 WHERE g.grantee = $7 AND g.session_id = m.session_id AND m.position <= g.visible_upto))
                        OR EXISTS (SELECT 1 FROM %1$I.memory_shares g WHERE g.memory_id = m.id AND g.grantee = $7))
                   AND ($2 IS NULL OR m.kind = $2)
                   AND ($3 IS NULL OR m._metadata @> $3)
                 ORDER BY m.content_embedding::%3$s.vector(%2$s) OPERATOR(%3$s.<=>) $1::%3$s.vector(%2$s)
                 LIMIT $4) hits
             WHERE hits.sim >= $5 AND hits.sim <> ''NaN''::float8 ORDER BY hits.sim DESC', '@extschema@', dims, 'memoriesdb_pgvector')
        USING embedding, kind_filter, metadata_filter, n, min_similarity, worker, me;
    END CASE;
END
$$;

-- Hybrid search: reciprocal-rank fusion of the full-text and the vector ranking.
--   score = text_weight / (rrf_k + text_rank) + vector_weight / (rrf_k + vector_rank)
-- where a ranking a row is missing from contributes 0, so a row found by only one method still
-- appears. Each component's rank and score is returned beside the fused score. Each ranking
-- contributes its top `candidates` rows (default 5 x lim).
CREATE FUNCTION @extschema@.hybrid_search(
    query text,
    embedding vector,
    lim integer DEFAULT 10,
    session_id uuid DEFAULT NULL,
    kind_filter text DEFAULT NULL,
    metadata_filter jsonb DEFAULT NULL,
    text_weight double precision DEFAULT 1.0,
    vector_weight double precision DEFAULT 1.0,
    rrf_k integer DEFAULT 60,
    candidates integer DEFAULT NULL,
    config regconfig DEFAULT NULL)
RETURNS TABLE (id uuid, content text, kind text, role text, origin_session_id uuid, "position" bigint,
               score double precision, text_rank bigint, text_score real,
               vector_rank bigint, vector_similarity double precision)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    n integer := @extschema@.search_limit(lim);
    pool integer := @extschema@.search_limit(coalesce(candidates, least(n * 5, 10000)));
BEGIN
    -- (in PostgreSQL NaN equals NaN and is greater than every number)
    IF text_weight IS NULL OR vector_weight IS NULL OR text_weight < 0 OR vector_weight < 0
       OR text_weight IN ('NaN', 'Infinity') OR vector_weight IN ('NaN', 'Infinity') THEN
        RAISE EXCEPTION 'text_weight and vector_weight must be finite and >= 0, got % and %', text_weight, vector_weight
            USING ERRCODE = '22023';
    END IF;
    IF rrf_k IS NULL OR rrf_k < 1 THEN
        RAISE EXCEPTION 'rrf_k must be a positive integer, got %', rrf_k USING ERRCODE = '22023';
    END IF;
    RETURN QUERY
    WITH text_hits AS (
        SELECT t.id, t.content, t.kind, t.role, t.origin_session_id, t.position, t.rank AS text_score,
               row_number() OVER (ORDER BY t.rank DESC, t.id) AS text_rank
          FROM @extschema@.search_memories(query, hybrid_search.session_id, kind_filter, metadata_filter, pool, config) t
    ), vector_hits AS (
        SELECT v.id, v.content, v.kind, v.role, v.origin_session_id, v.position, v.similarity,
               row_number() OVER (ORDER BY v.similarity DESC, v.id) AS vector_rank
          FROM @extschema@.vector_search(embedding, -1, pool, hybrid_search.session_id, kind_filter, metadata_filter) v
    )
    SELECT coalesce(t.id, v.id), coalesce(t.content, v.content), coalesce(t.kind, v.kind),
           coalesce(t.role, v.role), coalesce(t.origin_session_id, v.origin_session_id),
           coalesce(t.position, v.position),
           coalesce(text_weight / (rrf_k + t.text_rank), 0) + coalesce(vector_weight / (rrf_k + v.vector_rank), 0) AS fused,
           t.text_rank, t.text_score, v.vector_rank, v.similarity
      FROM text_hits t
      FULL OUTER JOIN vector_hits v ON v.id = t.id
     ORDER BY fused DESC, coalesce(t.id, v.id)
     LIMIT n;
END
$$;
