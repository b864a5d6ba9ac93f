#!/usr/bin/env bash
# Sets up and runs MemoriesDB on a fresh Debian 12 machine (as root): installs everything,
# builds and installs the extension, starts a PostgreSQL 15 cluster as the postgres user with
# the extension created and a demo conversation loaded, and leaves it running.
# Idempotent: a second run reuses the installed tools, the cluster and the demo data.
#
# Environment: MEMORIESDB_PORT (default 5433), MEMORIESDB_DATA (default /var/lib/memoriesdb/pgdata),
#              MEMORIESDB_DB (default memoriesdb), MEMORIESDB_HUB_PORT (default 5002)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

PORT=${MEMORIESDB_PORT:-5433}
DATA=${MEMORIESDB_DATA:-/var/lib/memoriesdb/pgdata}
DB=${MEMORIESDB_DB:-memoriesdb}

scripts/setup.sh

log "starting PostgreSQL 15 in $DATA on port $PORT"
cluster_start "$DATA" "$PORT"

if ! cluster_psql "$DATA" "$PORT" -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1; then
    cluster_psql "$DATA" "$PORT" -d postgres -c "CREATE DATABASE \"$DB\""
fi
installed=$(cluster_psql "$DATA" "$PORT" -d "$DB" -tAc \
    "SELECT e.extnamespace::regnamespace FROM pg_extension e WHERE e.extname = 'memoriesdb'")
if [ -z "$installed" ]; then
    cluster_psql "$DATA" "$PORT" -d "$DB" -c "CREATE EXTENSION memoriesdb CASCADE"
elif [ "$installed" != memoriesdb ]; then
    die "database $DB has a pre-release build of memoriesdb installed in schema $installed; since 0.1.0 the
extension lives in its own schema, memoriesdb, and there is no upgrade path from that build. Drop the
demo database (runuser -u postgres -- dropdb -h localhost -p $PORT $DB) or use another MEMORIESDB_DB, and run again."
else
    # picks up a newer version when upgrade scripts exist; a no-op otherwise
    cluster_psql "$DATA" "$PORT" -d "$DB" -c "ALTER EXTENSION memoriesdb UPDATE"
fi
# What an administrator does for every database (README, "Users, identity and sharing"): the
# extension's schema on the search_path, so that SELECT create_session(...) resolves unqualified.
cluster_psql "$DATA" "$PORT" -d "$DB" -c "ALTER DATABASE \"$DB\" SET search_path = \"\$user\", public, memoriesdb"

# The hub's role: an ordinary role (never a superuser: row-level security must apply to what the
# hub does) that may use the API and acts as the demo user. The demo conversation belongs to that
# user, so the hub's page shows it; anonymous hub clients see nothing else.
HUB_ROLE=memoriesdb_demo_hub
cluster_psql "$DATA" "$PORT" -d "$DB" <<SQL
DO \$\$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = '$HUB_ROLE') THEN
        CREATE ROLE $HUB_ROLE LOGIN NOSUPERUSER NOBYPASSRLS;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM memoriesdb.users WHERE db_role = '$HUB_ROLE') THEN
        PERFORM memoriesdb.create_user('demo', '$HUB_ROLE');
    END IF;
END
\$\$;
GRANT memoriesdb_user TO $HUB_ROLE;
SQL
cluster_psql "$DATA" "$PORT" -d "$DB" -c "SET ROLE $HUB_ROLE" -f scripts/demo.sql

# The hub: WebSocket pub/sub and live chat on top of the database, with its demo page.
# (Re)started on every run so that it is the binary just built; pid and log beside the data.
HUB_PORT=${MEMORIESDB_HUB_PORT:-5002}
HUB_DIR=$(dirname "$DATA")
HUB_PID=$HUB_DIR/hub.pid
HUB_LOG=$HUB_DIR/hub.log
log "building the hub (cargo build --release -p memoriesdb-hub)"
cargo build --release --quiet -p memoriesdb-hub
if [ -f "$HUB_PID" ]; then
    old_pid=$(cat "$HUB_PID")
    if kill -0 "$old_pid" 2>/dev/null && grep -q memoriesdb-hub "/proc/$old_pid/cmdline" 2>/dev/null; then
        log "stopping the running hub (pid $old_pid)"
        kill -TERM "$old_pid"
        for _ in $(seq 100); do kill -0 "$old_pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$HUB_PID"
fi
log "starting the hub on port $HUB_PORT (log: $HUB_LOG)"
ulimit -n "$(ulimit -Hn)"   # one descriptor per client
setsid nohup target/release/memoriesdb-hub --port "$HUB_PORT" \
    --database-url "host=localhost port=$PORT user=$HUB_ROLE dbname=$DB" >>"$HUB_LOG" 2>&1 < /dev/null &
echo $! > "$HUB_PID"
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$HUB_PORT/readyz" >/dev/null && break
    kill -0 "$(cat "$HUB_PID")" 2>/dev/null || { tail -20 "$HUB_LOG" >&2; die "the hub exited (log: $HUB_LOG)"; }
    sleep 0.1
done
curl -sf "http://127.0.0.1:$HUB_PORT/readyz" >/dev/null || { tail -20 "$HUB_LOG" >&2; die "the hub is not ready (log: $HUB_LOG)"; }

cat <<MSG

MemoriesDB is running.
  connect:   psql -h localhost -p $PORT -U $HUB_ROLE $DB      (the demo user; -U postgres for an administrator)
  try:       SELECT get_conversation_text(id) FROM memories WHERE kind = 'session' AND content = 'Product Brainstorm';
  data:      $DATA   (log: $DATA/server.log)
  stop:      runuser -u postgres -- $PG_BIN/pg_ctl -D $DATA stop
  hub:       http://127.0.0.1:$HUB_PORT/  (live chat demo page)
             ws://127.0.0.1:$HUB_PORT/ws?c=<channel>   (pid $(cat "$HUB_PID"), log: $HUB_LOG)
  stop hub:  kill \$(cat $HUB_PID)
MSG
