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
