-- Row maintenance on memories and edges: hashing, provenance, cycle prevention, audit, the
-- embedding queue and change events. update_content_hash() and prevent_cycles() are Rust.

-- Provenance: who created and last changed a row is taken from the acting user, never from the
-- values a caller supplies.
CREATE FUNCTION @extschema@.stamp_provenance() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        NEW.created_by := @extschema@.current_memory_user();
        IF TG_TABLE_NAME = 'memories' THEN
            NEW.updated_by := NEW.created_by;
        END IF;
    ELSE
        NEW.created_by := OLD.created_by;
        NEW._created_at := OLD._created_at;
        IF TG_TABLE_NAME = 'memories' THEN
            NEW.updated_by := @extschema@.current_memory_user();
            NEW._updated_at := pg_catalog.now();
        END IF;
    END IF;
    RETURN NEW;
END
$$;

-- Is `to` reachable from `from` along edges? Used by prevent_cycles(). Breadth-first over a
-- recursive query whose UNION (not UNION ALL) is the visited set, so it terminates on any graph
-- and stops as soon as `to` is found. SECURITY DEFINER: edges the caller cannot see can still
-- close a cycle, so they must count. VOLATILE: each call reads with a fresh snapshot.
CREATE FUNCTION @extschema@.edge_path_exists("from" uuid, "to" uuid) RETURNS boolean
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    WITH RECURSIVE reach(id) AS (
        SELECT $1
        UNION
        SELECT e.target_id FROM @extschema@.memory_edges e JOIN reach r ON e.source_id = r.id
    )
    SELECT EXISTS (SELECT 1 FROM reach WHERE id = $2)
$$;

-- An edge may only connect memories the acting user can see. A memory another user owns (and
-- did not share) gets exactly the error a missing one gets from the foreign key, so edges cannot
-- be used to probe for other tenants' ids. Runs as the caller, under row-level security.
CREATE FUNCTION @extschema@.require_visible_endpoints() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM @extschema@.memories m WHERE m.id = NEW.source_id) THEN
        RAISE EXCEPTION 'insert or update on table "memory_edges" violates foreign key constraint "memory_edges_source_id_fkey"'
            USING ERRCODE = '23503', DETAIL = format('Key (source_id)=(%s) is not present in table "memories".', NEW.source_id);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM @extschema@.memories m WHERE m.id = NEW.target_id) THEN
        RAISE EXCEPTION 'insert or update on table "memory_edges" violates foreign key constraint "memory_edges_target_id_fkey"'
            USING ERRCODE = '23503', DETAIL = format('Key (target_id)=(%s) is not present in table "memories".', NEW.target_id);
    END IF;
    RETURN NEW;
END
$$;

-- An embedding describes the content it was computed from: when the content changes, the old
-- embedding is dropped (and the enqueue trigger below asks for a new one), so vector search
-- never serves a stale embedding as current.
CREATE FUNCTION @extschema@.invalidate_stale_embedding() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.content_embedding := NULL;
    NEW.embedding_model := NULL;
    RETURN NEW;
END
$$;

-- Audit: one row per changed memory or edge. SECURITY DEFINER so that nobody needs (or gets)
-- INSERT on audit_log: rows are written only here. search_path is pinned.
CREATE FUNCTION @extschema@.log_memory_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO @extschema@.audit_log (table_name, operation, row_id, old_row, new_row, acting_user,
                                       subject_user, db_role, txid)
    VALUES (TG_TABLE_NAME, TG_OP,
            CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END,
            CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END,
            CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END,
            @extschema@.current_memory_user(),
            CASE WHEN TG_OP = 'DELETE' THEN OLD.created_by ELSE NEW.created_by END,
            @extschema@.acting_db_role(), txid_current());
    RETURN NULL;
END
$$;

-- The audit log is append-only: UPDATE, DELETE and TRUNCATE fail for everyone but superusers.
-- (Privileges already deny them; this also holds for the table's owner and for roles that were
-- granted the privileges.) A statement-level trigger, so that it fails even when row-level
-- security leaves the statement no rows to touch.
CREATE FUNCTION @extschema@.audit_log_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only: % is not allowed', TG_OP USING ERRCODE = '42501';
END
$$;

-- Embedding queue: a memory with new content waits for a (new) embedding. Same transaction as
-- the write, so a rolled-back write leaves no queue entry.
CREATE FUNCTION @extschema@.enqueue_embedding() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO @extschema@.embedding_schedule AS q (memory_id, content_hash)
    VALUES (NEW.id, NEW.content_hash)
    ON CONFLICT (memory_id) DO UPDATE
        SET content_hash = EXCLUDED.content_hash, status = 'pending', attempts = 0,
            last_error = NULL, locked_until = NULL, enqueued_at = now(), updated_at = now();
    -- wakes LISTENing embedding workers at commit; identical notifications within one
    -- transaction are folded into one by PostgreSQL
    PERFORM pg_notify('memoriesdb_embedding_queue', '');
    RETURN NULL;
END
$$;

