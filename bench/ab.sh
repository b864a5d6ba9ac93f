# Shared helpers for the side-by-side benchmarks bench/search_and_tenancy.sh and
# bench/lifecycle.sh (sourced, not run; from the repository root, after scripts/lib.sh): a
# throwaway cluster with the installed extension, pgbench A/B comparisons in alternating order,
# and the tenants' corpus both load.

# ab_start NAME PORT_BASE: results directory bench/results/<UTC time>-NAME (RES), a throwaway
# cluster under /tmp on a free port (CLUSTER, PORT; stopped and removed on exit) with database
# DB=bench that has the extension, its schema on the search_path, and environment.txt written.
# q runs SQL in it as the superuser. BENCH_ROUNDS, BENCH_SECONDS give ROUNDS and SECS.
ab_start() {
    local name=$1 port_base=$2
    ROUNDS=${BENCH_ROUNDS:-4}
    SECS=${BENCH_SECONDS:-6}
    PGBENCH=$PG_BIN/pgbench
    RES=bench/results/$(date -u +%Y%m%dT%H%M%SZ)-$name
    mkdir -p "$RES"
    chmod 777 "$RES"
    CLUSTER=/tmp/memoriesdb-bench-$name-$$
    PORT=$(free_port "$port_base")
    trap 'cluster_stop "$CLUSTER" remove' EXIT
    cluster_start "$CLUSTER" "$PORT"
    DB=bench
    cluster_psql "$CLUSTER" "$PORT" -d postgres -c "CREATE DATABASE $DB"
    q -c "CREATE EXTENSION memoriesdb CASCADE" >/dev/null
    # as an administrator does (README, "Installing into a database"): the extension's schema on
    # the database's search_path, for the unqualified names the scripts use
    q -c "ALTER DATABASE $DB SET search_path = \"\$user\", public, memoriesdb" >/dev/null
    {
        echo "date:     $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
        echo "cpu:      $(lscpu | sed -n 's/^Model name: *//p') ($(nproc) cores), memory $(free -h | awk '/^Mem:/ {print $2}')"
        echo "load:     $(cut -d' ' -f1-3 /proc/loadavg)"
        q -c "SELECT version()"
        q -c "SELECT string_agg(extname || ' ' || extversion, ', ') FROM pg_extension WHERE extname <> 'plpgsql'"
        echo "params:   rounds=$ROUNDS seconds=$SECS ${AB_PARAMS:-}"
    } | tee "$RES/environment.txt" >&2
    RESULTS=$RES/summary.txt
    : >"$RESULTS"
}

q() { cluster_psql "$CLUSTER" "$PORT" -d "$DB" -tA "$@"; }

# as_user ROLE SQL...: psql as an ordinary role of the cluster
as_user() { local role=$1; shift; runuser -u postgres -- "$PG_BIN/psql" -X -h localhost -p "$PORT" -U "$role" -d "$DB" -tA "$@"; }

# pgbench_tps NAME USER SCRIPT [CLIENTS]: one run of SECS seconds, prints tps
RUN=0
pgbench_tps() {
    local name=$1 user=$2 script=$3 clients=${4:-1} out
    RUN=$((RUN + 1)); out=$RES/$name.$RUN.out
    runuser -u postgres -- "$PGBENCH" -h localhost -p "$PORT" -U "$user" -n -c "$clients" -j "$(( clients < 2 ? 1 : 2 ))" \
        -T "$SECS" -f "$script" "$DB" >"$out" 2>&1 || { cat "$out" >&2; die "pgbench $name failed"; }
    awk '/^tps/ {print $3}' "$out"
}

# compare NAME_A USER_A SCRIPT_A NAME_B USER_B SCRIPT_B [CLIENTS] [SETUP_A] [SETUP_B]:
# alternates A and B (which goes first alternates too) for ROUNDS rounds, running SETUP_X before
# each run of X; prints "median_a median_b" (tps)
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

