-- Change events: sent after commit through the outbox and the event relay (src/events.rs), or by
-- NOTIFY in the writer's transaction when no relay can be started.

-- emit_events(channels text[], payloads text[]) sends events through the outbox and the event
-- relay, or, when no relay can be started, by NOTIFY in this transaction; either way they are
-- delivered after commit, in order, and never for a rolled-back transaction. It is Rust
-- (src/events.rs), internal, and called only by the extension's own code.
CREATE FUNCTION @extschema@.emit_events(channels text[], payloads text[]) RETURNS void
    VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'emit_events_native';

-- Once per INSERT statement on memories (the hot path of every message): write the new
-- memories' audit rows, queue them for embedding and send the change events, in the writer's
-- transaction, in one statement for the audit and queue rows (Rust,
-- src/write_path.rs: one pass over the statement's new rows). Events: each message gets one on
-- its session's channel chat_updates_<session id without dashes> and one on memoriesdb_events;
-- new sessions are announced on memoriesdb_events; a statement inserting more than 100 messages
-- sends one summary per session instead; embedding workers get one wake-up on
-- memoriesdb_embedding_queue. Payloads carry ids and small fields only, never content.
-- SECURITY DEFINER: the audit log, the queue and the outbox are written only by the extension.
CREATE FUNCTION @extschema@.memories_inserted() RETURNS trigger
    LANGUAGE c SECURITY DEFINER AS 'MODULE_PATHNAME', 'memories_inserted_guarded';

CREATE TRIGGER memories_70_inserted AFTER INSERT ON @extschema@.memories
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.memories_inserted();
