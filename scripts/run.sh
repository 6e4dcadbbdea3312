#!/usr/bin/env bash
# make run: install what is missing, build the extension, start PostgreSQL
# with pg_s2t, and write .s2t/run.env. Safe to run again: keeps the data and
# upgrades the extension in place.
source "$(dirname "$0")/lib.sh"

ensure_deps
mkdir -p "$STATE"
"$ROOT/scripts/models.sh"
MODELS="${S2T_MODELS_DIR:-$HOME/.cache/pg_s2t/models}"
say "building the gateway"
cargo build -q --release -p s2t-gateway
install_extension
ensure_pg_os_user

DATA="$STATE/pg"
PORT="${S2T_PG_PORT:-54329}"
GATEWAY_ADDR="127.0.0.1:${S2T_GATEWAY_PORT:-8080}"
SECRETS="$STATE/secrets.env"

if [ ! -f "$SECRETS" ]; then
    umask 077
    {
        echo "S2T_PG_PASSWORD=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')"
        echo "S2T_GATEWAY_PASSWORD=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')"
        echo "S2T_WORKER_PASSWORD=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')"
    } >"$SECRETS"
    umask 022
fi
if ! grep -q '^S2T_JWT_SECRET=' "$SECRETS"; then
    echo "S2T_JWT_SECRET=$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')" >>"$SECRETS"
fi
# shellcheck disable=SC1090
source "$SECRETS"

if [ ! -f "$DATA/data/PG_VERSION" ]; then
    rm -f "$STATE/schema.sha256"
    say "creating the cluster in $DATA"
    cluster_init "$DATA" scram-sha-256 "$S2T_PG_PASSWORD"
fi
if cluster_running "$DATA"; then
    # Restart so new backends load a rebuilt library for certain.
    say "restarting PostgreSQL on 127.0.0.1:$PORT"
    cluster_stop "$DATA"
else
    say "starting PostgreSQL on 127.0.0.1:$PORT"
fi
cluster_start "$DATA" "$PORT"

if [ "$(psql_admin "$DATA" "$PORT" postgres -c "SELECT count(*) FROM pg_database WHERE datname = 's2t'")" = "0" ]; then
    psql_admin "$DATA" "$PORT" postgres -c "CREATE DATABASE s2t"
fi
# No temporary objects for the service roles: nothing needs them, and they
# are how a caller shadows tables (the extension pins pg_temp last anyway).
psql_admin "$DATA" "$PORT" postgres -c "REVOKE TEMPORARY ON DATABASE s2t FROM PUBLIC"
psql_admin "$DATA" "$PORT" s2t <<'SQL'
CREATE EXTENSION IF NOT EXISTS pg_s2t CASCADE;
SELECT 'ALTER EXTENSION pg_s2t UPDATE' FROM pg_extension e, pg_available_extensions a
 WHERE e.extname = 'pg_s2t' AND a.name = 'pg_s2t' AND e.extversion <> a.default_version \gexec
SQL
create_login_roles "$DATA" "$PORT" "$S2T_GATEWAY_PASSWORD" "$S2T_WORKER_PASSWORD"

# Same version, different install script: the database still has the old
# objects. Say so rather than run with a silently stale schema.
VERSION_NOW="$(grep -m1 '^version' "$ROOT/Cargo.toml" | cut -d'"' -f2)"
SCRIPT_SHA="$VERSION_NOW $(sha256sum "$("$PG_CONFIG" --sharedir)/extension/pg_s2t--$VERSION_NOW.sql" | cut -d' ' -f1)"
if [ -f "$STATE/schema.sha256" ] && [ "$(cut -d' ' -f1 "$STATE/schema.sha256")" = "$VERSION_NOW" ] \
    && [ "$(cat "$STATE/schema.sha256")" != "$SCRIPT_SHA" ]; then
    printf '\nwarning: the pg_s2t install script changed but its version did not, so database s2t keeps\n' >&2
    printf '         the old objects. Bump the version and add an upgrade script in pg_s2t/sql/, or\n' >&2
    printf '         start over with: make clean-data && make run\n\n' >&2
else
    echo "$SCRIPT_SHA" >"$STATE/schema.sha256"
fi
# The services: stop the old ones (the worker finishes or releases its job),
# start anew.
stop_service worker 100
stop_service gateway 100
REALTIME_ADDR="127.0.0.1:$(free_port)"
say "starting the worker, realtime on ws://$REALTIME_ADDR (log: .s2t/worker.log)"
WORKER_DATABASE_URL="postgres://s2t_worker_svc:$S2T_WORKER_PASSWORD@127.0.0.1:$PORT/s2t" \
S2T_MODEL="$MODELS/ggml-base.bin" S2T_MODEL_EN="$MODELS/ggml-tiny.en.bin" \
S2T_REALTIME_LISTEN="$REALTIME_ADDR" \
    start_service worker "$CARGO_TARGET_DIR/release/s2t-worker" run
