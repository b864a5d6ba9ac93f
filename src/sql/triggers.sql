-- Row maintenance on memories and edges: hashing, provenance, cycle prevention, audit, the
-- embedding queue and change events. update_content_hash() and prevent_cycles() are Rust.

-- Provenance: who created and last changed a row is taken from the acting user, never from the
-- values a caller supplies. Also keeps a memory's kind, session and position fixed.
CREATE FUNCTION @extschema@.stamp_provenance() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
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
            -- a message stays where it was written: moving it would rewrite other branches' history
            IF NEW.kind IS DISTINCT FROM OLD.kind OR NEW.session_id IS DISTINCT FROM OLD.session_id
               OR NEW.position IS DISTINCT FROM OLD.position THEN
                RAISE EXCEPTION 'the kind, session and position of memory % cannot be changed', OLD.id
                    USING ERRCODE = '0A000', HINT = 'content, role and metadata can be updated';
            END IF;
            NEW.updated_by := @extschema@.current_memory_user();
            NEW._updated_at := pg_catalog.now();
        END IF;
    END IF;
    RETURN NEW;
END
$$;

-- Is `to` reachable from `from` along edges, stored or implied? Used by prevent_cycles(). Breadth-first over a
-- recursive query whose UNION (not UNION ALL) is the visited set, so it terminates on any graph
-- and stops as soon as `to` is found. SECURITY DEFINER: edges the caller cannot see can still
-- close a cycle, so they must count. VOLATILE: each call reads with a fresh snapshot.
-- PL/pgSQL so that the query's plan is cached.
CREATE FUNCTION @extschema@.edge_path_exists("from" uuid, "to" uuid) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN EXISTS (
        WITH RECURSIVE reach(id) AS (
            SELECT edge_path_exists."from"
            UNION
            SELECT e.target_id FROM @extschema@.memory_graph_edges e JOIN reach r ON e.source_id = r.id
        )
        SELECT 1 FROM reach WHERE reach.id = edge_path_exists."to");
END
$$;

-- An edge may only connect memories the acting user can see. A memory another user owns (and
-- did not share) gets exactly the error a missing one gets from the foreign key, so edges cannot
-- be used to probe for other tenants' ids. Runs as the caller, under row-level security.
CREATE FUNCTION @extschema@.require_visible_endpoints() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
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
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
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
DECLARE
    acting uuid;
BEGIN
    -- stamp_provenance() has just resolved the acting user into the row; resolve it again only
    -- where the row does not carry it
    IF TG_OP = 'INSERT' THEN
        acting := NEW.created_by;
    ELSIF TG_OP = 'UPDATE' AND TG_TABLE_NAME = 'memories' THEN
        acting := NEW.updated_by;
    ELSE
        acting := @extschema@.current_memory_user();
    END IF;
    INSERT INTO @extschema@.audit_log (table_name, operation, row_id, old_row, new_row, acting_user,
                                       subject_user, db_role, txid)
    VALUES (TG_TABLE_NAME, TG_OP,
            CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END,
            -- search_tsv is derived from content, so it is left out of the recorded state
            CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) - 'search_tsv' END,
            CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) - 'search_tsv' END,
            acting,
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
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only: % is not allowed', TG_OP USING ERRCODE = '42501';
END
$$;

-- Sharing is audited like data: a grant, a change of can_write and a revocation (by
-- revoke_share() or by a cascade) each write an audit row, attributed to the acting user and
-- concerning the owner who granted it. SECURITY DEFINER for the same reason as above.
CREATE FUNCTION @extschema@.log_share_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO @extschema@.audit_log (table_name, operation, row_id, old_row, new_row, acting_user,
                                       subject_user, db_role, txid)
    VALUES (TG_TABLE_NAME, TG_OP,
            CASE WHEN TG_OP = 'DELETE' THEN OLD.memory_id ELSE NEW.memory_id END,
            CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END,
            CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END,
            @extschema@.current_memory_user(),
            CASE WHEN TG_OP = 'DELETE' THEN OLD.granted_by ELSE NEW.granted_by END,
            @extschema@.acting_db_role(), txid_current());
    RETURN NULL;
END
$$;

