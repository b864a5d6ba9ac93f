#!/usr/bin/env bash
# Two builds of the extension side by side in one run (as root): OLD, a git revision (default
# d86c826, the base before the trust-boundary work), and NEW, the working tree. Each gets its own
# throwaway PostgreSQL 15 cluster with the same settings, its own library (a private copy loaded
# through dynamic_library_path, as bench/run.sh does, so neither cluster can load the other's
# .so; the event relay worker loads it by name too), its own SQL script (installed into the
# system extension directory just before its CREATE EXTENSION; the files that were installed
# before, normally the NEW build, are put back right after it and again on exit) and its own
# benchmark data
# (bench/setup.sql of the OLD revision for OLD, the working tree's for NEW). Then the three core
# benchmarks of bench/run.sh, alternating between the clusters item by item and round by round
# (old new, then new old, ...):
#
#   fork   bench.fork_vs_copy: forks of the 10,000- and 10-message sessions, then the copies
#          (the copies do not involve the extension: a check that the clusters are alike)
#   read   get_formatted_conversation over the 10-fork chain (1 client), and the flat read
#   write  add_message_to_session, 8 clients on their own sessions; add_messages_to_session with
#          2 messages a call; the bare INSERT (extension-independent: the check again)
#   serial server time of one append and of one fork of the 10,000-message session, each in its
#          own transaction, one backend (bench.time_adds / bench.time_forks of bench/diagnose.sql,
#          loaded into both clusters): the CPU cost per call, which the 8-client runs partly
#          hide behind commit waits, and without the copies' I/O around the forks
#
# and finally, outside the timed runs, which functions one append, fork and read call in each
# build (track_functions = all). Prints the table (per benchmark: old, new, new/old, medians over
# rounds); raw results in bench/results/<UTC time>-compare/.
#
# Builds: OLD in a git worktree ($COMPARE_OLD_TREE, created if missing, removed at the end if this
# script created it) with CARGO_TARGET_DIR=$COMPARE_OLD_TARGET, NEW in target/release, both with
# `cargo pgrx package` (never `cargo pgrx install`), under nice -n 10, after waiting for other
# compilations on the machine to finish. COMPARE_BUILD=0 takes the existing packages.
#
# Environment (defaults give a benchmark phase of about 15 minutes on 2 cores, plus the builds):
#   BENCH_ROUNDS (5)            rounds; each round runs every item once on each cluster (>= 3)
#   BENCH_READ_SECONDS (10)     length of each read run
#   BENCH_WRITE_SECONDS (15)    length of each write run
#   BENCH_FORK_ITERS (100)      iterations of the fork loop per round and cluster (10 warm-up)
#   COMPARE_SERIAL_ADDS (300), COMPARE_SERIAL_FORKS (100)   calls per round and cluster
#   BENCH_USER (bench_app)      as in bench/run.sh
#   COMPARE_OLD_REV (d86c826), COMPARE_OLD_TREE (/work/bench-old),
#   COMPARE_OLD_TARGET (/work/bench-old-target), COMPARE_BUILD (1),
#   COMPARE_KEEP_WORKTREE (0)   1: keep a worktree this script created
#   COMPARE_MAX_LOAD (1.5), COMPARE_LOAD_WAIT (600)
#                               before the benchmark phase, wait up to LOAD_WAIT seconds for the
#                               1-minute load average to drop below MAX_LOAD
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
. bench/lib.sh
[ "$(id -u)" = 0 ] || die "run bench/compare.sh as root (it starts its clusters as the postgres user)"
command -v python3 >/dev/null || die "python3 is needed"
export PATH="$HOME/.cargo/bin:$PATH"

