#!/usr/bin/env bash
# The benchmarks on the question set over real transcripts (bench/qa_set.py,
# spoken by espeak-ng, transcribed by the release worker, cached):
#   scripts/bench_qa.sh search_quality  (make bench-search-quality): MRR and
#     recall@1/5 of hybrid, dense-only and lexical-only s2t.search;
#   scripts/bench_qa.sh ask  (make bench-ask): citation precision, answer
#     recall, refusals and time of s2t.ask, and the threshold's calibration.
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
say "$NAME: the question set over real transcripts"
"$VENV/bin/python" "$ROOT/bench/$NAME.py" --host "$WORK/data" --port "$PORT" \
    --worker "$CARGO_TARGET_DIR/release/s2t-worker" --models "$MODELS" \
    --out "$ROOT/bench/results/$NAME.json" "$@"
