-- MemoriesDB schema: the tables everything else stands on.
--
-- Every object is created in the extension's own schema, memoriesdb (fixed by the control file,
-- not relocatable), and every function pins search_path and qualifies what it names, so a
-- caller's search_path can never redirect the extension to an object of the caller's choosing.
-- pgvector may live in any schema (CREATE EXTENSION memoriesdb CASCADE puts it in the first
-- schema of the search_path, usually public); function bodies name it through the placeholder
-- schema memoriesdb_pgvector, which finalize.sql binds to pgvector's real schema at install.

-- MemoriesDB reads and hashes text as UTF-8 (content hashes, roles, JSON keys): in a database
-- with another encoding the same text would hash differently and checks would count
-- characters wrongly, so the extension refuses such a database outright.
DO $$
BEGIN
    IF pg_catalog.getdatabaseencoding() OPERATOR(pg_catalog.<>) 'UTF8' THEN
        RAISE EXCEPTION 'MemoriesDB needs a database encoded in UTF-8; this one is %', pg_catalog.getdatabaseencoding()
            USING ERRCODE = '0A000',
                  HINT = 'create the database with ENCODING ''UTF8'' (e.g. CREATE DATABASE ... ENCODING ''UTF8'' TEMPLATE template0)';
    END IF;
END
$$;

-- The text search configuration new memories are indexed with: the memoriesdb.text_search_config
-- setting when set (e.g. 'simple' for multilingual content), otherwise english.
-- A SQL-standard body (BEGIN ATOMIC), parsed at install, so that PostgreSQL inlines it into
-- every INSERT (a SET clause would forbid that: an extra query per row); the setting's value
-- is looked up as a configuration name the way a cast does, and require_durable_search_config()
-- refuses anything but a built-in or a superuser's configuration.
CREATE FUNCTION @extschema@.default_search_config() RETURNS regconfig
LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT coalesce(nullif(pg_catalog.current_setting('memoriesdb.text_search_config', true), ''),
                    'english')::pg_catalog.regconfig;
END;

-- Users: the tenants and authors of memories. `db_role` maps a database role to a user so that
-- a role connecting directly acts as that user without setting anything.
CREATE TABLE @extschema@.users (
    id          uuid PRIMARY KEY DEFAULT @extschema@.uuid_generate_v7(),
    name        text NOT NULL CHECK (length(btrim(name)) BETWEEN 1 AND 200),
    db_role     name UNIQUE,
    _metadata   jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(_metadata) = 'object'),
    _created_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE @extschema@.users IS 'MemoriesDB users (tenants); db_role optionally maps a database role to a user';

-- Memory types: what kind of thing a memory is. Every memory's kind is one of these (checked by
-- derive_row_fields(), src/write_path.rs: a foreign key would make every append take a share
-- lock on its type's row). The built-in types are listed in the memory_types view; an
-- administrator adds types, or changes a built-in one's defaults, with define_memory_type(),
-- which writes here. (A table of its own, empty at install, so that pg_dump keeps every row of
-- it and a restore never collides with the built-in list.) A type, once defined, stays.
--   default_importance  the importance of a memory of this type that does not set its own
--                       (ranking: see the search functions)
--   default_ttl         how long a new memory of this type lives unless it says otherwise
--                       (expires_at); NULL: for ever. A session's message_ttl comes first for
--                       its messages.
CREATE TABLE @extschema@.memory_type_definitions (
    name               text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]{0,62}$'),
    description        text NOT NULL DEFAULT '',
    default_importance real NOT NULL DEFAULT 0.5
                       CONSTRAINT memory_types_importance_in_range CHECK (default_importance BETWEEN 0 AND 1),
    default_ttl        interval
                       CONSTRAINT memory_types_ttl_positive CHECK (default_ttl > interval '0'),
    -- a session does not expire by itself (its messages do: message_ttl)
    CONSTRAINT memory_types_session_never_expires CHECK (name <> 'session' OR default_ttl IS NULL)
);
COMMENT ON TABLE @extschema@.memory_type_definitions IS 'Memory types defined by an administrator, and changed defaults of built-in ones (see memory_types)';

