# Shared helpers for bench/run.sh, bench/diagnose.sh and bench/compare.sh (sourced, not run).
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

# Which build a cluster gets (bench/compare.sh sets these per cluster; the defaults are the
# installed extension, the working tree and its bench/setup.sql):
#   BENCH_EXT_STAGE  a `cargo pgrx package` output directory (…/memoriesdb-pg15) to take the
#                    library and SQL script from instead of the system installation
#   BENCH_EXT_SRC    the source tree of that build (for the check that its SQL matches its feature files)
#   BENCH_SETUP_SQL  the benchmark data script to load after CREATE EXTENSION
BENCH_EXT_STAGE=${BENCH_EXT_STAGE:-}
BENCH_EXT_SRC=${BENCH_EXT_SRC:-.}
BENCH_SETUP_SQL=${BENCH_SETUP_SQL:-bench/setup.sql}

# snapshot_extension DIR: copy the installed memoriesdb library (and its SQL script and control
# file, for the check after CREATE EXTENSION) to DIR, so that a `cargo pgrx install` or `cargo
# pgrx test` running elsewhere on the machine cannot swap the library under the benchmark's
# backends: the cluster loads the library from DIR (dynamic_library_path; module_pathname is a
# bare name). With BENCH_EXT_STAGE, the files come from that package directory instead. Refuses
# a debug / pg_test build unless BENCH_ALLOW_DEBUG_BUILD=1.
snapshot_extension() {
    local dir=$1 before after lib share
    lib=$BENCH_EXT_STAGE$EXT_LIB/memoriesdb.so
    share=$BENCH_EXT_STAGE$EXT_SHARE
    EXT_VERSION=$(sed -n "s/^default_version = '\(.*\)'$/\1/p" "$share/memoriesdb.control" 2>/dev/null || true)
    [ -n "$EXT_VERSION" ] || die "memoriesdb is not installed ($share/memoriesdb.control)"
    install -d -o postgres -g postgres "$dir"
    before=$(stat -c '%Y %s' "$lib" "$share/memoriesdb--$EXT_VERSION.sql" "$share/memoriesdb.control")
    cp "$lib" "$dir/memoriesdb.so"
    cp "$share/memoriesdb--$EXT_VERSION.sql" "$dir/memoriesdb.sql"
    cp "$share/memoriesdb.control" "$dir/memoriesdb.control"
    after=$(stat -c '%Y %s' "$lib" "$share/memoriesdb--$EXT_VERSION.sql" "$share/memoriesdb.control")
    [ "$before" = "$after" ] || die "the installed extension changed while copying it; run again"
    chmod a+r "$dir"/*
    EXT_BUILD="release"
    if grep -q 'CREATE SCHEMA IF NOT EXISTS tests' "$dir/memoriesdb.sql" \
       || readelf -S "$dir/memoriesdb.so" 2>/dev/null | grep -q '\.debug_info'; then
        EXT_BUILD="DEBUG/TEST BUILD (not release)"
        [ "${BENCH_ALLOW_DEBUG_BUILD:-0}" = 1 ] \
            || die "the memoriesdb in ${BENCH_EXT_STAGE:-the system} is a debug or pg_test build (cargo pgrx test installs one); install the release build (cargo pgrx install --release) or set BENCH_ALLOW_DEBUG_BUILD=1"
    fi
    EXT_ID="$(stat -c '%s bytes, built %y' "$lib"), sha256 $(sha256sum "$dir/memoriesdb.so" | cut -c1-16)"
    # which source is that? (the SQL of every feature file must appear in the installed script;
    # they are in sql/ since 0.2.0, in src/sql/ before)
    local f tree=matches dirty="" sqldir=sql
    [ -f "$BENCH_EXT_SRC/sql/schema.sql" ] || sqldir=src/sql
    for f in "$BENCH_EXT_SRC/$sqldir"/[a-z]*.sql; do
        case $f in */memoriesdb--*) continue ;; esac
        python3 - "$dir/memoriesdb.sql" "$f" <<'PY' || tree="DIFFERS from"
