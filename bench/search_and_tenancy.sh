#!/usr/bin/env bash
# Benchmarks for search, graph traversal and multi-tenancy (run as root). Starts a throwaway
# PostgreSQL 15 cluster under /tmp on a free port, loads the data, compares each MemoriesDB
# function with its raw-SQL equivalent side by side in one run (pgbench, alternating order,
# medians), prints a table and keeps raw output in bench/results/<UTC time>-search/.
#
#   vector    vector_search on 100,000 memories x 384 dimensions with HNSW vs the raw pgvector
#             ORDER BY embedding <=> q LIMIT 10 on the same index and ef_search; recall@10 of
#             vector_search against exact search over 100 queries; and (extra) against the raw
#             query with vector_search's own setting, hnsw.iterative_scan = relaxed_order
#   fulltext  search_memories on 100,000 memories vs a raw tsvector @@ query on the same GIN
#             index (same ranking and snippets; and without snippets)
#   branch    search_memories within a session at the end of a 10-deep fork chain (1,000
#             visible messages) vs the same search in a flat session of 1,000 messages
#   traverse  traverse_memory_graph to depth 10 on a 100,000-edge graph: time and rows
#   rls-read  a user's transcript read (1,000 messages) and full-text search, on 100,000
#             memories of 100 users, with row-level security vs with it disabled
#   rls-write add_message_to_session by 8 users (8 clients) with row-level security and a
#             sealer linking the audit chain every second, vs without both
#
# Environment: BENCH_ROUNDS (3), BENCH_SECONDS (8), BENCH_ROWS (100000)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
[ "$(id -u)" = 0 ] || die "run as root (the cluster runs as the postgres user)"

. bench/ab.sh
BENCH_ROUNDS=${BENCH_ROUNDS:-3}
BENCH_SECONDS=${BENCH_SECONDS:-8}
ROWS=${BENCH_ROWS:-100000}
AB_PARAMS="rows=$ROWS"
ab_start search 55700
load_tenants "$ROWS"

#----------------------------------------------------------------------------------------------
log "vector search"
cat >"$RES/vector_fn.sql" <<'EOF'
\set n random(1, 100)
SELECT count(*) FROM vector_search((SELECT v FROM bench_queries WHERE n = :n), -1, 10);
EOF
cat >"$RES/vector_raw.sql" <<'EOF'
\set n random(1, 100)
SET hnsw.ef_search = 200;
SELECT count(*) FROM (SELECT m.id, 1 - (m.content_embedding::vector(384) <=> (SELECT v FROM bench_queries WHERE n = :n)::vector(384)) AS similarity
  FROM memories m
 WHERE vector_dims(m.content_embedding) = 384
 ORDER BY m.content_embedding::vector(384) <=> (SELECT v FROM bench_queries WHERE n = :n)::vector(384) LIMIT 10) t;
EOF
read -r fn raw < <(compare vector_fn postgres "$RES/vector_fn.sql" vector_raw postgres "$RES/vector_raw.sql")
report "vector_search vs raw HNSW query (tps, ratio <= 1.15)" "$fn vs $raw -> time ratio $(python3 -c "print(round($raw/$fn, 3))")"
# the same raw query with the settings vector_search runs with (pgvector's iterative scan, which
# keeps a filtered search going until lim rows qualify): what the function itself adds
{ echo 'SET hnsw.iterative_scan = relaxed_order;'; cat "$RES/vector_raw.sql"; } >"$RES/vector_raw_iterative.sql"
read -r fn raw < <(compare vector_fn2 postgres "$RES/vector_fn.sql" vector_raw_iterative postgres "$RES/vector_raw_iterative.sql")
report "vector_search vs the raw query with its iterative scan (extra)" "$fn vs $raw -> time ratio $(python3 -c "print(round($raw/$fn, 3))")"
q -c "SET hnsw.ef_search = 200" -c "EXPLAIN (ANALYZE, COSTS OFF) SELECT m.id FROM memories m WHERE vector_dims(m.content_embedding) = 384 ORDER BY m.content_embedding::vector(384) <=> (SELECT v FROM bench_queries WHERE n = 1)::vector(384) LIMIT 10" >"$RES/vector_raw_plan.txt"
recall=$(q <<'SQL'
SET enable_indexscan = off; SET enable_bitmapscan = off;
CREATE TEMP TABLE exact AS
  SELECT q.n, e.id FROM bench_queries q CROSS JOIN LATERAL (
    SELECT m.id FROM memories m WHERE vector_dims(m.content_embedding) = 384
     ORDER BY m.content_embedding <=> q.v LIMIT 10) e;
RESET enable_indexscan; RESET enable_bitmapscan;
SELECT round(avg(hits) / 10.0, 4) FROM (
  SELECT q.n, (SELECT count(*) FROM vector_search(q.v, -1, 10) f JOIN exact x ON x.n = q.n AND x.id = f.id) AS hits
    FROM bench_queries q) r;
SQL
)
report "vector_search recall@10 vs exact (100 queries, >= 0.95)" "$(echo "$recall" | tail -1)"

