-- Context for a prompt: get_context() gathers in one call what a model needs for the next turn
-- of a conversation — the latest messages within a token budget, the facts and memories most
-- relevant to the latest turn, and a summary in place of the older messages it covers — each
-- with where it came from, in a stable order. Everything is read as the caller, under
-- row-level security.

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