import sys
sys.exit(0 if open(sys.argv[2]).read().strip() in open(sys.argv[1]).read() else 1)
PY
    done
    [ -z "$(git -C "$BENCH_EXT_SRC" status --porcelain -- src sql 2>/dev/null)" ] || dirty=" + uncommitted changes in src/ or sql/"
    EXT_SOURCE="git $(git -C "$BENCH_EXT_SRC" rev-parse --short HEAD 2>/dev/null || echo '?')$dirty; SQL $tree $sqldir/*.sql of $BENCH_EXT_SRC"
    log "benchmarking the memoriesdb library of ${BENCH_EXT_STAGE:-the system installation}: $EXT_BUILD, $EXT_ID"
}

# Every cluster bench_cluster_up started (its BASE directory); all are stopped and removed on
# exit, after the command in BENCH_ON_EXIT (if any).
BENCH_BASES=()
bench_cleanup() {
    local b
    [ -z "${BENCH_ON_EXIT:-}" ] || eval "$BENCH_ON_EXIT" || true
    for b in "${BENCH_BASES[@]}"; do cluster_stop "$b/pgdata" remove; rm -rf "$b"; done
}

# bench_cluster_up NAME: start a throwaway cluster under /tmp, removed on exit, with a database
# that has the extension and the benchmark data ($BENCH_SETUP_SQL) loaded. Sets CLUSTER, PORT,
# BASE, SQL_DIR and EXT_SCHEMA (the schema the extension is in). If the caller defines the
# functions bench_before_create_extension / bench_after_create_extension, they run right
# before and after CREATE EXTENSION (bench/compare.sh installs each build's SQL script there).
bench_cluster_up() {
    local name=$1
    BASE=/tmp/memoriesdb-$name-$$
    CLUSTER=$BASE/pgdata
    BENCH_BASES+=("$BASE")
    trap 'bench_cleanup' EXIT
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
    if declare -F bench_before_create_extension >/dev/null; then bench_before_create_extension; fi
    cluster_psql "$CLUSTER" "$PORT" -d "$DB" -c "CREATE EXTENSION memoriesdb CASCADE"
    # the SQL CREATE EXTENSION just ran must be the one that goes with the snapshot library
    local same=1
    cmp -s "$BASE/ext/memoriesdb.sql" "$EXT_SHARE/memoriesdb--$EXT_VERSION.sql" || same=0
    if declare -F bench_after_create_extension >/dev/null; then bench_after_create_extension; fi
    [ "$same" = 1 ] || die "the installed extension changed during setup (someone ran cargo pgrx install?); run again"
    EXT_SCHEMA=$(cluster_psql "$CLUSTER" "$PORT" -d "$DB" -tA -c "SELECT extnamespace::regnamespace FROM pg_extension WHERE extname = 'memoriesdb'")
    [ "$(cluster_psql "$CLUSTER" "$PORT" -d "$DB" -tA -c "SELECT $EXT_SCHEMA.content_sha256('x') IS NOT NULL" \
            -c "SELECT position('$BASE/ext/memoriesdb.so' IN pg_read_file('/proc/self/maps')) > 0" | tail -1)" = t ] \
        || die "backends do not load the private copy $BASE/ext/memoriesdb.so"
    log "loading benchmark data ($BENCH_SETUP_SQL; extension in schema $EXT_SCHEMA)"
    cluster_psql "$CLUSTER" "$PORT" -d "$DB" <"$BENCH_SETUP_SQL" >"$BASE/setup.log"
    SQL_DIR=$BASE/scripts
    install -d "$SQL_DIR"
    log "setup done"
}

