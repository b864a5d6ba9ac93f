-- Multi-tenancy: forced row-level security on every table, explicit sharing, and a
-- tamper-evident audit chain. See SECURITY.md for the trust model in plain words.
--
-- A user sees and changes their own memories, edges and sessions, plus what was explicitly
-- shared with them. Policies compare against (SELECT current_memory_user()), which PostgreSQL
-- evaluates once per query, and every condition is an index probe.

-- ---------------------------------------------------------------------------------------------
-- Sharing
-- ---------------------------------------------------------------------------------------------

-- Can user `me` see this memory? The rule of the memories_read policy, for code that runs as the
-- extension owner (SECURITY DEFINER) and must decide for its caller. The search functions
-- (search.sql) inline the same rule in their queries; change them together.
CREATE FUNCTION @extschema@.memory_visible_to(me uuid, owner uuid, session uuid, message_position bigint, memory uuid)
RETURNS boolean LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT me IS NOT NULL AND (
           owner = me
        OR (session IS NOT NULL AND EXISTS (
                SELECT 1 FROM @extschema@.memory_sessions s WHERE s.id = session AND s.owner_id = me))
        OR (session IS NOT NULL AND EXISTS (
                SELECT 1 FROM @extschema@.memory_share_segments g
                 WHERE g.grantee = me AND g.session_id = session AND message_position <= g.visible_upto))
        OR EXISTS (SELECT 1 FROM @extschema@.memory_shares g WHERE g.memory_id = memory AND g.grantee = me))
$$;

-- Does user `me` see (some of) this session's messages: is it theirs, or part of what a share
-- shows them (the shared session or one of the ancestors it inherits from)? Its memory_sessions
-- row is visible to them only in the first two cases (see memory_sessions_read).
-- PL/pgSQL, so that its plan is cached across calls: session_lineage() asks on every transcript.
CREATE FUNCTION @extschema@.session_visible_to(me uuid, session uuid)
RETURNS boolean LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN me IS NOT NULL AND (
           EXISTS (SELECT 1 FROM @extschema@.memory_sessions s WHERE s.id = session AND s.owner_id = me)
        OR EXISTS (SELECT 1 FROM @extschema@.memory_share_segments g WHERE g.grantee = me AND g.session_id = session));
END
$$;

-- Is this session listed for user `me`: theirs, or shared with them directly? The rule of the
-- memory_sessions_read policy (written there as subqueries, which PostgreSQL evaluates once per
-- query; change them together), for SECURITY DEFINER code that takes a session id from its
-- caller. An ancestor that a shared fork inherits messages from is not listed: for it such code
-- answers "does not exist", as get_formatted_conversation() does.
CREATE FUNCTION @extschema@.session_listed_for(me uuid, session uuid)
RETURNS boolean LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN me IS NOT NULL AND (
           EXISTS (SELECT 1 FROM @extschema@.memory_sessions s WHERE s.id = session AND s.owner_id = me)
        OR EXISTS (SELECT 1 FROM @extschema@.memory_shares g WHERE g.memory_id = session AND g.grantee = me));
END
$$;

-- Share a memory or a session with another user, read-only or read-write. Sharing a session
-- shares what its branch shows of the owner's own sessions (its messages and the inherited
-- prefix of the owner's ancestors; not messages inherited from someone else's session); with
-- can_write the grantee may also add messages to it. Sharing again changes can_write. Shares are written only here (SECURITY DEFINER):
-- nobody can grant themselves access by writing the share tables.
CREATE FUNCTION @extschema@.share_memory(memory_id uuid, grantee uuid, can_write boolean DEFAULT false)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    me uuid := @extschema@.current_memory_user();
    target @extschema@.memories;
BEGIN
    IF share_memory.memory_id IS NULL OR share_memory.grantee IS NULL OR share_memory.can_write IS NULL THEN
        RAISE EXCEPTION 'memory_id, grantee and can_write must not be NULL' USING ERRCODE = '22004';
    END IF;
    SELECT m.* INTO target FROM @extschema@.memories m WHERE m.id = share_memory.memory_id;
    IF NOT FOUND OR NOT @extschema@.memory_visible_to(me, target.created_by, target.session_id, target.position, target.id) THEN
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