-- Every memory type: the built-in ones (with an administrator's changes) and the defined ones.
CREATE VIEW @extschema@.memory_types AS
SELECT b.name, coalesce(d.description, b.description) AS description,
       coalesce(d.default_importance, b.default_importance) AS default_importance,
       d.default_ttl, true AS builtin
  FROM (VALUES
        ('memory',     'a free memory (the default type)', 0.5::real),
        ('session',    'a conversation (create_session, fork_session)', 0.5),
        ('message',    'a message of a conversation (add_message_to_session)', 0.3),
        ('fact',       'a statement about a subject, with a confidence (remember_fact)', 0.8),
        ('preference', 'what a user likes, wants or avoids', 0.8),
        ('entity',     'a person, place, organisation or thing', 0.6),
        ('summary',    'an episodic summary of (part of) a conversation', 0.7),
        ('persona',    'who an assistant is, or how it should behave', 0.9),
        ('tool',       'a tool an assistant can use, and how', 0.5),
        ('workflow',   'a procedure an assistant follows', 0.5)) b (name, description, default_importance)
  LEFT JOIN @extschema@.memory_type_definitions d ON d.name = b.name
UNION ALL
SELECT d.name, d.description, d.default_importance, d.default_ttl, false
  FROM @extschema@.memory_type_definitions d
 WHERE d.name NOT IN ('memory', 'session', 'message', 'fact', 'preference', 'entity', 'summary', 'persona', 'tool', 'workflow');
COMMENT ON VIEW @extschema@.memory_types IS 'The types a memory can have, with their default importance and time to live';

-- Memories: every node of the memory graph. Sessions and messages are memories too; their
-- conversational fields are typed columns so that transcripts are index range scans, not graph
-- walks. The belongs_to / forked_from edges mirror them in the graph.
CREATE TABLE @extschema@.memories (
    id                uuid PRIMARY KEY DEFAULT @extschema@.uuid_generate_v7(),
    -- one of memory_types (checked by derive_row_fields())
    kind              text NOT NULL DEFAULT 'memory' CHECK (kind ~ '^[a-z][a-z0-9_]{0,62}$'),
    content           text NOT NULL DEFAULT '',
    -- hex SHA-256 of content, maintained by the derive_row_fields() trigger; never trusted from input
    content_hash      text NOT NULL DEFAULT '' ,
    -- any dimension; per-dimension HNSW indexes come from create_vector_index(dims)
    content_embedding vector,
    -- the model that computed content_embedding; both are cleared when the content changes,
    -- so a stale embedding is never served
    embedding_model   text,
    -- full-text search: each memory is indexed with its own configuration. The first 256 KiB
    -- (bytes) of text are indexed, which keeps every tsvector below PostgreSQL's 1 MB limit, so
    -- that no content, however large and in whatever script, can make a write fail (see
    -- searchable_text() in src/search.rs).
    -- (built-in or created by a superuser, never temporary: see require_durable_search_config())
    search_config     regconfig NOT NULL DEFAULT @extschema@.default_search_config()
                      CHECK (@extschema@.require_durable_search_config(search_config::oid)),
    search_tsv        tsvector GENERATED ALWAYS AS
                      (to_tsvector(search_config, @extschema@.searchable_text(content))) STORED,
    _metadata         jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(_metadata) = 'object'),
    -- message fields: the session the message was written in, its 1-based position in that
    -- session's branch (positions continue from the fork point), and the speaker
    session_id        uuid,
    position          bigint,
    role              text CHECK (length(role) BETWEEN 1 AND 64),
    _created_at       timestamptz NOT NULL DEFAULT now(),
    _updated_at       timestamptz NOT NULL DEFAULT now(),
    -- provenance: set by trigger from the acting user, never from the caller's values
    created_by        uuid REFERENCES @extschema@.users (id),
    updated_by        uuid REFERENCES @extschema@.users (id),
    -- how much the memory matters, in [0, 1], for ranking; NULL: its type's default_importance
    importance        real CONSTRAINT memories_importance_in_range CHECK (importance BETWEEN 0 AND 1),
    -- when the memory expires: from then on no read shows it (the read rule, src/policies.rs),
    -- and sweep_expired_memories() deletes it. Set from the type's default_ttl (or the session's
    -- message_ttl) when a memory is written without one; NULL: it never expires.
    expires_at        timestamptz,
    -- when what the memory says holds (facts: see sql/facts.sql); NULL: since always / for ever.
    -- The searches return only memories valid now; a superseded fact gets valid_to.
    valid_from        timestamptz,
    valid_to          timestamptz,
    -- a (nearly) zero embedding has no direction: pgvector's single-precision cosine distance to
    -- it comes out as 0, so it would match every query at similarity 1
    -- (the operator qualified: it is resolved at install, where pgvector's schema is on the path)
    CONSTRAINT memories_embedding_not_near_zero
        CHECK (content_embedding IS NULL OR vector_norm(content_embedding) OPERATOR(pg_catalog.>=) 1e-10::pg_catalog.float8),
    CONSTRAINT memories_validity_in_order CHECK (valid_to >= valid_from),
    CONSTRAINT memories_message_fields CHECK (
        (kind = 'message') = (session_id IS NOT NULL AND position IS NOT NULL AND role IS NOT NULL))
);
COMMENT ON TABLE @extschema@.memories IS 'Every node of the memory graph: sessions, messages and free memories';
-- Transcript order within a branch segment; also guarantees one message per position.
CREATE UNIQUE INDEX memories_session_position ON @extschema@.memories (session_id, position)
    WHERE session_id IS NOT NULL;
