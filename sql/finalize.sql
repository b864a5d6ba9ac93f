-- The trust boundary, applied last: pgvector bound by schema, and privileges.
--
-- Nothing of the extension is reachable through PUBLIC. Users get the API through the role
-- memoriesdb_user (an administrator runs GRANT memoriesdb_user TO <role>); the worker, auditor
-- and trusted roles are members of it and get their extra functions on top. Every other
-- function is internal: only the extension owner (and so its SECURITY DEFINER functions and
-- triggers) can run it. Tables grant nothing that can lock or rewrite another tenant's rows:
-- no table-level UPDATE, DELETE or TRUNCATE (those would also allow LOCK TABLE ... IN ACCESS
-- EXCLUSIVE MODE, which stalls every tenant); UPDATE is granted per column, and deletes go
-- through delete_memory() and remove_edge(). The catalog test in tests/attack.rs holds this
-- file to its word: a new function is internal until it is listed here.

-- ---------------------------------------------------------------------------------------------
-- pgvector, by schema. Function bodies name pgvector's type, operators and functions through
-- the placeholder schema memoriesdb_pgvector; here each such function is re-created with the
-- schema pgvector was really installed in (CREATE EXTENSION memoriesdb CASCADE puts it in the
-- first schema of the search_path). So every name stays fully qualified, whatever the caller's
-- search_path, and no schema but pgvector's own is trusted for it. (pgvector must therefore
-- not be moved with ALTER EXTENSION vector SET SCHEMA while memoriesdb is installed.)
-- ---------------------------------------------------------------------------------------------
DO $$
DECLARE
    vector_schema text := (SELECT pg_catalog.quote_ident(n.nspname::text)
                             FROM pg_catalog.pg_extension e
                             JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) e.extnamespace
                            WHERE e.extname OPERATOR(pg_catalog.=) 'vector');
    f oid;
BEGIN
    FOR f IN SELECT p.oid FROM pg_catalog.pg_proc p
              WHERE p.pronamespace OPERATOR(pg_catalog.=) '@extschema@'::regnamespace
                AND p.prosrc OPERATOR(pg_catalog.~~) '%memoriesdb\_pgvector%' LOOP
        EXECUTE pg_catalog.replace(pg_catalog.pg_get_functiondef(f), 'memoriesdb_pgvector', vector_schema);
    END LOOP;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Functions
-- ---------------------------------------------------------------------------------------------
REVOKE ALL ON SCHEMA @extschema@ FROM PUBLIC;
GRANT USAGE ON SCHEMA @extschema@ TO memoriesdb_user;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA @extschema@ FROM PUBLIC;

-- The API (README, "The SQL API").
GRANT EXECUTE ON FUNCTION
    @extschema@.create_session, @extschema@.add_message_to_session, @extschema@.add_messages_to_session,
    @extschema@.fork_session, @extschema@.get_formatted_conversation, @extschema@.get_conversation_text,
    @extschema@.get_conversation_page, @extschema@.get_recent_messages, @extschema@.get_session, @extschema@.list_sessions,
    @extschema@.session_channel, @extschema@.session_lineage,
    @extschema@.get_context, @extschema@.add_session_summary, @extschema@.estimate_tokens,
    @extschema@.search_memories, @extschema@.vector_search, @extschema@.hybrid_search, @extschema@.semantic_search,
    @extschema@.embed_text,
    @extschema@.add_edge, @extschema@.remove_edge, @extschema@.traverse_memory_graph,
    @extschema@.delete_memory, @extschema@.delete_session, @extschema@.forget_user, @extschema@.set_session_retention,
    @extschema@.set_retention_policy, @extschema@.remember_fact, @extschema@.facts,
    @extschema@.share_memory, @extschema@.revoke_share,
    @extschema@.set_memory_user, @extschema@.current_memory_user,
    @extschema@.content_sha256, @extschema@.verify_memory_integrity, @extschema@.uuid_generate_v7
TO memoriesdb_user;
-- Evaluated by PostgreSQL as the calling user: in row-level security policies and column
-- defaults, and in the invoker functions above. Each only validates its arguments or answers
-- about the caller; none reads another tenant's data.
GRANT EXECUTE ON FUNCTION
    @extschema@.acting_db_role, @extschema@.acting_role_is, @extschema@.acting_role_bypasses_rls,
    @extschema@.default_search_config, @extschema@.require_durable_search_config, @extschema@.searchable_text,
    @extschema@.require_session, @extschema@.metadata_object, @extschema@.search_limit,
    @extschema@.user_statistics_rows, @extschema@.session_statistics_rows
