#!/usr/bin/env bash
# make bench-asr: our worker path against faster-whisper int8 and float32,
# same CTranslate2-sourced models, threads and beam, per language and audio
# class (short clips, sentences, long files, browser WebM, a 30-minute MP3;
# the 30-minute file alone takes tens of minutes: --classes picks a subset).
# Writes bench/results/asr.json.
source "$(dirname "$0")/lib.sh"

"$ROOT/scripts/models.sh"
MODELS="${S2T_MODELS_DIR:-$HOME/.cache/pg_s2t/models}"
# The reference engine lives only in the benchmark's virtualenv.
if ! "$VENV/bin/python" -c "import faster_whisper" 2>/dev/null; then
    say "installing faster-whisper==$FASTER_WHISPER_VERSION (benchmark reference)"
    "$VENV/bin/pip" install -q --disable-pip-version-check "faster-whisper==$FASTER_WHISPER_VERSION"
fi
THREADS="${S2T_BENCH_THREADS:-$(nproc)}"
say "ASR: pg_s2t worker vs faster-whisper ($THREADS threads, beam 5)"
"$VENV/bin/python" "$ROOT/bench/asr.py" --worker "$CARGO_TARGET_DIR/release/s2t-worker" \
    --models "$MODELS" --threads "$THREADS" --beam-size 5 \
    --out "$ROOT/bench/results/asr.json" "$@"
# The long-recording memory benchmark (a 2-hour file through the real
# transcription child) takes 20-40 minutes: opt in, or run
# scripts/bench_memory.sh on its own.
if [ "${S2T_BENCH_MEMORY:-0}" = 1 ]; then
    "$ROOT/scripts/bench_memory.sh"
fi
