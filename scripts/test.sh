#!/usr/bin/env bash
# make test: every test, against a throwaway cluster of its own (never the
# make run data). Pure logic runs under cargo test; SQL behaviour runs in the
# tests crate against the real server with the extension installed.
source "$(dirname "$0")/lib.sh"

ensure_deps
mkdir -p "$STATE"
"$ROOT/scripts/models.sh"
ensure_test_python
export S2T_PYTHON="$VENV/bin/python"
export S2T_MODELS_DIR="${S2T_MODELS_DIR:-$HOME/.cache/pg_s2t/models}"
export S2T_MODEL_PKGS="$S2T_MODELS_DIR/pkgs"
install_extension
ensure_pg_os_user

WORK="$(mktemp -d "$STATE/test.XXXXXX")"
DATA="$WORK"
PORT="$(free_port)"
cleanup() {
    cluster_stop "$DATA" || true
    rm -rf "$WORK"
}
trap cleanup EXIT

say "starting a throwaway cluster on 127.0.0.1:$PORT"
cluster_init "$DATA" trust
cluster_start "$DATA" "$PORT"
psql_admin "$DATA" "$PORT" postgres -c "CREATE DATABASE s2t_template"
psql_admin "$DATA" "$PORT" s2t_template -c "CREATE EXTENSION pg_s2t CASCADE"
create_login_roles "$DATA" "$PORT" gateway-test worker-test

say "sql/examples.sql"
psql_admin "$DATA" "$PORT" postgres -c "CREATE DATABASE examples TEMPLATE s2t_template"
psql_admin "$DATA" "$PORT" examples -f "$ROOT/sql/examples.sql" >/dev/null

export S2T_TEST_ADMIN_URL="postgres://s2t@127.0.0.1:$PORT/postgres"
export S2T_TEST_TEMPLATE="s2t_template"
# The gateway's end-to-end tests run the release worker that make models built.
export S2T_WORKER_BIN="$CARGO_TARGET_DIR/release/s2t-worker"
# And the local chat model server (its own binary: llama.cpp and whisper.cpp
# cannot share one), built here in the test profile cargo test uses.
say "building s2t-llm"
cargo build -q -p s2t-llm
export S2T_LLM_BIN="$CARGO_TARGET_DIR/debug/s2t-llm"
export S2T_LLM_MODEL_FILE="$S2T_MODELS_DIR/llm/SmolLM2-135M-Instruct.Q4_1.gguf"
export PG_BIN
# The worker's tests restart this cluster to prove nothing is lost.
export S2T_TEST_PGDATA="$DATA/data"
if is_root; then export S2T_TEST_PG_OS_USER="$PG_OS_USER"; else export S2T_TEST_PG_OS_USER=""; fi

say "cargo test"
LOG="$WORK/cargo-test.log"
set +e
cargo test --workspace --exclude pg_s2t --no-fail-fast "$@" 2>&1 | tee "$LOG"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run (cargo ends on a doc-test binary that
# may hold no tests).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "summary: %d passed, %d failed\n", p, f }' "$LOG"
exit "$status"