#----------------------------------------------------------------------------------------------
log "full-text search"
word=$(q -c "SELECT w FROM bench_words WHERE n = 40")
cat >"$RES/fts_fn.sql" <<EOF
SELECT count(*) FROM search_memories('$word', lim => 10);
EOF
cat >"$RES/fts_raw.sql" <<EOF
SELECT count(*) FROM (
  SELECT h.id, ts_headline('english', left(h.content, 262144), q, 'MaxFragments=2, MaxWords=20, MinWords=5')
    FROM (SELECT m.id, m.content, ts_rank_cd(m.search_tsv, q) AS r
            FROM memories m, websearch_to_tsquery('english', '$word') q
           WHERE m.search_tsv @@ q ORDER BY r DESC, m.id LIMIT 10) h,
         websearch_to_tsquery('english', '$word') q) t;
EOF
cat >"$RES/fts_raw_nosnippet.sql" <<EOF
SELECT count(*) FROM (SELECT m.id, ts_rank_cd(m.search_tsv, q) AS r FROM memories m, websearch_to_tsquery('english', '$word') q
  WHERE m.search_tsv @@ q ORDER BY r DESC, m.id LIMIT 10) t;
EOF
matches=$(q -c "SELECT count(*) FROM memories WHERE search_tsv @@ websearch_to_tsquery('english', '$word')")
read -r fn raw < <(compare fts_fn postgres "$RES/fts_fn.sql" fts_raw postgres "$RES/fts_raw.sql")
report "search_memories vs raw @@ + rank + snippet ($matches matches; <= 1.2)" "$fn vs $raw tps -> time ratio $(python3 -c "print(round($raw/$fn, 3))")"
read -r fn raw < <(compare fts_fn2 postgres "$RES/fts_fn.sql" fts_raw_nosnippet postgres "$RES/fts_raw_nosnippet.sql")
report "search_memories vs raw @@ + rank, no snippet (extra)" "$fn vs $raw tps -> time ratio $(python3 -c "print(round($raw/$fn, 3))")"

#----------------------------------------------------------------------------------------------
log "branch-aware search"
q <<'SQL' >/dev/null
SET app."current_user" = '';
CREATE TABLE bench_branch AS SELECT create_session('chain root') AS id, 0 AS g;
DO $$ DECLARE s uuid := (SELECT id FROM bench_branch); f int; BEGIN
  FOR f IN 1..10 LOOP
    PERFORM add_message_to_session(s, 'user', 'chain ' || (SELECT string_agg(w, ' ') FROM bench_words WHERE n % 37 = i % 37 LIMIT 8)) FROM generate_series(1, 100) i;
    IF f < 10 THEN s := fork_session(s, 'fork ' || f); INSERT INTO bench_branch VALUES (s, f); END IF;
  END LOOP; END $$;
