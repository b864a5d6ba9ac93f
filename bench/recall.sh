#!/usr/bin/env bash
# Benchmarks of ranked recall, prompt context and statistics (run as root), in one run on one
# throwaway cluster
# (the system's PostgreSQL 15 and installed MemoriesDB, as setup.sh leaves them), each pair
# interleaved at random in one pgbench run so both meet the machine at the same moments:
#
#   ranking-text    search_memories as an ordinary user (RLS: 1,000 of 100,000 memories are
#                   theirs) ranked by relevance alone vs with importance_weight 0.5,
#                   recency_weight 0.5, half_life 7 days (mean latency of each)
#   ranking-vector  the same for vector_search (HNSW, 384 dimensions, iterative scan), with its
#                   default candidates (lim) and with 50
#   ranking-hybrid  the same for hybrid_search (both rankings, reciprocal-rank fusion)
#   tracking-text   search_memories with access tracking on vs off (memoriesdb.track_access)
#   tracking-vector the same for vector_search
#   fold            fold_memory_accesses() of everything the runs logged: accesses per second
#   context         get_context() of a 1,000-message session of user 1 (with 20 facts of theirs)
#                   vs get_recent_messages(50) of it: mean latency of each, interleaved
#   statistics      user_statistics and session_statistics as user 1, memory_statistics as the
#                   owner (every tenant): mean latency of each
#
# The memories have importance set on a third of them, were written over the last 60 days, and a
# tenth of user 1's have access counts. Environment: BENCH_ROUNDS (4), BENCH_SECONDS (6),
# BENCH_ROWS (100000)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
[ "$(id -u)" = 0 ] || die "run as root (the cluster runs as the postgres user)"

. bench/ab.sh
ROWS=${BENCH_ROWS:-100000}
AB_PARAMS="rows=$ROWS"
ab_start recall 55770
# importance on a third of the memories, ages over 60 days (set before the HNSW index is built)
load_tenants "$ROWS" 0 "UPDATE memories SET importance = CASE WHEN random() < 0.33 THEN random() END,
                                            _created_at = now() - random() * interval '60 days';"
log "access counts for a tenth of user 1's memories"
q <<SQL >/dev/null
SELECT setseed(0.29);
INSERT INTO memory_access (memory_id, user_id, access_count, last_accessed_at)
SELECT m.id, m.created_by, 1 + floor(random() * 20)::int, now() - random() * interval '30 days'
  FROM memories m JOIN users u ON u.id = m.created_by AND u.name = 'user 1'
 WHERE random() < 0.1;
VACUUM ANALYZE;
SQL

RANKED="importance_weight => 0.5, recency_weight => 0.5, half_life => '7 days'"
# script NAME SQL: a pgbench script picking a random query word (:n) and query vector (:v)
script() {
    cat >"$RES/$1.sql" <<EOF
\set n random(1, 2000)
\set v random(1, 100)
$2
EOF
}
WORD="(SELECT w FROM bench_words WHERE n = :n)"
VECTOR="(SELECT v FROM bench_queries WHERE n = :v)"
script text_relevance "SELECT count(*) FROM search_memories($WORD, lim => 10);"
script text_ranked "SELECT count(*) FROM search_memories($WORD, lim => 10, $RANKED);"
script vector_relevance "SELECT count(*) FROM vector_search($VECTOR, 0.0, 10);"
script vector_ranked "SELECT count(*) FROM vector_search($VECTOR, 0.0, 10, $RANKED);"
script vector_ranked_wide "SELECT count(*) FROM vector_search($VECTOR, 0.0, 10, $RANKED, candidates => 50);"
script hybrid_relevance "SELECT count(*) FROM hybrid_search($WORD, $VECTOR, 10);"
script hybrid_ranked "SELECT count(*) FROM hybrid_search($WORD, $VECTOR, 10, $RANKED);"
script text_tracked "SET memoriesdb.track_access = on; SELECT count(*) FROM search_memories($WORD, lim => 10);"
script text_untracked "SET memoriesdb.track_access = off; SELECT count(*) FROM search_memories($WORD, lim => 10);"
script vector_tracked "SET memoriesdb.track_access = on; SELECT count(*) FROM vector_search($VECTOR, 0.0, 10);"
script vector_untracked "SET memoriesdb.track_access = off; SELECT count(*) FROM vector_search($VECTOR, 0.0, 10);"

