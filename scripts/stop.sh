#!/usr/bin/env bash
# make stop: stop everything make run started. The data stays.
source "$(dirname "$0")/lib.sh"
[ -x "$VENV/bin/python" ] || exit 0
set_pg_paths
if cluster_running "$STATE/pg"; then
    say "stopping PostgreSQL"
    cluster_stop "$STATE/pg"
fi
