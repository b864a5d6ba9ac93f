#!/usr/bin/env bash
# Run a command next to a hub listening on 127.0.0.1:5002 — the address the specification's
# examples hard-code — inside a private network namespace, so the examples run unmodified
# without colliding with a hub that scripts/run.sh may have left on the real port 5002.
# PostgreSQL is reached through its Unix socket, which the namespace does not hide.
#
#   in_netns.sh HUB_BINARY DATABASE_URL COMMAND [ARGS...]     (as root; needs unshare and ip)
set -euo pipefail
if [ -z "${MEMORIESDB_IN_NETNS:-}" ]; then
    exec unshare --net -- env MEMORIESDB_IN_NETNS=1 "$0" "$@"
fi
hub=$1 database_url=$2
shift 2
ip link set lo up
log=$(mktemp /tmp/memoriesdb-hub-netns.XXXXXX.log)
"$hub" --port 5002 --database-url "$database_url" 2>"$log" &
hub_pid=$!
trap 'kill "$hub_pid" 2>/dev/null; wait "$hub_pid" 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 200); do
    if curl -sf http://127.0.0.1:5002/readyz >/dev/null; then break; fi
    if ! kill -0 "$hub_pid" 2>/dev/null; then cat "$log" >&2; echo "hub exited" >&2; exit 1; fi
    sleep 0.05
done
curl -sf http://127.0.0.1:5002/readyz >/dev/null || { cat "$log" >&2; echo "hub not ready" >&2; exit 1; }
status=0
"$@" || status=$?
exit "$status"