OLD_REV=${COMPARE_OLD_REV:-d86c826}
OLD_TREE=${COMPARE_OLD_TREE:-/work/bench-old}
OLD_TARGET=${COMPARE_OLD_TARGET:-/work/bench-old-target}
NEW_TARGET=${CARGO_TARGET_DIR:-$PWD/target}
NEW_STAGE=$NEW_TARGET/release/memoriesdb-pg15
OLD_STAGE=$OLD_TARGET/release/memoriesdb-pg15
ROUNDS=${BENCH_ROUNDS:-5}
READ_SECONDS=${BENCH_READ_SECONDS:-10}
WRITE_SECONDS=${BENCH_WRITE_SECONDS:-15}
FORK_ITERS=${BENCH_FORK_ITERS:-100}
SERIAL_ADDS=${COMPARE_SERIAL_ADDS:-300}
SERIAL_FORKS=${COMPARE_SERIAL_FORKS:-100}
MAX_LOAD=${COMPARE_MAX_LOAD:-1.5}
LOAD_WAIT=${COMPARE_LOAD_WAIT:-600}
[ "$ROUNDS" -ge 3 ] || die "BENCH_ROUNDS must be at least 3"
[ "$FORK_ITERS" -gt 10 ] || die "BENCH_FORK_ITERS must be more than 10 (the first 10 are warm-up)"
OLD_COMMIT=$(git rev-parse --verify "$OLD_REV^{commit}") || die "no such revision: $OLD_REV"

RES=bench/results/$(date -u +%Y%m%dT%H%M%SZ)-compare
mkdir -p "$RES"
START=$SECONDS

#----------------------------------------------------------------------------------------------
# Builds
#----------------------------------------------------------------------------------------------
# wait (up to 10 minutes) while someone else compiles on the machine
wait_for_compilers() {
    local waited=0
    while pgrep -x rustc >/dev/null && [ "$waited" -lt 600 ]; do
        [ "$waited" = 0 ] && log "waiting for other compilations (rustc) to finish before building"
        sleep 10; waited=$((waited + 10))
    done
}
# package TREE TARGET_DIR NAME: cargo pgrx package (release) of TREE into TARGET_DIR
package() {
    local tree=$1 target=$2 name=$3 t0=$SECONDS
    wait_for_compilers
    log "building $name: cargo pgrx package in $tree (CARGO_TARGET_DIR=$target), nice -n 10"
    if ! (cd "$tree" && CARGO_TARGET_DIR=$target nice -n 10 cargo pgrx package --pg-config /usr/bin/pg_config) \
            >"$RES/build_$name.log" 2>&1; then
        tail -30 "$RES/build_$name.log" >&2; die "building $name failed (log: $RES/build_$name.log)"
    fi
    echo "build $name: $((SECONDS - t0)) s" >>"$RES/builds.txt"
}
CREATED_WORKTREE=0
if [ ! -e "$OLD_TREE" ]; then
    log "git worktree add $OLD_TREE $OLD_REV"
    git worktree add --detach "$OLD_TREE" "$OLD_COMMIT" >/dev/null 2>&1 || die "git worktree add $OLD_TREE failed"
    CREATED_WORKTREE=1
fi
remove_worktree() {
    if [ "$CREATED_WORKTREE" = 1 ] && [ "${COMPARE_KEEP_WORKTREE:-0}" != 1 ]; then
        git worktree remove --force "$OLD_TREE" && CREATED_WORKTREE=0
    fi
}
[ "$(git -C "$OLD_TREE" rev-parse HEAD)" = "$OLD_COMMIT" ] || die "$OLD_TREE is not at $OLD_REV"
if [ "${COMPARE_BUILD:-1}" = 1 ]; then
    package . "$NEW_TARGET" new
    # the dependencies are the same build: seed the old build's target directory with them
    if [ ! -d "$OLD_TARGET/release" ] && [ -d "$NEW_TARGET/release/deps" ]; then
        log "seeding $OLD_TARGET with the dependencies built in $NEW_TARGET/release"
        mkdir -p "$OLD_TARGET"
        cp -a "$NEW_TARGET/release" "$OLD_TARGET/release"
        rm -rf "$OLD_STAGE"
    fi
    package "$OLD_TREE" "$OLD_TARGET" old
fi
for stage in "$OLD_STAGE" "$NEW_STAGE"; do
    [ -f "$stage$EXT_LIB/memoriesdb.so" ] && [ -f "$stage$EXT_SHARE/memoriesdb.control" ] \
        || die "no package in $stage (build it, or run with COMPARE_BUILD=1)"
done

