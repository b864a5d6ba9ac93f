#!/usr/bin/env bash
# Sets up and runs MemoriesDB on a fresh Debian 12 machine (as root): installs everything,
# builds and installs the extension, starts a PostgreSQL 15 cluster as the postgres user with
# the extension created and a demo conversation loaded, and leaves it running.
# Idempotent: a second run reuses the installed tools, the cluster and the demo data.
#
# Environment: MEMORIESDB_PORT (default 5433), MEMORIESDB_DATA (default /var/lib/memoriesdb/pgdata),
#              MEMORIESDB_DB (default memoriesdb)
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
installed=$(cluster_psql "$DATA" "$PORT" -d "$DB" -tAc "SELECT extversion FROM pg_extension WHERE extname = 'memoriesdb'")
if [ -z "$installed" ]; then
    cluster_psql "$DATA" "$PORT" -d "$DB" -c "CREATE EXTENSION memoriesdb CASCADE"
else
    # picks up a newer version when upgrade scripts exist; a no-op otherwise
    cluster_psql "$DATA" "$PORT" -d "$DB" -c "ALTER EXTENSION memoriesdb UPDATE"
fi
cluster_psql "$DATA" "$PORT" -d "$DB" -f scripts/demo.sql

cat <<MSG

MemoriesDB is running.
  connect:   psql -h localhost -p $PORT -U postgres $DB
  try:       SELECT get_conversation_text(id) FROM memories WHERE kind = 'session' AND content = 'Product Brainstorm';
  data:      $DATA   (log: $DATA/server.log)
  stop:      runuser -u postgres -- $PG_BIN/pg_ctl -D $DATA stop
MSG
