#!/usr/bin/env bash
# make bench: quota-admission benchmark on a throwaway cluster with a release
# build of the extension. Writes bench/results/quota.json.
source "$(dirname "$0")/lib.sh"

ensure_deps
mkdir -p "$STATE"
install_extension --release
ensure_pg_os_user

WORK="$(mktemp -d "$STATE/bench.XXXXXX")"
PORT="$(free_port)"
cleanup() {
    cluster_stop "$WORK" || true
    rm -rf "$WORK"
    # Leave the everyday (debug) build installed for make run and make test.
}
trap cleanup EXIT

bench_cluster "$WORK" "$PORT"
# pg_stat_statements for the evidence phase; off (track = none) unless a run
# turns it on for its own sessions.
psql_admin "$WORK" "$PORT" postgres -c "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'" \
    -c "ALTER SYSTEM SET pg_stat_statements.track = 'none'"
cluster_stop "$WORK"
cluster_start "$WORK" "$PORT"
# The wake-up measurement LISTENs, which psql cannot do while idle.
if ! "$VENV/bin/python" -c "import psycopg" 2>/dev/null; then
    say "installing psycopg into $VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "psycopg[binary]==3.3.9"
fi

say "quota admission: pg_s2t vs the specification's plpgsql"
"$VENV/bin/python" "$ROOT/bench/quota.py" --host "$WORK/data" --port "$PORT" --pg-bin "$PG_BIN" \
    --out "$ROOT/bench/results/quota.json" "$@"