-- (the kind too: a user's memories of one type, e.g. their facts, are one range)
CREATE INDEX memories_created_by ON @extschema@.memories (created_by, kind);
-- the sweep's queue: only memories that expire are in it
CREATE INDEX memories_expiring ON @extschema@.memories (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX memories_search ON @extschema@.memories USING gin (search_tsv);
CREATE INDEX memories_metadata ON @extschema@.memories USING gin (_metadata jsonb_path_ops);

-- Sessions: the branch structure. A fork records its parent and the fork point (a position in
-- the parent's branch) and copies nothing: reading a branch walks this ancestry.
CREATE TABLE @extschema@.memory_sessions (
    id              uuid PRIMARY KEY REFERENCES @extschema@.memories (id) ON DELETE CASCADE,
    -- the session memory's creator, kept here so row-level security on sessions is one index probe
    owner_id        uuid REFERENCES @extschema@.users (id),
    parent_id       uuid REFERENCES @extschema@.memory_sessions (id) ON DELETE RESTRICT,
    fork_position   bigint NOT NULL DEFAULT 0 CHECK (fork_position >= 0),
    -- the message at the fork point; NULL once that message expired and was swept (the fork
    -- keeps its fork_position)
    fork_message_id uuid REFERENCES @extschema@.memories (id) ON DELETE SET NULL,
    depth           integer NOT NULL DEFAULT 0 CHECK (depth >= 0),
    -- position of the newest message this branch sees; the next message gets last_position + 1.
    -- Updating it is also the per-session lock that orders concurrent appends.
    last_position   bigint NOT NULL DEFAULT 0,
    -- how long the session's new messages live (set_session_retention()); NULL: the message
    -- type's default_ttl
    message_ttl     interval CONSTRAINT memory_sessions_ttl_positive CHECK (message_ttl > interval '0'),
    -- set when the session this one was forked from was erased (sql/erasure.sql): positions
    -- 1 .. fork_position of this branch were inherited from it and are gone
    inherited_erased_at timestamptz,
    -- how many of the session's own newest messages apply_retention_policies() keeps (NULL: all)
    keep_last       integer CONSTRAINT memory_sessions_keep_last_positive CHECK (keep_last >= 1),
    CHECK ((parent_id IS NULL) = (depth = 0)),
    CHECK (last_position >= fork_position)
);
COMMENT ON TABLE @extschema@.memory_sessions IS 'Branch structure of sessions: parent and fork point, never copied messages';
CREATE INDEX memory_sessions_parent ON @extschema@.memory_sessions (parent_id) WHERE parent_id IS NOT NULL;
CREATE INDEX memory_sessions_owner ON @extschema@.memory_sessions (owner_id);
-- deleting a message looks here for forks made at it
CREATE INDEX memory_sessions_fork_message ON @extschema@.memory_sessions (fork_message_id) WHERE fork_message_id IS NOT NULL;

ALTER TABLE @extschema@.memories
    ADD CONSTRAINT memories_session_fk FOREIGN KEY (session_id)
    REFERENCES @extschema@.memory_sessions (id) ON DELETE CASCADE;

-- Edges: typed, weighted relations between memories. The graph is kept acyclic by prevent_cycles().
CREATE TABLE @extschema@.memory_edges (
    id          uuid PRIMARY KEY DEFAULT @extschema@.uuid_generate_v7(),
    source_id   uuid NOT NULL REFERENCES @extschema@.memories (id) ON DELETE CASCADE,
    target_id   uuid NOT NULL REFERENCES @extschema@.memories (id) ON DELETE CASCADE,
    relation    text NOT NULL CHECK (relation ~ '^[a-z][a-z0-9_]{0,62}$'),
    weight      double precision NOT NULL DEFAULT 1.0
                CHECK (weight > '-Infinity'::float8 AND weight < 'Infinity'::float8),
    _metadata   jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(_metadata) = 'object'),
    _created_at timestamptz NOT NULL DEFAULT now(),
    created_by  uuid REFERENCES @extschema@.users (id),
    CONSTRAINT memory_edges_no_self_loop CHECK (source_id <> target_id),
    CONSTRAINT memory_edges_unique UNIQUE (source_id, target_id, relation)
);
COMMENT ON TABLE @extschema@.memory_edges IS 'Typed, weighted relations between memories; kept acyclic';
CREATE INDEX memory_edges_target ON @extschema@.memory_edges (target_id, relation);

-- Serialises writers of edges that could close a cycle together (see prevent_cycles()).
-- A row rather than an advisory lock: under REPEATABLE READ a concurrent update of this row
-- raises a serialization failure, which is exactly right, because such a transaction's snapshot
-- cannot see the edges the other writer committed.
CREATE TABLE @extschema@.memory_graph_clock (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version   bigint NOT NULL DEFAULT 0
);
INSERT INTO @extschema@.memory_graph_clock DEFAULT VALUES;

-- Audit: one row per insert/update/delete of a memory or an edge, written by log_memory_change().
CREATE TABLE @extschema@.audit_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    table_name  text NOT NULL,
    operation   text NOT NULL CHECK (operation IN ('INSERT', 'UPDATE', 'DELETE')),
    row_id      uuid NOT NULL,
    old_row     jsonb,
    new_row     jsonb,
    acting_user uuid,
    -- the owner of the changed row: the user this audit row concerns
    subject_user uuid,
    db_role     name NOT NULL,
    txid        bigint NOT NULL,
    changed_at  timestamptz NOT NULL DEFAULT now(),
    -- tamper evidence, filled in by seal_audit_log(): the row's place in the hash chain and
    -- sha256(previous chain_hash || this row's canonical text)
    chain_position bigint,
    chain_hash  text,
    -- SHA-256 of audit_erasable_text(row) when sealed (see sql/audit.sql), and when the row's
    -- erasable content was removed by an erasure (erase_audit_rows())
    erasable_digest text,
    erased_at   timestamptz
);
COMMENT ON TABLE @extschema@.audit_log IS 'Append-only change log of memories and edges (before/after state, user, role, transaction)';
-- The chain's history: one row per change of how the chain is computed (an upgrade that re-seals
-- the log under a new chain version), with what the old chain was when it ended: compare
-- last_hash with a value recorded outside the database before the upgrade.
CREATE TABLE @extschema@.audit_chain_history (
    changed_at   timestamptz NOT NULL DEFAULT now(),
    from_version integer NOT NULL,
    to_version   integer NOT NULL,
    sealed_rows  bigint NOT NULL,
    last_hash    text,
    intact       boolean NOT NULL,
    problem      text
);
COMMENT ON TABLE @extschema@.audit_chain_history IS 'Changes of the audit chain''s version, with the old chain''s end and whether it verified';
CREATE INDEX audit_log_row ON @extschema@.audit_log (row_id, id);
CREATE INDEX audit_log_subject ON @extschema@.audit_log (subject_user, id);
CREATE INDEX audit_log_unsealed ON @extschema@.audit_log (txid, id) WHERE chain_position IS NULL;
-- unique among sealed rows; partial, so that writing a change (an unsealed row) costs no entry
CREATE UNIQUE INDEX audit_log_chain ON @extschema@.audit_log (chain_position) WHERE chain_position IS NOT NULL;

-- Queue of memories waiting for an embedding. One row per memory: changing the content again
-- before a worker gets to it simply re-arms the same row with the new hash.
CREATE TABLE @extschema@.embedding_schedule (
    memory_id    uuid PRIMARY KEY REFERENCES @extschema@.memories (id) ON DELETE CASCADE,
    content_hash text NOT NULL,
    status       text NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'processing', 'done', 'failed', 'dead')),
    attempts     integer NOT NULL DEFAULT 0,
    last_error   text,
    locked_until timestamptz,
    enqueued_at  timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE @extschema@.embedding_schedule IS 'Memories waiting for (re)computation of their embedding';
