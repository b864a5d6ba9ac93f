-- Facts: statements about a subject, with a confidence, valid in time, superseded rather than
-- overwritten.
--
-- A fact is a memory of type 'fact' (its statement is the content: hashed, audited, embedded,
-- searchable like any memory) with a row in memory_facts: its subject, confidence in [0, 1], how
-- often it was stated (reinforcements), the message it came from and the fact that replaced it.
-- Validity in time is on the memory (memories.valid_from / valid_to, for any memory): a
-- superseded fact gets valid_to = the moment its successor arrived and stays readable "as of"
-- any earlier time (facts(as_of => ...)); the searches return only memories valid now.
-- The store is content-addressed per user: stating a fact the user already holds (same text,
-- still valid) returns the existing fact, one reinforcement more, with the higher confidence.

CREATE TABLE @extschema@.memory_facts (
    memory_id      uuid PRIMARY KEY REFERENCES @extschema@.memories (id) ON DELETE CASCADE,
    -- the fact's owner (its memory's creator), here so that a user's facts are one index range
    owner_id       uuid REFERENCES @extschema@.users (id),
    subject        text NOT NULL CHECK (length(btrim(subject)) BETWEEN 1 AND 500),
    confidence     real NOT NULL CONSTRAINT memory_facts_confidence_in_range CHECK (confidence BETWEEN 0 AND 1),
    reinforcements integer NOT NULL DEFAULT 1 CHECK (reinforcements >= 1),
    last_stated_at timestamptz NOT NULL DEFAULT now(),
    source_message uuid REFERENCES @extschema@.memories (id) ON DELETE SET NULL,
    superseded_by  uuid REFERENCES @extschema@.memories (id) ON DELETE SET NULL
);
COMMENT ON TABLE @extschema@.memory_facts IS 'Facts: subject, confidence, reinforcements, source and successor of memories of type fact';
CREATE INDEX memory_facts_subject ON @extschema@.memory_facts (owner_id, lower(subject));
CREATE INDEX memory_facts_source ON @extschema@.memory_facts (source_message) WHERE source_message IS NOT NULL;
CREATE INDEX memory_facts_successor ON @extschema@.memory_facts (superseded_by) WHERE superseded_by IS NOT NULL;
-- remember_fact()'s lookup of a statement the user already holds
CREATE INDEX memories_facts_by_hash ON @extschema@.memories (created_by, content_hash) WHERE kind = 'fact';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.memory_facts', '');

