#!/usr/bin/env bash
# Diagnostic companion to bench/run.sh (run as root): where do fork, read and write time go?
# Same throwaway cluster, data and role (bench_app, row-level security applies) as run.sh;
# results go to bench/results/<UTC time>-diagnose/.
#
#   cost:  server-side median time of one fork_session (10,000-message session) and of one
#          add_message_to_session, each in its own transaction, with each INSERT trigger of
#          memories / memory_sessions (/ memory_edges) disabled in turn, each secondary index
#          dropped in turn, row-level security off, all triggers off (variants that make the
#          write invalid are reported as failing);
#          in DIAG_ROUNDS rounds of blocks (order reversed every other round) so that drift on
#          the machine hits every variant alike. The variants come from the catalog.
#   copy:  (with cost) what a copying fork would cost: INSERT ... SELECT of 10,000 messages into a plain
#          table and into memories itself (rolled back)
#   read:  EXPLAIN ANALYZE; pgbench of the read path, whole and in parts, jit on and off, and
#          without row-level security
#   write: pgbench, 8 clients on their own sessions: all on, without the event trigger, without
#          row-level security, without it and all triggers; a bare INSERT with and
#          without the three NOTIFYs a message sends, and into a flat table with memories'
#          indexes and generated tsvector; wait events sampled during the full run
#   floor: the least an append with the same guarantees can cost: one plain statement writing the
#          message (memories' indexes), its audit, queue and outbox rows, vs a bare INSERT
#   wal:   WAL per appended message by relation (pg_waldump over 1,000 appends)
#   statements: every statement one fork and one append execute, with durations (auto_explain)
#
# Environment: DIAG_SECTIONS (cost read write floor wal statements) which parts to run,
#              DIAG_ROUNDS (3), DIAG_ITERS (60) timed calls per variant and round,
#              DIAG_SECONDS (10) per pgbench run.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
. bench/lib.sh
[ "$(id -u)" = 0 ] || die "run bench/diagnose.sh as root"

ROUNDS=${DIAG_ROUNDS:-3}
ITERS=${DIAG_ITERS:-60}
SECS=${DIAG_SECONDS:-10}
RES=bench/results/$(date -u +%Y%m%dT%H%M%SZ)-diagnose
mkdir -p "$RES"
START=$SECONDS
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)" >"$RES/load.txt"

bench_cluster_up diagnose
cluster_psql "$CLUSTER" "$PORT" -d "$DB" <bench/diagnose.sql >/dev/null
echo "memoriesdb: $EXT_BUILD, $EXT_ID; $EXT_SOURCE; runs as $BENCH_USER" >>"$RES/load.txt"

# Variants: one per user trigger on the tables a fork or an append writes (disabled), one per
# secondary non-unique index on them (dropped and re-created), row-level security (disabled on
# memories and memory_sessions), and all triggers at once. Discovered from the catalog, so the
# list follows the schema of the installed build.
declare -A GROUP=([none]="")
VARIANTS=(none)
# memory_edges only when the fork or append path writes edges (older builds stored a belongs_to
# and a forked_from edge per message / fork)
TABLES="'memories', 'memory_sessions'"
if [ "$(q -c "SELECT bool_or(prosrc LIKE '%memory_edges%') FROM pg_proc
               WHERE proname IN ('add_message_to_session', 'fork_session') AND pronamespace = '$EXT_SCHEMA'::regnamespace")" = t ]; then
    TABLES="$TABLES, 'memory_edges'"
fi
PROVENANCE=""
while IFS='|' read -r tbl trg; do
    GROUP["trigger:$trg"]="trigger:$tbl:$trg"; VARIANTS+=("trigger:$trg")
    case $trg in *provenance*) PROVENANCE="$PROVENANCE trigger:$tbl:$trg" ;; esac
