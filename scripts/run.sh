#!/usr/bin/env bash
# Sets up and runs MemoriesDB on a fresh Debian 12 machine (as root): installs everything,
# builds and installs the extension, starts a PostgreSQL 15 cluster as the postgres user with
# the extension created and a demo conversation loaded, and leaves it running.
# Idempotent: a second run reuses the installed tools, the cluster and the demo data.
#
# Environment: MEMORIESDB_PORT (default 5433), MEMORIESDB_DATA (default /var/lib/memoriesdb/pgdata),
#              MEMORIESDB_DB (default memoriesdb), MEMORIESDB_HUB_PORT (default 5002),
#              MEMORIESDB_EMBEDDER_PORT (default 5003), MEMORIESDB_MODEL_DIR (default: the all-MiniLM-L6-v2
#              setup.sh installs; any sentence-transformers BERT model directory)
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

# The hub (WebSocket pub/sub and live chat, with its demo page) and the embedder (fills the
# memories' embeddings, serves query embeddings): (re)started on every run so that each is the
# binary just built; pids and logs beside the data.
SERVICE_DIR=$(dirname "$DATA")
HUB_PORT=${MEMORIESDB_HUB_PORT:-5002}
EMBEDDER_PORT=${MEMORIESDB_EMBEDDER_PORT:-5003}
MODEL_DIR=${MEMORIESDB_MODEL_DIR:-$DEFAULT_MODEL_DIR}
log "building the hub and the embedder (cargo build --release -p memoriesdb-hub -p memoriesdb-embedder)"
cargo build --release --quiet -p memoriesdb-hub -p memoriesdb-embedder

# (before 0.2 the hub's files were hub.pid and hub.log)
if [ -f "$SERVICE_DIR/hub.pid" ]; then mv "$SERVICE_DIR/hub.pid" "$SERVICE_DIR/memoriesdb-hub.pid"; fi
ulimit -n "$(ulimit -Hn)"   # the hub: one descriptor per client
restart_service memoriesdb-hub "$SERVICE_DIR" "http://127.0.0.1:$HUB_PORT/readyz" \
    --port "$HUB_PORT" --database-url "host=localhost port=$PORT user=$HUB_ROLE dbname=$DB"

# The embedder's role: a worker (reads all content, works the queue), never a superuser.
EMBEDDER_ROLE=memoriesdb_embedder
cluster_psql "$DATA" "$PORT" -d "$DB" <<SQL
DO \$\$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = '$EMBEDDER_ROLE') THEN
        CREATE ROLE $EMBEDDER_ROLE LOGIN NOSUPERUSER NOBYPASSRLS;
    END IF;
END
\$\$;
GRANT memoriesdb_worker TO $EMBEDDER_ROLE;
-- where embed_text(), semantic_search() and hybrid_search('plain words') get query embeddings
ALTER DATABASE "$DB" SET memoriesdb.embedding_url = 'http://127.0.0.1:$EMBEDDER_PORT/v1/embeddings';
SQL
restart_service memoriesdb-embedder "$SERVICE_DIR" "http://127.0.0.1:$EMBEDDER_PORT/readyz" \
    --port "$EMBEDDER_PORT" --model-dir "$MODEL_DIR" \
    --database-url "host=localhost port=$PORT user=$EMBEDDER_ROLE dbname=$DB"
# the demo's messages are embedded within a second or two; wait so that the first search finds them
for _ in $(seq 100); do
    [ "$(cluster_psql "$DATA" "$PORT" -d "$DB" -tAc "SELECT pending + processing + failed FROM memoriesdb.embedding_queue_status")" = 0 ] && break
    sleep 0.1
done
log "embeddings: $(cluster_psql "$DATA" "$PORT" -d "$DB" -tAc "SELECT format('%s done, %s waiting, %s dead', done, pending + processing + failed, dead) FROM memoriesdb.embedding_queue_status")"

cat <<MSG

MemoriesDB is running.
  connect:   psql -h localhost -p $PORT -U $HUB_ROLE $DB      (the demo user; -U postgres for an administrator)
  try:       SELECT get_conversation_text(id) FROM memories WHERE kind = 'session' AND content = 'Product Brainstorm';
  data:      $DATA   (log: $DATA/server.log)
  stop:      runuser -u postgres -- $PG_BIN/pg_ctl -D $DATA stop
  search:    SELECT content, score FROM hybrid_search('what did we say about phones?');
  hub:       http://127.0.0.1:$HUB_PORT/  (live chat demo page)
             ws://127.0.0.1:$HUB_PORT/ws?c=<channel>   (pid $(cat "$SERVICE_DIR/memoriesdb-hub.pid"), log: $SERVICE_DIR/memoriesdb-hub.log)
  embedder:  http://127.0.0.1:$EMBEDDER_PORT/v1/embeddings, /metrics  (model: $MODEL_DIR)
             (pid $(cat "$SERVICE_DIR/memoriesdb-embedder.pid"), log: $SERVICE_DIR/memoriesdb-embedder.log)
  stop:      kill \$(cat $SERVICE_DIR/memoriesdb-hub.pid $SERVICE_DIR/memoriesdb-embedder.pid)
MSG
