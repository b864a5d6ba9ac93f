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
    IF define_memory_type.default_ttl <= interval '0' THEN
        RAISE EXCEPTION 'default_ttl must be positive, not %', define_memory_type.default_ttl
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
-- session it was forked from are the other session's, and keep theirs). A fork made later starts
-- with the same retention. Returns the number of existing messages given a new expiry.
-- Only the session's owner may change it (42501 for a grantee, P0002 for anyone else).
CREATE FUNCTION @extschema@.set_session_retention(
    session_id uuid,
    message_ttl interval,
    apply_to_existing boolean DEFAULT false)
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
    IF set_session_retention.message_ttl <= interval '0' THEN
        RAISE EXCEPTION 'message_ttl must be positive, not %', set_session_retention.message_ttl
            USING ERRCODE = '22023', HINT = 'NULL means the message type''s default (memory_types)';
    END IF;
    UPDATE @extschema@.memory_sessions s SET message_ttl = set_session_retention.message_ttl
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