done < <(q -F '|' -c "SELECT c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
                       WHERE NOT t.tgisinternal AND t.tgenabled <> 'D' AND c.relnamespace = '$EXT_SCHEMA'::regnamespace
                         AND c.relname IN ($TABLES)
                         AND (t.tgtype & 4) <> 0   -- INSERT triggers only
                       ORDER BY c.relname, t.tgname")
while read -r idx; do
    GROUP["index:$idx"]="index:$idx"; VARIANTS+=("index:$idx")
done < <(q -c "SELECT ic.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_class ic ON ic.oid = i.indexrelid
                WHERE c.relnamespace = '$EXT_SCHEMA'::regnamespace AND c.relname IN ('memories', 'memory_sessions')
                  AND NOT i.indisunique AND NOT i.indisprimary ORDER BY 1")
if [ "$(q -c "SELECT relrowsecurity FROM pg_class WHERE oid = '$EXT_SCHEMA.memories'::regclass")" = t ]; then
    GROUP[row_level_security]="rls:memories rls:memory_sessions"; VARIANTS+=(row_level_security)
    # under row-level security a row without provenance is refused, so provenance can only be
    # measured with row-level security off as well
    if [ -n "$PROVENANCE" ]; then
        GROUP[row_level_security+provenance]="rls:memories rls:memory_sessions$PROVENANCE"
        VARIANTS+=(row_level_security+provenance)
    fi
    GROUP[row_level_security+all_triggers]="rls:memories rls:memory_sessions alltrg:memories alltrg:memory_sessions"
    VARIANTS+=(row_level_security+all_triggers)
fi
GROUP[all_triggers]="alltrg:memories alltrg:memory_sessions"; VARIANTS+=(all_triggers)
declare -A INDEXDEF
toggle() { # enable|disable VARIANT
    local t kind rest
    for t in ${GROUP[$2]}; do
        kind=${t%%:*}; rest=${t#*:}
        case $kind:$1 in
            trigger:*) q -c "ALTER TABLE $EXT_SCHEMA.${rest%%:*} ${1^^} TRIGGER ${rest#*:}" >/dev/null ;;
            alltrg:*) q -c "ALTER TABLE $EXT_SCHEMA.$rest ${1^^} TRIGGER USER" >/dev/null ;;
            rls:*) q -c "ALTER TABLE $EXT_SCHEMA.$rest ${1^^} ROW LEVEL SECURITY" >/dev/null ;;
            index:disable)
                INDEXDEF[$rest]=$(q -c "SELECT pg_get_indexdef('$EXT_SCHEMA.$rest'::regclass)")
                q -c "DROP INDEX $EXT_SCHEMA.$rest" >/dev/null ;;
            index:enable) q -c "${INDEXDEF[$rest]}" >/dev/null ;;
        esac
    done
}
label() { [ "$1" = none ] && echo "all on" || echo "without $1"; }
# timed q|qa LABEL SQL: run a timing call; a variant can make the write invalid (e.g. no
# provenance under row-level security, or a superuser that is no MemoriesDB user), which is
# recorded rather than fatal
timed() {
    "$1" -c "$3" 2>"$BASE/err" \
        || echo "$2: fails: $(grep -m1 ERROR "$BASE/err")" | tee -a "$RES/failed_variants.txt"
}
echo "variants: ${VARIANTS[*]}" | tee "$RES/variants.txt"

#----------------------------------------------------------------------------------------------
section_cost() {
log "cost: $ROUNDS rounds x $ITERS forks and $ITERS appends per variant, as $BENCH_USER"
for r in $(seq 1 "$ROUNDS"); do
    order=("${VARIANTS[@]}")
    [ $((r % 2)) = 0 ] && mapfile -t order < <(printf '%s\n' "${VARIANTS[@]}" | tac)
    for v in "${order[@]}"; do
        toggle disable "$v"
        timed qa "fork / $(label "$v")" "CALL bench.time_forks('fork / $(label "$v")', $ITERS)"
        timed qa "add / $(label "$v")" "CALL bench.time_adds('add / $(label "$v")', $ITERS)"
        toggle enable "$v"
    done
done
S10K=$(sid_of fork_10000)
COPY_SID=$(qa -c "SELECT create_session('copy target')")
COPY_PLAIN="INSERT INTO bench.copy_target SELECT m.id, '$COPY_SID', m.position, m.role, m.content, m._created_at, m._metadata
              FROM memories m WHERE m.session_id = '$S10K'"
qa -c "CALL bench.time_statement('copy / 10,000 msgs into plain table, as $BENCH_USER (row-level security on the read)', 20, \$\$ $COPY_PLAIN \$\$)"
qa -c "CALL bench.time_statement('copy / 10,000 msgs into plain table, via bench.copy_messages (no row-level security; as in run.sh)', 20, \$\$
        SELECT bench.copy_messages('$S10K', '$COPY_SID') \$\$)"