# interleave NAME USER SCRIPT_A SCRIPT_B: one pgbench run of ROUNDS x SECS seconds that picks A or
# B at random for each transaction, so that both meet the same machine at the same moments (on a
# noisy machine, rounds that alternate minutes apart differ by more than what is measured);
# prints "latency_a latency_b" (average ms per transaction of each script)
interleave() {
    local name=$1 user=$2 a=$3 b=$4 out
    RUN=$((RUN + 1)); out=$RES/$name.$RUN.out
    runuser -u postgres -- "$PGBENCH" -h localhost -p "$PORT" -U "$user" -n -T $((ROUNDS * SECS)) \
        -f "$a@1" -f "$b@1" "$DB" >"$out" 2>&1 || { cat "$out" >&2; die "pgbench $name failed"; }
    awk '/^SQL script/ {s++} s && /latency average/ {print $5}' "$out" | paste -sd' '
}

# report LABEL VALUE: a line of the summary
report() { printf '%-62s %s\n' "$1" "$2" | tee -a "$RESULTS" >&2; }

# time_ratio TPS_A TPS_B: time per call of A over B's (how much slower A is)
time_ratio() { python3 -c "import sys; print(round(float(sys.argv[2]) / float(sys.argv[1]), 3))" "$1" "$2"; }

# load_tenants ROWS [EXPIRING_EVERY] [EXTRA_SQL]: 100 ordinary login roles bench_u1..100 mapped
# to users 'user 1'..'user 100'; ROWS memories of kind 'memory' spread over them (12 words each
# over a 2,000-word vocabulary, bench_words; every EXPIRING_EVERY-th expires in a year), each with
# a 384-dimension embedding near one of 50 centers; bench_queries (100 query vectors); the HNSW
# index. Bulk-loaded as the owner with the row triggers off, then what they derive set, then
# EXTRA_SQL (with the triggers still off, before the index is built).
load_tenants() {
    local rows=$1 expiring_every=${2:-0} extra_sql=${3:-}
    log "loading $rows memories of 100 users (text over a 2,000-word vocabulary, 384-dim embeddings in 50 clusters)"
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
ALTER TABLE memories DISABLE TRIGGER USER;
INSERT INTO memories (kind, content, created_by, updated_by, content_hash, expires_at)
SELECT 'memory',
       array_to_string(ARRAY(SELECT v.a[1 + floor(power(random(), 2) * 1999)::int]
                               FROM generate_series(1, 12 + 0 * g)), ' '),
       u.id, u.id, '', CASE WHEN $expiring_every > 0 AND g % greatest($expiring_every, 1) = 0 THEN now() + interval '1 year' END
  FROM generate_series(1, $rows) g
  JOIN users u ON u.name = 'user ' || (1 + g % 100)
 CROSS JOIN (SELECT array_agg(w ORDER BY n) AS a FROM bench_words) v;
UPDATE memories SET content_hash = content_sha256(content);
UPDATE memories m SET content_embedding = (
    SELECT array_agg(c.v[k] + (random() - 0.5) * 0.35)::vector
      FROM bench_centers c, generate_series(1, 384) k
     WHERE c.c = 1 + (abs(hashtext(m.id::text)) % 50))
 WHERE m.kind = 'memory';
$extra_sql
ALTER TABLE memories ENABLE TRIGGER USER;
TRUNCATE embedding_schedule;
CREATE TABLE bench_queries AS
  SELECT g AS n, (SELECT array_agg(c.v[k] + (random() - 0.5) * 0.35)::vector FROM bench_centers c, generate_series(1, 384) k
                  WHERE c.c = 1 + g % 50) AS v
    FROM generate_series(1, 100) g;
GRANT SELECT ON bench_queries, bench_words TO PUBLIC;
SQL
    log "HNSW index (384 dimensions)"
    q -c "SET maintenance_work_mem = '1GB'" -c "SELECT create_vector_index(384)" >/dev/null
    q -c "VACUUM ANALYZE" >/dev/null
}
