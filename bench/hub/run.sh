#!/usr/bin/env bash
# Hub benchmarks (as root, loopback, one run): starts a throwaway PostgreSQL cluster and a release
# memoriesdb-hub, then runs the Rust bench client (memoriesdb-hub-bench):
#   latency      COMMIT of add_message_to_session -> WebSocket client with 1,000 clients connected
#                (one of them subscribed to the session; then all 1,000), next to a raw libpq
#                LISTEN client measured in the same run
#   fanout-one   one message stream to 1,000 subscribers of one channel
#   fanout-many  1,000 channels x 1 subscriber
#   idle         hub RSS growth per idle connection at 5,000 connections (fresh hub)
# Raw results go to bench/results/hub-<time>/ (not committed); BENCHMARKS.md has the summary.
#
# Environment: CLIENTS (1000), MESSAGES (200), FANOUT_MANY_MESSAGES (100), IDLE_CLIENTS (5000)
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib.sh
export PATH="$HOME/.cargo/bin:$PATH"

CLIENTS=${CLIENTS:-1000}
MESSAGES=${MESSAGES:-200}
FANOUT_MANY_MESSAGES=${FANOUT_MANY_MESSAGES:-100}
IDLE_CLIENTS=${IDLE_CLIENTS:-5000}
OUT=bench/results/hub-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"

log "building the hub and the bench client (release)"
cargo build --release --quiet -p memoriesdb-hub --features bench --bins

CLUSTER=/tmp/memoriesdb-hub-bench-$$
PORT=$(free_port 55800)
HUB_PID=
stop_hub() { if [ -n "$HUB_PID" ]; then kill "$HUB_PID" 2>/dev/null || true; wait "$HUB_PID" 2>/dev/null || true; HUB_PID=; fi; }
trap 'stop_hub; cp "$CLUSTER/server.log" "$OUT/postgres.log" 2>/dev/null; cluster_stop "$CLUSTER" remove' EXIT
cluster_start "$CLUSTER" "$PORT"
cluster_psql "$CLUSTER" "$PORT" -d postgres -c "CREATE DATABASE hubbench"
cluster_psql "$CLUSTER" "$PORT" -d hubbench -c "CREATE EXTENSION memoriesdb CASCADE" >/dev/null
# the hub runs as an ordinary role (it refuses a superuser); the bench client sends NOTIFYs as postgres
cluster_psql "$CLUSTER" "$PORT" -d hubbench -c "CREATE ROLE hubbench_hub LOGIN" \
    -c "GRANT memoriesdb_user TO hubbench_hub" -c "SELECT memoriesdb.create_user('bench', 'hubbench_hub')" >/dev/null
DB="host=localhost port=$PORT user=postgres dbname=hubbench"
HUB_DB="host=localhost port=$PORT user=hubbench_hub dbname=hubbench"

# 1,000-5,000 clients each need a descriptor in the hub and one in the bench client
ulimit -n "$(ulimit -Hn)"
HUB_PORT=$(free_port 55900)
start_hub() {
    target/release/memoriesdb-hub --port "$HUB_PORT" --database-url "$HUB_DB" --max-connections 20000 \
        --log warn 2>>"$OUT/hub.log" &
    HUB_PID=$!
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$HUB_PORT/readyz" >/dev/null && return; sleep 0.1; done
    die "hub not ready"
}
BENCH=target/release/memoriesdb-hub-bench
HUB="ws://127.0.0.1:$HUB_PORT"

{
    echo "date: $(date -u +%FT%TZ)"
    echo "cpu: $(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
    echo "memory: $(free -g | awk '/Mem:/ {print $2}') GiB"
    echo "kernel: $(uname -r)"
    echo "rustc: $(rustc --version)"
    echo "postgres: $("$PG_BIN/postgres" --version)"
    echo "open files: $(ulimit -n)"
    echo "load before the run: $(cut -d" " -f1-3 /proc/loadavg) (the machine is shared with builds; see BENCHMARKS.md)"
} > "$OUT/environment.txt"

start_hub
log "latency: $CLIENTS connected clients, one of them on the session, $MESSAGES messages"
"$BENCH" latency --hub "$HUB" --db "$DB" --clients "$CLIENTS" --subscribers 1 --messages "$MESSAGES" --interval-ms 50 | tee "$OUT/latency.json"
log "latency: $CLIENTS connected clients, all on the session, $MESSAGES messages"
"$BENCH" latency --hub "$HUB" --db "$DB" --clients "$CLIENTS" --messages "$MESSAGES" --interval-ms 50 | tee "$OUT/latency-all.json"
log "fan-out: 1 channel x $CLIENTS subscribers, $MESSAGES messages"
"$BENCH" fanout-one --hub "$HUB" --db "$DB" --clients "$CLIENTS" --messages "$MESSAGES" | tee "$OUT/fanout-one.json"
log "fan-out: $CLIENTS channels x 1 subscriber, $FANOUT_MANY_MESSAGES messages each"
"$BENCH" fanout-many --hub "$HUB" --db "$DB" --clients "$CLIENTS" --messages "$FANOUT_MANY_MESSAGES" | tee "$OUT/fanout-many.json"
curl -s "http://127.0.0.1:$HUB_PORT/metrics" > "$OUT/metrics-after-fanout.txt"
stop_hub

start_hub
log "idle: $IDLE_CLIENTS connections"
"$BENCH" idle --hub "$HUB" --db "$DB" --clients "$IDLE_CLIENTS" --hub-pid "$HUB_PID" | tee "$OUT/idle.json"
stop_hub

python3 - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
r = {name: json.loads((out / f"{name}.json").read_text()) for name in ["latency", "latency-all", "fanout-one", "fanout-many", "idle"]}
lines = []
for name in ["latency", "latency-all"]:
    lat = r[name]
    lines.append(
        f"latency ({lat['clients']} clients, {lat['subscribers']} on the session, {lat['messages']} messages): "
        f"hub p50 {lat['hub']['p50_ms']:.2f} ms, p99 {lat['hub']['p99_ms']:.2f} ms ({lat['hub']['samples']}/{lat['expected_deliveries']} deliveries); "
        f"raw libpq p50 {lat['raw_libpq']['p50_ms']:.2f} ms, p99 {lat['raw_libpq']['p99_ms']:.2f} ms; "
        f"the bench process (receivers, raw client, writer) kept {lat['bench_process_cores_busy']:.2f} cores busy "
        f"({lat['bench_process_cpu_seconds']:.2f} s CPU in {lat['phase_seconds']:.2f} s)")
lines += [
    f"fan-out 1 channel x {r['fanout-one']['subscribers']}: {r['fanout-one']['deliveries_per_second']:,.0f} deliveries/s (complete: {r['fanout-one']['complete']})",
    f"fan-out {r['fanout-many']['channels']} channels x 1: {r['fanout-many']['deliveries_per_second']:,.0f} deliveries/s (complete: {r['fanout-many']['complete']})",
    f"idle: {r['idle']['kib_per_connection']:.1f} KiB per connection at {r['idle']['connections']} connections",
]
(out / "summary.txt").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
log "results in $OUT"