# (since the trust boundary, messages are written only through the API: this direct INSERT is
# refused by the memories_insert policy, and recorded as failing)
timed qa "copy / 10,000 msgs into memories (all on)" "CALL bench.time_statement('copy / 10,000 msgs into memories (all on)', 4, \$\$
        INSERT INTO memories (kind, content, _metadata, session_id, position, role)
        SELECT 'message', m.content, m._metadata, '$COPY_SID', m.position, m.role
          FROM memories m WHERE m.session_id = '$S10K'\$\$)"
qa -c "CALL bench.time_statement('part / session_lineage + fork-point lookup (dynamic SQL)', 100, \$\$
        SELECT m.id FROM session_lineage('$S10K') l
          JOIN memories m ON m.session_id = l.lineage_session_id AND m.position = 10000\$\$)"
qa -c "CALL bench.time_statement('part / current_memory_user()', 100, \$\$ SELECT current_memory_user() \$\$)"
qa -c "CALL bench.time_statement('part / to_tsvector(english) of a 200-byte message', 100, \$\$
        SELECT to_tsvector('english'::regconfig, bench.body(7))\$\$)"
{
    echo "# server-side time of one call in its own transaction, as $BENCH_USER unless noted: median over $ROUNDS rounds x $ITERS (first 3 of each block dropped)"
    q -F $'\t' -P footer=off -c "
        SELECT variant, count(*) AS n,
               round(percentile_cont(0.5) WITHIN GROUP (ORDER BY exec_us)::numeric, 1) AS median_us,
               round(percentile_cont(0.5) WITHIN GROUP (ORDER BY total_us)::numeric, 1) AS median_us_with_commit
          FROM bench.timing t
         WHERE iter > least(3, (SELECT max(iter) / 4 FROM bench.timing t2 WHERE t2.variant = t.variant))
         GROUP BY variant ORDER BY split_part(variant, ' / ', 1) DESC, min(ctid)"
} | tee "$RES/cost.tsv"
q -c "\\copy bench.timing TO STDOUT WITH (FORMAT csv, HEADER)" >"$RES/cost_raw.csv"
}

