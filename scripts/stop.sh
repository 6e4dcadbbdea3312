#!/usr/bin/env bash
# make stop: stop everything make run started. The data stays.
source "$(dirname "$0")/lib.sh"
[ -x "$VENV/bin/python" ] || exit 0
set_pg_paths
WORKER_PID="$STATE/worker.pid"
if [ -f "$WORKER_PID" ] && kill -0 "$(cat "$WORKER_PID")" 2>/dev/null; then
    say "stopping the worker (it finishes or releases its current job)"
    kill -TERM "$(cat "$WORKER_PID")"
    for _ in $(seq 1 350); do kill -0 "$(cat "$WORKER_PID")" 2>/dev/null || break; sleep 0.1; done
fi
rm -f "$WORKER_PID"
if cluster_running "$STATE/pg"; then
    say "stopping PostgreSQL"
    cluster_stop "$STATE/pg"
fi
