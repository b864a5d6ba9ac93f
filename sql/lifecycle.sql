-- Memory lifecycle: types, importance, expiry and retention.
--
-- Every memory has a type (memories.kind, one of memory_types), an importance in [0, 1] (its own,
-- or its type's default) and may expire (memories.expires_at). An expired memory is gone at once
-- for every reader — transcripts, searches, the graph, shares and forks: the read rule
-- (src/policies.rs) refuses it — and sweep_expired_memories() deletes it later, at leisure.
-- A new memory's expiry comes from its type's default_ttl, a new message's from its session's
-- message_ttl (set_session_retention()) or else the message type's default_ttl.

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