#----------------------------------------------------------------------------------------------
# Clusters
#----------------------------------------------------------------------------------------------
# install_ext_files DIR: the control file and SQL script of the snapshot in DIR into the system
# extension directory, where CREATE EXTENSION reads them (unlink + rename, never overwritten in
# place, as scripts/lib.sh's install_extension does). Each system file is backed up the first
# time, and restore_system_files puts back what was installed before (the NEW build, as the
# working tree's install_extension installed it: so the system's SQL script stays the one that
# goes with the system's library) right after each CREATE EXTENSION and on exit.
SYS_BACKUP=/tmp/memoriesdb-compare-sysext-$$
declare -A SYS_FILES=()   # system file -> its backup, or "" if it did not exist
install_file() { # SRC DST
    cmp -s "$1" "$2" && return 0
    install -m 0644 "$1" "$2.memoriesdb-new"
    mv -f "$2.memoriesdb-new" "$2"
}
install_ext_files() {
    local dir=$1 version src dst
    version=$(sed -n "s/^default_version = '\(.*\)'$/\1/p" "$dir/memoriesdb.control")
    for src in "$dir/memoriesdb.control" "$dir/memoriesdb.sql"; do
        case $src in
            *.control) dst=$EXT_SHARE/memoriesdb.control ;;
            *) dst=$EXT_SHARE/memoriesdb--$version.sql ;;
        esac
        if [ -z "${SYS_FILES[$dst]+x}" ]; then
            SYS_FILES[$dst]=""
            if [ -e "$dst" ]; then
                install -d "$SYS_BACKUP"
                cp -p "$dst" "$SYS_BACKUP/$(basename "$dst")"
                SYS_FILES[$dst]=$SYS_BACKUP/$(basename "$dst")
            fi
        fi
        install_file "$src" "$dst"
    done
}
restore_system_files() {
    local dst
    for dst in "${!SYS_FILES[@]}"; do
        if [ -n "${SYS_FILES[$dst]}" ]; then install_file "${SYS_FILES[$dst]}" "$dst"; else rm -f "$dst"; fi
    done
}
bench_before_create_extension() { install_ext_files "$BASE/ext"; }
bench_after_create_extension() { restore_system_files; }
BENCH_ON_EXIT='restore_system_files; rm -rf "$SYS_BACKUP"; remove_worktree'

