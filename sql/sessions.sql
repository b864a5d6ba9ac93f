-- The conversation API: sessions, messages, O(1) forks and transcripts.
--
-- A session is a memory of kind 'session' with a row in memory_sessions. A message is a memory
-- of kind 'message' with (session_id, position, role). A fork is a new session whose
-- memory_sessions row names its parent and the fork point; no message is copied. In the memory
-- graph (memory_graph_edges) a message belongs_to its session and a fork is forked_from its
-- parent. The branch a session sees is its lineage: its own messages and, for each ancestor,
-- the messages up to the point where the line forked off.

-- Raise a clear error unless the session exists; returns its memory_sessions row.
CREATE FUNCTION @extschema@.require_session(session_id uuid, argument text DEFAULT 'session_id')
RETURNS @extschema@.memory_sessions
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    found_session @extschema@.memory_sessions;
BEGIN
    IF require_session.session_id IS NULL THEN
        RAISE EXCEPTION '% must not be NULL', argument USING ERRCODE = '22004';
    END IF;
    SELECT s.* INTO found_session FROM @extschema@.memory_sessions s WHERE s.id = require_session.session_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'session % does not exist', require_session.session_id
            USING ERRCODE = 'P0002', HINT = 'create one with create_session(title)';
    END IF;
    RETURN found_session;
END
$$;

-- The conversation writers (create_session, add_message(s)_to_session, fork_session) run as the
-- extension owner (SECURITY DEFINER): they call internal helpers nobody else may call
-- (check_message_batch) and write rows only the extension writes. Running
-- as the owner, they bypass row-level security, so each decides for its caller explicitly,
-- with the helpers below, and answers "does not exist" for whatever the caller cannot see.

-- The acting user, for code that writes on their behalf; 42501 when the role acts as nobody.
-- Roles that bypass row-level security (superusers) may act as nobody, as direct DML allows them.
CREATE FUNCTION @extschema@.require_acting_user() RETURNS uuid
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    me uuid := @extschema@.current_memory_user();
BEGIN
    IF me IS NULL AND NOT @extschema@.acting_role_bypasses_rls() THEN
        RAISE EXCEPTION 'role "%" acts as no MemoriesDB user', @extschema@.acting_db_role()
            USING ERRCODE = '42501',
                  HINT = 'map the role to a user with create_user(name, db_role), or assert one with set_memory_user() from a member of memoriesdb_trusted';
    END IF;
    RETURN me;
END
$$;

-- Is this session listed for the caller (the memory_sessions_read rule): theirs, shared with them
-- directly, or the caller is a worker or bypasses row-level security?
CREATE FUNCTION @extschema@.session_listed_for_caller(session uuid) RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN @extschema@.acting_role_bypasses_rls() OR @extschema@.acting_role_is('memoriesdb_worker')
        OR @extschema@.session_listed_for(@extschema@.current_memory_user(), session);
END
$$;

