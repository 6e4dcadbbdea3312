#!/usr/bin/env bash
# make bench-audio: how stored audio is written and read (chunks vs one
# bytea vs large objects), on a throwaway cluster with a release build of
# the extension. Writes bench/results/audio_store.json.
source "$(dirname "$0")/lib.sh"

ensure_deps
ensure_test_python
mkdir -p "$STATE"
install_extension --release
ensure_pg_os_user

WORK="$(mktemp -d "$STATE/bench-audio.XXXXXX")"
PORT="$(free_port)"
cleanup() {
    cluster_stop "$WORK" || true
    rm -rf "$WORK"
}
trap cleanup EXIT

bench_cluster "$WORK" "$PORT"
say "stored audio: write and read paths"
"$VENV/bin/python" "$ROOT/bench/audio_store.py" --host "$WORK/data" --port "$PORT" \
    --out "$ROOT/bench/results/audio_store.json" "$@"