# bench_cluster_save NAME / bench_cluster_use NAME: remember the current cluster's variables
# under NAME, and switch back to them (for scripts that run several clusters side by side).
BENCH_CLUSTER_VARS="CLUSTER PORT BASE SQL_DIR EXT_VERSION EXT_BUILD EXT_ID EXT_SOURCE EXT_SCHEMA BENCH_EXT_STAGE BENCH_EXT_SRC BENCH_SETUP_SQL"
declare -A BENCH_SAVED=()
bench_cluster_save() {
    local v
    for v in $BENCH_CLUSTER_VARS; do BENCH_SAVED[$1.$v]=${!v}; done
}
bench_cluster_use() {
    local v
    [ -n "${BENCH_SAVED[$1.PORT]+x}" ] || die "no cluster saved as $1"
    for v in $BENCH_CLUSTER_VARS; do printf -v "$v" '%s' "${BENCH_SAVED[$1.$v]}"; done
}

# q SQL...: run SQL in the bench database as the superuser, unaligned, tuples only.
q() { cluster_psql "$CLUSTER" "$PORT" -d "$DB" -tA "$@"; }
# qa SQL...: the same as the benchmark role.
qa() { runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -h localhost -p "$PORT" -U "$BENCH_USER" -d "$DB" -tA "$@"; }

sid_of() { q -c "SELECT sid FROM bench.sessions WHERE name = '$1'"; }
writer_sid() { q -c "SELECT sid FROM bench.writers WHERE client_id = $1"; }

# bench_environment: the description of the machine, the current cluster and its build, one
# "key: value" line each (the environment.txt of a result directory).
bench_environment() {
    echo "date:        $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "cpu:         $(lscpu | sed -n 's/^Model name: *//p') ($(nproc) cores)"
    echo "memory:      $(free -h | awk '/^Mem:/ {print $2}')"
    echo "disk:        $(df -h --output=source,size,fstype "$CLUSTER" | tail -1 | tr -s ' ')"
    echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
    q -c "SELECT 'postgres:    ' || version()"
    echo "memoriesdb:  $EXT_BUILD build, $EXT_ID (loaded from a private copy)"
    echo "source:      $EXT_SOURCE"
    echo "schema:      $EXT_SCHEMA"
    echo "runs as:     $BENCH_USER ($(q -c "SELECT CASE WHEN rolsuper THEN 'superuser: row-level security bypassed' ELSE 'ordinary role mapped to a MemoriesDB user: row-level security applies' END FROM pg_roles WHERE rolname = '$BENCH_USER'"))"
    q -c "SELECT 'extensions:  ' || string_agg(extname || ' ' || extversion, ', ' ORDER BY extname) FROM pg_extension WHERE extname <> 'plpgsql'"
    q -c "SELECT 'settings:    ' || string_agg(name || '=' || current_setting(name), ', ' ORDER BY name) FROM pg_settings
          WHERE name IN ('shared_buffers', 'synchronous_commit', 'fsync', 'wal_level', 'max_wal_size', 'checkpoint_timeout',
                         'work_mem', 'jit', 'max_connections', 'wal_buffers', 'effective_cache_size')"
    echo "pgbench:     $("$PGBENCH" --version)"
}

# bench_events: how events left the writers' transactions: through the event relay (outbox, if
# this build has one) or by NOTIFY in the writer's transaction.
bench_events() {
    q -c "SELECT 'events:      ' || CASE WHEN to_regclass('$EXT_SCHEMA.memory_event_outbox') IS NULL
                                         THEN 'NOTIFY in the writer''s transaction (no event relay in this build)'
                                         ELSE 'event relay; outbox ids used ' || coalesce((SELECT max(id)::text FROM $EXT_SCHEMA.memory_event_outbox), '(drained)')
                                              || ', relay workers now: ' || (SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE '%relay%') END"
}