-- The sessions whose messages a branch sees, with the last position it sees from each: the
-- session itself (everything) and each ancestor up to the fork point of the line below it.
-- Costs one index probe per ancestor, whatever the number of messages.
-- SECURITY DEFINER: a grantee of a shared fork must be able to walk up to the ancestors it
-- inherits messages from without seeing their memory_sessions rows (which would tell them, for
-- example, how many messages the owner wrote after the fork point). It answers only for a
-- session the acting user may see (own, or shared with them, directly or as part of a shared
-- branch); for any other id it returns nothing. Which messages of each segment the caller then
-- reads is still decided by the memories policies. Rust (src/sessions.rs: the walk is
-- lineage_sql(), which fork_session() also uses). COST 100, as the PL/pgSQL function had (a C
-- function's default is 1), so the plans around it stay as they were.
CREATE FUNCTION @extschema@.session_lineage(session_id uuid)
RETURNS TABLE (lineage_session_id uuid, visible_upto bigint, generation integer)
LANGUAGE c STABLE SECURITY DEFINER COST 100 AS 'MODULE_PATHNAME', 'session_lineage_native';

-- Rust (src/sessions.rs): a session memory and its memory_sessions row, owned by the acting user
-- (require_acting_user() words the refusal when the role acts as nobody).
CREATE FUNCTION @extschema@.create_session(title text, metadata jsonb DEFAULT '{}')
RETURNS uuid LANGUAGE c SECURITY DEFINER AS 'MODULE_PATHNAME', 'create_session_native';

-- A message's role: non-blank, at most 64 characters, no control characters. `argument` names
-- the value in the error ('role', or 'messages[2].role' in a batch).
CREATE FUNCTION @extschema@.check_message_role(role text, argument text) RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- blank means only (Unicode) white space
    IF role IS NULL
       OR role ~ '^[[:space:]\u00a0\u1680\u2000-\u200b\u2028\u2029\u202f\u205f\u3000\ufeff]*$' THEN
        RAISE EXCEPTION '% must be a non-empty string, got %', argument, pg_catalog.quote_nullable(pg_catalog.left(role, 80))
            USING ERRCODE = '22023', HINT = 'e.g. user, assistant, system, or a speaker name';
    END IF;
    IF pg_catalog.length(role) > 64 THEN
        RAISE EXCEPTION '% is % characters long; at most 64 are allowed: "%..."',
            argument, pg_catalog.length(role), pg_catalog.left(role, 40)
            USING ERRCODE = '22001';
    END IF;
    IF role ~ '[[:cntrl:]]' THEN
        RAISE EXCEPTION '% must not contain control characters, got %', argument, pg_catalog.quote_literal(role)
            USING ERRCODE = '22023';
    END IF;
END
$$;

-- The error for a session the conversation writers may not append to: it is shared with the caller
-- read-only, or, as far as the caller can tell, it does not exist.
CREATE FUNCTION @extschema@.refuse_session_write(session_id uuid) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM @extschema@.memory_sessions s WHERE s.id = refuse_session_write.session_id)
       AND @extschema@.session_listed_for_caller(refuse_session_write.session_id) THEN
        RAISE EXCEPTION 'session % is shared with you read-only', refuse_session_write.session_id
            USING ERRCODE = '42501', HINT = 'its owner can share it with can_write => true';
    END IF;
    RAISE EXCEPTION 'session % does not exist', refuse_session_write.session_id
        USING ERRCODE = 'P0002', HINT = 'create one with create_session(title)';
END
$$;

-- Rust (src/sessions.rs): the arguments are checked there, the position taken and the message
-- inserted through plans kept per backend. The acting user and the write rule are decided for
-- the caller in the UPDATE that takes the position; errors are those of check_message_role(),
-- metadata_object() and refuse_session_write(). Concurrent appends to one session queue on its
-- row and get consecutive positions; appends to different sessions do not interact.
CREATE FUNCTION @extschema@.add_message_to_session(session_id uuid, role text, content text, metadata jsonb DEFAULT '{}')
RETURNS uuid LANGUAGE c SECURITY DEFINER AS 'MODULE_PATHNAME', 'add_message_to_session_native';

-- Several messages in one call, e.g. a user's turn and the assistant's answer, or an imported
-- conversation: a JSON array of {"role", "content", "metadata"} objects (metadata optional),
-- appended in array order at consecutive positions. Returns the new message ids in that order.
-- Everything is checked before anything is written, so a bad element writes nothing. One
-- INSERT: the session is locked once, and the batch is hashed, audited and queued like single
-- messages; its events are those of one statement (one per message, or one summary per session
-- for more than 100 messages).
CREATE FUNCTION @extschema@.add_messages_to_session(session_id uuid, messages jsonb)
RETURNS SETOF uuid LANGUAGE c SECURITY DEFINER AS 'MODULE_PATHNAME', 'add_messages_to_session_native';

-- The rules for a batch of messages, with their errors (add_messages_to_session() checks the
-- usual batch in Rust and asks this only when something is unusual). Returns the number of
-- messages.
CREATE FUNCTION @extschema@.check_message_batch(messages jsonb) RETURNS integer
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    message jsonb;
    n bigint;
    extra text;