for search in text vector hybrid; do
    log "ranking: $search search, ranked vs relevance alone"
    read -r A B < <(interleave "ranking_$search" bench_u1 "$RES/${search}_ranked.sql" "$RES/${search}_relevance.sql")
    report "$search search ranked / by relevance alone (ms, interleaved)" "$A / $B  -> $(time_ratio "$B" "$A")x"
done
log "ranking: vector search, ranked from 50 candidates vs relevance alone"
read -r A B < <(interleave ranking_vector_wide bench_u1 "$RES/vector_ranked_wide.sql" "$RES/vector_relevance.sql")
report "vector search ranked (candidates 50) / by relevance (ms, interl.)" "$A / $B  -> $(time_ratio "$B" "$A")x"
for search in text vector; do
    log "access tracking: $search search, tracked vs not"
    read -r A B < <(interleave "tracking_$search" bench_u1 "$RES/${search}_tracked.sql" "$RES/${search}_untracked.sql")
    report "$search search with / without access tracking (ms, interleaved)" "$A / $B  -> $(time_ratio "$B" "$A")x"
done
LOGGED=$(q -c "SELECT count(*) FROM memoriesdb.memory_access_log")
# (timed around the call: psql's connection adds a few milliseconds to a fold of seconds)
STARTED=$(date +%s.%N)
FOLDED=$(q -c "SELECT memoriesdb.fold_memory_accesses(10000000)")
FOLD_SECONDS=$(python3 -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 3))" "$STARTED" "$(date +%s.%N)")
report "accesses logged in the run / folded by one call (s)" "$LOGGED / $FOLDED in $FOLD_SECONDS s -> $(python3 -c "print(round($FOLDED / $FOLD_SECONDS))") per s"
#----------------------------------------------------------------------------------------------
log "context: a 1,000-message session and 20 facts of user 1"
SESSION=$(as_user bench_u1 -c "SELECT create_session('long')")
as_user bench_u1 \
    -c "SELECT count(*) FROM add_messages_to_session('$SESSION',
          (SELECT jsonb_agg(jsonb_build_object('role', CASE WHEN g % 2 = 1 THEN 'user' ELSE 'assistant' END,
                                               'content', 'message ' || g || ' about ' || (SELECT w FROM bench_words WHERE n = 1 + g % 2000)))
             FROM generate_series(1, 1000) g))" >/dev/null
as_user bench_u1 -c "SELECT count(remember_fact('topic ' || g, 'fact ' || g || ' about ' || (SELECT w FROM bench_words WHERE n = 1 + g * 3)))
                       FROM generate_series(1, 20) g" >/dev/null
q -c "VACUUM ANALYZE" >/dev/null
script context "SELECT count(*) FROM get_context('$SESSION', max_tokens => 2000);"
script recent "SELECT count(*) FROM get_recent_messages('$SESSION', 50);"
read -r A B < <(interleave context bench_u1 "$RES/context.sql" "$RES/recent.sql")
report "get_context (2000 tokens) / get_recent_messages(50) (ms)" "$A / $B"
log "statistics"
script user_statistics "SELECT * FROM user_statistics;"
script session_statistics "SELECT * FROM session_statistics;"
script memory_statistics "SELECT * FROM memoriesdb.memory_statistics;"
read -r A B < <(interleave statistics bench_u1 "$RES/user_statistics.sql" "$RES/session_statistics.sql")
report "user_statistics / session_statistics as user 1 (ms)" "$A / $B"
read -r A B < <(interleave store_statistics postgres "$RES/memory_statistics.sql" "$RES/user_statistics.sql")
report "memory_statistics / user_statistics as the owner, all users (ms)" "$A / $B"
log "results: $RES"