#----------------------------------------------------------------------------------------------
section_read() {
log "read: EXPLAIN ANALYZE and pgbench variants (1 client, ${SECS}s each, jit on and off)"
LEAF=$(sid_of read_leaf)
FLATSESS=$(sid_of read_flat_session)
BASE_SID=$(sid_of read_baseline)
q -c "ANALYZE"
INNER="SELECT m.position, m.role, m.content, m.id, m.session_id, m._created_at, m._metadata
  FROM session_lineage('$LEAF') l
 CROSS JOIN LATERAL (SELECT * FROM memories mm WHERE mm.session_id = l.lineage_session_id AND mm.position <= l.visible_upto
                     ORDER BY mm.position) m
 ORDER BY m.position"
{
    echo "== get_formatted_conversation (chain leaf), with its inner query (auto_explain)"
    q -c "LOAD 'auto_explain'" -c "SET auto_explain.log_min_duration = 0" -c "SET auto_explain.log_nested_statements = on" \
      -c "SET auto_explain.log_analyze = on" -c "SET client_min_messages = log" -c "SET auto_explain.log_level = notice" \
      -c "SET ROLE $BENCH_USER" -c "SELECT count(*) FROM get_formatted_conversation('$LEAF', true)"
    echo "== its query, run directly"
    qa -c "EXPLAIN (ANALYZE, BUFFERS) $INNER"
    echo "== its query, run directly, as the superuser (no row-level security)"
    q -c "EXPLAIN (ANALYZE, BUFFERS) $INNER"
    echo "== flat baseline"
    qa -c "EXPLAIN (ANALYZE, BUFFERS) SELECT id, session_id, position, role, content, created_at, metadata
            FROM bench.flat_messages WHERE session_id = '$BASE_SID' ORDER BY position"
} >"$RES/read_explain.txt" 2>&1
echo "SELECT id, session_id, position, role, content, created_at, metadata FROM bench.flat_messages WHERE session_id = '$BASE_SID' ORDER BY position;" >"$SQL_DIR/r_flat.sql"
echo "SELECT position, role, content, id, session_id, _created_at, _metadata FROM memories WHERE session_id = '$FLATSESS' ORDER BY position;" >"$SQL_DIR/r_memories_direct.sql"
echo "$INNER;" >"$SQL_DIR/r_inner_chain.sql"
echo "SELECT * FROM get_formatted_conversation('$FLATSESS', include_metadata => true);" >"$SQL_DIR/r_gfc_nofork.sql"
echo "SELECT * FROM get_formatted_conversation('$LEAF', include_metadata => true);" >"$SQL_DIR/r_gfc_chain.sql"
printf 'script\tjit\tvariant\ttps\tlatency_ms\n' >"$RES/read.tsv"
rrun() { # script jit variant-to-disable
    local tps out=$RES/${1}_jit_$2_${3//[^a-zA-Z0-9_+]/_}.out
    toggle disable "$3"
    tps=$( (PGOPTIONS="-c jit=$2" pgb "$out" "$SQL_DIR/$1.sql" 1 1 "$SECS") 2>/dev/null || echo "fails")
    toggle enable "$3"
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$(label "$3")" "$tps" "$(sed -n 's/^latency average = \([0-9.]*\) ms$/\1/p' "$out")" | tee -a "$RES/read.tsv"
}
for jit in on off; do
    for v in r_flat r_memories_direct r_inner_chain r_gfc_nofork r_gfc_chain; do
        rrun "$v" "$jit" none
    done
done
if [ -n "${GROUP[row_level_security]+x}" ]; then
    for v in r_memories_direct r_inner_chain r_gfc_chain; do rrun "$v" on row_level_security; done
fi
}

#----------------------------------------------------------------------------------------------
section_write() {
log "write: pgbench variants, 8 clients, ${SECS}s each"
BODY=$(q -c "SELECT bench.body(42)")
W="(SELECT sid FROM bench.writers WHERE client_id = :client_id)"
echo "SELECT add_message_to_session($W, 'user', '$BODY');" >"$SQL_DIR/w_memoriesdb.sql"
printf '\\set pos :pos + 1\nINSERT INTO bench.flat_write (session_id, position, role, content) VALUES (%s, :pos, %s, %s);\n' \
    "$W" "'user'" "'$BODY'" >"$SQL_DIR/w_flat.sql"
cat >"$SQL_DIR/w_flat_notify.sql" <<SQL
\\set pos :pos + 1
WITH i AS (INSERT INTO bench.flat_write (session_id, position, role, content) VALUES ($W, :pos, 'user', '$BODY') RETURNING id, session_id)
SELECT pg_notify('chat_updates_' || replace(i.session_id::text, '-', ''), i.id::text), pg_notify('memoriesdb_events', i.id::text),
       pg_notify('memoriesdb_embedding_queue', '') FROM i;
SQL
printf '\\set pos :pos + 1\nINSERT INTO bench.flat_indexed (session_id, position, role, content, created_by) VALUES (%s, :pos, %s, %s, %s);\n' \
    "$W" "'user'" "'$BODY'" "'$(q -c "SELECT id FROM users WHERE db_role = 'bench_app'")'" >"$SQL_DIR/w_flat_indexed.sql"
printf 'variant\tclients\ttps\tlatency_ms\twal_bytes_per_txn\n' >"$RES/write.tsv"
wrun() { # label script variant-to-disable [role]
    local tps f=${1//[^a-zA-Z0-9_+]/_}
    toggle disable "$3"
    tps=$( (BENCH_USER=${4:-$BENCH_USER} pgb "$RES/w_$f.out" "$SQL_DIR/$2.sql" 8 2 "$SECS" -D pos=0) 2>/dev/null || echo "fails")
    toggle enable "$3"
    printf '%s\t8\t%s\t%s\t%s\n' "$1" "$tps" "$(sed -n 's/^latency average = \([0-9.]*\) ms$/\1/p' "$RES/w_$f.out")" \
        "$(sed -n 's/^wal bytes per transaction = \([0-9]*\)$/\1/p' "$RES/w_$f.out")" | tee -a "$RES/write.tsv"
}
wrun "flat INSERT" w_flat none
wrun "flat INSERT + the 3 NOTIFYs a message sends" w_flat_notify none
wrun "flat INSERT into a table with memories' indexes and tsvector" w_flat_indexed none
q -c "CALL bench.sample_waits($SECS - 1)" & sampler=$!
wrun "add_message_to_session, all on" w_memoriesdb none
wait "$sampler"
for v in "${VARIANTS[@]}"; do
    case $v in
        trigger:*inserted*|trigger:*events*|row_level_security|row_level_security+all_triggers|all_triggers)
            wrun "add_message_to_session, $(label "$v")" w_memoriesdb "$v" ;;
    esac
done
{
    echo "# wait events of the 8 add_message_to_session clients (share of samples), all on"
    q -F $'\t' -P footer=off -c "
        SELECT wait_event_type, wait_event, round(100.0 * sum(n) / (SELECT sum(n) FROM bench.wait_samples), 1) AS pct
          FROM bench.wait_samples WHERE state = 'active' GROUP BY 1, 2
        UNION ALL
        SELECT 'idle (client side / network)', '', round(100.0 * coalesce(sum(n), 0) / (SELECT sum(n) FROM bench.wait_samples), 1)
          FROM bench.wait_samples WHERE state <> 'active'
         ORDER BY 3 DESC"
} | tee "$RES/write_waits.tsv"
}

#----------------------------------------------------------------------------------------------
section_floor() {
    # The least an append with the issue's guarantees can cost in PostgreSQL, whatever the
    # implementation: one statement, no PL/pgSQL, no trigger, no row-level security, no foreign
    # key, that takes the next position of the session and writes the message (with its hash,
    # into a table with memories' indexes and generated tsvector), its audit row, its queue row
    # and its events into an outbox (tables copied from the extension's with their indexes; no
    # relay drains this outbox, which flatters the floor). Against the bare INSERT of run.sh, in
    # alternating order.
    log "floor: the leanest possible append vs a bare INSERT, 8 clients, $ROUNDS x ${SECS}s each"
    local body user message r v tps order
    body=$(q -c "SELECT bench.body(42)")
    user=$(q -c "SELECT id FROM users WHERE db_role = 'bench_app'")
    q >/dev/null <<SQL
DROP TABLE IF EXISTS bench.floor_sessions, bench.floor_messages, bench.floor_audit, bench.floor_queue, bench.floor_outbox;
CREATE TABLE bench.floor_sessions (id uuid PRIMARY KEY, last_position bigint NOT NULL DEFAULT 0);
INSERT INTO bench.floor_sessions (id) SELECT sid FROM bench.writers;
CREATE TABLE bench.floor_messages (LIKE bench.flat_indexed INCLUDING ALL, content_hash text NOT NULL);
CREATE TABLE bench.floor_audit (LIKE $EXT_SCHEMA.audit_log INCLUDING ALL);
CREATE TABLE bench.floor_queue (LIKE $EXT_SCHEMA.embedding_schedule INCLUDING ALL);
CREATE TABLE bench.floor_outbox (LIKE $EXT_SCHEMA.memory_event_outbox INCLUDING ALL);
ALTER TABLE bench.floor_sessions OWNER TO $BENCH_USER;
ALTER TABLE bench.floor_messages OWNER TO $BENCH_USER;
ALTER TABLE bench.floor_audit OWNER TO $BENCH_USER;
ALTER TABLE bench.floor_queue OWNER TO $BENCH_USER;
ALTER TABLE bench.floor_outbox OWNER TO $BENCH_USER;
SQL
    # what every variant does: take the session's next position and write the message
    message="$(cat <<SQL
WITH s AS (UPDATE bench.floor_sessions SET last_position = last_position + 1
            WHERE id = (SELECT sid FROM bench.writers WHERE client_id = :client_id) RETURNING id, last_position),
m AS (INSERT INTO bench.floor_messages (id, session_id, position, role, content, created_by, content_hash)
      SELECT uuid_generate_v7(), s.id, s.last_position, 'user', '$body', '$user',
             encode(sha256(convert_to('$body', 'UTF8')), 'hex') FROM s
      RETURNING *),
SQL
)"
    cat >"$SQL_DIR/floor.sql" <<SQL
$message
a AS (INSERT INTO bench.floor_audit (table_name, operation, row_id, new_row, acting_user, subject_user, db_role, txid)
      SELECT 'memories', 'INSERT', m.id, to_jsonb(m) - 'search_tsv', m.created_by, m.created_by, current_user, txid_current() FROM m),
q AS (INSERT INTO bench.floor_queue (memory_id, content_hash) SELECT m.id, m.content_hash FROM m)
INSERT INTO bench.floor_outbox (channels, payloads)
SELECT ARRAY['chat_updates_' || replace(m.session_id::text, '-', ''), 'memoriesdb_events', 'memoriesdb_embedding_queue'],
       ARRAY[e.payload, e.payload, '']
  FROM m, LATERAL (SELECT json_build_object('op', 'INSERT', 'table', 'memories', 'kind', 'message', 'id', m.id,
                                            'session_id', m.session_id, 'position', m.position, 'role', m.role,
                                            'created_at', m.created_at)::text AS payload) e;
SQL
    # the same without the outbox and with an audit row that records only the content hash (as
    # if events came from elsewhere and inserts were audited by reference), and the message with
    # its position alone (no audit, queue or event row at all)
    cat >"$SQL_DIR/floor_lean.sql" <<SQL
$message
a AS (INSERT INTO bench.floor_audit (table_name, operation, row_id, new_row, acting_user, subject_user, db_role, txid)
      SELECT 'memories', 'INSERT', m.id, jsonb_build_object('content_hash', m.content_hash), m.created_by, m.created_by,
             current_user, txid_current() FROM m)
INSERT INTO bench.floor_queue (memory_id, content_hash) SELECT m.id, m.content_hash FROM m;
SQL
    cat >"$SQL_DIR/floor_message_only.sql" <<SQL
${message%,}
SELECT count(*) FROM m;
SQL
    printf '\\set pos :pos + 1\nINSERT INTO bench.flat_write (session_id, position, role, content) VALUES ((SELECT sid FROM bench.writers WHERE client_id = :client_id), :pos, %s, %s);\n' \
        "'user'" "'$body'" >"$SQL_DIR/floor_flat.sql"
    # and MemoriesDB's own append (as the benchmark role, row-level security on), in the same rotation
    echo "SELECT add_message_to_session((SELECT sid FROM bench.writers WHERE client_id = :client_id), 'user', '$body');" \
        >"$SQL_DIR/floor_api.sql"
    printf 'round\tvariant\ttps\twal_bytes_per_txn\n' >"$RES/floor.tsv"
    for r in $(seq 1 "$ROUNDS"); do
        order="flat floor api lean message_only"; [ $((r % 2)) = 0 ] && order="message_only lean api floor flat"
        for v in $order; do
            local script=floor_$v; [ "$v" = floor ] && script=floor
            tps=$(pgb "$RES/floor_${v}_$r.out" "$SQL_DIR/$script.sql" 8 2 "$SECS" -D pos=$((r * 100000000)))
            printf '%s\t%s\t%s\t%s\n' "$r" "$v" "$tps" \
                "$(sed -n 's/^wal bytes per transaction = \([0-9]*\)$/\1/p' "$RES/floor_${v}_$r.out")" | tee -a "$RES/floor.tsv"
        done
    done
    # server time of the floor statement alone, as a fork's lower bound: a fork writes at least
    # as much (a session memory with its audit, queue and outbox rows, and its session row)
    local once
    once=$(sed 's/:client_id/0/' "$SQL_DIR/floor.sql")
    qa >>"$RES/floor.tsv" 2>&1 <<SQL
CREATE TEMP TABLE floor_timing (us float8);
DO \$do\$
DECLARE t0 timestamptz;
BEGIN
    FOR i IN 1..300 LOOP
        t0 := clock_timestamp();
        $once
        INSERT INTO floor_timing VALUES (1e6 * extract(epoch FROM clock_timestamp() - t0));
        COMMIT;
    END LOOP;
END
\$do\$;
SELECT '# floor statement server time, median of 300 (each committed): '
       || round(percentile_cont(0.5) WITHIN GROUP (ORDER BY us)::numeric) || ' us' FROM floor_timing;
SQL
    tail -1 "$RES/floor.tsv" >&2
    # the fork's server time against the floor statement's (a fork writes at least as much),
    # measured right after it, the same way (each call committed, medians)
    qa -c "DELETE FROM bench.timing WHERE variant = 'floor / fork'" -c "CALL bench.time_forks('floor / fork', 300)" >/dev/null
    q -A -t -c "SELECT '# fork_session (10,000-message session) server time, median of 300 (each committed): '
                       || round(percentile_cont(0.5) WITHIN GROUP (ORDER BY exec_us)::numeric) || ' us'
                  FROM bench.timing WHERE variant = 'floor / fork' AND iter > 3" >>"$RES/floor.tsv"
    python3 - "$RES/floor.tsv" <<'PY' | tee -a "$RES/floor.tsv"
import csv, re, statistics, sys
text = open(sys.argv[1]).read()
rows = [r for r in csv.DictReader(open(sys.argv[1]), delimiter="\t") if r["round"] and not r["round"].startswith("#")]
tps = {v: statistics.median(float(r["tps"]) for r in rows if r["variant"] == v) for v in ("flat", "floor", "api", "lean", "message_only")}
for v in ("floor", "lean", "message_only"):
    print(f"# median tps: {v} {tps[v]:.0f}, bare INSERT {tps['flat']:.0f}: {v} / bare = {tps[v] / tps['flat']:.2f}")
api = [float(r["tps"]) for r in rows if r["variant"] == "api"]
floor = [float(r["tps"]) for r in rows if r["variant"] == "floor"]
per_round = " ".join(f"{a / f:.2f}" for a, f in zip(api, floor))
print(f"# add_message_to_session, 8 clients, median {tps['api']:.0f} tps / floor statement {tps['floor']:.0f} tps = {tps['api'] / tps['floor']:.2f} (per round: {per_round})")
floor_us = re.search(r"floor statement server time.*?: (\d+) us", text)
fork_us = re.search(r"fork_session .*?: (\d+) us", text)
if floor_us and fork_us:
    print(f"# fork_session / floor statement, server time: {int(fork_us.group(1)) / int(floor_us.group(1)):.2f}")
PY
}