BEGIN
    IF pg_catalog.jsonb_typeof(messages) <> 'array' THEN
        RAISE EXCEPTION 'messages must be a JSON array of {"role", "content", "metadata"} objects, got %: %',
            pg_catalog.jsonb_typeof(messages), pg_catalog.left(messages::text, 80)
            USING ERRCODE = '22023';
    END IF;
    FOR message, n IN SELECT e.value, e.ordinality - 1 FROM pg_catalog.jsonb_array_elements(messages) WITH ORDINALITY e LOOP
        IF pg_catalog.jsonb_typeof(message) <> 'object' THEN
            RAISE EXCEPTION 'messages[%] must be a JSON object with role and content, got %: %',
                n, pg_catalog.jsonb_typeof(message), pg_catalog.left(message::text, 80)
                USING ERRCODE = '22023';
        END IF;
        SELECT k INTO extra FROM pg_catalog.jsonb_object_keys(message) k
         WHERE k NOT IN ('role', 'content', 'metadata') ORDER BY k LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'messages[%] has an unknown key "%"', n, extra
                USING ERRCODE = '22023', HINT = 'a message has role, content and (optionally) metadata';
        END IF;
        -- (a missing or JSON null role is reported by check_message_role() as NULL)
        IF pg_catalog.jsonb_typeof(message -> 'role') NOT IN ('string', 'null') THEN
            RAISE EXCEPTION 'messages[%].role must be a non-empty string, got %', n, pg_catalog.left((message -> 'role')::text, 80)
                USING ERRCODE = '22023';
        END IF;
        PERFORM @extschema@.check_message_role(message ->> 'role', pg_catalog.format('messages[%s].role', n));
        IF coalesce(message -> 'content', 'null') = 'null' THEN
            RAISE EXCEPTION 'messages[%].content must not be NULL', n USING ERRCODE = '22004';
        END IF;
        IF pg_catalog.jsonb_typeof(message -> 'content') <> 'string' THEN
            RAISE EXCEPTION 'messages[%].content must be a string, got %: %', n,
                pg_catalog.jsonb_typeof(message -> 'content'), pg_catalog.left((message -> 'content')::text, 80)
                USING ERRCODE = '22023';
        END IF;
        -- JSON null metadata means {}, as SQL NULL does for add_message_to_session
        PERFORM @extschema@.metadata_object(nullif(message -> 'metadata', 'null'), pg_catalog.format('messages[%s].metadata', n));
    END LOOP;

    RETURN pg_catalog.jsonb_array_length(messages);
END
$$;

-- Rust (src/sessions.rs): fork a session at a message it sees (parent_message_id, or
-- metadata->>'parent_message_id'), by default at its latest message. Costs the same for 10 or
-- 100,000 messages: nothing is copied.
CREATE FUNCTION @extschema@.fork_session(session_id uuid, new_title text, metadata jsonb DEFAULT '{}',
                                         parent_message_id uuid DEFAULT NULL)
RETURNS uuid LANGUAGE c SECURITY DEFINER AS 'MODULE_PATHNAME', 'fork_session_native';

-- Delete a memory of the caller's (a free memory, a message or a session, with what hangs off it:
-- its edges, queue entries and, for a session, its messages). Returns whether there was one.
-- SECURITY DEFINER because nobody holds DELETE on memories (it would also allow LOCK TABLE,
-- see finalize.sql); it deletes only the caller's own memories, as the memories_delete policy
-- allowed, and every deleted row is audited as the caller's change.
CREATE FUNCTION @extschema@.delete_memory(memory_id uuid) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    me uuid := @extschema@.require_acting_user();
    unrestricted boolean := @extschema@.acting_role_bypasses_rls();
BEGIN
    IF delete_memory.memory_id IS NULL THEN
        RAISE EXCEPTION 'memory_id must not be NULL' USING ERRCODE = '22004';
    END IF;
    DELETE FROM @extschema@.memories m
     WHERE m.id = delete_memory.memory_id AND (unrestricted OR m.created_by = me);
    RETURN FOUND;
END
$$;

