#!/usr/bin/env bash
# make stop: stop everything make run started. The data stays.
source "$(dirname "$0")/lib.sh"
[ -x "$VENV/bin/python" ] || exit 0
set_pg_paths
say "stopping the gateway, the worker (it finishes or releases its current job) and the chat model"
stop_service gateway 100
stop_service llm 50
stop_service worker 350
if cluster_running "$STATE/pg"; then
    say "stopping PostgreSQL"
    cluster_stop "$STATE/pg"
fi