CREATE INDEX embedding_schedule_pending ON @extschema@.embedding_schedule (enqueued_at)
    WHERE status IN ('pending', 'failed');

-- The passages of memories too long for their embedding model's window, each with its own
-- embedding (memoriesdb-embedder splits such content into overlapping token windows). The first
-- chunk's embedding is also the memory's content_embedding, so a memory of one window needs no
-- rows here. Vector search looks at memories and chunks and returns each memory once, with its
-- best passage. A chunk is current only while its content_hash is the memory's: a changed
-- content is never served through old chunks, and the next stored embedding replaces them.
CREATE TABLE @extschema@.memory_chunks (
    memory_id       uuid NOT NULL REFERENCES @extschema@.memories (id) ON DELETE CASCADE,
    chunk_index     integer NOT NULL CHECK (chunk_index >= 0),
    -- the passage: characters [start_char, end_char) of the content, 0-based, so that
    -- substr(content, start_char + 1, end_char - start_char) is its text
    start_char      integer NOT NULL CHECK (start_char >= 0),
    end_char        integer NOT NULL,
    content_hash    text NOT NULL,
    -- (the operator qualified: resolved at install, where pgvector's schema is on the path)
    embedding       vector NOT NULL CHECK (vector_norm(embedding) OPERATOR(pg_catalog.>=) 1e-10::pg_catalog.float8),
    embedding_model text NOT NULL,
    PRIMARY KEY (memory_id, chunk_index),
    CHECK (end_char > start_char)
);
COMMENT ON TABLE @extschema@.memory_chunks IS 'Embedded passages of memories longer than the embedding model reads at once';

-- Queue of index/view refreshes driven by new embeddings.
-- target 'vector_index': make sure an HNSW index exists for embeddings of `dimensions`.
CREATE TABLE @extschema@.vindexing_schedule (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    target      text NOT NULL CHECK (target IN ('vector_index')),
    dimensions  integer CHECK (dimensions BETWEEN 1 AND 16000),
    memory_id   uuid REFERENCES @extschema@.memories (id) ON DELETE CASCADE,
    status      text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'processing', 'done', 'failed', 'dead')),
    attempts    integer NOT NULL DEFAULT 0,
    last_error  text,
    enqueued_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE @extschema@.vindexing_schedule IS 'Index and view refreshes waiting for a worker';
