-- Erasure: removing a user's or a conversation's content everywhere — memories, edges,
-- passages, embeddings, queue rows, shares, facts, summaries, access counts — and from the audit
-- log, whose hash chain still verifies afterwards (chain version 2, sql/audit.sql: the chain
-- commits to each row's erasable content through its digest).
--
--   forget_user(user_id)                 everything a user wrote and every conversation they own
--   delete_session(session_id, cascade)  one conversation (and with cascade its owner's forks)
--   sweep_expired_memories()             expired memories (sql/lifecycle.sql)
--
-- Forks other users made of an erased conversation keep their own messages: they are detached
-- from it (parent_id NULL) and marked with memory_sessions.inherited_erased_at; their transcript
-- starts after fork_position, where the erased, inherited part used to be.

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
