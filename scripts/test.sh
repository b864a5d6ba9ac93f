#!/usr/bin/env bash
# Runs MemoriesDB's whole test suite on a fresh Debian 12 machine (as root). Installs what it
# needs first (idempotent), and starts and removes its own throwaway clusters: it never touches a
# cluster that scripts/run.sh left running.
#
#   1. #[pg_test]   logic inside the backend          (cargo pgrx test, pgrx's own cluster)
#   2. pg_test/     the SQL contract as psql sees it  (pgTAP via pg_prove, throwaway cluster)
#   3. tests/attack.rs  the attack suite: one test per way the trust boundary was once broken (same cluster)
#   4. tests/       real clients, non-superuser roles, several connections (same cluster)
#   5. hub/         the WebSocket hub with real clients: Rust, Python, psql, Chromium (same cluster)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
export PATH="$HOME/.cargo/bin:$PATH"

scripts/setup.sh --deps

log "tier 1: #[pg_test] and unit tests (cargo pgrx test)"
PGRX_TEST_DATA=/tmp/memoriesdb-pgrx-test
cargo pgrx test pg15 --runas postgres --pgdata "$PGRX_TEST_DATA"

# cargo pgrx test installed a test build; install the release build the other tiers test.
log "installing the release build for the external tiers"
install_extension

CLUSTER=/tmp/memoriesdb-test-cluster-$$
PORT=$(free_port 55400)
trap 'cluster_stop "$CLUSTER" remove' EXIT
log "starting a throwaway cluster in $CLUSTER on port $PORT"
cluster_start "$CLUSTER" "$PORT"

log "tier 2: pg_test/ (pgTAP)"
cluster_psql "$CLUSTER" "$PORT" -d postgres -c "CREATE DATABASE memoriesdb_pgtap"
cluster_psql "$CLUSTER" "$PORT" -d memoriesdb_pgtap \
    -c "CREATE EXTENSION memoriesdb CASCADE" -c "CREATE EXTENSION pgtap" \
    -c "ALTER DATABASE memoriesdb_pgtap SET search_path = \"\$user\", public, memoriesdb"
runuser -u postgres -- pg_prove -h localhost -p "$PORT" -U postgres -d memoriesdb_pgtap --failures pg_test/*.sql

export MEMORIESDB_TEST_ADMIN_URL="host=localhost port=$PORT user=postgres dbname=postgres"
log "tier 3: tests/attack.rs (the attack suite: hostile tenants, careless clients, poisoned sessions)"
cargo test -p memoriesdb-integration-tests --release --no-fail-fast --test attack -- --test-threads=1

log "tier 4: tests/ (integration, as non-superuser roles)"
# every [[test]] of tests/Cargo.toml but the attack suite, so that a new test file is never skipped
other_tests=$(sed -n 's/^name = "\(.*\)"$/\1/p' tests/Cargo.toml | grep -vx -e attack -e memoriesdb-integration-tests | sed 's/^/--test /')
# shellcheck disable=SC2086  # one word per --test argument
cargo test -p memoriesdb-integration-tests --release --no-fail-fast $other_tests -- --test-threads=1

log "tier 5: hub (memoriesdb-hub against the same cluster: protocol, robustness, auth, security, Python, psql, Chromium)"
# Each test creates its own database and starts its own hub processes on free ports; the
# specification's Python example runs in a private network namespace on its fixed port 5002.
cargo test -p memoriesdb-hub --release -- --test-threads=2

log "all tests passed"
