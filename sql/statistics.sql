-- Statistics: how much each user and each conversation holds, how fast it grows, how much of it
-- is embedded and what is due to expire — for dashboards and quotas, read live.
--
-- user_statistics and session_statistics read as their caller (security_invoker): a user sees
-- their own figures, counted over the memories they can see; an administrator (a role that
-- bypasses row-level security) sees every user's. memory_statistics is the store's operational
-- state (backlogs of the sweep, the embedding queue and the access log) for administrators and
-- workers only. Each reads its rows through indexes once: a user's figures cost about as much as
-- reading their memories' rows (tens of milliseconds for 100,000; BENCHMARKS.md).

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