-- Take a share back; effective for the grantee's next statement. Returns whether there was one.
CREATE FUNCTION @extschema@.revoke_share(memory_id uuid, grantee uuid)
RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM @extschema@.memory_shares s
     WHERE s.memory_id = revoke_share.memory_id AND s.grantee = revoke_share.grantee
       AND s.granted_by = @extschema@.current_memory_user();
    RETURN FOUND;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Session rows are written only by the conversation functions, through these two (SECURITY
-- DEFINER) helpers, which decide for their caller; nobody holds INSERT or UPDATE on
-- memory_sessions. That keeps the branch structure honest: a session row always belongs to the
-- creator of its session memory, forks hang off sessions their creator can see, and positions
-- only move forward.
-- ---------------------------------------------------------------------------------------------

-- Register the session row of a session memory the caller has just created, optionally as a fork
-- of `parent` at `fork_at` (a position of the parent's branch the caller may see).
CREATE FUNCTION @extschema@.register_session(session uuid, parent uuid DEFAULT NULL, fork_at bigint DEFAULT 0,
                                             fork_message uuid DEFAULT NULL)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    me uuid := @extschema@.current_memory_user();
    unrestricted boolean := @extschema@.acting_role_bypasses_rls();
    parent_row @extschema@.memory_sessions;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM @extschema@.memories m
                    WHERE m.id = session AND m.kind = 'session'
                      AND (m.created_by IS NOT DISTINCT FROM me OR unrestricted)) THEN
        RAISE EXCEPTION 'memory % is not a session of the acting user', session USING ERRCODE = '42501';
    END IF;
    IF parent IS NOT NULL THEN
        SELECT s.* INTO parent_row FROM @extschema@.memory_sessions s WHERE s.id = parent;
        IF NOT FOUND OR (parent_row.owner_id IS DISTINCT FROM me AND NOT unrestricted
                         AND NOT @extschema@.session_visible_to(me, parent)) THEN
            RAISE EXCEPTION 'session % does not exist', parent USING ERRCODE = 'P0002';
        END IF;
        IF fork_at IS NULL OR fork_at < 0 OR fork_at > parent_row.last_position
           OR NOT EXISTS (SELECT 1 FROM @extschema@.session_lineage(parent) l
                           WHERE fork_at = 0 OR EXISTS (
                                 SELECT 1 FROM @extschema@.memories m
                                  WHERE m.session_id = l.lineage_session_id AND m.position = fork_at
                                    AND fork_at <= l.visible_upto
                                    AND (unrestricted OR @extschema@.memory_visible_to(me, m.created_by, m.session_id, m.position, m.id)))) THEN
            RAISE EXCEPTION 'position % is not a message of session % you can see', fork_at, parent
                USING ERRCODE = '22023';
        END IF;
    END IF;
    INSERT INTO @extschema@.memory_sessions (id, owner_id, parent_id, fork_position, fork_message_id, depth, last_position)
    VALUES (session, me, parent, CASE WHEN parent IS NULL THEN 0 ELSE fork_at END, fork_message,
            CASE WHEN parent IS NULL THEN 0 ELSE parent_row.depth + 1 END,
            CASE WHEN parent IS NULL THEN 0 ELSE fork_at END);
END
$$;

-- Take the next `how_many` positions of a session for new messages, if the caller may add to it
-- (owner, or a share with can_write); returns the last of them. The row lock this takes orders
-- concurrent appends to one session. NULL when the caller may not (refuse_session_write() then
-- says why). The write rule is in the UPDATE itself, so that check and row lock are one
-- statement on the append path.
CREATE FUNCTION @extschema@.next_session_position(session uuid, how_many bigint DEFAULT 1)
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    me uuid := @extschema@.current_memory_user();
    next_position bigint;
