#!/usr/bin/env bash
# MemoriesDB core benchmarks (run as root). Starts a throwaway PostgreSQL 15 cluster under /tmp on
# a free port (from 55600), creates the extension and the benchmark data, runs the three
# benchmarks in one run and prints a results table. Raw results go to bench/results/<UTC time>/;
# the cluster is removed on exit. Needs the extension installed (cargo pgrx install --release),
# pgbench (postgresql-contrib) and python3.
#
#   1. fork:  fork_session on a 10,000-message session vs a 10-message session, vs copying the
#             10,000 messages with INSERT ... SELECT into a bare table and into a table with a
#             message store's indexes (forks interleaved, copies in loops of their own; medians)
#   2. read:  get_formatted_conversation over a 10-fork chain of 1,000 messages vs an indexed
#             SELECT ... ORDER BY of 1,000 rows from a flat table (pgbench, 1 client)
#   3. write: add_message_to_session vs a bare INSERT into a flat table (pgbench, 8 clients,
#             each on its own session; plus 8 clients on one session, an INSERT into a flat
#             table with memories' indexes, and add_messages_to_session with 2 messages a call)
#   extra:    the read benchmark again after the writes, with fresh statistics
#
# Environment (defaults give a run of about 9 minutes):
#   BENCH_ROUNDS (5)          pgbench rounds per side; the order of the sides alternates from
#                             round to round (A B, B A, ...); figures are medians over rounds
#   BENCH_READ_SECONDS (10)   length of each read run
#   BENCH_WRITE_SECONDS (15)  length of each write run
#   BENCH_FORK_ITERS (300)    iterations of the fork loop (the first 10 are warm-up)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
. bench/lib.sh
[ "$(id -u)" = 0 ] || die "run bench/run.sh as root (it starts its cluster as the postgres user)"
command -v python3 >/dev/null || die "python3 is needed"

ROUNDS=${BENCH_ROUNDS:-5}
AFTER_ROUNDS=$(( ROUNDS < 3 ? ROUNDS : 3 ))
READ_SECONDS=${BENCH_READ_SECONDS:-10}
WRITE_SECONDS=${BENCH_WRITE_SECONDS:-15}
FORK_ITERS=${BENCH_FORK_ITERS:-300}

RES=bench/results/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$RES"
START=$SECONDS

bench_cluster_up bench

{
    bench_environment
    echo "parameters:  rounds=$ROUNDS read_seconds=$READ_SECONDS write_seconds=$WRITE_SECONDS fork_iters=$FORK_ITERS"
} >"$RES/environment.txt"
cat "$RES/environment.txt" >&2

#----------------------------------------------------------------------------------------------
log "1/3 fork: $FORK_ITERS interleaved iterations of fork(10) / fork(10,000), then the copies of 10,000 messages"
core_fork "$FORK_ITERS" "$RES/fork_timing.csv"

#----------------------------------------------------------------------------------------------
core_scripts   # the read and write scripts (bench/lib.sh)
cp "$SQL_DIR"/read_*.sql "$RES/"

printf 'bench\tvariant\tround\ttps\tlatency_ms\twal_bytes_per_txn\n' >"$RES/pgbench.tsv"
record() { # bench variant round outfile
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$(pgb_fields "$4")" >>"$RES/pgbench.tsv"
}

# read_rounds BENCH: the read benchmark, after recording the plan the read path gets at this
# point (with its nested statements, to show whether JIT is involved)
read_rounds() {
    local bench=$1 rounds=$2 r v out tps order
    read_explain "$RES/${bench}_explain.txt"
    for r in $(seq 1 "$rounds"); do
        order="flat memoriesdb"; [ $((r % 2)) = 0 ] && order="memoriesdb flat"
        for v in $order; do
            out=$RES/${bench}_${v}_$r.out
            tps=$(pgb "$out" "$SQL_DIR/read_$v.sql" 1 1 "$READ_SECONDS")
            record "$bench" "$v" "$r" "$out"
            log "   $bench round $r  $v: $tps tps"
        done
    done
}
log "2/3 read: $ROUNDS rounds x (flat, memoriesdb) x ${READ_SECONDS}s, 1 client, as $BENCH_USER"
read_rounds read "$ROUNDS"

#----------------------------------------------------------------------------------------------
cp "$SQL_DIR"/write_*.sql "$RES/"

log "3/3 write: $ROUNDS rounds x (flat, memoriesdb, memoriesdb_one_session, flat_indexed, memoriesdb_batch2) x ${WRITE_SECONDS}s, 8 clients, as $BENCH_USER"
for r in $(seq 1 "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then order="flat memoriesdb memoriesdb_one_session flat_indexed memoriesdb_batch2"
    else order="memoriesdb_batch2 flat_indexed memoriesdb_one_session memoriesdb flat"; fi
    for v in $order; do
        out=$RES/write_${v}_$r.out
        # positions continue across rounds: flat_indexed has a unique (session_id, position)
        tps=$(pgb "$out" "$SQL_DIR/write_$v.sql" 8 2 "$WRITE_SECONDS" -D pos=$((r * 100000000)))
        record write "$v" "$r" "$out"
        log "   write round $r  $v: $tps tps"
    done
done
q -c "SELECT 'rows written: flat_write=' || (SELECT count(*) FROM bench.flat_write)
       || ', messages=' || (SELECT count(*) FROM $EXT_SCHEMA.memories m JOIN bench.writers w ON m.session_id = w.sid)
       || ', audit_log=' || (SELECT count(*) FROM $EXT_SCHEMA.audit_log)
       || ', embedding_schedule=' || (SELECT count(*) FROM $EXT_SCHEMA.embedding_schedule)" | tee -a "$RES/environment.txt" >&2
bench_events | tee -a "$RES/environment.txt" >&2

#----------------------------------------------------------------------------------------------
# The read again, now that the write benchmark has grown the tables and ANALYZE has seen it:
# the planner's row estimates (and so whether JIT kicks in) depend on them.
log "extra: the read benchmark again after the writes (ANALYZE first)"
q -c "ANALYZE"
read_rounds read_after_writes "$AFTER_ROUNDS"

echo "load after:  $(cut -d' ' -f1-3 /proc/loadavg)" >>"$RES/environment.txt"
echo "elapsed:     $((SECONDS - START)) s" >>"$RES/environment.txt"

#----------------------------------------------------------------------------------------------
python3 bench/summarize.py "$RES" | tee "$RES/summary.txt"
log "raw results: $RES  (elapsed $((SECONDS - START)) s)"