#----------------------------------------------------------------------------------------------
section_wal() {
    # WAL written per message, by relation: N appends (one transaction each, after a warm-up
    # and a checkpoint), then pg_waldump over exactly that stretch of WAL
    local n=1000 start end
    log "wal: WAL of $n appends by relation (pg_waldump)"
    qa -c "CALL bench.append_n(200)"
    q -c "CHECKPOINT" >/dev/null
    qa -c "CALL bench.append_n(200)"
    start=$(q -c "SELECT pg_current_wal_lsn()")
    qa -c "CALL bench.append_n($n)"
    sleep 1   # let the event relay drain the outbox (its WAL is part of the cost)
    end=$(q -c "SELECT pg_current_wal_lsn()")
    q -c "SELECT pg_switch_wal()" >/dev/null
    q -F '|' -c "SELECT c.relfilenode, c.relname FROM pg_class c WHERE c.relfilenode <> 0" >"$BASE/relmap"
    "$PG_BIN/pg_waldump" -p "$CLUSTER/pg_wal" -s "$start" -e "$end" 2>/dev/null >"$BASE/waldump" || true
    python3 - "$BASE/waldump" "$BASE/relmap" "$n" <<'PY' | tee "$RES/wal_by_relation.tsv"
import re, sys, collections
names = dict(line.rstrip("\n").split("|", 1) for line in open(sys.argv[2]) if "|" in line)
n = int(sys.argv[3])
total = collections.Counter(); fpw = collections.Counter(); records = collections.Counter()
for line in open(sys.argv[1]):
    m = re.search(r"rmgr: (\w+)\s+len \(rec/tot\):\s*\d+/\s*(\d+)", line)
    if not m:
        continue
    rel = re.search(r"rel \d+/\d+/(\d+)", line)
    key = names.get(rel.group(1), "relfilenode " + rel.group(1)) if rel else "(" + m.group(1) + ", no relation)"
    total[key] += int(m.group(2)); records[key] += 1
    if "FPW" in line:
        fpw[key] += int(m.group(2))
print(f"# WAL per appended message, by relation ({n} appends, one transaction each; incl. commit records and the relay's outbox deletes)")
print("relation\tbytes_per_message\trecords_per_message\tof_which_full_page_images_bytes")
for key, b in total.most_common():
    print(f"{key}\t{b / n:.0f}\t{records[key] / n:.2f}\t{fpw[key] / n:.0f}")
print(f"TOTAL\t{sum(total.values()) / n:.0f}\t{sum(records.values()) / n:.2f}\t{sum(fpw.values()) / n:.0f}")
PY
}