INSERT INTO bench_branch SELECT create_session('flat'), -1;
SELECT count(add_message_to_session((SELECT id FROM bench_branch WHERE g = -1), 'user',
        'flat ' || (SELECT string_agg(w, ' ') FROM bench_words WHERE n % 37 = i % 37 LIMIT 8))) FROM generate_series(1, 1000) i;
GRANT SELECT ON bench_branch TO PUBLIC;
ANALYZE;
SQL
bword=$(q -c "SELECT w FROM bench_words WHERE n = 74")
echo "SELECT count(*) FROM search_memories('$bword', session_id => (SELECT id FROM bench_branch WHERE g = 9), lim => 10);" >"$RES/branch_chain.sql"
echo "SELECT count(*) FROM search_memories('$bword', session_id => (SELECT id FROM bench_branch WHERE g = -1), lim => 10);" >"$RES/branch_flat.sql"
read -r chain flat < <(compare branch_chain postgres "$RES/branch_chain.sql" branch_flat postgres "$RES/branch_flat.sql")
report "branch search, 10-deep fork chain vs flat session (<= 2)" "$chain vs $flat tps -> time ratio $(python3 -c "print(round($flat/$chain, 3))")"

#----------------------------------------------------------------------------------------------
log "graph traversal"
q <<SQL >/dev/null
-- a 100,000-edge DAG over 20,000 memories (edges from lower to higher index), loaded as the owner
CREATE TABLE bench_nodes AS SELECT row_number() OVER (ORDER BY id) AS n, id FROM memories WHERE kind = 'memory' LIMIT 20000;
ALTER TABLE memory_edges DISABLE TRIGGER USER;
INSERT INTO memory_edges (source_id, target_id, relation, created_by)
SELECT a.id, b.id, (ARRAY['related_to', 'cites', 'follows'])[1 + (e % 3)], (SELECT created_by FROM memories WHERE id = a.id)
  FROM (SELECT e, 1 + floor(random() * 19990)::int AS s FROM generate_series(1, 100000) e) x
  JOIN bench_nodes a ON a.n = x.s
  JOIN bench_nodes b ON b.n = least(20000, x.s + 1 + floor(random() * 200)::int)
ON CONFLICT DO NOTHING;
ALTER TABLE memory_edges ENABLE TRIGGER USER;
ANALYZE memory_edges;
SQL
edges=$(q -c "SELECT count(*) FROM memory_edges")
start=$(q -c "SELECT id FROM bench_nodes WHERE n = 100")
trav=$(q <<SQL
\timing on
SELECT count(*), max(depth) FROM traverse_memory_graph('$start', direction => 'outgoing', max_depth => 10, max_rows => 1000000);
SELECT count(*), max(depth) FROM traverse_memory_graph('$start', direction => 'both', max_depth => 10);
SQL
)
echo "$trav" >"$RES/traverse.txt"
report "traverse depth 10 on $edges edges (outgoing, unbounded rows)" "$(echo "$trav" | sed -n '1p;2p' | tr '\n' ' ')"
report "traverse depth 10, both directions, max_rows 10,000" "$(echo "$trav" | sed -n '3p;4p' | tr '\n' ' ')"

