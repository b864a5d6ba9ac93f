-- Privileges. Table privileges are broad because row-level security (security.sql) decides
-- which rows each user reaches; the audit log and the queues are written only by the
-- extension's SECURITY DEFINER trigger functions.
GRANT SELECT, INSERT, UPDATE, DELETE ON @extschema@.memories, @extschema@.memory_edges TO PUBLIC;
-- written only by the SECURITY DEFINER functions that decide for their caller (security.sql)
GRANT SELECT ON @extschema@.memory_sessions, @extschema@.memory_shares, @extschema@.memory_share_segments TO PUBLIC;
GRANT SELECT, INSERT, UPDATE ON @extschema@.users TO PUBLIC;
GRANT SELECT ON @extschema@.audit_log, @extschema@.memory_graph, @extschema@.memory_graph_edges, @extschema@.vector_indexes,
    @extschema@.embedding_queue_status, @extschema@.embedding_coverage TO PUBLIC;
-- embedding workers (members of memoriesdb_worker, per policy) work the queues
GRANT SELECT, UPDATE ON @extschema@.embedding_schedule TO PUBLIC;
GRANT SELECT, INSERT, UPDATE ON @extschema@.vindexing_schedule TO PUBLIC;
-- prevent_cycles() serialises edge writers on this row
GRANT SELECT, UPDATE ON @extschema@.memory_graph_clock TO PUBLIC;

-- Functions that act as the extension owner and are not for everyone.
REVOKE EXECUTE ON FUNCTION @extschema@.verify_audit_chain() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.verify_audit_chain() TO memoriesdb_auditor;
REVOKE EXECUTE ON FUNCTION @extschema@.create_vector_index(integer, integer, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.create_vector_index(integer, integer, integer) TO memoriesdb_worker;
REVOKE EXECUTE ON FUNCTION @extschema@.process_vindexing(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.process_vindexing(integer) TO memoriesdb_worker;
REVOKE EXECUTE ON FUNCTION @extschema@.restore_vector_indexes() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.restore_vector_indexes() TO memoriesdb_worker;
-- internals of the cycle check (prevent_cycles() runs as the extension owner); directly they
-- would answer questions about other tenants' memories
REVOKE EXECUTE ON FUNCTION @extschema@.edge_path_exists(uuid, uuid) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.is_fresh_leaf(uuid) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.memory_visible_to(uuid, uuid, uuid, bigint, uuid) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.session_visible_to(uuid, uuid) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.session_listed_for(uuid, uuid) FROM PUBLIC;
-- sealing is a maintenance job (its result counts every tenant's unsealed rows)
REVOKE EXECUTE ON FUNCTION @extschema@.seal_audit_log(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.seal_audit_log(integer) TO memoriesdb_auditor, memoriesdb_worker;
