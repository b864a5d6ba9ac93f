-- The embedding pipeline, as SQL any worker can drive:
--
--   LISTEN memoriesdb_embedding_queue;                  -- woken when work is queued
--   SELECT * FROM claim_embedding_batch(16);             -- lease a batch (SKIP LOCKED)
--   SELECT store_embedding(memory_id, '[...]', 'all-MiniLM-L6-v2', content_hash);
--   SELECT store_embedding_chunks(memory_id, content_hash, 'all-MiniLM-L6-v2',   -- long content:
--          ARRAY['[...]', '[...]']::vector[], ARRAY[0, 900], ARRAY[1000, 1800]);  -- its passages
--   SELECT fail_embedding(memory_id, 'model timeout');   -- retry later, dead after max attempts
--   SELECT process_vindexing();                          -- build the indexes new embeddings need
--
-- A leased item whose worker died becomes claimable again when its lease runs out.
-- memoriesdb-embedder (embedder/) is such a worker.

-- The embedding of a text, from the endpoint an administrator configured
-- (memoriesdb.embedding_url, normally memoriesdb-embedder's /v1/embeddings), with the model that
-- embeds the stored memories: ORDER BY content_embedding <=> embed_text('...') compares like
-- with like. STABLE, so that a query calls it once, not once per row. Errors: 55000 no endpoint
-- configured, 08001 endpoint unreachable, 57014 no answer within memoriesdb.embedding_timeout,
-- 58000 an answer that is an error or not an embedding.
CREATE FUNCTION @extschema@.embed_text(input text) RETURNS vector
LANGUAGE c STABLE STRICT AS 'MODULE_PATHNAME', 'embed_text_native';

CREATE FUNCTION @extschema@.claim_embedding_batch(batch_size integer DEFAULT 10, lease interval DEFAULT '5 minutes')
RETURNS TABLE (memory_id uuid, content text, content_hash text, attempts integer)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    IF batch_size IS NULL OR batch_size < 1 OR batch_size > 1000 THEN
        RAISE EXCEPTION 'batch_size must be between 1 and 1000, got %', batch_size USING ERRCODE = '22023';
    END IF;
    IF lease IS NULL OR lease <= interval '0' THEN
        RAISE EXCEPTION 'lease must be a positive interval, got %', lease USING ERRCODE = '22023';
    END IF;
    RETURN QUERY
    WITH claimable AS (
        SELECT q.memory_id
          FROM @extschema@.embedding_schedule q
         WHERE (q.status IN ('pending', 'failed') AND (q.locked_until IS NULL OR q.locked_until <= now()))
            OR (q.status = 'processing' AND q.locked_until <= now())
         ORDER BY q.enqueued_at
         LIMIT batch_size
           FOR UPDATE SKIP LOCKED
    ), leased AS (
        UPDATE @extschema@.embedding_schedule q
           SET status = 'processing', attempts = q.attempts + 1,
               locked_until = now() + lease, updated_at = now()
          FROM claimable c
         WHERE q.memory_id = c.memory_id
        RETURNING q.memory_id, q.content_hash, q.attempts
    )
    SELECT l.memory_id, m.content, l.content_hash, l.attempts
      FROM leased l JOIN @extschema@.memories m ON m.id = l.memory_id;
END
$$;

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
CREATE FUNCTION @extschema@.store_embedding(memory_id uuid, embedding vector, model text, content_hash text)
RETURNS boolean LANGUAGE sql SET search_path = pg_catalog, pg_temp
RETURN @extschema@.store_embedding_chunks(memory_id, content_hash, model, ARRAY[embedding]);

-- Record a failed attempt. The item is retried after an exponential backoff (2^attempts
-- seconds, at most an hour) and becomes 'dead' after max_attempts attempts. Returns the status.
CREATE FUNCTION @extschema@.fail_embedding(memory_id uuid, error text, max_attempts integer DEFAULT 5)
RETURNS text LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    new_status text;
BEGIN
    IF max_attempts IS NULL OR max_attempts < 1 THEN
        RAISE EXCEPTION 'max_attempts must be at least 1, got %', max_attempts USING ERRCODE = '22023';
    END IF;
    UPDATE @extschema@.embedding_schedule q
       SET status = CASE WHEN q.attempts >= max_attempts THEN 'dead' ELSE 'failed' END,
           last_error = pg_catalog."left"(coalesce(error, 'unknown error'), 2000),
           locked_until = now() + least(interval '1 second' * power(2, q.attempts), interval '1 hour'),
           updated_at = now()
     WHERE q.memory_id = fail_embedding.memory_id
    RETURNING q.status INTO new_status;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'memory % is not in the embedding queue', fail_embedding.memory_id USING ERRCODE = 'P0002';
    END IF;
    RETURN new_status;
END
$$;

-- Put dead items back in the queue (e.g. after fixing the model server). Returns how many.
CREATE FUNCTION @extschema@.retry_dead_embeddings() RETURNS bigint
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    WITH revived AS (
        UPDATE @extschema@.embedding_schedule q
           SET status = 'pending', attempts = 0, locked_until = NULL, updated_at = now()
         WHERE q.status = 'dead'
        RETURNING 1)
    SELECT count(*) FROM revived
$$;

-- Do queued index work: create the HNSW index for each new embedding dimension. Returns the
-- number of items done. Runs as the extension owner (only the table owner may create indexes).
CREATE FUNCTION @extschema@.process_vindexing(max_items integer DEFAULT 10)
RETURNS integer LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    item record;
    done integer := 0;
BEGIN
    FOR item IN
        SELECT v.id, v.target, v.dimensions FROM @extschema@.vindexing_schedule v
         WHERE v.status = 'pending' ORDER BY v.enqueued_at LIMIT max_items
           FOR UPDATE SKIP LOCKED
    LOOP
        PERFORM @extschema@.create_vector_index(item.dimensions);
        UPDATE @extschema@.vindexing_schedule SET status = 'done', attempts = attempts + 1 WHERE id = item.id;
        done := done + 1;
    END LOOP;
    RETURN done;
END
$$;

-- Queue health at a glance.
CREATE VIEW @extschema@.embedding_queue_status AS
SELECT count(*) FILTER (WHERE q.status = 'pending')    AS pending,
       count(*) FILTER (WHERE q.status = 'processing') AS processing,
       count(*) FILTER (WHERE q.status = 'failed')     AS failed,
       count(*) FILTER (WHERE q.status = 'dead')       AS dead,
       count(*) FILTER (WHERE q.status = 'done')       AS done,
       min(q.enqueued_at) FILTER (WHERE q.status IN ('pending', 'failed', 'processing')) AS oldest_waiting_since,
       now() - min(q.enqueued_at) FILTER (WHERE q.status IN ('pending', 'failed', 'processing')) AS oldest_waiting_age
  FROM @extschema@.embedding_schedule q;

-- How many memories with content have a current embedding, per kind.
CREATE VIEW @extschema@.embedding_coverage AS
SELECT m.kind,
       count(*) AS memories,
       count(m.content_embedding) AS embedded,
       round(100.0 * count(m.content_embedding) / count(*), 1) AS percent,
       array_remove(array_agg(DISTINCT m.embedding_model), NULL) AS models
  FROM @extschema@.memories m
 WHERE m.content <> ''
 GROUP BY m.kind;


-- Embedding queue, for changed content: the memory waits for a new embedding (re-arming its
-- queue row) and the workers are woken. New memories are queued by memories_inserted(), once per
-- statement. Same transaction as the write, so a rolled-back write leaves no queue entry.
CREATE FUNCTION @extschema@.enqueue_embedding() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO @extschema@.embedding_schedule AS q (memory_id, content_hash)
    VALUES (NEW.id, NEW.content_hash)
    ON CONFLICT (memory_id) DO UPDATE
        SET content_hash = EXCLUDED.content_hash, status = 'pending', attempts = 0,
            last_error = NULL, locked_until = NULL, enqueued_at = now(), updated_at = now();
    PERFORM @extschema@.emit_events(ARRAY['memoriesdb_embedding_queue'], ARRAY['']);
    RETURN NULL;
END
$$;

CREATE TRIGGER memories_61_enqueue_changed AFTER UPDATE OF content ON @extschema@.memories
    FOR EACH ROW WHEN (OLD.content_hash IS DISTINCT FROM NEW.content_hash AND NEW.content <> '')
    EXECUTE FUNCTION @extschema@.enqueue_embedding();

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