-- A fork's history stays as it was when the fork was made: a session with forks, and a message
-- at or before a fork point (which every fork below that point shows), cannot be deleted; the
-- error says why instead of a foreign key's 23503 — or, for an inherited message, instead of
-- silently dropping it from every fork's transcript. (A fork that sees a message goes through
-- the direct fork of that message's session, whose fork point is at or after it, so checking
-- direct forks is enough.) SECURITY DEFINER: forks made by grantees count too, and only their
-- existence is told.
CREATE FUNCTION @extschema@.protect_forked_history() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF OLD.kind = 'session'
       AND EXISTS (SELECT 1 FROM @extschema@.memory_sessions f WHERE f.parent_id = OLD.id) THEN
        RAISE EXCEPTION 'session % has forks and cannot be deleted', OLD.id
            USING ERRCODE = '2BP01',
                  HINT = 'delete its forks first (also forks other users made of it while it was shared with them)';
    END IF;
    IF OLD.kind = 'message'
       AND EXISTS (SELECT 1 FROM @extschema@.memory_sessions f
                    WHERE f.parent_id = OLD.session_id AND f.fork_position >= OLD.position) THEN
        RAISE EXCEPTION 'message % is history a fork inherits and cannot be deleted', OLD.id
            USING ERRCODE = '2BP01',
                  HINT = 'messages after the last fork point can be deleted; delete the forks to delete the rest';
    END IF;
    RETURN OLD;
END
$$;

-- Embedding queue, for changed content: the memory waits for a new embedding (re-arming its
-- queue row) and the workers are woken. New memories are queued by memories_inserted(), once per
-- statement. Same transaction as the write, so a rolled-back write leaves no queue entry.
CREATE FUNCTION @extschema@.enqueue_embedding() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO @extschema@.embedding_schedule AS q (memory_id, content_hash)
    VALUES (NEW.id, NEW.content_hash)
    ON CONFLICT (memory_id) DO UPDATE
        SET content_hash = EXCLUDED.content_hash, status = 'pending', attempts = 0,
            last_error = NULL, locked_until = NULL, enqueued_at = now(), updated_at = now();
    PERFORM @extschema@.emit_events(ARRAY['memoriesdb_embedding_queue'], ARRAY['']);
    RETURN NULL;
END
$$;

-- Send events: through the outbox and the event relay (see src/events.rs for why), or, when no
-- relay can be started, by NOTIFY in this transaction. Either way they are delivered after
-- commit, in order, and never for a rolled-back transaction.
CREATE FUNCTION @extschema@.emit_events(channels text[], payloads text[]) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF coalesce(cardinality(channels), 0) = 0 THEN
        RETURN;
    END IF;
    IF @extschema@.ensure_event_relay() THEN
        INSERT INTO @extschema@.memory_event_outbox (channels, payloads) VALUES (channels, payloads);
    ELSE
        PERFORM pg_notify(e.channel, e.payload)
           FROM unnest(channels, payloads) WITH ORDINALITY AS e(channel, payload, n) ORDER BY e.n;
    END IF;
END
$$;

-- Once per INSERT statement on memories (the hot path of every message): queue the new
-- memories for embedding and send the change events, in the writer's transaction.
--   events: each message gets one on its session's channel chat_updates_<session id without
--   dashes> and one on memoriesdb_events; new sessions are announced on memoriesdb_events; a
--   statement inserting more than 100 messages sends one summary per session instead; embedding
--   workers get one wake-up on memoriesdb_embedding_queue. Payloads carry ids and small fields
--   only (role is capped at 64 characters), never content, so they stay far below NOTIFY's
--   8000-byte limit and reveal no private text. They go through the outbox and the event relay,
--   or by NOTIFY in this transaction when no relay can be started (see emit_events()).
-- SECURITY DEFINER: the queue and the outbox are written only by the extension.
CREATE FUNCTION @extschema@.memories_inserted() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    queued bigint;
    message_count bigint;
    has_sessions boolean;
    channels text[];
    payloads text[];
    -- ALTER DATABASE ... SET memoriesdb.global_events = off keeps ids off the shared channel
    global_events boolean := coalesce(current_setting('memoriesdb.global_events', true), '') <> 'off';
