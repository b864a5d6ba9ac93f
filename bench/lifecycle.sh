#!/usr/bin/env bash
# Benchmarks of the memory lifecycle (run as root), side by side in one run on one throwaway
# cluster (the system's PostgreSQL 15 and installed MemoriesDB, as setup.sh leaves them):
#
#   expiry-transcript  a user's transcript read (1,000 messages, on 100,000 memories of 100
#                      users) with the memories_read policy as installed (expired memories
#                      filtered) vs the same policy without the expiry condition (re-created
#                      between rounds from the rule's one definition, with expires_at as NULL)
#   expiry-text        the full-text search statement (ranking with the read rule, as
#                      search_memories runs it) with and without the expiry condition, the two
#                      interleaved at random in one pgbench run (mean latency of each)
#   expiry-vector      the same for the vector search statement (HNSW, 384 dimensions,
#                      iterative scan)
#   sweep              sweep_expired_memories(10000), one call per transaction, over 200,000
#                      expired memories (each with its audit and queue rows, a tenth with an
#                      edge): memories deleted per second of the calls' own time, for half of
#                      them alone and the other half while 4 clients run add_message_to_session;
#                      and the appends' latency (p50/p99) while the sweep runs vs outside it
#
# Environment: BENCH_ROUNDS (4), BENCH_SECONDS (6), BENCH_ROWS (100000), BENCH_EXPIRED (200000)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
[ "$(id -u)" = 0 ] || die "run as root (the cluster runs as the postgres user)"

. bench/ab.sh
ROWS=${BENCH_ROWS:-100000}
EXPIRED=${BENCH_EXPIRED:-200000}
AB_PARAMS="rows=$ROWS expired=$EXPIRED"
ab_start lifecycle 55750
# a tenth of the memories expire (in a year): the filter has something to look at
load_tenants "$ROWS" 10
log "a 1,000-message session of user 1"
U1=$(q -c "SELECT id FROM users WHERE name = 'user 1'")
SESSION=$(as_user bench_u1 -c "SELECT create_session('long')")
as_user bench_u1 \
    -c "SELECT count(*) FROM add_messages_to_session('$SESSION',
          (SELECT jsonb_agg(jsonb_build_object('role', 'user', 'content', 'message number ' || g)) FROM generate_series(1, 1000) g))" >/dev/null
q -c "VACUUM ANALYZE" >/dev/null

#----------------------------------------------------------------------------------------------
log "expiry filter: transcript read (policy with and without the expiry condition)"
policy() { # policy EXPIRES_AT_EXPRESSION: re-create memories_read with this expression for expires_at
    q >/dev/null <<SQL
DROP POLICY memories_read ON memoriesdb.memories;
DO \$\$ BEGIN EXECUTE pg_catalog.format('CREATE POLICY memories_read ON memoriesdb.memories FOR SELECT USING %s',
    memoriesdb.memories_read_rule_sql('memories.id', 'memories.created_by', 'memories.session_id', 'memories.position', '$1',
        '(SELECT memoriesdb.current_memory_user())', '(SELECT memoriesdb.acting_role_is(''memoriesdb_worker''))')); END \$\$;
SQL
}
cat >"$RES/transcript.sql" <<EOF
SELECT count(*) FROM get_formatted_conversation('$SESSION');
EOF
read -r A B < <(compare transcript_expiry bench_u1 "$RES/transcript.sql" transcript_no_expiry bench_u1 "$RES/transcript.sql" \
    1 "policy memories.expires_at" "policy NULL::timestamptz")
policy memories.expires_at
report "transcript 1,000 msgs, with / without expiry filter (tps)" "$A / $B  -> cost $(time_ratio "$A" "$B")x"

#----------------------------------------------------------------------------------------------
log "expiry filter: the search statements (rule with and without the expiry condition)"
rule() { q -c "SELECT memoriesdb.memories_read_rule_sql('m.id', 'm.created_by', 'm.session_id', 'm.position', '$1', '''$U1''::uuid', 'false')"; }
# (as in the search functions: only what is valid now, src/search.rs)
VALID="AND (m.valid_from IS NULL OR m.valid_from <= now()) AND (m.valid_to IS NULL OR m.valid_to > now())"
for variant in expiry no_expiry; do
    if [ $variant = expiry ]; then R=$(rule m.expires_at); else R=$(rule NULL::timestamptz); fi
    cat >"$RES/text_$variant.sql" <<EOF
\set n random(1, 2000)
SELECT count(*) FROM (SELECT m.id, ts_rank_cd(m.search_tsv, q) AS r
  FROM memoriesdb.memories m, websearch_to_tsquery('english', (SELECT w FROM bench_words WHERE n = :n)) q
 WHERE m.search_tsv @@ q AND $R $VALID ORDER BY r DESC, m.id LIMIT 10) t;
EOF
    cat >"$RES/vector_$variant.sql" <<EOF
\set n random(1, 100)
SET hnsw.iterative_scan = relaxed_order; SET hnsw.ef_search = 200;
SELECT count(*) FROM (SELECT m.id FROM memoriesdb.memories m
 WHERE vector_dims(m.content_embedding) = 384 AND $R $VALID
 ORDER BY m.content_embedding::vector(384) <=> (SELECT v FROM bench_queries WHERE n = :n)::vector(384) LIMIT 10) t;
