-- Privileges. Ordinary roles use MemoriesDB through its functions and tables; the audit log and
-- the queues are written only by the extension's SECURITY DEFINER trigger functions.
GRANT SELECT, INSERT, UPDATE, DELETE ON @extschema@.memories, @extschema@.memory_edges,
    @extschema@.memory_sessions TO PUBLIC;
GRANT SELECT, INSERT ON @extschema@.users TO PUBLIC;
GRANT SELECT ON @extschema@.audit_log, @extschema@.memory_graph,
    @extschema@.embedding_queue_status, @extschema@.embedding_coverage TO PUBLIC;
-- embedding workers lease and complete queue items through claim_embedding_batch() and friends
GRANT SELECT, UPDATE ON @extschema@.embedding_schedule TO PUBLIC;
-- store_embedding() queues index work for new embedding dimensions
GRANT SELECT, INSERT, UPDATE ON @extschema@.vindexing_schedule TO PUBLIC;
-- prevent_cycles() serialises edge writers on this row
GRANT SELECT, UPDATE ON @extschema@.memory_graph_clock TO PUBLIC;