BEGIN
    IF how_many IS NULL OR how_many < 0 THEN
        RAISE EXCEPTION 'how_many must be 0 or more, got %', coalesce(how_many::text, 'NULL') USING ERRCODE = '22023';
    END IF;
    UPDATE @extschema@.memory_sessions s SET last_position = s.last_position + how_many
     WHERE s.id = session
       AND (@extschema@.acting_role_bypasses_rls()
            OR s.owner_id = me
            OR EXISTS (SELECT 1 FROM @extschema@.memory_shares g
                        WHERE g.memory_id = s.id AND g.grantee = me AND g.can_write))
    RETURNING s.last_position INTO next_position;
    RETURN next_position;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Row-level security: enabled and forced on every table (the table owner is subject to it too;
-- only superusers and BYPASSRLS roles are not).
-- ---------------------------------------------------------------------------------------------
ALTER TABLE @extschema@.users ENABLE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.users FORCE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.memories ENABLE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.memories FORCE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.memory_sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.memory_sessions FORCE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.memory_edges ENABLE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.memory_edges FORCE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.memory_shares ENABLE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.memory_shares FORCE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.memory_share_segments ENABLE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.memory_share_segments FORCE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.memory_graph_clock ENABLE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.memory_graph_clock FORCE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.audit_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.audit_log FORCE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.embedding_schedule ENABLE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.embedding_schedule FORCE ROW LEVEL SECURITY;
-- the outbox has no policy at all: only the relay (a superuser) and emit_events() (SECURITY
-- DEFINER) touch it
ALTER TABLE @extschema@.memory_event_outbox ENABLE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.memory_event_outbox FORCE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.vector_indexes ENABLE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.vector_indexes FORCE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.vindexing_schedule ENABLE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.vindexing_schedule FORCE ROW LEVEL SECURITY;

-- users: the row mapped to your role; trusted roles (which assert identities and create users)
-- and auditors see all. (current_memory_user() reads through this policy, so it must not call it.)
CREATE POLICY users_read ON @extschema@.users FOR SELECT
    USING ((SELECT @extschema@.acting_role_is('memoriesdb_trusted'))
           OR (SELECT @extschema@.acting_role_is('memoriesdb_auditor'))
           OR db_role = (SELECT @extschema@.acting_db_role()));
CREATE POLICY users_manage ON @extschema@.users FOR ALL
    USING ((SELECT @extschema@.acting_role_is('memoriesdb_trusted')))
    WITH CHECK ((SELECT @extschema@.acting_role_is('memoriesdb_trusted')));

-- memories: own, shared directly, or a message inside what a shared session shows; workers read
-- all. search_memories() and vector_search() (search.sql) apply this same rule
-- themselves; change them together.
CREATE POLICY memories_read ON @extschema@.memories FOR SELECT
    USING ((SELECT @extschema@.acting_role_is('memoriesdb_worker'))
           OR created_by = (SELECT @extschema@.current_memory_user())
           OR (session_id IS NOT NULL AND EXISTS (
                   SELECT 1 FROM @extschema@.memory_sessions s
                    WHERE s.id = memories.session_id AND s.owner_id = (SELECT @extschema@.current_memory_user())))
           OR (session_id IS NOT NULL AND EXISTS (
                   SELECT 1 FROM @extschema@.memory_share_segments g
                    WHERE g.grantee = (SELECT @extschema@.current_memory_user())
                      AND g.session_id = memories.session_id AND memories.position <= g.visible_upto))
           OR EXISTS (SELECT 1 FROM @extschema@.memory_shares g
                       WHERE g.memory_id = memories.id
                         AND g.grantee = (SELECT @extschema@.current_memory_user())));
-- writing directly: free memories, as yourself. Sessions and messages are written through the
-- conversation API (create_session, add_message(s)_to_session, fork_session), which runs as the
-- extension owner and takes positions in order: a message inserted directly could take a
-- position the session's next append needs and jam it.
CREATE POLICY memories_insert ON @extschema@.memories FOR INSERT
    WITH CHECK (created_by = (SELECT @extschema@.current_memory_user()) AND session_id IS NULL);