EOF
done
read -r A B < <(interleave text postgres "$RES/text_expiry.sql" "$RES/text_no_expiry.sql")
report "full-text search statement, with / without expiry (ms, interleaved)" "$A / $B  -> cost $(time_ratio "$B" "$A")x"
read -r A B < <(interleave vector postgres "$RES/vector_expiry.sql" "$RES/vector_no_expiry.sql")
report "vector search statement, with / without expiry (ms, interleaved)" "$A / $B  -> cost $(time_ratio "$B" "$A")x"

#----------------------------------------------------------------------------------------------
log "sweep: $EXPIRED expired memories (written with their audit and queue rows; a tenth with an edge)"
q <<SQL >/dev/null
INSERT INTO memories (content, created_by, expires_at)
SELECT 'fleeting note ' || g, u.id, now() + interval '1 minute'
  FROM generate_series(1, $EXPIRED) g JOIN users u ON u.name = 'user ' || (1 + g % 100);
INSERT INTO memory_edges (source_id, target_id, relation, created_by)
SELECT m.id, t.id, 'about', m.created_by
  FROM (SELECT id, created_by, row_number() OVER (ORDER BY id) AS i FROM memories WHERE content LIKE 'fleeting note %') m
  JOIN LATERAL (SELECT id FROM memories WHERE kind = 'memory' AND created_by = m.created_by AND expires_at IS NULL LIMIT 1) t ON true
 WHERE m.i % 10 = 0;
VACUUM ANALYZE;
SQL
# wait until they have expired
q -c "SELECT pg_sleep(greatest(0, extract(epoch FROM (SELECT max(expires_at) FROM memories WHERE content LIKE 'fleeting note %') - now()) + 1))" >/dev/null
cat >"$RES/append.sql" <<EOF
\set s random(1, 4)
SELECT add_message_to_session((SELECT id FROM memories WHERE kind = 'session' AND content = 'append ' || :s), 'user', 'hello');
EOF
for s in 1 2 3 4; do
    as_user bench_u1 -c "SELECT create_session('append $s')" >/dev/null
done
# sweep_loop OUT MAX: call sweep_expired_memories(10000) once per transaction, as pg_cron would,
# until it returns 0 or MAX memories are gone; OUT gets "deleted|seconds" per call (each call's own
# time, measured in the server)
sweep_loop() {
    local out=$1 max=$2 total=0 line
    : >"$out"
    while :; do
        line=$(q -c "SELECT s.n, extract(epoch FROM clock_timestamp() - statement_timestamp())
                       FROM (SELECT memoriesdb.sweep_expired_memories(10000) AS n) s")
        echo "$line" >>"$out"
        total=$((total + ${line%%|*}))
        [ "${line%%|*}" != 0 ] && [ "$total" -lt "$max" ] || break
    done
}
swept() { awk -F'|' '{n += $1; t += $2} END {printf "%d memories in %.3f s: %.0f per second", n, t, (t > 0 ? n / t : 0)}' "$1"; }

# half of them with nothing else running
sweep_loop "$RES/sweep_alone.out" $((EXPIRED / 2))
report "sweep alone ($(wc -l <"$RES/sweep_alone.out") calls of sweep_expired_memories(10000))" "$(swept "$RES/sweep_alone.out")"

# the other half while 4 clients append (for 3 x SECS seconds, every transaction logged; the sweep
# starts after SECS)
(cd "$RES" && runuser -u postgres -- "$PGBENCH" -h localhost -p "$PORT" -U bench_u1 -n -c 4 -j 2 -T $((SECS * 3)) \
    -l --log-prefix=append -f append.sql "$DB" >append_during_sweep.out 2>&1) &
BENCH_PID=$!
sleep "$SECS"
SWEEP_START=$(date +%s.%N)
sweep_loop "$RES/sweep_under_load.out" "$EXPIRED"
SWEEP_END=$(date +%s.%N)
wait $BENCH_PID
report "sweep while 4 clients append ($(wc -l <"$RES/sweep_under_load.out") calls)" "$(swept "$RES/sweep_under_load.out")"
python3 - "$RES" "$SWEEP_START" "$SWEEP_END" <<'EOF' | tee -a "$RESULTS" >&2
import glob, sys
res, start, end = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
during, before = [], []
for path in glob.glob(f"{res}/append.[0-9]*"):
    for line in open(path):
        f = line.split()
        if len(f) < 6:
            continue
        latency_ms = int(f[2]) / 1000
        finished = int(f[4]) + int(f[5]) / 1e6
        began = finished - latency_ms / 1000
        # an append that overlapped the sweep counts as during it
        (during if began <= end and finished >= start else before).append(latency_ms)
def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(len(v) * p))] if v else float('nan')
print(f"{'append latency outside the sweep, p50 / p99 (ms)':62s} {pct(before, .5):.2f} / {pct(before, .99):.2f}  ({len(before)} appends)")
print(f"{'append latency during the sweep, p50 / p99 (ms)':62s} {pct(during, .5):.2f} / {pct(during, .99):.2f}  ({len(during)} appends, max {max(during) if during else float('nan'):.2f})")
EOF
log "results in $RES"
cat "$RESULTS"