CREATE INDEX vindexing_schedule_pending ON @extschema@.vindexing_schedule (enqueued_at) WHERE status = 'pending';
-- one pending item per piece of work
CREATE UNIQUE INDEX vindexing_schedule_once ON @extschema@.vindexing_schedule (target, dimensions)
    WHERE status IN ('pending', 'processing');

-- Sharing: explicit grants of read (or read-write) access to a memory or a session.
CREATE TABLE @extschema@.memory_shares (
    memory_id  uuid NOT NULL REFERENCES @extschema@.memories (id) ON DELETE CASCADE,
    grantee    uuid NOT NULL REFERENCES @extschema@.users (id) ON DELETE CASCADE,
    can_write  boolean NOT NULL DEFAULT false,
    granted_by uuid NOT NULL REFERENCES @extschema@.users (id) ON DELETE CASCADE,
    granted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (memory_id, grantee)
);
CREATE INDEX memory_shares_grantee ON @extschema@.memory_shares (grantee, memory_id);
COMMENT ON TABLE @extschema@.memory_shares IS 'Explicit grants of a memory or session to another user';

-- A shared session shares what its branch shows: for each session of its lineage, the messages
-- up to the position the branch sees. Precomputed at grant time so that the row-level security
-- policy on memories is a single index probe per row.
CREATE TABLE @extschema@.memory_share_segments (
    grantee       uuid NOT NULL,
    session_id    uuid NOT NULL REFERENCES @extschema@.memory_sessions (id) ON DELETE CASCADE,
    visible_upto  bigint NOT NULL,
    shared_memory uuid NOT NULL,
    can_write     boolean NOT NULL DEFAULT false,
    FOREIGN KEY (shared_memory, grantee) REFERENCES @extschema@.memory_shares (memory_id, grantee) ON DELETE CASCADE,
    PRIMARY KEY (grantee, session_id, shared_memory)
);
COMMENT ON TABLE @extschema@.memory_share_segments IS 'Per-session visibility derived from shared sessions (maintained by share_memory)';