git show "$OLD_COMMIT:bench/setup.sql" >"$RES/setup_old.sql"
cp bench/setup.sql "$RES/setup_new.sql"
for side in new old; do
    if [ "$side" = new ]; then
        BENCH_EXT_STAGE=$NEW_STAGE BENCH_EXT_SRC=. BENCH_SETUP_SQL=$RES/setup_new.sql
    else
        BENCH_EXT_STAGE=$OLD_STAGE BENCH_EXT_SRC=$OLD_TREE BENCH_SETUP_SQL=$RES/setup_old.sql
    fi
    bench_cluster_up "compare-$side"
    cluster_psql "$CLUSTER" "$PORT" -d "$DB" <bench/diagnose.sql >/dev/null   # time_adds, time_forks
    core_scripts
    mkdir -p "$RES/$side"
    cp "$SQL_DIR"/*.sql "$RES/$side/"
    read_explain "$RES/$side/read_explain.txt"
    bench_cluster_save "$side"
done
restore_system_files
remove_worktree   # the old tree is not needed any more (its build is in the clusters)

{
    echo "parameters:  rounds=$ROUNDS read_seconds=$READ_SECONDS write_seconds=$WRITE_SECONDS fork_iters=$FORK_ITERS serial_adds=$SERIAL_ADDS serial_forks=$SERIAL_FORKS (per round and cluster)"
    echo "old:         $OLD_REV ($OLD_COMMIT), package $OLD_STAGE, data bench/setup.sql of $OLD_REV"
    echo "new:         working tree, package $NEW_STAGE, data bench/setup.sql of the working tree"
    [ ! -f "$RES/builds.txt" ] || sed 's/^/             /' "$RES/builds.txt"
    for side in old new; do
        bench_cluster_use "$side"
        echo "== $side (cluster $CLUSTER, port $PORT)"
        bench_environment | grep -v '^\(date\|load before\|pgbench\):'
    done
} >"$RES/environment.txt"

# wait for a quiet machine before the benchmark phase
waited=0
while awk -v l="$(cut -d' ' -f1 /proc/loadavg)" -v m="$MAX_LOAD" 'BEGIN { exit !(l >= m) }' && [ "$waited" -lt "$LOAD_WAIT" ]; do
    [ "$waited" = 0 ] && log "waiting (up to ${LOAD_WAIT}s) for the load average ($(cut -d' ' -f1 /proc/loadavg)) to drop below $MAX_LOAD"
    sleep 10; waited=$((waited + 10))
done
{
    echo "date:        $(date -u '+%Y-%m-%d %H:%M:%S UTC') (benchmark phase; waited ${waited}s for the load to drop below $MAX_LOAD)"
    echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "pgbench:     $("$PGBENCH" --version)"
} >>"$RES/environment.txt"
cat "$RES/environment.txt" >&2

#----------------------------------------------------------------------------------------------
# Rounds
#----------------------------------------------------------------------------------------------
other_of() { [ "$1" = old ] && echo new || echo old; }
# settle SIDE: before a timed run on SIDE, the other cluster gets a CHECKPOINT, and both finish
# any autovacuum they started (up to 30 s), so that neither competes for the 2 cores
settle() {
    local other i c
    other=$(other_of "$1")
    bench_cluster_use "$other"
    q -c "CHECKPOINT" >/dev/null
    for c in "$other" "$1"; do
        bench_cluster_use "$c"
        for i in $(seq 30); do
            [ "$(q -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'")" = 0 ] && break
            sleep 1
        done
    done
}
printf 'side\tbench\tvariant\tround\ttps\tlatency_ms\twal_bytes_per_txn\n' >"$RES/pgbench.tsv"
echo "side,round,variant,iter,exec_us,total_us" >"$RES/fork_timing.csv"
echo "side,round,variant,iter,exec_us,total_us" >"$RES/serial_timing.csv"
READS="flat memoriesdb"
WRITES="flat memoriesdb memoriesdb_batch2"
log "$ROUNDS rounds, each: fork ($FORK_ITERS iterations), serial ($SERIAL_ADDS appends, $SERIAL_FORKS forks), read (${READ_SECONDS}s: $READS), write (${WRITE_SECONDS}s, 8 clients: $WRITES), on each cluster in turn, as $BENCH_USER"
for r in $(seq 1 "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then sides="old new"; reads=$READS; writes=$WRITES
    else sides="new old"; reads=$(echo "$READS" | tr ' ' '\n' | tac | xargs); writes=$(echo "$WRITES" | tr ' ' '\n' | tac | xargs); fi
    for side in $sides; do
        settle "$side"
        core_fork "$FORK_ITERS" "$BASE/fork.csv"
        tail -n +2 "$BASE/fork.csv" | sed "s/^/$side,$r,/" >>"$RES/fork_timing.csv"
        log "   round $r  $side fork: $(python3 -c "
import csv, statistics, sys
rows = [r for r in csv.DictReader(open(sys.argv[1])) if int(r['iter']) > 10]
print(', '.join(f'{v} {statistics.median(float(r[\"exec_us\"]) for r in rows if r[\"variant\"] == v) / 1000:.3f} ms'
                for v in ('fork_10000', 'fork_10', 'copy_10000')))" "$BASE/fork.csv")"
    done
    for side in $sides; do
        settle "$side"
        q -c "TRUNCATE bench.timing" >/dev/null
        qa -c "CALL bench.time_adds('append', $SERIAL_ADDS)" -c "CALL bench.time_forks('fork_10000', $SERIAL_FORKS)"
        q -c "\\copy bench.timing TO STDOUT WITH (FORMAT csv)" | sed "s/^/$side,$r,/" >>"$RES/serial_timing.csv"
        log "   round $r  $side serial: $(python3 -c "
import csv, statistics, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if r[0] == sys.argv[2] and r[1] == sys.argv[3] and int(r[3]) > 3]
print(', '.join(f'{v} {statistics.median(float(r[4]) for r in rows if r[2] == v):.0f} us' for v in ('append', 'fork_10000')))
" "$RES/serial_timing.csv" "$side" "$r")"
    done
    for v in $reads; do
        for side in $sides; do
            settle "$side"
            out=$RES/$side/read_${v}_$r.out
            tps=$(pgb "$out" "$SQL_DIR/read_$v.sql" 1 1 "$READ_SECONDS")
            printf '%s\tread\t%s\t%s\t%s\n' "$side" "$v" "$r" "$(pgb_fields "$out")" >>"$RES/pgbench.tsv"
            log "   round $r  $side read $v: $tps tps"
        done
    done
    for v in $writes; do
        for side in $sides; do
            settle "$side"
            out=$RES/$side/write_${v}_$r.out
            tps=$(pgb "$out" "$SQL_DIR/write_$v.sql" 8 2 "$WRITE_SECONDS" -D pos=$((r * 100000000)))
            printf '%s\twrite\t%s\t%s\t%s\n' "$side" "$v" "$r" "$(pgb_fields "$out")" >>"$RES/pgbench.tsv"
            log "   round $r  $side write $v: $tps tps"
        done
    done
done
for side in old new; do
    bench_cluster_use "$side"
    { echo "== $side"; bench_events; } >>"$RES/environment.txt"
done

#----------------------------------------------------------------------------------------------
# Which functions each operation calls (outside the timed runs): track_functions = all, the
# operations in one transaction as the benchmark role, rolled back; calls per operation.
#----------------------------------------------------------------------------------------------
log "functions called per append, batch append, fork and read, in each build"
printf 'side\top\tfunction\tcalls_per_op\tsecurity_definer\tset_clause\ttotal_ms_per_op\n' >"$RES/functions.tsv"
for side in old new; do
    bench_cluster_use "$side"
    s10k=$(sid_of fork_10000); wsid=$(writer_sid 0)
    for op in append:200 batch2:100 fork:50 read:50; do
        n=${op#*:}; op=${op%%:*}
        case $op in
            append) stmt="SELECT count(add_message_to_session('$wsid', 'user', bench.body(g))) FROM generate_series(1, $n) g" ;;
            batch2) stmt="SELECT count(*) FROM generate_series(1, $n) g, add_messages_to_session('$wsid',
                          jsonb_build_array(jsonb_build_object('role', 'user', 'content', bench.body(g)),
                                            jsonb_build_object('role', 'assistant', 'content', bench.body(g))))" ;;
            fork) stmt="SELECT count(fork_session('$s10k', 'profile fork')) FROM generate_series(1, $n)" ;;
            read) # (the argument depends on g, so that the function runs for every g)
                  stmt="SELECT count(*) FROM generate_series(1, $n) g,
                          get_formatted_conversation(CASE WHEN g > 0 THEN '$(sid_of read_leaf)'::uuid END, true)" ;;
        esac
        # a warm-up in the same session; its counts are flushed (pg_stat_xact_* shows what this
        # backend has not flushed yet), then the counted transaction
        q -F $'\t' -P footer=off -c "SET track_functions = 'all'" -c "SET ROLE $BENCH_USER" \
          -c "BEGIN" -c "$stmt" -c "ROLLBACK" -c "RESET ROLE" -c "SELECT pg_stat_force_next_flush()" \
          -c "SET ROLE $BENCH_USER" -c "BEGIN" -c "$stmt" -c "RESET ROLE" \
          -c "SELECT '$side', '$op', f.schemaname || '.' || f.funcname, round(f.calls::numeric / $n, 2), p.prosecdef,
                     p.proconfig IS NOT NULL, round((f.total_time / $n)::numeric, 4)
                FROM pg_stat_xact_user_functions f JOIN pg_proc p ON p.oid = f.funcid
               ORDER BY f.calls DESC, f.funcname" -c "ROLLBACK" | grep -P '\t' >>"$RES/functions.tsv"
    done
done
echo "elapsed:     $((SECONDS - START)) s" >>"$RES/environment.txt"
echo "load after:  $(cut -d' ' -f1-3 /proc/loadavg)" >>"$RES/environment.txt"

python3 bench/summarize_compare.py "$RES" | tee "$RES/summary.txt"
log "raw results: $RES  (elapsed $((SECONDS - START)) s)"