# Generative answers ("Ask" in README.md): S2T_LLM=local starts the local
# chat model server; or export S2T_LLM_URL and S2T_LLM_MODEL to point the
# gateway at any OpenAI-compatible server. Otherwise answers are extractive.
stop_service llm 50
LLM_NOTE="extractive (S2T_LLM=local make run adds the local chat model)"
if [ "${S2T_LLM:-}" = "local" ]; then
    say "building s2t-llm (about 6 minutes the first time)"
    cargo build -q --release -p s2t-llm
    LLM_ADDR="127.0.0.1:$(free_port)"
    say "starting the local chat model on http://$LLM_ADDR/v1 (log: .s2t/llm.log)"
    start_service llm "$CARGO_TARGET_DIR/release/s2t-llm" \
        --model "$MODELS/llm/SmolLM2-135M-Instruct.Q4_1.gguf" --name smollm2-135m --listen "$LLM_ADDR"
    for _ in $(seq 1 100); do
        python3 -c "import urllib.request; urllib.request.urlopen('http://$LLM_ADDR/healthz', timeout=1)" 2>/dev/null && break
        sleep 0.2
    done
    export S2T_LLM_URL="http://$LLM_ADDR/v1" S2T_LLM_MODEL=smollm2-135m
fi
if [ -n "${S2T_LLM_URL:-}" ]; then
    LLM_NOTE="generative with $S2T_LLM_MODEL at $S2T_LLM_URL, checked, extractive as the fallback"
fi
say "starting the gateway on http://$GATEWAY_ADDR (log: .s2t/gateway.log)"
# Development mode (S2T_DEV): see "The gateway" in README.md.
APP_DATABASE_URL="postgres://s2t_gateway:$S2T_GATEWAY_PASSWORD@127.0.0.1:$PORT/s2t" \
S2T_JWT_SECRET="$S2T_JWT_SECRET" S2T_DEV=true S2T_GATEWAY_LISTEN="$GATEWAY_ADDR" \
S2T_SPOOL_DIR="$STATE/spool" \
    start_service gateway "$CARGO_TARGET_DIR/release/s2t-gateway"
ready=""
for _ in $(seq 1 100); do
    if python3 -c "import urllib.request,sys; urllib.request.urlopen('http://$GATEWAY_ADDR/readyz', timeout=1)" 2>/dev/null; then
        ready=1
        break
    fi
    sleep 0.1
done
[ -n "$ready" ] || die "the gateway did not become ready; see .s2t/gateway.log"

VERSION="$(psql_admin "$DATA" "$PORT" s2t -c "SELECT extversion FROM pg_extension WHERE extname = 'pg_s2t'")"

cat >"$STATE/run.env" <<ENV
# Written by make run. source this file to reach the running system.
DATABASE_URL=postgres://s2t:$S2T_PG_PASSWORD@127.0.0.1:$PORT/s2t
APP_DATABASE_URL=postgres://s2t_gateway:$S2T_GATEWAY_PASSWORD@127.0.0.1:$PORT/s2t
WORKER_DATABASE_URL=postgres://s2t_worker_svc:$S2T_WORKER_PASSWORD@127.0.0.1:$PORT/s2t
GATEWAY_URL=http://$GATEWAY_ADDR
PG_BIN=$PG_BIN
ENV
chmod 600 "$STATE/run.env"

cat <<MSG

pg_s2t $VERSION is running on PostgreSQL 18 at 127.0.0.1:$PORT (database s2t),
with a transcription worker (models in $MODELS) and the gateway:

  API:       http://$GATEWAY_ADDR      (curl examples: "The gateway" in README.md)
  Realtime:  ws://$GATEWAY_ADDR/ws/s2t  (protocol: "Realtime transcription" in README.md)
  Answers:   POST http://$GATEWAY_ADDR/rag/ask, $LLM_NOTE

  source .s2t/run.env
  \$PG_BIN/psql "\$DATABASE_URL"          # as the owner (superuser)
  \$PG_BIN/psql "\$APP_DATABASE_URL"      # as the application role, under row-level security

Try:  curl -s http://$GATEWAY_ADDR/readyz
Queue audio for transcription from psql: see "Batch transcription" in README.md.
Stop: make stop        Tests: make test        Benchmarks: make bench
MSG
