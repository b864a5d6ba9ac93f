# Shared helpers for bench/run.sh and bench/diagnose.sh (sourced, not run).
# Expects to be sourced from the repository root after scripts/lib.sh.

PGBENCH=$PG_BIN/pgbench
[ -x "$PGBENCH" ] || PGBENCH=$(command -v pgbench) || die "pgbench not found (install postgresql-contrib)"
DB=memoriesdb_bench
# The role the benchmarks run as: bench_app, an ordinary role mapped to a MemoriesDB user (see
# bench/setup.sql). BENCH_USER=postgres runs them as a superuser, which bypasses row-level
# security (for comparison only).
BENCH_USER=${BENCH_USER:-bench_app}

EXT_SHARE=$("$PG_BIN/pg_config" --sharedir)/extension
EXT_LIB=$("$PG_BIN/pg_config" --pkglibdir)

# snapshot_extension DIR: copy the installed memoriesdb library (and its SQL script, for the check
# after CREATE EXTENSION) to DIR, so that a `cargo pgrx install` or `cargo pgrx test` running
# elsewhere on the machine cannot swap the library under the benchmark's backends: the cluster
# loads the library from DIR (dynamic_library_path; module_pathname is a bare name). Refuses a
# debug / pg_test build unless BENCH_ALLOW_DEBUG_BUILD=1.
snapshot_extension() {
    local dir=$1 before after
    EXT_VERSION=$(sed -n "s/^default_version = '\(.*\)'$/\1/p" "$EXT_SHARE/memoriesdb.control")
    [ -n "$EXT_VERSION" ] || die "memoriesdb is not installed ($EXT_SHARE/memoriesdb.control)"
    install -d -o postgres -g postgres "$dir"
    before=$(stat -c '%Y %s' "$EXT_LIB/memoriesdb.so" "$EXT_SHARE/memoriesdb--$EXT_VERSION.sql")
    cp "$EXT_LIB/memoriesdb.so" "$dir/memoriesdb.so"
    cp "$EXT_SHARE/memoriesdb--$EXT_VERSION.sql" "$dir/memoriesdb.sql"
    after=$(stat -c '%Y %s' "$EXT_LIB/memoriesdb.so" "$EXT_SHARE/memoriesdb--$EXT_VERSION.sql")
    [ "$before" = "$after" ] || die "the installed extension changed while copying it; run again"
    chmod a+r "$dir"/*
    EXT_BUILD="release"
    if grep -q 'CREATE SCHEMA IF NOT EXISTS tests' "$dir/memoriesdb.sql" \
       || readelf -S "$dir/memoriesdb.so" 2>/dev/null | grep -q '\.debug_info'; then
        EXT_BUILD="DEBUG/TEST BUILD (not release)"
        [ "${BENCH_ALLOW_DEBUG_BUILD:-0}" = 1 ] \
            || die "the installed memoriesdb is a debug or pg_test build (cargo pgrx test installs one); install the release build (cargo pgrx install --release) or set BENCH_ALLOW_DEBUG_BUILD=1"
    fi
    EXT_ID="$(stat -c '%s bytes, installed %y' "$EXT_LIB/memoriesdb.so"), sha256 $(sha256sum "$dir/memoriesdb.so" | cut -c1-16)"
    # which source is that? (the SQL of every src/sql file must appear in the installed script)
    local f tree=matches
    for f in src/sql/*.sql; do
        python3 - "$dir/memoriesdb.sql" "$f" <<'PY' || tree="DIFFERS from"
import sys
sys.exit(0 if open(sys.argv[2]).read().strip() in open(sys.argv[1]).read() else 1)
PY
    done
    EXT_SOURCE="git $(git rev-parse --short HEAD 2>/dev/null || echo '?'); installed SQL $tree src/sql/*.sql of the working tree"
    log "benchmarking the memoriesdb library as installed: $EXT_BUILD, $EXT_ID"
}

# bench_cluster_up NAME: start a throwaway cluster under /tmp, removed on exit, with a database
# that has the extension and bench/setup.sql loaded. Sets CLUSTER, PORT, SQL_DIR.
bench_cluster_up() {
    local name=$1
    BASE=/tmp/memoriesdb-$name-$$
    CLUSTER=$BASE/pgdata
    trap 'cluster_stop "$CLUSTER" remove; rm -rf "$BASE"' EXIT
    trap 'exit 130' INT TERM
    # free_port looks at listening sockets only; on a machine where other tests open thousands
    # of client connections, a port can also be taken as a connection's local (ephemeral) port,
    # and PostgreSQL then fails to bind it. So skip ports in any use, and try again on failure.
    local attempt port=55600
    for attempt in 1 2 3 4 5; do
        PORT=$(free_port "$port")
        while ss -Htan "( sport = :$PORT )" | grep -q . ; do PORT=$(free_port $((PORT + 1))); done
        log "starting a throwaway cluster in $CLUSTER on port $PORT"
        if (cluster_start "$CLUSTER" "$PORT"); then break; fi
        [ "$attempt" = 5 ] && die "could not start the benchmark cluster"
        port=$((PORT + 1))
    done
    snapshot_extension "$BASE/ext"
    cluster_psql "$CLUSTER" "$PORT" -d postgres -c "ALTER SYSTEM SET dynamic_library_path = '$BASE/ext:\$libdir'" \
        -c "SELECT pg_reload_conf()" >/dev/null
    cluster_psql "$CLUSTER" "$PORT" -d postgres -c "CREATE DATABASE $DB"
    cluster_psql "$CLUSTER" "$PORT" -d "$DB" -c "CREATE EXTENSION memoriesdb CASCADE"
    # the SQL CREATE EXTENSION just ran must be the one that goes with the snapshot library
    cmp -s "$BASE/ext/memoriesdb.sql" "$EXT_SHARE/memoriesdb--$EXT_VERSION.sql" \
        || die "the installed extension changed during setup (someone ran cargo pgrx install?); run again"
    [ "$(cluster_psql "$CLUSTER" "$PORT" -d "$DB" -tA -c "SELECT content_sha256('x') IS NOT NULL" \
            -c "SELECT position('$BASE/ext/memoriesdb.so' IN pg_read_file('/proc/self/maps')) > 0" | tail -1)" = t ] \
        || die "backends do not load the private copy $BASE/ext/memoriesdb.so"
    log "loading benchmark data (bench/setup.sql)"
    cluster_psql "$CLUSTER" "$PORT" -d "$DB" <bench/setup.sql >"$BASE/setup.log"
    SQL_DIR=$BASE/scripts
    install -d "$SQL_DIR"
    log "setup done"
}

# q SQL...: run SQL in the bench database as the superuser, unaligned, tuples only.
q() { cluster_psql "$CLUSTER" "$PORT" -d "$DB" -tA "$@"; }
# qa SQL...: the same as the benchmark role.
qa() { runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -h localhost -p "$PORT" -U "$BENCH_USER" -d "$DB" -tA "$@"; }

sid_of() { q -c "SELECT sid FROM bench.sessions WHERE name = '$1'"; }
writer_sid() { q -c "SELECT sid FROM bench.writers WHERE client_id = $1"; }

# pgb OUTFILE SCRIPT CLIENTS THREADS SECONDS [pgbench options...]: CHECKPOINT, then one pgbench
# run (prepared statements, no vacuum); prints the TPS (excluding connection time).
pgb() {
    local out=$1 script=$2 c=$3 j=$4 t=$5 lsn; shift 5
    q -c "CHECKPOINT" >/dev/null
    lsn=$(q -c "SELECT pg_current_wal_lsn()")
    if ! "$PGBENCH" -h localhost -p "$PORT" -U "$BENCH_USER" -n -M prepared -c "$c" -j "$j" -T "$t" \
            -f "$script" "$@" "$DB" >"$out" 2>&1; then
        cat "$out" >&2; die "pgbench failed ($script)"
    fi
    if grep -q '^number of failed transactions: [1-9]' "$out"; then
        cat "$out" >&2; die "pgbench reported failed transactions ($script)"
    fi
    # WAL written during the run (the whole cluster; the run is the only writer), per transaction
    q -c "SELECT 'wal bytes per transaction = ' || round(pg_wal_lsn_diff(pg_current_wal_lsn(), '$lsn')
                 / greatest($(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$out"), 1))" >>"$out"
    sed -n 's/^tps = \([0-9.]*\) (without initial connection time)$/\1/p' "$out"
}