-- The caller's sessions (their own and those shared with them), newest first, for a session
-- picker: its title, when it was made, the session it forks (with the fork point) and its last
-- position (the number of messages its branch shows, deleted ones included), and the channel
-- its events go to. Runs as the caller, under row-level security.
CREATE FUNCTION @extschema@.list_sessions(lim integer DEFAULT 50)
RETURNS TABLE (session_id uuid, title text, created_at timestamptz, parent_id uuid, fork_position bigint,
               last_position bigint, channel text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT m.id, m.content, m._created_at, s.parent_id, s.fork_position, s.last_position,
           @extschema@.session_channel(m.id)
      FROM (SELECT x.id, x.content, x._created_at FROM @extschema@.memories x
             WHERE x.kind = 'session' ORDER BY x._created_at DESC, x.id DESC
             LIMIT @extschema@.search_limit(lim)) m
      JOIN @extschema@.memory_sessions s ON s.id = m.id
     ORDER BY m._created_at DESC, m.id DESC
$$;

-- One session's title and branch structure, for a client showing its transcript; P0002 for a
-- session the caller cannot see. Runs as the caller, under row-level security.
CREATE FUNCTION @extschema@.get_session(session_id uuid)
RETURNS TABLE (title text, created_at timestamptz, parent_id uuid, fork_message_id uuid, fork_position bigint,
               last_position bigint, channel text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    PERFORM @extschema@.require_session(get_session.session_id);
    RETURN QUERY
    SELECT m.content, m._created_at, s.parent_id, s.fork_message_id, s.fork_position, s.last_position,
           @extschema@.session_channel(m.id)
      FROM @extschema@.memory_sessions s JOIN @extschema@.memories m ON m.id = s.id
     WHERE s.id = get_session.session_id;
END
$$;

-- Transcripts (Rust, src/transcripts.rs; they run as the caller, under row-level security).
-- get_conversation_page: the messages of a session's transcript after after_position, at most
-- lim of them (NULL: all), as get_formatted_conversation() returns them. Each lineage segment
-- is read from the first position after the page start, so a late page of a long transcript
-- does not read the pages before it. Ask for lim + 1 rows to learn whether more follow.
CREATE FUNCTION @extschema@.get_conversation_page(session_id uuid, after_position bigint DEFAULT 0,
                                                  lim integer DEFAULT 100, include_metadata boolean DEFAULT false)
RETURNS TABLE ("position" bigint, role text, content text, message_id uuid, origin_session_id uuid,
               created_at timestamptz, metadata jsonb)
LANGUAGE c STABLE SET jit = off AS 'MODULE_PATHNAME', 'get_conversation_page_native';

-- get_recent_messages: the last lim messages of a session's transcript (after after_position and
-- before before_position, NULL: to the end), in order, as get_formatted_conversation() returns
-- them: the latest turns for a prompt, or the page before one a client shows (scrolling back).
-- Each segment is read backwards from its end, so it costs what it returns.
CREATE FUNCTION @extschema@.get_recent_messages(session_id uuid, lim integer DEFAULT 20, after_position bigint DEFAULT 0,
                                                before_position bigint DEFAULT NULL, include_metadata boolean DEFAULT false)
RETURNS TABLE ("position" bigint, role text, content text, message_id uuid, origin_session_id uuid,
               created_at timestamptz, metadata jsonb)
LANGUAGE c STABLE SET jit = off AS 'MODULE_PATHNAME', 'get_recent_messages_native';

-- The transcript a branch sees, in order: inherited messages first, then its own.
-- origin_session_id names the session (this one or an ancestor) each message was written in.
-- One statement over all segments of the lineage. JIT compilation costs far more than it saves
-- here (row-level security inflates plan cost estimates past jit_above_cost), so it is off.
CREATE FUNCTION @extschema@.get_formatted_conversation(session_id uuid, include_metadata boolean DEFAULT false)
RETURNS TABLE ("position" bigint, role text, content text, message_id uuid, origin_session_id uuid,
               created_at timestamptz, metadata jsonb)
LANGUAGE c STABLE SET jit = off AS 'MODULE_PATHNAME', 'get_formatted_conversation_native';

-- The same transcript as plain text, one "role: content" line per message.
CREATE FUNCTION @extschema@.get_conversation_text(session_id uuid)
RETURNS text LANGUAGE c STABLE SET jit = off AS 'MODULE_PATHNAME', 'get_conversation_text_native';

-- ---------------------------------------------------------------------------------------------
-- Session rows are written only by the conversation functions, through these two (SECURITY
-- DEFINER) helpers, which decide for their caller; nobody holds INSERT or UPDATE on
-- memory_sessions. That keeps the branch structure honest: a session row always belongs to the
-- creator of its session memory, forks hang off sessions their creator can see, and positions
-- only move forward.
-- ---------------------------------------------------------------------------------------------

-- Register the session row of a session memory the caller has just created, optionally as a fork
-- of `parent` at `fork_at` (a position of the parent's branch the caller may see).

-- next_session_position(session, how_many DEFAULT 1) takes the next positions of a session for
-- new messages if the caller may add to it (owner, or a share with can_write), and returns the
-- last of them, or NULL (refuse_session_write() then says why). It is Rust (src/sessions.rs):
-- the write rule is in the UPDATE that takes the row lock, so check and lock are one statement.

-- A fork's history stays as it was when the fork was made: a session with forks, and a message
-- at or before a fork point (which every fork below that point shows), cannot be deleted unless
-- it has expired (sql/lifecycle.sql); the
-- error says why instead of a foreign key's 23503 — or, for an inherited message, instead of
-- silently dropping it from every fork's transcript. (A fork that sees a message goes through
-- the direct fork of that message's session, whose fork point is at or after it, so checking
-- direct forks is enough.) SECURITY DEFINER: forks made by grantees count too, and only their
-- existence is told.
CREATE FUNCTION @extschema@.protect_forked_history() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- an expired message is already gone from every transcript, the forks' included
    IF OLD.expires_at <= now() THEN
        RETURN OLD;
    END IF;
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
CREATE TRIGGER memories_05_protect_forked_history BEFORE DELETE ON @extschema@.memories
    FOR EACH ROW EXECUTE FUNCTION @extschema@.protect_forked_history();