CREATE POLICY memories_update ON @extschema@.memories FOR UPDATE
    USING ((SELECT @extschema@.acting_role_is('memoriesdb_worker'))
           OR created_by = (SELECT @extschema@.current_memory_user())
           OR EXISTS (SELECT 1 FROM @extschema@.memory_shares g
                       WHERE g.memory_id = memories.id AND g.can_write
                         AND g.grantee = (SELECT @extschema@.current_memory_user())))
    -- (a message's session and position cannot change at all: see stamp_provenance())
    WITH CHECK ((SELECT @extschema@.acting_role_is('memoriesdb_worker'))
                OR created_by = (SELECT @extschema@.current_memory_user())
                OR EXISTS (SELECT 1 FROM @extschema@.memory_shares g
                            WHERE g.memory_id = memories.id AND g.can_write
                              AND g.grantee = (SELECT @extschema@.current_memory_user())));
CREATE POLICY memories_delete ON @extschema@.memories FOR DELETE
    USING (created_by = (SELECT @extschema@.current_memory_user()));

-- sessions: own, or part of what a shared session shows. Written only through register_session()
-- and next_session_position().
-- A grantee sees the row of a session shared with them, not the rows of its ancestors: those
-- would show how the owner's other branches went on after the fork point (last_position).
-- session_lineage() walks up to the ancestors for them.
-- (session_listed_for() is the same rule for SECURITY DEFINER code; change them together)
CREATE POLICY memory_sessions_read ON @extschema@.memory_sessions FOR SELECT
    USING ((SELECT @extschema@.acting_role_is('memoriesdb_worker'))
           OR owner_id = (SELECT @extschema@.current_memory_user())
           OR EXISTS (SELECT 1 FROM @extschema@.memory_shares g
                       WHERE g.memory_id = memory_sessions.id
                         AND g.grantee = (SELECT @extschema@.current_memory_user())));

-- edges: your own, or edges between memories you can see
CREATE POLICY memory_edges_read ON @extschema@.memory_edges FOR SELECT
    USING (created_by = (SELECT @extschema@.current_memory_user())
           OR (EXISTS (SELECT 1 FROM @extschema@.memories m WHERE m.id = memory_edges.source_id)
               AND EXISTS (SELECT 1 FROM @extschema@.memories m WHERE m.id = memory_edges.target_id)));
CREATE POLICY memory_edges_insert ON @extschema@.memory_edges FOR INSERT
    WITH CHECK (created_by = (SELECT @extschema@.current_memory_user()));
CREATE POLICY memory_edges_update ON @extschema@.memory_edges FOR UPDATE
    USING (created_by = (SELECT @extschema@.current_memory_user()));
CREATE POLICY memory_edges_delete ON @extschema@.memory_edges FOR DELETE
    USING (created_by = (SELECT @extschema@.current_memory_user()));

-- shares: the grantor and the grantee see them; written only by share_memory()/revoke_share()
CREATE POLICY memory_shares_read ON @extschema@.memory_shares FOR SELECT
    USING (grantee = (SELECT @extschema@.current_memory_user())
           OR granted_by = (SELECT @extschema@.current_memory_user()));
CREATE POLICY memory_share_segments_read ON @extschema@.memory_share_segments FOR SELECT
    USING (grantee = (SELECT @extschema@.current_memory_user()));

-- the cycle-check serialisation row carries no data
CREATE POLICY memory_graph_clock_all ON @extschema@.memory_graph_clock FOR ALL USING (true) WITH CHECK (true);

-- audit rows: visible to the user they concern (owner of the changed row) or who made the
-- change, and to auditors. Written only by log_memory_change() (as the extension owner).
CREATE POLICY audit_log_read ON @extschema@.audit_log FOR SELECT
    USING ((SELECT @extschema@.acting_role_is('memoriesdb_auditor'))
           OR subject_user = (SELECT @extschema@.current_memory_user())
           OR acting_user = (SELECT @extschema@.current_memory_user()));

-- queues: workers only (rows are added by SECURITY DEFINER triggers)
CREATE POLICY embedding_schedule_workers ON @extschema@.embedding_schedule FOR ALL
    USING ((SELECT @extschema@.acting_role_is('memoriesdb_worker')))
    WITH CHECK ((SELECT @extschema@.acting_role_is('memoriesdb_worker')));
CREATE POLICY vindexing_schedule_workers ON @extschema@.vindexing_schedule FOR ALL
    USING ((SELECT @extschema@.acting_role_is('memoriesdb_worker')))
    WITH CHECK ((SELECT @extschema@.acting_role_is('memoriesdb_worker')));

-- the list of vector indexes is not secret
CREATE POLICY vector_indexes_read ON @extschema@.vector_indexes FOR SELECT USING (true);

-- Views read their tables as the caller, so the policies above apply through them too.
ALTER VIEW @extschema@.memory_graph SET (security_invoker = true);
ALTER VIEW @extschema@.embedding_queue_status SET (security_invoker = true);
ALTER VIEW @extschema@.embedding_coverage SET (security_invoker = true);

-- ---------------------------------------------------------------------------------------------
-- Tamper-evident audit: a hash chain over the audit log
-- ---------------------------------------------------------------------------------------------

-- The canonical text of an audit row that the chain hashes (jsonb's text form is canonical).
-- The time is hashed in UTC so that the text, and so the chain, is the same whatever the
-- session's TimeZone.
CREATE FUNCTION @extschema@.audit_row_text(a @extschema@.audit_log) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_catalog.jsonb_build_array(a.id, a.table_name, a.operation, a.row_id, a.old_row, a.new_row,
                                        a.acting_user, a.subject_user, a.db_role, a.txid,
                                        a.changed_at AT TIME ZONE 'UTC')::text
$$;

-- Link every finished transaction's audit rows into the chain, in (transaction, row) order:
-- chain_hash = sha256(previous chain_hash || audit_row_text(row)). Only transactions older than
-- every running one are sealed, so no row can later appear before a sealed one. Writers never
-- wait for this: call it periodically (a worker, cron, or pg_cron every minute). Returns the
-- number of rows sealed.
CREATE FUNCTION @extschema@.seal_audit_log(max_rows integer DEFAULT 100000)
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    horizon bigint := txid_snapshot_xmin(txid_current_snapshot());
    position bigint;
    previous text;
    sealed_ids bigint[] := '{}';
    chain_hashes text[] := '{}';
    r @extschema@.audit_log;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('memoriesdb.audit_chain'));
    SELECT a.chain_position, a.chain_hash INTO position, previous
      FROM @extschema@.audit_log a WHERE a.chain_position IS NOT NULL
     ORDER BY a.chain_position DESC LIMIT 1;
    position := coalesce(position, 0);
    previous := coalesce(previous, '');
    FOR r IN
        SELECT * FROM @extschema@.audit_log a
         WHERE a.chain_position IS NULL AND a.txid < horizon
         ORDER BY a.txid, a.id LIMIT max_rows
    LOOP
        previous := @extschema@.content_sha256(previous || @extschema@.audit_row_text(r));
        sealed_ids := sealed_ids || r.id;
        chain_hashes := chain_hashes || previous;
    END LOOP;
    -- one UPDATE for the batch: an UPDATE per row doubled the cost of sealing
    UPDATE @extschema@.audit_log a SET chain_position = position + u.n, chain_hash = u.chain_hash
      FROM unnest(sealed_ids, chain_hashes) WITH ORDINALITY AS u(id, chain_hash, n)
     WHERE a.id = u.id;
    RETURN cardinality(sealed_ids);
END
$$;

-- Recompute the chain and report the first broken link: a changed row (its hash no longer
-- matches), a removed row (a gap in positions) or a forged hash. `intact` is true when every
-- sealed row verifies. Compare `last_hash` with a value recorded outside the database earlier
-- to detect a rewrite of the whole chain by a superuser.
CREATE FUNCTION @extschema@.verify_audit_chain()
RETURNS TABLE (intact boolean, sealed_rows bigint, unsealed_rows bigint, first_broken_position bigint,
               first_broken_audit_id bigint, problem text, last_hash text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    expected_position bigint := 0;
    previous text := '';
    r @extschema@.audit_log;
BEGIN
    unsealed_rows := (SELECT count(*) FROM @extschema@.audit_log a WHERE a.chain_position IS NULL);
    FOR r IN SELECT * FROM @extschema@.audit_log a WHERE a.chain_position IS NOT NULL ORDER BY a.chain_position LOOP
        expected_position := expected_position + 1;
        IF r.chain_position <> expected_position THEN
            intact := false; sealed_rows := expected_position - 1;
            first_broken_position := expected_position; first_broken_audit_id := r.id;
            problem := format('chain position %s is missing (next present: %s): rows were removed',
                              expected_position, r.chain_position);
            last_hash := previous;
            RETURN NEXT; RETURN;
        END IF;
        previous := @extschema@.content_sha256(previous || @extschema@.audit_row_text(r));
        IF r.chain_hash IS DISTINCT FROM previous THEN
            intact := false; sealed_rows := expected_position - 1;
            first_broken_position := r.chain_position; first_broken_audit_id := r.id;
            problem := 'row content or chain hash was changed after sealing';
            last_hash := r.chain_hash;
            RETURN NEXT; RETURN;
        END IF;
    END LOOP;
    intact := true; sealed_rows := expected_position; last_hash := nullif(previous, '');
    RETURN NEXT;
END
$$;
