#!/usr/bin/env bash
# The benchmarks on the question set over real transcripts (bench/qa_set.py,
# spoken by espeak-ng, transcribed by the release worker, cached):
#   scripts/bench_qa.sh search_quality  (make bench-search-quality): MRR and
#     recall@1/5 of hybrid, dense-only and lexical-only s2t.search;
#   scripts/bench_qa.sh ask  (make bench-ask): citation precision, answer
#     recall, refusals and time of s2t.ask, and the threshold's calibration;
#     then the same of generative answers through the gateway and s2t-llm.
# Writes bench/results/<name>.json.
source "$(dirname "$0")/lib.sh"

NAME="${1:?usage: bench_qa.sh search_quality|ask}"
shift
ensure_deps
mkdir -p "$STATE"
"$ROOT/scripts/models.sh"
MODELS="${S2T_MODELS_DIR:-$HOME/.cache/pg_s2t/models}"
install_extension --release
ensure_pg_os_user
say "building the release worker"
cargo build -q --release -p s2t-worker

bench_throwaway_cluster
EXTRA=()
if [ "$NAME" = ask ]; then
    # The generative path end to end: the local chat model and a gateway
    # that asks it.
    say "building s2t-llm and the gateway"
    cargo build -q --release -p s2t-llm -p s2t-gateway
    trap 'stop_service bench-llm 50; stop_service bench-gateway 50; bench_throwaway_cleanup' EXIT
    create_login_roles "$WORK" "$PORT" bench-gw bench-wk
    LLM_PORT="$(free_port)"
    GW_PORT="$(free_port)"
    SECRET="$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')"
    start_service bench-llm "$CARGO_TARGET_DIR/release/s2t-llm" \
        --model "$MODELS/llm/SmolLM2-135M-Instruct.Q4_1.gguf" --name smollm2-135m --listen "127.0.0.1:$LLM_PORT"
    APP_DATABASE_URL="postgres://s2t_gateway:bench-gw@127.0.0.1:$PORT/bench" S2T_JWT_SECRET="$SECRET" \
    S2T_GATEWAY_LISTEN="127.0.0.1:$GW_PORT" S2T_SPOOL_DIR="$WORK/spool" \
    S2T_LLM_URL="http://127.0.0.1:$LLM_PORT/v1" S2T_LLM_MODEL=smollm2-135m S2T_LLM_TIMEOUT_SECS=120 \
        start_service bench-gateway "$CARGO_TARGET_DIR/release/s2t-gateway"
    for _ in $(seq 1 100); do
        python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$GW_PORT/readyz', timeout=1); urllib.request.urlopen('http://127.0.0.1:$LLM_PORT/healthz', timeout=1)" 2>/dev/null && break
        sleep 0.2
    done
    EXTRA=(--gateway "http://127.0.0.1:$GW_PORT" --jwt-secret "$SECRET" --llm-model SmolLM2-135M-Instruct.Q4_1)
fi
say "$NAME: the question set over real transcripts"
"$VENV/bin/python" "$ROOT/bench/$NAME.py" --host "$WORK/data" --port "$PORT" \
    --worker "$CARGO_TARGET_DIR/release/s2t-worker" --models "$MODELS" \
    --out "$ROOT/bench/results/$NAME.json" "${EXTRA[@]}" "$@"