-- Remember a fact: `statement` about `subject`, with `confidence` in [0, 1], optionally taken from
-- `source_message` (a message you can see), valid from `valid_from` (default now), replacing the
-- fact `supersedes` (one of yours, still valid: it gets valid_to = now and superseded_by = the new
-- fact). Returns the fact's id. If you already hold a valid fact with the same statement, that
-- fact is returned instead of a new one: its reinforcements go up by one and its confidence to
-- the higher of the two (and a `supersedes` given points to it). (A role acting as nobody — a
-- superuser — gets a new fact each time.)
CREATE FUNCTION @extschema@.remember_fact(
    subject text,
    statement text,
    confidence real DEFAULT 0.8,
    source_message uuid DEFAULT NULL,
    metadata jsonb DEFAULT '{}',
    supersedes uuid DEFAULT NULL,
    valid_from timestamptz DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    me uuid := @extschema@.require_acting_user();
    unrestricted boolean := @extschema@.acting_role_bypasses_rls();
    clean_metadata jsonb := @extschema@.metadata_object(remember_fact.metadata, 'metadata');
    hash text;
    fact uuid;
    replaced record;
BEGIN
    IF remember_fact.subject IS NULL OR remember_fact.statement IS NULL THEN
        RAISE EXCEPTION '% must not be NULL', CASE WHEN remember_fact.subject IS NULL THEN 'subject' ELSE 'statement' END
            USING ERRCODE = '22004';
    END IF;
    IF length(btrim(remember_fact.subject)) NOT BETWEEN 1 AND 500 THEN
        RAISE EXCEPTION 'subject must be 1 to 500 characters, not blank' USING ERRCODE = '22023';
    END IF;
    IF btrim(remember_fact.statement) = '' THEN
        RAISE EXCEPTION 'statement must not be blank' USING ERRCODE = '22023';
    END IF;
    IF remember_fact.confidence IS NULL OR NOT (remember_fact.confidence BETWEEN 0 AND 1) THEN
        RAISE EXCEPTION 'confidence must be between 0 and 1, not %', coalesce(remember_fact.confidence::text, 'NULL')
            USING ERRCODE = '22023';
    END IF;
    IF remember_fact.source_message IS NOT NULL AND NOT EXISTS (
           SELECT 1 FROM @extschema@.memories m
            WHERE m.id = remember_fact.source_message AND m.kind = 'message'
              AND (unrestricted OR @extschema@.memory_visible_to(me, m.created_by, m.session_id, m.position, m.id, m.expires_at))) THEN
        RAISE EXCEPTION 'message % does not exist', remember_fact.source_message USING ERRCODE = 'P0002';
    END IF;
    -- one statement of a user's at a time: the lookup below and the insert are one step (a row
    -- lock that foreign-key checks of the user's other writes do not wait for)
    PERFORM 1 FROM @extschema@.users u WHERE u.id = me FOR NO KEY UPDATE;
    IF remember_fact.supersedes IS NOT NULL THEN
        SELECT m.id, m.valid_to, f.superseded_by INTO replaced
          FROM @extschema@.memories m JOIN @extschema@.memory_facts f ON f.memory_id = m.id
         WHERE m.id = remember_fact.supersedes AND (unrestricted OR m.created_by = me)
           AND (m.expires_at IS NULL OR m.expires_at > now())
           FOR UPDATE OF m;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'fact % does not exist', remember_fact.supersedes
                USING ERRCODE = 'P0002', HINT = 'supersedes names one of your own facts';
        END IF;
        IF replaced.valid_to IS NOT NULL AND replaced.valid_to <= now() THEN
            RAISE EXCEPTION 'fact % is no longer valid (superseded by %)', remember_fact.supersedes,
                coalesce(replaced.superseded_by::text, 'nothing') USING ERRCODE = '22023';
        END IF;
    END IF;

    hash := @extschema@.content_sha256(remember_fact.statement);
    SELECT m.id INTO fact
      FROM @extschema@.memories m
     WHERE m.kind = 'fact' AND m.created_by = me AND m.content_hash = hash
       AND m.content = remember_fact.statement
       AND (m.valid_to IS NULL OR m.valid_to > now()) AND (m.expires_at IS NULL OR m.expires_at > now())
     ORDER BY m._created_at LIMIT 1;
    IF FOUND THEN
        UPDATE @extschema@.memory_facts f
           SET reinforcements = f.reinforcements + 1, last_stated_at = now(),
               confidence = greatest(f.confidence, remember_fact.confidence)
         WHERE f.memory_id = fact;
    ELSE
        fact := @extschema@.uuid_generate_v7();
        INSERT INTO @extschema@.memories (id, kind, content, _metadata, valid_from)
        VALUES (fact, 'fact', remember_fact.statement, clean_metadata, coalesce(remember_fact.valid_from, now()));
        INSERT INTO @extschema@.memory_facts (memory_id, owner_id, subject, confidence, source_message)
        VALUES (fact, me, btrim(remember_fact.subject), remember_fact.confidence, remember_fact.source_message);
    END IF;
    IF remember_fact.supersedes IS NOT NULL AND remember_fact.supersedes <> fact THEN
        UPDATE @extschema@.memories m SET valid_to = now() WHERE m.id = remember_fact.supersedes;
        UPDATE @extschema@.memory_facts f SET superseded_by = fact WHERE f.memory_id = remember_fact.supersedes;
    END IF;
    RETURN fact;
END
$$;

-- The facts you can see, most confident first: about `subject` (any letter case; NULL: all),
-- valid at `as_of` (default now: the current ones), or every version with include_superseded.
-- Runs as the caller, under row-level security.
CREATE FUNCTION @extschema@.facts(
    subject text DEFAULT NULL,
    as_of timestamptz DEFAULT NULL,
    include_superseded boolean DEFAULT false,
    lim integer DEFAULT 100)
RETURNS TABLE (fact_id uuid, subject text, statement text, confidence real, reinforcements integer,
               valid_from timestamptz, valid_to timestamptz, superseded_by uuid, source_message uuid,
               owner_id uuid, created_at timestamptz)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT m.id, f.subject, m.content, f.confidence, f.reinforcements, m.valid_from, m.valid_to,
           f.superseded_by, f.source_message, f.owner_id, m._created_at
      FROM @extschema@.memory_facts f
      JOIN @extschema@.memories m ON m.id = f.memory_id
     WHERE (facts.subject IS NULL OR lower(f.subject) = lower(btrim(facts.subject)))
       AND (facts.include_superseded
            OR ((m.valid_from IS NULL OR m.valid_from <= coalesce(facts.as_of, now()))
                AND (m.valid_to IS NULL OR m.valid_to > coalesce(facts.as_of, now()))))
     ORDER BY f.confidence DESC, m._created_at DESC, m.id
     LIMIT @extschema@.search_limit(facts.lim)
$$;