-- The per-dimension HNSW indexes create_vector_index() has built, with their settings. pg_dump
-- does not dump indexes on an extension's tables, so this list is what restore_vector_indexes()
-- rebuilds them from after a restore.
CREATE TABLE @extschema@.vector_indexes (
    dimensions      integer PRIMARY KEY CHECK (dimensions BETWEEN 1 AND 2000),
    m               integer NOT NULL,
    ef_construction integer NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- Change events on their way to NOTIFY: appended by the event triggers in the writer's
-- transaction, moved to NOTIFY and deleted by the event relay (src/events.rs). Transient, so
-- pg_dump leaves it out.
-- One row per writing statement, holding all its events in order (channels[i] gets payloads[i]):
-- a message's two events and the embedding workers' wake-up are one row, not three.
CREATE TABLE @extschema@.memory_event_outbox (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channels text[] NOT NULL,
    payloads text[] NOT NULL CHECK (cardinality(payloads) = cardinality(channels))
);

-- All edges of the memory graph: the stored ones (memory_edges) and the structural ones that
-- the conversation tables already state — a message belongs_to its session (memories.session_id),
-- a fork is forked_from its parent (memory_sessions.parent_id). Deriving those from the typed
-- columns instead of storing a copy keeps one source of truth and keeps every message write to a
-- single row; traversal, memory_graph and the cycle check all read this view.
CREATE VIEW @extschema@.memory_graph_edges WITH (security_invoker = true) AS
SELECT e.id AS edge_id, e.source_id, e.target_id, e.relation, e.weight, e._metadata, false AS implied
  FROM @extschema@.memory_edges e
UNION ALL
SELECT NULL::uuid, m.id, m.session_id, 'belongs_to'::text, 1.0::double precision,
       pg_catalog.jsonb_build_object('position', m.position), true
  FROM @extschema@.memories m
 WHERE m.session_id IS NOT NULL
UNION ALL
SELECT NULL::uuid, s.id, s.parent_id, 'forked_from'::text, 1.0::double precision,
       pg_catalog.jsonb_build_object('fork_position', s.fork_position, 'parent_message_id', s.fork_message_id), true
  FROM @extschema@.memory_sessions s
 WHERE s.parent_id IS NOT NULL;
COMMENT ON VIEW @extschema@.memory_graph_edges IS 'Every edge of the memory graph: stored edges plus belongs_to/forked_from implied by sessions and messages';

-- pg_dump skips rows of extension-owned tables unless they are registered here.
SELECT pg_catalog.pg_extension_config_dump('@extschema@.users', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.memory_type_definitions', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.memories', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.memory_sessions', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.memory_edges', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.audit_log', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.audit_log_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.audit_chain_history', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.embedding_schedule', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.memory_chunks', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.memory_shares', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.memory_share_segments', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.vector_indexes', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.vindexing_schedule', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.vindexing_schedule_id_seq', '');
