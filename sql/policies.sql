-- Multi-tenancy: forced row-level security on every table. See SECURITY.md for the trust model
-- in plain words.
--
-- A user sees and changes their own memories, edges and sessions, plus what was explicitly
-- shared with them. Policies compare against (SELECT current_memory_user()), which PostgreSQL
-- evaluates once per query, and every condition is an index probe.


-- Can user `me` see this memory? The memories read rule (its one definition is in Rust,
-- src/policies.rs), for SQL code that runs as the extension owner (SECURITY DEFINER) and must
-- decide for its caller. Created from the rule's text, as the memories_read policy below is.
-- PL/pgSQL, so that its plan is kept across calls: a SQL function with a pinned search_path is
-- never inlined, and parsed and planned its body again in every statement that called it (about
-- 100 us a call in PostgreSQL 15, against 20 us). Rust code writes the rule into its statements
-- instead. Its parameters are named with the function's name, so that a column of the same name
-- in a table the rule reads can never take their place.
DO $$
BEGIN
    EXECUTE pg_catalog.format(
        'CREATE FUNCTION @extschema@.memory_visible_to(me uuid, owner uuid, session uuid, message_position bigint, memory uuid,
                                                      expires timestamptz)
         RETURNS boolean LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS %L',
        'BEGIN RETURN memory_visible_to.me IS NOT NULL AND '
            OPERATOR(pg_catalog.||) @extschema@.memories_read_rule_sql(
                'memory_visible_to.memory', 'memory_visible_to.owner', 'memory_visible_to.session',
                'memory_visible_to.message_position', 'memory_visible_to.expires', 'memory_visible_to.me', 'false')
            OPERATOR(pg_catalog.||) '; END');
END
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

-- ---------------------------------------------------------------------------------------------
-- Row-level security: enabled and forced on every table (the table owner is subject to it too;
-- only superusers and BYPASSRLS roles are not).
-- ---------------------------------------------------------------------------------------------
ALTER TABLE @extschema@.memory_type_definitions ENABLE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.memory_type_definitions FORCE ROW LEVEL SECURITY;
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
ALTER TABLE @extschema@.memory_facts ENABLE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.memory_facts FORCE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.memory_access ENABLE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.memory_access FORCE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.memory_access_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.memory_access_log FORCE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.audit_chain_history ENABLE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.audit_chain_history FORCE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.memory_retention_policies ENABLE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.memory_retention_policies FORCE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.memory_summaries ENABLE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.memory_summaries FORCE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.memory_chunks ENABLE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.memory_chunks FORCE ROW LEVEL SECURITY;
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
-- all. The policy is created from the rule's one definition (src/policies.rs), which the search
-- functions put into their statements too.
DO $$
BEGIN
    EXECUTE pg_catalog.format(
        'CREATE POLICY memories_read ON @extschema@.memories FOR SELECT USING %s',
        @extschema@.memories_read_rule_sql(
            'memories.id', 'memories.created_by', 'memories.session_id', 'memories.position', 'memories.expires_at',
            '(SELECT @extschema@.current_memory_user())', '(SELECT @extschema@.acting_role_is(''memoriesdb_worker''))'));
END
$$;
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
    -- (a message's session and position cannot change at all: see derive_row_fields())
    WITH CHECK ((SELECT @extschema@.acting_role_is('memoriesdb_worker'))
                OR created_by = (SELECT @extschema@.current_memory_user())
                OR EXISTS (SELECT 1 FROM @extschema@.memory_shares g
                            WHERE g.memory_id = memories.id AND g.can_write
                              AND g.grantee = (SELECT @extschema@.current_memory_user())));
CREATE POLICY memories_delete ON @extschema@.memories FOR DELETE
    USING (created_by = (SELECT @extschema@.current_memory_user()));

-- sessions: own, or part of what a shared session shows. Written only by the session functions
-- (create_session, fork_session: src/sessions.rs) and next_session_position().
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

-- edges: those between memories you can see (yours or not). An edge of yours to a memory you
-- can no longer see (it expired, or its share was revoked) is not shown: it would name the
-- memory; it goes when the memory is deleted.
CREATE POLICY memory_edges_read ON @extschema@.memory_edges FOR SELECT
    USING (EXISTS (SELECT 1 FROM @extschema@.memories m WHERE m.id = memory_edges.source_id)
           AND EXISTS (SELECT 1 FROM @extschema@.memories m WHERE m.id = memory_edges.target_id));
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

-- chunks: no role but the owner reads or writes them (finalize.sql grants nothing; the search
-- functions and store_embedding_chunks() run as the owner). Should a role be granted SELECT, it
-- sees the passages of memories it may read (the subquery reads memories through
-- memories_read, the one read rule), of their current content only.
CREATE POLICY memory_chunks_read ON @extschema@.memory_chunks FOR SELECT
    USING (EXISTS (SELECT 1 FROM @extschema@.memories m
                    WHERE m.id = memory_chunks.memory_id AND m.content_hash = memory_chunks.content_hash));

-- facts: readable with their memory (the subquery reads memories through memories_read);
-- written only by remember_fact()
CREATE POLICY memory_facts_read ON @extschema@.memory_facts FOR SELECT
    USING (EXISTS (SELECT 1 FROM @extschema@.memories m WHERE m.id = memory_facts.memory_id));

-- access counts: your own, of memories you can see (written only by fold_memory_accesses()); the
-- log of accesses not yet counted: no policy, so nobody but the owner reads it
CREATE POLICY memory_access_read ON @extschema@.memory_access FOR SELECT
    USING (user_id = (SELECT @extschema@.current_memory_user())
           AND EXISTS (SELECT 1 FROM @extschema@.memories m WHERE m.id = memory_access.memory_id));

-- summaries: readable with their memory (written only by add_session_summary())
CREATE POLICY memory_summaries_read ON @extschema@.memory_summaries FOR SELECT
    USING (EXISTS (SELECT 1 FROM @extschema@.memories m WHERE m.id = memory_summaries.memory_id));

-- the audit chain's history is for auditors (granted only to them)
CREATE POLICY audit_chain_history_read ON @extschema@.audit_chain_history FOR SELECT USING (true);

-- retention policies: your own (written only by set_retention_policy())
CREATE POLICY memory_retention_policies_read ON @extschema@.memory_retention_policies FOR SELECT
    USING (user_id = (SELECT @extschema@.current_memory_user()));

-- the memory types are not secret (written only by define_memory_type())
CREATE POLICY memory_type_definitions_read ON @extschema@.memory_type_definitions FOR SELECT USING (true);

-- the list of vector indexes is not secret
CREATE POLICY vector_indexes_read ON @extschema@.vector_indexes FOR SELECT USING (true);

-- Views read their tables as the caller, so the policies above apply through them too.
ALTER VIEW @extschema@.memory_graph SET (security_invoker = true);
ALTER VIEW @extschema@.memory_types SET (security_invoker = true);
ALTER VIEW @extschema@.embedding_queue_status SET (security_invoker = true);
ALTER VIEW @extschema@.embedding_coverage SET (security_invoker = true);
ALTER VIEW @extschema@.user_statistics SET (security_invoker = true);
ALTER VIEW @extschema@.session_statistics SET (security_invoker = true);
-- (memory_statistics reads as its owner, every tenant's rows: granted to workers only)

