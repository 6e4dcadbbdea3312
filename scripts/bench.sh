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

say "quota admission: pg_s2t vs the specification's plpgsql"
"$VENV/bin/python" "$ROOT/bench/quota.py" --host "$WORK/data" --port "$PORT" --pg-bin "$PG_BIN" \
    --out "$ROOT/bench/results/quota.json" "$@"