BEGIN
    INSERT INTO @extschema@.embedding_schedule (memory_id, content_hash)
    SELECT i.id, i.content_hash FROM inserted i WHERE i.content <> '';
    GET DIAGNOSTICS queued = ROW_COUNT;
    SELECT count(*) FILTER (WHERE i.kind = 'message'), coalesce(bool_or(i.kind = 'session'), false)
      INTO message_count, has_sessions FROM inserted i;
    IF message_count = 0 AND queued = 0 AND NOT has_sessions THEN
        RETURN NULL;
    END IF;
    -- the statement's events, in (session, position, channel) order
    IF message_count <= 100 THEN
        SELECT array_agg(e.channel ORDER BY e.session_id, e.position, e.fanout),
               array_agg(e.payload ORDER BY e.session_id, e.position, e.fanout)
          INTO channels, payloads
          FROM (SELECT i.session_id, i.position, f.fanout,
                       CASE f.fanout WHEN 1 THEN 'chat_updates_' || replace(i.session_id::text, '-', '')
                                     ELSE 'memoriesdb_events' END AS channel,
                       json_build_object('op', 'INSERT', 'table', 'memories', 'kind', i.kind, 'id', i.id,
                                         'session_id', i.session_id, 'position', i.position, 'role', i.role,
                                         'created_at', i._created_at)::text AS payload
                  FROM inserted i CROSS JOIN (VALUES (1), (2)) f(fanout)
                 WHERE (i.kind = 'message' OR (i.kind = 'session' AND f.fanout = 2))
                   AND (f.fanout = 1 OR global_events)) e;
    ELSE
        SELECT array_agg(e.channel ORDER BY e.session_id, e.fanout), array_agg(e.payload ORDER BY e.session_id, e.fanout)
          INTO channels, payloads
          FROM (SELECT s.session_id, f.fanout,
                       CASE f.fanout WHEN 1 THEN 'chat_updates_' || replace(s.session_id::text, '-', '')
                                     ELSE 'memoriesdb_events' END AS channel,
                       json_build_object('op', 'BULK_INSERT', 'table', 'memories', 'kind', 'message',
                                         'session_id', s.session_id, 'count', s.n,
                                         'first_position', s.first_position, 'last_position', s.last_position)::text AS payload
                  FROM (SELECT i.session_id, count(*) AS n, min(i.position) AS first_position,
                               max(i.position) AS last_position
                          FROM inserted i WHERE i.kind = 'message'
                         GROUP BY i.session_id) s
                 CROSS JOIN (VALUES (1), (2)) f(fanout)
                 WHERE f.fanout = 1 OR global_events) e;
    END IF;
    IF queued > 0 THEN
        channels := coalesce(channels, '{}') || 'memoriesdb_embedding_queue'::text;
        payloads := coalesce(payloads, '{}') || ''::text;
    END IF;
    PERFORM @extschema@.emit_events(channels, payloads);
    RETURN NULL;
END
$$;

-- memories
CREATE TRIGGER memories_05_protect_forked_history BEFORE DELETE ON @extschema@.memories
    FOR EACH ROW EXECUTE FUNCTION @extschema@.protect_forked_history();
CREATE TRIGGER memories_10_content_hash BEFORE INSERT OR UPDATE ON @extschema@.memories
    FOR EACH ROW EXECUTE FUNCTION @extschema@.update_content_hash();
CREATE TRIGGER memories_20_provenance BEFORE INSERT OR UPDATE ON @extschema@.memories
    FOR EACH ROW EXECUTE FUNCTION @extschema@.stamp_provenance();
CREATE TRIGGER memories_30_invalidate_embedding BEFORE UPDATE OF content ON @extschema@.memories
    FOR EACH ROW WHEN (OLD.content IS DISTINCT FROM NEW.content)
    EXECUTE FUNCTION @extschema@.invalidate_stale_embedding();
CREATE TRIGGER memories_50_audit AFTER INSERT OR UPDATE OR DELETE ON @extschema@.memories
    FOR EACH ROW EXECUTE FUNCTION @extschema@.log_memory_change();
CREATE TRIGGER memories_61_enqueue_changed AFTER UPDATE OF content ON @extschema@.memories
    FOR EACH ROW WHEN (OLD.content_hash IS DISTINCT FROM NEW.content_hash AND NEW.content <> '')
    EXECUTE FUNCTION @extschema@.enqueue_embedding();
CREATE TRIGGER memories_70_inserted AFTER INSERT ON @extschema@.memories
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.memories_inserted();

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

-- memory_shares
CREATE TRIGGER memory_shares_50_audit AFTER INSERT OR UPDATE OR DELETE ON @extschema@.memory_shares
    FOR EACH ROW EXECUTE FUNCTION @extschema@.log_share_change();

-- audit_log
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON @extschema@.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.audit_log_append_only();