TO memoriesdb_user;

-- Embedding and indexing workers.
GRANT EXECUTE ON FUNCTION
    @extschema@.claim_embedding_batch, @extschema@.store_embedding, @extschema@.store_embedding_chunks,
    @extschema@.fail_embedding,
    @extschema@.retry_dead_embeddings, @extschema@.require_usable_embedding,
    @extschema@.create_vector_index, @extschema@.process_vindexing, @extschema@.restore_vector_indexes,
    @extschema@.sweep_expired_memories, @extschema@.fold_memory_accesses, @extschema@.apply_retention_policies
TO memoriesdb_worker;
-- define_memory_type: administrators only (the owner; GRANT EXECUTE to delegate).
-- Audit: sealing is a maintenance job (its result counts every tenant's unsealed rows).
GRANT EXECUTE ON FUNCTION @extschema@.verify_audit_chain TO memoriesdb_auditor;
GRANT SELECT ON @extschema@.audit_chain_history TO memoriesdb_auditor;
GRANT EXECUTE ON FUNCTION @extschema@.seal_audit_log TO memoriesdb_auditor, memoriesdb_worker;
-- Application servers and poolers that assert identities.
GRANT EXECUTE ON FUNCTION @extschema@.create_user, @extschema@.user_exists TO memoriesdb_trusted;

-- ---------------------------------------------------------------------------------------------
-- Tables. Row-level security (policies.sql) decides which rows each user reaches.
-- ---------------------------------------------------------------------------------------------
GRANT SELECT, INSERT ON @extschema@.memories, @extschema@.memory_edges TO memoriesdb_user;
-- column by column: the provenance trigger overrides created_by/updated_by and refuses changes
-- of kind, session and position; the hash and the search vector are derived
GRANT UPDATE (content, _metadata, role, content_embedding, embedding_model, search_config, importance, expires_at,
              valid_from, valid_to,
              created_by, updated_by, _created_at, _updated_at, kind, session_id, position, content_hash)
    ON @extschema@.memories TO memoriesdb_user;
GRANT UPDATE (source_id, target_id, relation, weight, _metadata, created_by, _created_at)
    ON @extschema@.memory_edges TO memoriesdb_user;
-- written only by the SECURITY DEFINER functions that decide for their caller
GRANT SELECT ON @extschema@.memory_sessions, @extschema@.memory_shares, @extschema@.memory_share_segments,
    @extschema@.users, @extschema@.audit_log, @extschema@.vector_indexes,
    @extschema@.memory_graph, @extschema@.memory_graph_edges,
    @extschema@.embedding_queue_status, @extschema@.embedding_coverage,
    @extschema@.memory_types, @extschema@.memory_type_definitions, @extschema@.memory_facts,
    @extschema@.memory_access, @extschema@.memory_summaries, @extschema@.memory_retention_policies,
    @extschema@.user_statistics, @extschema@.session_statistics
TO memoriesdb_user;
-- the store's operational figures (every tenant's): workers (and administrators)
GRANT SELECT ON @extschema@.memory_statistics TO memoriesdb_worker;
-- memory_chunks: nothing. Its passages reach users through the search functions (offsets only);
-- a direct SELECT could ORDER BY the embedding, and the HNSW index would then rank other
-- tenants' passages before row-level security removes them (how many of the k nearest are
-- someone else's), and EXPLAIN ANALYZE would count another memory's passages.
-- create_user() runs as its (trusted) caller
GRANT INSERT, UPDATE (name, db_role, _metadata) ON @extschema@.users TO memoriesdb_trusted;
-- the queues: workers only, by policy (the status views read them as the caller)
GRANT SELECT ON @extschema@.embedding_schedule, @extschema@.vindexing_schedule TO memoriesdb_user;
GRANT SELECT, UPDATE (content_hash, status, attempts, last_error, locked_until, enqueued_at, updated_at)
    ON @extschema@.embedding_schedule TO memoriesdb_worker;
GRANT SELECT, INSERT, UPDATE (status, attempts, last_error)
    ON @extschema@.vindexing_schedule TO memoriesdb_worker;
-- memory_graph_clock and memory_event_outbox: the extension only