#----------------------------------------------------------------------------------------------
log "row-level security: reads"
q <<'SQL' >/dev/null
-- a 1,000-message session for user 7 (the bench_u7 role)
SET app."current_user" = '';
-- (for this transaction: an assertion for the whole session counts only where an administrator
-- allowed it, memoriesdb.allow_session_identity)
BEGIN;
SELECT set_config('app.current_user', (SELECT id::text FROM users WHERE name = 'user 7'), true);
CREATE TABLE bench_rls AS SELECT create_session('user 7 session') AS id;
SELECT count(add_message_to_session((SELECT id FROM bench_rls), 'user', 'user seven says ' || i)) FROM generate_series(1, 1000) i;
COMMIT;
GRANT SELECT ON bench_rls TO PUBLIC;
ANALYZE;
SQL
echo "SELECT count(*) FROM get_formatted_conversation((SELECT id FROM bench_rls));" >"$RES/rls_transcript.sql"
echo "SELECT count(*) FROM search_memories('$word', lim => 10);" >"$RES/rls_search.sql"
TABLES="users memories memory_sessions memory_edges memory_shares memory_share_segments"
rls_off() { for t in $TABLES; do q -c "ALTER TABLE $t DISABLE ROW LEVEL SECURITY" >/dev/null; done; }
rls_on() { for t in $TABLES; do q -c "ALTER TABLE $t ENABLE ROW LEVEL SECURITY" >/dev/null; done; }
read -r on off < <(compare rls_transcript_on bench_u7 "$RES/rls_transcript.sql" rls_transcript_off bench_u7 "$RES/rls_transcript.sql" 1 rls_on rls_off)
rls_on
report "transcript (1,000 msgs) RLS on vs off, 100 users (<= 1.3)" "$on vs $off tps -> time ratio $(python3 -c "print(round($off/$on, 3))")"
read -r on off < <(compare rls_search_user bench_u7 "$RES/rls_search.sql" rls_search_unfiltered postgres "$RES/rls_search.sql")
report "search as user 7 (isolated) vs unfiltered (superuser) (<= 1.3)" "$on vs $off tps -> time ratio $(python3 -c "print(round($off/$on, 3))")"

#----------------------------------------------------------------------------------------------
log "row-level security and audit chain: writes"
q <<'SQL' >/dev/null
CREATE TABLE bench_write_sessions (n int PRIMARY KEY, id uuid);
DO $$ DECLARE i int; BEGIN
  FOR i IN 1..8 LOOP
    PERFORM set_config('app.current_user', (SELECT id::text FROM users WHERE name = 'user ' || i), true);
    INSERT INTO bench_write_sessions VALUES (i, create_session('writer ' || i));
  END LOOP; END $$;
GRANT SELECT ON bench_write_sessions TO PUBLIC;
GRANT memoriesdb_trusted TO bench_u1;
SQL
cat >"$RES/rls_write.sql" <<'EOF'
\set n :client_id % 8 + 1
BEGIN;
SELECT set_config('app.current_user', (SELECT id::text FROM users WHERE name = 'user ' || :n), true);
SELECT add_message_to_session((SELECT id FROM bench_write_sessions WHERE n = :n), 'user',
  'a message of about two hundred bytes: lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore magna aliqua. ut enim ad minim');
COMMIT;
EOF
SEALER_PID=
sealer_start() { ( while true; do q -c "SELECT seal_audit_log()" >/dev/null 2>&1; sleep 1; done ) & SEALER_PID=$!; }
sealer_stop() { if [ -n "$SEALER_PID" ]; then kill "$SEALER_PID" 2>/dev/null || true; wait "$SEALER_PID" 2>/dev/null || true; SEALER_PID=; fi; }
with_all=(); without_all=()
for r in $(seq 1 "$ROUNDS"); do
    rls_on; sealer_start
    with_all+=("$(pgbench_tps write_rls_chain bench_u1 "$RES/rls_write.sql" 8)")
    sealer_stop; rls_off
    without_all+=("$(pgbench_tps write_plain bench_u1 "$RES/rls_write.sql" 8)")
done
rls_on
echo "write_rls_chain: ${with_all[*]}" >>"$RES/rounds.txt"; echo "write_plain: ${without_all[*]}" >>"$RES/rounds.txt"
read -r on off <<<"$(python3 -c "import statistics,sys; print(statistics.median(map(float, sys.argv[1].split())), statistics.median(map(float, sys.argv[2].split())))" "${with_all[*]}" "${without_all[*]}")"
report "writes, 8 users: RLS + audit sealing vs neither (>= 0.8)" "$on vs $off tps -> ratio $(python3 -c "print(round($on/$off, 3))")"
report "audit chain after the run" "$(q -c "SELECT seal_audit_log()" >/dev/null; q -c "SELECT intact, sealed_rows, unsealed_rows FROM verify_audit_chain()")"

echo >&2
cat "$RESULTS" >&2
log "raw output in $RES"
