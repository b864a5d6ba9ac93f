-- MemoriesDB 0.1.0 -> 0.2.0. Run by ALTER EXTENSION memoriesdb UPDATE, never by hand.
-- Every change to the schema after 0.1.0 goes here, written so that the result equals a fresh
-- install of 0.2.0 (tests/upgrade.rs compares the two catalogs object by object).
\echo Use "ALTER EXTENSION memoriesdb UPDATE" to load this file. \quit

-- The append path in Rust (src/sessions.rs): add_message_to_session() and the position taker it
-- shares with add_messages_to_session().
CREATE OR REPLACE FUNCTION @extschema@.add_message_to_session(session_id uuid, role text, content text, metadata jsonb DEFAULT '{}')
RETURNS uuid LANGUAGE c SECURITY DEFINER AS 'MODULE_PATHNAME', 'add_message_to_session_native';
CREATE OR REPLACE FUNCTION @extschema@.next_session_position(session uuid, how_many bigint DEFAULT 1)
RETURNS bigint VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'next_session_position_wrapper';

-- One BEFORE trigger in Rust (src/write_path.rs) derives content_hash, provenance and the
-- cleared embedding for every write, instead of update_content_hash(), stamp_provenance() and
-- invalidate_stale_embedding().
DROP TRIGGER memories_10_content_hash ON @extschema@.memories;
DROP TRIGGER memories_20_provenance ON @extschema@.memories;
DROP TRIGGER memories_30_invalidate_embedding ON @extschema@.memories;
DROP TRIGGER memory_edges_20_provenance ON @extschema@.memory_edges;
DROP FUNCTION @extschema@.update_content_hash();
DROP FUNCTION @extschema@.stamp_provenance();
DROP FUNCTION @extschema@.invalidate_stale_embedding();
CREATE FUNCTION @extschema@.derive_row_fields() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'derive_row_fields_guarded';
CREATE TRIGGER memories_10_derive_fields BEFORE INSERT OR UPDATE ON @extschema@.memories
    FOR EACH ROW EXECUTE FUNCTION @extschema@.derive_row_fields();
CREATE TRIGGER memory_edges_20_derive_fields BEFORE INSERT OR UPDATE ON @extschema@.memory_edges
    FOR EACH ROW EXECUTE FUNCTION @extschema@.derive_row_fields();
REVOKE ALL ON FUNCTION @extschema@.derive_row_fields() FROM PUBLIC;

-- The audit trigger in Rust (src/write_path.rs).
CREATE OR REPLACE FUNCTION @extschema@.log_memory_change() RETURNS trigger
    LANGUAGE c SECURITY DEFINER AS 'MODULE_PATHNAME', 'log_memory_change_guarded';

-- Events in Rust: the statement trigger on new memories (src/write_path.rs) and emit_events()
-- (src/events.rs).
CREATE OR REPLACE FUNCTION @extschema@.emit_events(channels text[], payloads text[])
RETURNS void VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'emit_events_wrapper';
CREATE OR REPLACE FUNCTION @extschema@.memories_inserted() RETURNS trigger
    LANGUAGE c SECURITY DEFINER AS 'MODULE_PATHNAME', 'memories_inserted_guarded';

-- create_session() in Rust (src/sessions.rs).
CREATE OR REPLACE FUNCTION @extschema@.create_session(title text, metadata jsonb DEFAULT '{}')
RETURNS uuid LANGUAGE c SECURITY DEFINER AS 'MODULE_PATHNAME', 'create_session_native';

-- fork_session() in Rust (src/sessions.rs); it registers the fork itself, so register_session()
-- goes.
CREATE OR REPLACE FUNCTION @extschema@.fork_session(session_id uuid, new_title text, metadata jsonb DEFAULT '{}',
                                                    parent_message_id uuid DEFAULT NULL)
RETURNS uuid LANGUAGE c SECURITY DEFINER AS 'MODULE_PATHNAME', 'fork_session_native';
DROP FUNCTION @extschema@.register_session(uuid, uuid, bigint, uuid);
