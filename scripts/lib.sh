# Shared shell helpers for the project's scripts (sourced, not run).

# The system's PostgreSQL 15: what scripts/run.sh runs and setup.sh installs the extension into.
# Scripts that must not touch it (scripts/test.sh) set PG_BIN to a private tree's bin directory.
PG_SYSTEM_BIN=/usr/lib/postgresql/15/bin
PG_BIN=${PG_BIN:-$PG_SYSTEM_BIN}
# Where scripts/setup.sh installs the embedder's local model (all-MiniLM-L6-v2).
DEFAULT_MODEL_DIR=/var/lib/memoriesdb/models/all-MiniLM-L6-v2

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

# Build the extension (release) into target/release/memoriesdb-pg15, a tree mirroring the
# system's paths (usr/lib/postgresql/15/lib/memoriesdb.so, usr/share/postgresql/15/extension/...).
build_extension() {
    rm -rf target/release/memoriesdb-pg15    # cargo pgrx package adds to it: no stale scripts
    cargo pgrx package --pg-config /usr/bin/pg_config >/dev/null 2>&1 \
        || { cargo pgrx package --pg-config /usr/bin/pg_config; die "building the extension failed"; }
}

# install_staged STAGE [ROOT]: install a package tree built by `cargo pgrx package` under ROOT
# (default: the system, /). Files are replaced by unlinking the old one first, never overwritten
# in place: running backends and the event relay keep the old memoriesdb.so mapped, and writing
# into it would crash them (SIGBUS).
install_staged() {
    local stage=$1 root=${2:-}
    (cd "$stage" && find . -type f) | while read -r f; do
        install -D -m 0644 "$stage/$f" "$root/${f#./}.memoriesdb-new"
        mv -f "$root/${f#./}.memoriesdb-new" "$root/${f#./}"
    done
}

# install_extension [ROOT]: build the release and install it into the system (or a private tree).
install_extension() {
    build_extension
    install_staged target/release/memoriesdb-pg15 "${1:-}"
}

# build_release VERSION COMMIT: build a released version of the extension from its commit (the
# source from `git archive`, a debug build of its own in target/releases/VERSION) and print the
# package tree for install_staged. Reused while the recorded commit is the same.
build_release() {
    local version=$1 commit=$2 dir
    dir=$PWD/target/releases/$version
    if [ "$(cat "$dir/commit" 2>/dev/null)" = "$commit" ] && [ -f "$dir/stage/usr/lib/postgresql/15/lib/memoriesdb.so" ]; then
        echo "$dir/stage"
        return
    fi
    git cat-file -e "$commit^{commit}" 2>/dev/null || die "release $version: commit $commit is not in this repository"
    log "building release $version from commit $commit (into $dir)"
    rm -rf "$dir/src" "$dir/stage" "$dir/commit"
    mkdir -p "$dir/src"
    git archive "$commit" | tar -x -C "$dir/src"
    (cd "$dir/src" && CARGO_TARGET_DIR="$dir/target" cargo pgrx package --debug --pg-config /usr/bin/pg_config \
        --out-dir "$dir/stage" >"$dir/build.log" 2>&1) || { tail -30 "$dir/build.log" >&2; die "building release $version failed"; }
    echo "$commit" >"$dir/commit"
    echo "$dir/stage"
}

# private_pg_tree DIR: a PostgreSQL 15 installation of its own in DIR (DIR/usr/... mirrors the
# system's /usr/...), so that tests install builds there and never over the system's extension
# files. PostgreSQL (and pg_config) find their share and library directories relative to the
# executable, after resolving symbolic links, so the programs are copied; everything else links to
# the system's files, except MemoriesDB's own. Rebuilt from scratch on every call (about 15 MB).
private_pg_tree() {
    local tree=$1 sys_share=/usr/share/postgresql/15 sys_lib=/usr/lib/postgresql/15/lib f
    rm -rf "$tree"
    mkdir -p "$tree/usr/lib/postgresql/15/bin" "$tree/usr/lib/postgresql/15/lib" "$tree/usr/share/postgresql/15/extension"
    cp -a "$PG_SYSTEM_BIN"/. "$tree/usr/lib/postgresql/15/bin/"
    for f in "$sys_share"/*; do
        [ "$(basename "$f")" = extension ] || ln -s "$f" "$tree/usr/share/postgresql/15/"
    done
    for f in "$sys_share"/extension/* "$sys_lib"/*; do
        case $(basename "$f") in memoriesdb*) continue ;; esac
        case $f in
            "$sys_share"/*) ln -s "$f" "$tree/usr/share/postgresql/15/extension/" ;;
            *) ln -s "$f" "$tree/usr/lib/postgresql/15/lib/" ;;
        esac
    done
    ln -s /usr/include "$tree/usr/include"          # headers, for building against the tree
    chmod -R a+rX "$tree"
    [ "$("$tree/usr/lib/postgresql/15/bin/pg_config" --sharedir)" = "$tree/usr/share/postgresql/15" ] \
        || die "PostgreSQL in $tree does not find its own share directory"
}

# What the system has installed of MemoriesDB (paths and SHA-256), to prove tests left it alone.
system_extension_fingerprint() {
    find /usr/lib/postgresql/15/lib /usr/share/postgresql/15/extension -maxdepth 1 -name 'memoriesdb*' -type f \
        -exec sha256sum {} + 2>/dev/null | sort
}

# (Re)start one of the project's binaries (target/release/NAME) in the background, detached,
# with pid and log files NAME.pid / NAME.log in DIR, and wait until READY_URL answers 200.
# A running instance recorded in the pid file is stopped first (SIGTERM, then up to 10 s).
restart_service() {
    local name=$1 dir=$2 ready_url=$3
    shift 3
    local pid_file=$dir/$name.pid log_file=$dir/$name.log
    if [ -f "$pid_file" ]; then
        local old_pid
        old_pid=$(cat "$pid_file")
        if kill -0 "$old_pid" 2>/dev/null && grep -q "$name" "/proc/$old_pid/cmdline" 2>/dev/null; then
            log "stopping the running $name (pid $old_pid)"
            kill -TERM "$old_pid"
            for _ in $(seq 100); do kill -0 "$old_pid" 2>/dev/null || break; sleep 0.1; done
        fi
        rm -f "$pid_file"
    fi
    log "starting $name (log: $log_file)"
    setsid nohup "target/release/$name" "$@" >>"$log_file" 2>&1 < /dev/null &
    echo $! > "$pid_file"
    for _ in $(seq 300); do
        curl -sf "$ready_url" >/dev/null && return 0
        kill -0 "$(cat "$pid_file")" 2>/dev/null || { tail -20 "$log_file" >&2; die "$name exited (log: $log_file)"; }
        sleep 0.1
    done
    tail -20 "$log_file" >&2
    die "$name is not ready after 30 s (log: $log_file)"
}
