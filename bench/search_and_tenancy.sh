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

ROUNDS=${BENCH_ROUNDS:-3}
SECS=${BENCH_SECONDS:-8}
ROWS=${BENCH_ROWS:-100000}
PGBENCH=$PG_BIN/pgbench
RES=bench/results/$(date -u +%Y%m%dT%H%M%SZ)-search
mkdir -p "$RES"
CLUSTER=/tmp/memoriesdb-bench-search-$$
PORT=$(free_port 55700)
trap 'cluster_stop "$CLUSTER" remove' EXIT
cluster_start "$CLUSTER" "$PORT"
DB=bench
q() { cluster_psql "$CLUSTER" "$PORT" -d "$DB" -tA "$@"; }
cluster_psql "$CLUSTER" "$PORT" -d postgres -c "CREATE DATABASE $DB"
q -c "CREATE EXTENSION memoriesdb CASCADE" >/dev/null
# as an administrator does (README, "Installing into a database"): the extension's schema on the
# database's search_path, for the unqualified names below; the roles get memoriesdb_user
q -c "ALTER DATABASE $DB SET search_path = \"\$user\", public, memoriesdb" >/dev/null

{
    echo "date:     $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "cpu:      $(lscpu | sed -n 's/^Model name: *//p') ($(nproc) cores), memory $(free -h | awk '/^Mem:/ {print $2}')"
    echo "load:     $(cut -d' ' -f1-3 /proc/loadavg)"
    q -c "SELECT version()"
    q -c "SELECT string_agg(extname || ' ' || extversion, ', ') FROM pg_extension WHERE extname <> 'plpgsql'"
    echo "params:   rows=$ROWS rounds=$ROUNDS seconds=$SECS"
} | tee "$RES/environment.txt" >&2

# pgbench_tps NAME USER SCRIPT [CLIENTS]: one run, prints tps
RUN=0
pgbench_tps() {
    local name=$1 user=$2 script=$3 clients=${4:-1} out
    RUN=$((RUN + 1)); out=$RES/$name.$RUN.out
    runuser -u postgres -- "$PGBENCH" -h localhost -p "$PORT" -U "$user" -n -c "$clients" -j "$(( clients < 2 ? 1 : 2 ))" \
        -T "$SECS" -f "$script" "$DB" >"$out" 2>&1 || { cat "$out" >&2; die "pgbench $name failed"; }
    awk '/^tps/ {print $3}' "$out"
}
# compare NAME_A USER_A SCRIPT_A NAME_B USER_B SCRIPT_B [CLIENTS] [SETUP_A] [SETUP_B]:
# alternates A/B for ROUNDS rounds, prints "median_a median_b"
compare() {
    local na=$1 ua=$2 sa=$3 nb=$4 ub=$5 sb=$6 clients=${7:-1} setup_a=${8:-} setup_b=${9:-}
    local a=() b=() r
    for r in $(seq 1 "$ROUNDS"); do
        if (( r % 2 )); then
            [ -z "$setup_a" ] || eval "$setup_a"; a+=("$(pgbench_tps "$na" "$ua" "$sa" "$clients")")
            [ -z "$setup_b" ] || eval "$setup_b"; b+=("$(pgbench_tps "$nb" "$ub" "$sb" "$clients")")
        else
            [ -z "$setup_b" ] || eval "$setup_b"; b+=("$(pgbench_tps "$nb" "$ub" "$sb" "$clients")")
            [ -z "$setup_a" ] || eval "$setup_a"; a+=("$(pgbench_tps "$na" "$ua" "$sa" "$clients")")
        fi
    done
    echo "$na: ${a[*]}" >>"$RES/rounds.txt"; echo "$nb: ${b[*]}" >>"$RES/rounds.txt"
    python3 -c "import statistics,sys; a=[float(x) for x in sys.argv[1].split()]; b=[float(x) for x in sys.argv[2].split()]; print(statistics.median(a), statistics.median(b))" "${a[*]}" "${b[*]}"
}
RESULTS=$RES/summary.txt
: >"$RESULTS"
report() { printf '%-58s %s\n' "$1" "$2" | tee -a "$RESULTS" >&2; }

#----------------------------------------------------------------------------------------------
log "loading $ROWS memories of 100 users (text over a 2,000-word vocabulary, 384-dim embeddings in 50 clusters)"
q <<SQL >/dev/null
DO \$\$ DECLARE i int; BEGIN
  FOR i IN 1..100 LOOP
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'bench_u' || i) THEN
      EXECUTE format('CREATE ROLE bench_u%s LOGIN', i);
    END IF;
    EXECUTE format('GRANT memoriesdb_user TO bench_u%s', i);
  END LOOP; END \$\$;
SELECT create_user('user ' || i, ('bench_u' || i)::name) FROM generate_series(1, 100) i;
SELECT setseed(0.17);
CREATE TABLE bench_words AS SELECT g AS n, md5(g::text)::text AS w FROM generate_series(1, 2000) g;
CREATE TABLE bench_centers AS
  SELECT c, (SELECT array_agg(random() - 0.5) FROM generate_series(1, 384) WHERE c > 0) AS v FROM generate_series(1, 50) c;
-- bulk load as the owner with the row triggers off (hash, provenance, audit), then set what they set
ALTER TABLE memories DISABLE TRIGGER USER;
INSERT INTO memories (kind, content, created_by, updated_by, content_hash)
SELECT 'memory',
       array_to_string(ARRAY(SELECT v.a[1 + floor(power(random(), 2) * 1999)::int]
                               FROM generate_series(1, 12 + 0 * g)), ' '),
       u.id, u.id, ''
  FROM generate_series(1, $ROWS) g
  JOIN users u ON u.name = 'user ' || (1 + g % 100)
 CROSS JOIN (SELECT array_agg(w ORDER BY n) AS a FROM bench_words) v;
UPDATE memories SET content_hash = content_sha256(content);
ALTER TABLE memories ENABLE TRIGGER USER;
TRUNCATE embedding_schedule;
SQL
log "embeddings"
q <<'SQL' >/dev/null
ALTER TABLE memories DISABLE TRIGGER USER;
UPDATE memories m SET content_embedding = (
    SELECT array_agg(c.v[k] + (random() - 0.5) * 0.35)::vector
      FROM bench_centers c, generate_series(1, 384) k
     WHERE c.c = 1 + (abs(hashtext(m.id::text)) % 50))
 WHERE m.kind = 'memory';
ALTER TABLE memories ENABLE TRIGGER USER;
CREATE TABLE bench_queries AS
  SELECT g AS n, (SELECT array_agg(c.v[k] + (random() - 0.5) * 0.35)::vector FROM bench_centers c, generate_series(1, 384) k
                  WHERE c.c = 1 + g % 50) AS v
    FROM generate_series(1, 100) g;
GRANT SELECT ON bench_queries, bench_words TO PUBLIC;
SQL
log "HNSW index (384 dimensions)"
q -c "SELECT create_vector_index(384)" >/dev/null
q -c "VACUUM ANALYZE memories" >/dev/null

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