# core_fork ITERS CSV: the fork benchmark of bench/run.sh on the current cluster (forks of the
# 10- and 10,000-message sessions interleaved, then the copies; see bench.fork_vs_copy in
# bench/setup.sql); the per-iteration timings go to CSV.
core_fork() {
    q -c "TRUNCATE bench.timing" >/dev/null
    qa -c "CALL bench.fork_vs_copy($1)"
    q -c "\\copy bench.timing TO STDOUT WITH (FORMAT csv, HEADER)" >"$2"
}

# core_scripts: the pgbench scripts of the read and write benchmarks of bench/run.sh for the
# current cluster, into $SQL_DIR: read_{flat,memoriesdb}.sql and write_{flat,flat_indexed,
# memoriesdb,memoriesdb_batch2,memoriesdb_one_session}.sql. Sets READ_LEAF.
core_scripts() {
    local read_base body
    READ_LEAF=$(sid_of read_leaf)
    read_base=$(sid_of read_baseline)
    cat >"$SQL_DIR/read_flat.sql" <<SQL
SELECT id, session_id, position, role, content, created_at, metadata
  FROM bench.flat_messages WHERE session_id = '$read_base' ORDER BY position;
SQL
    cat >"$SQL_DIR/read_memoriesdb.sql" <<SQL
SELECT * FROM get_formatted_conversation('$READ_LEAF', include_metadata => true);
SQL
    body=$(q -c "SELECT bench.body(42)")
    cat >"$SQL_DIR/write_flat.sql" <<SQL
\\set pos :pos + 1
INSERT INTO bench.flat_write (session_id, position, role, content)
VALUES ((SELECT sid FROM bench.writers WHERE client_id = :client_id), :pos, 'user', '$body');
SQL
    cat >"$SQL_DIR/write_flat_indexed.sql" <<SQL
\\set pos :pos + 1
INSERT INTO bench.flat_indexed (session_id, position, role, content, created_by)
VALUES ((SELECT sid FROM bench.writers WHERE client_id = :client_id), :pos, 'user', '$body',
        '$(q -c "SELECT id FROM $EXT_SCHEMA.users WHERE db_role = 'bench_app'")');
SQL
    cat >"$SQL_DIR/write_memoriesdb.sql" <<SQL
SELECT add_message_to_session((SELECT sid FROM bench.writers WHERE client_id = :client_id), 'user', '$body');
SQL
    # a chat turn in one call: the user's message and the answer
    cat >"$SQL_DIR/write_memoriesdb_batch2.sql" <<SQL
SELECT add_messages_to_session((SELECT sid FROM bench.writers WHERE client_id = :client_id),
    jsonb_build_array(jsonb_build_object('role', 'user', 'content', '$body'),
                      jsonb_build_object('role', 'assistant', 'content', '$body')));
SQL
    cat >"$SQL_DIR/write_memoriesdb_one_session.sql" <<SQL
SELECT add_message_to_session((SELECT sid FROM bench.writers WHERE client_id = 100), 'user', '$body');
SQL
}

# read_explain OUT: the plan the read path gets at this point, with its nested statements (to
# show whether JIT is involved)
read_explain() {
    q -c "LOAD 'auto_explain'" -c "SET auto_explain.log_min_duration = 0" -c "SET auto_explain.log_nested_statements = on" \
      -c "SET auto_explain.log_analyze = on" -c "SET client_min_messages = log" -c "SET auto_explain.log_level = notice" \
      -c "SET ROLE $BENCH_USER" -c "SELECT count(*) FROM get_formatted_conversation('$READ_LEAF', true)" >"$1" 2>&1 || true
}

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

# pgb_fields OUTFILE: tps, average latency (ms) and WAL bytes per transaction of a pgb run,
# tab-separated.
pgb_fields() {
    printf '%s\t%s\t%s\n' "$(sed -n 's/^tps = \([0-9.]*\) (without.*/\1/p' "$1")" \
        "$(sed -n 's/^latency average = \([0-9.]*\) ms$/\1/p' "$1")" \
        "$(sed -n 's/^wal bytes per transaction = \([0-9]*\)$/\1/p' "$1")"
}
