# Shared shell helpers for the project's scripts (sourced, not run).

PG_BIN=/usr/lib/postgresql/15/bin

log() { printf '[memoriesdb] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# A TCP port nobody listens on, starting the search at $1.
free_port() {
    local port=$1
    while ss -Hltn "sport = :$port" | grep -q . ; do port=$((port + 1)); done
    echo "$port"
}

# cluster_start DIR PORT: create (if needed) and start a PostgreSQL 15 cluster owned by the
# postgres user, listening on localhost:PORT and on a socket in DIR. PostgreSQL refuses to run as
# root, and the postgres user must own DIR, so DIR's parent is created for it.
cluster_start() {
    local dir=$1 port=$2
    install -d -o postgres -g postgres "$(dirname "$dir")"
    if [ ! -f "$dir/PG_VERSION" ]; then
        runuser -u postgres -- "$PG_BIN/initdb" -D "$dir" -U postgres -A trust -E UTF8 \
            --locale=C.UTF-8 >"$dir.initdb.log" 2>&1 || { cat "$dir.initdb.log" >&2; die "initdb failed"; }
        cat >>"$dir/postgresql.conf" <<CONF
# added by MemoriesDB's scripts
listen_addresses = 'localhost'
unix_socket_directories = '$dir'
max_connections = 200
shared_buffers = 256MB
CONF
    fi
    if runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
        return 0
    fi
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$dir" -l "$dir/server.log" -o "-p $port" -w -t 60 start >/dev/null \
        || { tail -20 "$dir/server.log" >&2; die "PostgreSQL did not start (log: $dir/server.log)"; }
}

# cluster_stop DIR [remove]: stop the cluster; with "remove", delete its files too.
cluster_stop() {
    local dir=$1
    if [ -f "$dir/postmaster.pid" ]; then
        runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$dir" -m fast -w stop >/dev/null 2>&1 || true
    fi
    if [ "${2:-}" = remove ]; then rm -rf "$dir" "$dir.initdb.log"; fi
}

# psql as the postgres superuser against a cluster started by cluster_start.
cluster_psql() {
    local dir=$1 port=$2; shift 2
    runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -h localhost -p "$port" -U postgres "$@"
}

# Build the extension (release) and install it into the system PostgreSQL. Files are replaced by
# unlinking the old one first, never overwritten in place: running backends and the event relay
# keep the old memoriesdb.so mapped, and writing into it would crash them (SIGBUS).
install_extension() {
    local stage=target/release/memoriesdb-pg15
    cargo pgrx package --pg-config /usr/bin/pg_config >/dev/null 2>&1 \
        || { cargo pgrx package --pg-config /usr/bin/pg_config; die "building the extension failed"; }
    (cd "$stage" && find . -type f) | while read -r f; do
        install -D -m 0644 "$stage/$f" "/${f#./}.memoriesdb-new"
        mv -f "/${f#./}.memoriesdb-new" "/${f#./}"
    done
}
