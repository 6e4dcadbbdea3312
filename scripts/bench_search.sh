#!/usr/bin/env bash
# make bench-search: s2t.search at 1/8/32 clients over N chunks (default
# 1,000,000) of 1,000 users, recall@10 of HNSW against exact search, and the
# index build. The embedded data set is cached in ~/.cache/pg_s2t/bench.
# Writes bench/results/search.json. Pass --chunks N for a smaller run.
source "$(dirname "$0")/lib.sh"

ensure_deps
mkdir -p "$STATE"
"$ROOT/scripts/models.sh"
install_extension --release
ensure_pg_os_user

bench_throwaway_cluster
say "search: latency, recall and index build"
"$VENV/bin/python" "$ROOT/bench/search.py" --host "$WORK/data" --port "$PORT" --pg-bin "$PG_BIN" \
    --workdir "$WORK" --out "$ROOT/bench/results/search.json" "$@"
