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
#   6. embedder/    memoriesdb-embedder: parity with sentence-transformers, /v1/embeddings, the queue (same cluster)
#   7. tests/upgrade.rs  the last release (sql/releases), built from its commit, upgraded to this one
#
# Everything is installed into a private PostgreSQL tree (/tmp/memoriesdb-test-pg-*), never over
# the system's files; the run fails if the system's MemoriesDB files changed.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
export PATH="$HOME/.cargo/bin:$PATH"

scripts/setup.sh --deps

# Tests build and install into a PostgreSQL tree of their own, never over the system's extension
# files: a cluster started by scripts/run.sh keeps running the release build it was given.
SYSTEM_BEFORE=$(system_extension_fingerprint)
TREE=/tmp/memoriesdb-test-pg-$$
OLD_TREE=/tmp/memoriesdb-test-pg-previous-$$
private_pg_tree "$TREE"
PG_BIN=$TREE/usr/lib/postgresql/15/bin

log "tier 1: #[pg_test] and unit tests (cargo pgrx test, installing into $TREE)"
# pgrx installs the test build with the pg_config named in PGRX_HOME: point it at the tree
export PGRX_HOME=$TREE/pgrx-home
mkdir -p "$PGRX_HOME"
cargo pgrx init --pg15 "$PG_BIN/pg_config" >/dev/null
PGRX_TEST_DATA=/tmp/memoriesdb-pgrx-test
cargo pgrx test pg15 --runas postgres --pgdata "$PGRX_TEST_DATA"
unset PGRX_HOME

# cargo pgrx test installed a test build; install the release build the other tiers test.
log "installing the release build into $TREE for the external tiers"
install_extension "$TREE"

CLUSTER=/tmp/memoriesdb-test-cluster-$$
PORT=$(free_port 55400)
trap 'cluster_stop "$CLUSTER" remove; rm -rf "$TREE" "$OLD_TREE"' EXIT
log "starting a throwaway cluster in $CLUSTER on port $PORT"
cluster_start "$CLUSTER" "$PORT"
[ "$(cluster_psql "$CLUSTER" "$PORT" -d postgres -tAc "SELECT setting FROM pg_config WHERE name = 'SHAREDIR'")" = "$TREE/usr/share/postgresql/15" ] \
    || die "the test cluster does not run from the test tree $TREE"

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
other_tests=$(sed -n 's/^name = "\(.*\)"$/\1/p' tests/Cargo.toml | grep -vx -e attack -e upgrade -e memoriesdb-integration-tests | sed 's/^/--test /')
# shellcheck disable=SC2086  # one word per --test argument
cargo test -p memoriesdb-integration-tests --release --no-fail-fast $other_tests -- --test-threads=1

log "tier 5: hub (memoriesdb-hub against the same cluster: protocol, robustness, auth, security, Python, psql, Chromium)"
# Each test creates its own database and starts its own hub processes on free ports; the
# specification's Python example runs in a private network namespace on its fixed port 5002.
cargo test -p memoriesdb-hub --release -- --test-threads=2

log "tier 6: embedder (memoriesdb-embedder: parity with sentence-transformers, /v1/embeddings, the queue on the same cluster)"
cargo test -p memoriesdb-embedder --release -- --test-threads=1

log "tier 7: upgrade from the last release in sql/releases (tests/upgrade.rs)"
read -r PREV_VERSION PREV_COMMIT < <(grep -v '^#' sql/releases | tail -1)
PREV_STAGE=$(build_release "$PREV_VERSION" "$PREV_COMMIT")
private_pg_tree "$OLD_TREE"
install_staged "$PREV_STAGE" "$OLD_TREE"
MEMORIESDB_UPGRADE_FROM=$PREV_VERSION MEMORIESDB_UPGRADE_OLD_PGBIN=$OLD_TREE/usr/lib/postgresql/15/bin \
MEMORIESDB_UPGRADE_NEW_PGBIN=$PG_BIN \
    cargo test -p memoriesdb-integration-tests --release --test upgrade -- --test-threads=1

log "checking that the system's MemoriesDB files are as they were before the tests"
[ "$(system_extension_fingerprint)" = "$SYSTEM_BEFORE" ] \
    || die "the test run changed the system's installed extension files:
$(diff <(echo "$SYSTEM_BEFORE") <(system_extension_fingerprint))"

log "all tests passed"
