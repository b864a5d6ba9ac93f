-- Change events: sent after commit through the outbox and the event relay (src/events.rs), or by
-- NOTIFY in the writer's transaction when no relay can be started.

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
CREATE TRIGGER memories_70_inserted AFTER INSERT ON @extschema@.memories
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.memories_inserted();
