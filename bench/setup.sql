-- Data and helpers for bench/run.sh (and bench/diagnose.sh, bench/compare.sh). Run once, as a
-- superuser, in a fresh database that has `CREATE EXTENSION memoriesdb CASCADE`. Everything the
-- benchmarks compare against lives in the schema `bench`, so nothing here touches the
-- extension's objects.
--
-- The benchmarks run as an application would: as bench_app, an ordinary (non-superuser) login
-- role mapped to a MemoriesDB user, so row-level security, provenance and the rest apply exactly
-- as in production. (A superuser bypasses row-level security and would flatter the numbers.)
-- The data below is created as that role too, so that it owns its sessions.

\set ON_ERROR_STOP 1
SET client_min_messages = warning;
CREATE ROLE bench_app LOGIN;
-- What an administrator does (README, "Installing into a database"): the API through the
-- role memoriesdb_user, and the extension's schema on the database's search_path (for the
-- benchmarks' own connections too, and for the rest of this script).
GRANT memoriesdb_user TO bench_app;
ALTER DATABASE :"DBNAME" SET search_path = "$user", public, memoriesdb;
SET search_path = "$user", public, memoriesdb;
SELECT create_user('bench', 'bench_app') IS NOT NULL AS bench_user_created;
CREATE SCHEMA bench AUTHORIZATION bench_app;
SET ROLE bench_app;

-- ~200-byte message bodies, varied a little so that rows are not all identical.
CREATE FUNCTION bench.body(i bigint) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT rpad('message ' || i || ': ', 200, 'the quick brown fox jumps over the lazy dog; ')
$$;

-- The named sessions every benchmark uses: name -> session id.
CREATE TABLE bench.sessions (name text PRIMARY KEY, sid uuid NOT NULL);

------------------------------------------------------------------------------------------------
-- 1. fork: a 10-message and a 10,000-message session, and a plain table to copy messages into.
------------------------------------------------------------------------------------------------
INSERT INTO bench.sessions VALUES ('fork_10', create_session('fork source, 10 messages')),
                                  ('fork_10000', create_session('fork source, 10,000 messages'));
SELECT count(add_message_to_session(s.sid, CASE WHEN g % 2 = 1 THEN 'user' ELSE 'assistant' END, bench.body(g)))
  FROM bench.sessions s CROSS JOIN generate_series(1, 10) g WHERE s.name = 'fork_10';
SELECT count(add_message_to_session(s.sid, CASE WHEN g % 2 = 1 THEN 'user' ELSE 'assistant' END, bench.body(g)))
  FROM bench.sessions s CROSS JOIN generate_series(1, 10000) g WHERE s.name = 'fork_10000';

-- What a copying fork would have to write: the same columns as a message, no triggers and no
-- indexes (the cheapest possible copy, so the comparison is conservative).
CREATE TABLE bench.copy_target (
    id uuid, session_id uuid, position bigint, role text, content text, created_at timestamptz, metadata jsonb
);

-- A flat table with what memories carries for a message besides the machinery: the same
-- indexes (primary key, unique (session_id, position), created_by, GIN on a generated tsvector
-- of the content, GIN on the metadata), no triggers, no row-level security, no foreign keys.
-- What a copying fork would write into a message table that can serve the product's reads and
-- searches (an extra baseline for the fork), and how much of the write cost is the data layout
-- itself rather than the triggers and checks (an extra baseline for writes, and diagnose.sh).
CREATE TABLE bench.flat_indexed (
    id uuid PRIMARY KEY DEFAULT uuid_generate_v7(), session_id uuid NOT NULL, position bigint NOT NULL,
    role text NOT NULL, content text NOT NULL, created_by uuid, created_at timestamptz NOT NULL DEFAULT now(),
    metadata jsonb NOT NULL DEFAULT '{}',
    search_tsv tsvector GENERATED ALWAYS AS (to_tsvector('english'::regconfig, left(content, 262144))) STORED
);
CREATE UNIQUE INDEX flat_indexed_session_position ON bench.flat_indexed (session_id, position);
CREATE INDEX flat_indexed_created_by ON bench.flat_indexed (created_by);
CREATE INDEX flat_indexed_search ON bench.flat_indexed USING gin (search_tsv);
CREATE INDEX flat_indexed_metadata ON bench.flat_indexed USING gin (metadata jsonb_path_ops);
ALTER TABLE bench.flat_indexed OWNER TO bench_app;

-- One timing row per measured operation.
CREATE TABLE bench.timing (variant text, iter int, exec_us float8, total_us float8);

-- Forks interleaved: each iteration forks the 10-message and the 10,000-message session, in
-- alternating order, each in its own transaction. Then the copies, in loops of their own: when
-- the copies were interleaved, the fork that directly followed a copy took about 0.5 ms longer,
-- and with three variants in alternating order that was always the 10,000-message fork. exec_us is the statement
-- alone (clock_timestamp() around it, server side); total_us also includes the COMMIT.
CREATE PROCEDURE bench.fork_vs_copy(n int) LANGUAGE plpgsql AS $$
DECLARE
    s10   uuid := (SELECT sid FROM bench.sessions WHERE name = 'fork_10');
    s10k  uuid := (SELECT sid FROM bench.sessions WHERE name = 'fork_10000');
    t0 timestamptz; t1 timestamptz; t2 timestamptz;
    v text;
BEGIN
    FOR i IN 1..n LOOP
        FOREACH v IN ARRAY CASE WHEN i % 2 = 0 THEN ARRAY['fork_10', 'fork_10000']
                                ELSE ARRAY['fork_10000', 'fork_10'] END LOOP
            t0 := clock_timestamp();
            PERFORM fork_session(CASE v WHEN 'fork_10' THEN s10 ELSE s10k END, 'bench fork');
            t1 := clock_timestamp();
            COMMIT;
            t2 := clock_timestamp();
            INSERT INTO bench.timing VALUES (v, i, 1e6 * extract(epoch FROM t1 - t0), 1e6 * extract(epoch FROM t2 - t0));
            COMMIT;
        END LOOP;
    END LOOP;
    -- copies of the 10,000 messages: into the bare table; into the indexed one (a quarter of a
    -- second each, mostly GIN work, so fewer iterations)
    FOREACH v IN ARRAY ARRAY['copy_10000', 'copy_indexed_10000'] LOOP
        FOR i IN 1..CASE v WHEN 'copy_10000' THEN n ELSE greatest(30, n / 10) END LOOP
            t0 := clock_timestamp();
            PERFORM bench.copy_messages(s10k, gen_random_uuid(), indexed => v = 'copy_indexed_10000');
            t1 := clock_timestamp();
            COMMIT;
            t2 := clock_timestamp();
            INSERT INTO bench.timing VALUES (v, i, 1e6 * extract(epoch FROM t1 - t0), 1e6 * extract(epoch FROM t2 - t0));
            TRUNCATE bench.copy_target, bench.flat_indexed;
            COMMIT;
        END LOOP;
    END LOOP;
END
$$;

------------------------------------------------------------------------------------------------
-- 2. read: a chain of 10 sessions, each forked at the latest message of its parent and adding
--    100 messages, so the leaf sees 1,000 messages; and a flat table holding the same 1,000 rows
--    for one session among 20,000 rows of 20 other sessions.
------------------------------------------------------------------------------------------------
DO $$
DECLARE
    sid uuid := create_session('read chain, generation 0');
BEGIN
    PERFORM add_message_to_session(sid, CASE WHEN g % 2 = 1 THEN 'user' ELSE 'assistant' END, bench.body(g))
       FROM generate_series(1, 100) g;
    FOR gen IN 1..9 LOOP
        sid := fork_session(sid, 'read chain, generation ' || gen);
        PERFORM add_message_to_session(sid, CASE WHEN g % 2 = 1 THEN 'user' ELSE 'assistant' END, bench.body(g))
           FROM generate_series(gen * 100 + 1, gen * 100 + 100) g;
    END LOOP;
    INSERT INTO bench.sessions VALUES ('read_leaf', sid);
    -- the same 1,000 messages in one unforked session, for the diagnostic run
    sid := create_session('read, 1,000 messages, no forks');
    PERFORM add_message_to_session(sid, CASE WHEN g % 2 = 1 THEN 'user' ELSE 'assistant' END, bench.body(g))
       FROM generate_series(1, 1000) g;
    INSERT INTO bench.sessions VALUES ('read_flat_session', sid);
END
$$;

CREATE TABLE bench.flat_messages (
    id uuid NOT NULL, session_id uuid NOT NULL, position bigint NOT NULL, role text NOT NULL,
    content text NOT NULL, created_at timestamptz NOT NULL DEFAULT now(), metadata jsonb NOT NULL DEFAULT '{}'
);
INSERT INTO bench.sessions VALUES ('read_baseline', gen_random_uuid());
INSERT INTO bench.flat_messages (id, session_id, position, role, content)
SELECT gen_random_uuid(), s.sid, g, CASE WHEN g % 2 = 1 THEN 'user' ELSE 'assistant' END, bench.body(g)
  FROM (SELECT sid FROM bench.sessions WHERE name = 'read_baseline'
        UNION ALL SELECT gen_random_uuid() FROM generate_series(1, 20)) s
 CROSS JOIN generate_series(1, 1000) g
 ORDER BY random();   -- the session's rows are spread over the table, as interleaved appends would be
CREATE INDEX flat_messages_session_position ON bench.flat_messages (session_id, position);

------------------------------------------------------------------------------------------------
-- 3. write: one session per pgbench client (client_id 0..7), one shared session (client_id
--    100), and the flat table a bare INSERT writes to: same columns as a message, primary key on
--    id (the same uuid_generate_v7() default as memories) and an index on (session_id, position),
--    no triggers.
------------------------------------------------------------------------------------------------
CREATE TABLE bench.writers (client_id int PRIMARY KEY, sid uuid NOT NULL);
INSERT INTO bench.writers SELECT c, create_session('writer ' || c) FROM generate_series(0, 7) c;
INSERT INTO bench.writers VALUES (100, create_session('shared writer session'));

CREATE TABLE bench.flat_write (
    id uuid PRIMARY KEY DEFAULT uuid_generate_v7(), session_id uuid NOT NULL, position bigint NOT NULL,
    role text NOT NULL, content text NOT NULL, created_at timestamptz NOT NULL DEFAULT now(),
    metadata jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX flat_write_session_position ON bench.flat_write (session_id, position);

-- sanity checks: the shapes the benchmarks rely on
DO $$
DECLARE n bigint;
BEGIN
    SELECT count(*) INTO n FROM get_formatted_conversation((SELECT sid FROM bench.sessions WHERE name = 'read_leaf'));
    IF n <> 1000 THEN RAISE EXCEPTION 'read chain leaf sees % messages, expected 1000', n; END IF;
    SELECT depth INTO n FROM memory_sessions WHERE id = (SELECT sid FROM bench.sessions WHERE name = 'read_leaf');
    IF n <> 9 THEN RAISE EXCEPTION 'read chain leaf has depth %, expected 9', n; END IF;
    SELECT count(*) INTO n FROM bench.flat_messages WHERE session_id = (SELECT sid FROM bench.sessions WHERE name = 'read_baseline');
    IF n <> 1000 THEN RAISE EXCEPTION 'flat baseline has % rows, expected 1000', n; END IF;
    SELECT last_position INTO n FROM memory_sessions WHERE id = (SELECT sid FROM bench.sessions WHERE name = 'fork_10000');
    IF n <> 10000 THEN RAISE EXCEPTION 'fork source has % messages, expected 10000', n; END IF;
END
$$;

RESET ROLE;

-- The copy that fork_session is compared with: INSERT ... SELECT of a session's messages into
-- the plain table. SECURITY DEFINER (owned by the superuser) so that reading the messages does
-- not pay for row-level security: the cheapest copy, so the comparison is conservative.
CREATE FUNCTION bench.copy_messages(src uuid, dst uuid, indexed boolean DEFAULT false) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n bigint;
BEGIN
    IF indexed THEN
        -- new ids, as a copy in one table needs
        INSERT INTO bench.flat_indexed (id, session_id, position, role, content, created_by, created_at, metadata)
        SELECT memoriesdb.uuid_generate_v7(), dst, m.position, m.role, m.content, m.created_by, m._created_at, m._metadata
          FROM memoriesdb.memories m WHERE m.session_id = src;
    ELSE
        INSERT INTO bench.copy_target (id, session_id, position, role, content, created_at, metadata)
        SELECT m.id, dst, m.position, m.role, m.content, m._created_at, m._metadata
          FROM memoriesdb.memories m WHERE m.session_id = src;
    END IF;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;
DO $$
BEGIN
    IF bench.copy_messages((SELECT sid FROM bench.sessions WHERE name = 'fork_10000'), gen_random_uuid()) <> 10000 THEN
        RAISE EXCEPTION 'copy_messages did not copy 10,000 messages';
    END IF;
    IF bench.copy_messages((SELECT sid FROM bench.sessions WHERE name = 'fork_10000'), gen_random_uuid(), true) <> 10000 THEN
        RAISE EXCEPTION 'copy_messages did not copy 10,000 messages into the indexed table';
    END IF;
    TRUNCATE bench.copy_target, bench.flat_indexed;
END
$$;

VACUUM ANALYZE;
