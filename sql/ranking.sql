-- Ranking by importance and recency, and the access tracking recency counts from.
--
-- The search functions (src/search.rs) can rank by more than relevance:
--   score = relevance x (1 - importance_weight + importance_weight x importance)
--                     x (1 - recency_weight + recency_weight x recency)
--   importance = the memory's own (memories.importance) or its type's default (memory_types)
--   recency    = 0.5 ^ (age / half_life), age = time since the searching user last used the
--                memory (a search of theirs returned it) or else since it was written
-- With both weights 0 (the default) the score is the relevance and the order is as before.
-- The ranking re-orders the best matches by relevance (`candidates` of them: by default 5 x lim
-- for full-text search, lim for vector search, every candidate of both rankings for hybrid
-- search), so an index still drives every search (src/ranking.rs).
--
-- Access tracking: every search remembers which memories it returned to which user, in the
-- memory of its own backend, and writes them to memory_access_log at most once a second per
-- backend (one INSERT into an unlogged table: no WAL, no row lock anyone waits for, no update of
-- memories); fold_memory_accesses() turns the log into memory_access (count, last use per user
-- and memory) from pg_cron or a worker. Accesses are approximate by design: those still in a backend's memory when it exits,
-- those of a rolled-back transaction and the unfolded log after a crash are lost. Searches in a
-- read-only transaction (or on a standby) record nothing; SET memoriesdb.track_access = off
-- turns recording off (e.g. for a batch job's searches).

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