-- Change events, once per INSERT statement. Each message gets one NOTIFY on its session's
-- channel chat_updates_<session id without dashes> and one on memoriesdb_events; new sessions
-- are announced on memoriesdb_events. Payloads carry ids and small fields only (role is capped at
-- 64 characters), never content, so they stay far below NOTIFY's 8000-byte limit and reveal no
-- private text. A statement inserting more than 100 messages sends one summary per session
-- instead of one event per row. NOTIFY is delivered at commit and never after a rollback.
CREATE FUNCTION @extschema@.notify_memory_events() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    message_count bigint;
    event record;
BEGIN
    SELECT count(*) FILTER (WHERE i.kind = 'message') INTO message_count FROM inserted i;
    IF message_count <= 100 THEN
        FOR event IN
            SELECT i.session_id, i.kind,
                   pg_catalog.json_build_object(
                       'op', 'INSERT', 'table', 'memories', 'kind', i.kind, 'id', i.id,
                       'session_id', i.session_id, 'position', i.position, 'role', i.role,
                       'created_at', i._created_at)::text AS payload
              FROM inserted i
             WHERE i.kind IN ('message', 'session')
             ORDER BY i.session_id, i.position
        LOOP
            IF event.kind = 'message' THEN
                PERFORM pg_catalog.pg_notify('chat_updates_' || pg_catalog.replace(event.session_id::text, '-', ''), event.payload);
            END IF;
            PERFORM pg_catalog.pg_notify('memoriesdb_events', event.payload);
        END LOOP;
    ELSE
        FOR event IN
            SELECT i.session_id,
                   pg_catalog.json_build_object(
                       'op', 'BULK_INSERT', 'table', 'memories', 'kind', 'message',
                       'session_id', i.session_id, 'count', count(*),
                       'first_position', min(i.position), 'last_position', max(i.position))::text AS payload
              FROM inserted i
             WHERE i.kind = 'message'
             GROUP BY i.session_id
        LOOP
            PERFORM pg_catalog.pg_notify('chat_updates_' || pg_catalog.replace(event.session_id::text, '-', ''), event.payload);
            PERFORM pg_catalog.pg_notify('memoriesdb_events', event.payload);
        END LOOP;
    END IF;
    RETURN NULL;
END
$$;

-- memories
CREATE TRIGGER memories_10_content_hash BEFORE INSERT OR UPDATE ON @extschema@.memories
    FOR EACH ROW EXECUTE FUNCTION @extschema@.update_content_hash();
CREATE TRIGGER memories_20_provenance BEFORE INSERT OR UPDATE ON @extschema@.memories
    FOR EACH ROW EXECUTE FUNCTION @extschema@.stamp_provenance();
CREATE TRIGGER memories_30_invalidate_embedding BEFORE UPDATE OF content ON @extschema@.memories
    FOR EACH ROW WHEN (OLD.content IS DISTINCT FROM NEW.content)
    EXECUTE FUNCTION @extschema@.invalidate_stale_embedding();
CREATE TRIGGER memories_50_audit AFTER INSERT OR UPDATE OR DELETE ON @extschema@.memories
    FOR EACH ROW EXECUTE FUNCTION @extschema@.log_memory_change();
CREATE TRIGGER memories_60_enqueue_new AFTER INSERT ON @extschema@.memories
    FOR EACH ROW WHEN (NEW.content <> '') EXECUTE FUNCTION @extschema@.enqueue_embedding();
CREATE TRIGGER memories_61_enqueue_changed AFTER UPDATE OF content ON @extschema@.memories
    FOR EACH ROW WHEN (OLD.content_hash IS DISTINCT FROM NEW.content_hash AND NEW.content <> '')
    EXECUTE FUNCTION @extschema@.enqueue_embedding();
CREATE TRIGGER memories_70_events AFTER INSERT ON @extschema@.memories
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.notify_memory_events();

-- memory_edges
CREATE TRIGGER memory_edges_05_visible_endpoints BEFORE INSERT OR UPDATE OF source_id, target_id
    ON @extschema@.memory_edges
    FOR EACH ROW WHEN (NEW.source_id IS NOT NULL AND NEW.target_id IS NOT NULL)
    EXECUTE FUNCTION @extschema@.require_visible_endpoints();
CREATE TRIGGER memory_edges_10_prevent_cycles BEFORE INSERT OR UPDATE OF source_id, target_id
    ON @extschema@.memory_edges
    FOR EACH ROW EXECUTE FUNCTION @extschema@.prevent_cycles();
CREATE TRIGGER memory_edges_20_provenance BEFORE INSERT OR UPDATE ON @extschema@.memory_edges
    FOR EACH ROW EXECUTE FUNCTION @extschema@.stamp_provenance();
CREATE TRIGGER memory_edges_50_audit AFTER INSERT OR UPDATE OR DELETE ON @extschema@.memory_edges
    FOR EACH ROW EXECUTE FUNCTION @extschema@.log_memory_change();

-- audit_log
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON @extschema@.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.audit_log_append_only();