section_statements() {
    # every SQL statement one fork and one append run (triggers included), with its duration:
    # auto_explain with nested statements, after a warm-up in the same session
    log "statements: what one fork_session and one add_message_to_session execute (auto_explain)"
    local s10k sid
    s10k=$(sid_of fork_10000); sid=$(writer_sid 0)
    q -c "LOAD 'auto_explain'" -c "SET auto_explain.log_nested_statements = on" -c "SET auto_explain.log_level = notice" \
      -c "SET auto_explain.log_min_duration = -1" -c "SET client_min_messages = notice" -c "SET ROLE $BENCH_USER" \
      -c "SELECT count(fork_session('$s10k', 'warm-up')) FROM generate_series(1, 20)" \
      -c "SELECT count(add_message_to_session('$sid', 'user', bench.body(g))) FROM generate_series(1, 20) g" \
      -c "RESET ROLE" -c "SET auto_explain.log_min_duration = 0" -c "SET ROLE $BENCH_USER" \
      -c "SELECT fork_session('$s10k', 'measured fork') IS NOT NULL AS forked" \
      -c "SELECT add_message_to_session('$sid', 'user', bench.body(1)) IS NOT NULL AS added" >"$BASE/statements" 2>&1 || true
    python3 - "$BASE/statements" <<'PY' | tee "$RES/statements.txt"
import re, sys
text = open(sys.argv[1]).read()
print("# statements executed by one fork_session and one add_message_to_session (bench role, warm session):")
print("# duration_ms  statement (nested statements print before the statement that ran them)")
for m in re.finditer(r"duration: ([0-9.]+) ms\s+plan:\s*\nQuery Text: (.*?)(?=\n\S|\Z)", text, re.S):
    q = " ".join(m.group(2).split())
    print(f"{float(m.group(1)):9.3f}  {q[:150]}")
PY
}

#----------------------------------------------------------------------------------------------
SECTIONS=${DIAG_SECTIONS:-cost read write floor wal statements}
for section in $SECTIONS; do "section_$section"; done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$RES/load.txt"
cat "$RES/load.txt"
log "diagnostic results: $RES  (elapsed $((SECONDS - START)) s)"
