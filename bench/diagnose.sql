-- Extra helpers for bench/diagnose.sh, loaded (as the superuser) after bench/setup.sql. The
-- timing procedures are called as the benchmark role, or as the superuser for comparison.
\set ON_ERROR_STOP 1
SET client_min_messages = warning;

-- n forks of the 10,000-message session, each in its own transaction, timed server side.
CREATE PROCEDURE bench.time_forks(label text, n int) LANGUAGE plpgsql AS $$
DECLARE
    s10k uuid := (SELECT sid FROM bench.sessions WHERE name = 'fork_10000');
    t0 timestamptz; t1 timestamptz; t2 timestamptz;
BEGIN
    FOR i IN 1..n LOOP
        t0 := clock_timestamp();
        PERFORM fork_session(s10k, 'diagnostic fork');
        t1 := clock_timestamp();
        COMMIT;
        t2 := clock_timestamp();
        INSERT INTO bench.timing VALUES (label, i, 1e6 * extract(epoch FROM t1 - t0), 1e6 * extract(epoch FROM t2 - t0));
        COMMIT;
    END LOOP;
END
$$;

-- n appends to writer 0's session, each in its own transaction, timed server side.
CREATE PROCEDURE bench.time_adds(label text, n int) LANGUAGE plpgsql AS $$
DECLARE
    sid uuid := (SELECT w.sid FROM bench.writers w WHERE w.client_id = 0);
    body text := bench.body(42);
    t0 timestamptz; t1 timestamptz; t2 timestamptz;
BEGIN
    FOR i IN 1..n LOOP
        t0 := clock_timestamp();
        PERFORM add_message_to_session(sid, 'user', body);
        t1 := clock_timestamp();
        COMMIT;
        t2 := clock_timestamp();
        INSERT INTO bench.timing VALUES (label, i, 1e6 * extract(epoch FROM t1 - t0), 1e6 * extract(epoch FROM t2 - t0));
        COMMIT;
    END LOOP;
END
$$;

-- n single-row statements of the kinds a fork is made of, timed server side (rolled back).
CREATE PROCEDURE bench.time_statement(label text, n int, stmt text) LANGUAGE plpgsql AS $$
DECLARE
    t0 timestamptz; t1 timestamptz;
BEGIN
    FOR i IN 1..n LOOP
        t0 := clock_timestamp();
        EXECUTE stmt;
        t1 := clock_timestamp();
        ROLLBACK;
        INSERT INTO bench.timing VALUES (label, i, 1e6 * extract(epoch FROM t1 - t0), NULL);
        COMMIT;
    END LOOP;
END
$$;

-- Samples of what the client backends running add_message_to_session wait on.
CREATE TABLE bench.wait_samples (sample int, wait_event_type text, wait_event text, state text, n int);
CREATE PROCEDURE bench.sample_waits(seconds float8) LANGUAGE plpgsql AS $$
DECLARE
    deadline timestamptz := clock_timestamp() + seconds * interval '1 second';
    i int := 0;
BEGIN
    WHILE clock_timestamp() < deadline LOOP
        i := i + 1;
        PERFORM pg_stat_clear_snapshot();
        INSERT INTO bench.wait_samples
        SELECT i, coalesce(a.wait_event_type, 'CPU'), coalesce(a.wait_event, 'running'), a.state, count(*)
          FROM pg_stat_activity a
         WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid() AND a.query LIKE '%add_message_to_session%'
         GROUP BY 2, 3, 4;
        COMMIT;
        PERFORM pg_sleep(0.05);
    END LOOP;
END
$$;

-- n appends to writer 0's session, one transaction each, writing nothing else (for WAL accounting).
CREATE PROCEDURE bench.append_n(n int) LANGUAGE plpgsql AS $$
DECLARE
    sid uuid := (SELECT w.sid FROM bench.writers w WHERE w.client_id = 0);
    body text := bench.body(42);
BEGIN
    FOR i IN 1..n LOOP
        PERFORM add_message_to_session(sid, 'user', body);
        COMMIT;
    END LOOP;
END
$$;

-- (bench.flat_indexed, the indexed flat table, is defined in setup.sql)
