#!/usr/bin/env bash
# make bench-memory: the audio pipeline's CPU cost (resampling an hour at
# 44.1 and 48 kHz, the decode passes per format) and the transcription
# child's peak RSS on a long 48 kHz stereo recording (2 hours by default:
# 20-40 minutes of wall time on 2 cores). Writes
# bench/results/audio_pipeline.json and bench/results/memory.json.
#
#   S2T_BENCH_MINUTES=30        a shorter recording
#   S2T_BENCH_BASELINE_WORKER=  also run this pre-streaming worker binary
#                               (audio on stdin) on S2T_BENCH_BASELINE_MINUTES
#                               (default 20) for a before/after row
#   S2T_BENCH_AUDIO_DIR=        where the generated WAVs are kept (reused)
source "$(dirname "$0")/lib.sh"

"$ROOT/scripts/models.sh"
MODELS="${S2T_MODELS_DIR:-$HOME/.cache/pg_s2t/models}"
WORKER="$CARGO_TARGET_DIR/release/s2t-worker"
MINUTES="${S2T_BENCH_MINUTES:-120}"
AUDIO_DIR="${S2T_BENCH_AUDIO_DIR:-${TMPDIR:-/tmp}/s2t-bench-audio}"
THREADS="${S2T_BENCH_THREADS:-$(nproc)}"
RESULTS="$ROOT/bench/results"
mkdir -p "$AUDIO_DIR"

say "audio pipeline: resampling and the decode passes"
cargo build -q --release -p s2t-worker --example audio_bench
BENCH="$CARGO_TARGET_DIR/release/examples/audio_bench"
# About eleven minutes of one sentence and a pause, in every container the worker
# reads, for the per-format cost of the counting pass.
FORMATS="$AUDIO_DIR/formats"
mkdir -p "$FORMATS"
if [ ! -s "$FORMATS/a.webm" ]; then
    espeak-ng -v en-us -s 150 -w "$FORMATS/s.raw.wav" "Please remember to water the tomato plants on the balcony before you leave."
    sox -V1 "$FORMATS/s.raw.wav" -r 48000 -c 2 -b 16 "$FORMATS/unit.wav" pad 0 3
    sox -V1 "$FORMATS/unit.wav" "$FORMATS/a.wav" repeat 85
    sox -V1 "$FORMATS/a.wav" -r 44100 "$FORMATS/a44k.flac"
    sox -V1 "$FORMATS/a.wav" -C 3 "$FORMATS/a.ogg"
    ffmpeg -loglevel error -y -i "$FORMATS/a.wav" -b:a 128k "$FORMATS/a.mp3"
    ffmpeg -loglevel error -y -i "$FORMATS/a.wav" -c:a aac -b:a 96k "$FORMATS/a.m4a"
    opusenc --quiet "$FORMATS/a.wav" "$FORMATS/a.opus"
    ffmpeg -loglevel error -y -i "$FORMATS/a.wav" -c:a libopus -b:a 64k "$FORMATS/a.webm"
fi
"$VENV/bin/python" "$ROOT/bench/audio_pipeline.py" "$BENCH" "$FORMATS" \
    "$RESULTS/audio_pipeline.json" a.wav a44k.flac a.mp3 a.ogg a.m4a a.opus a.webm

if [ -n "${S2T_BENCH_BASELINE_WORKER:-}" ]; then
    BASE_MINUTES="${S2T_BENCH_BASELINE_MINUTES:-20}"
    say "baseline: pre-streaming child on $BASE_MINUTES minutes"
    "$VENV/bin/python" "$ROOT/bench/memory.py" --worker "$S2T_BENCH_BASELINE_WORKER" --stdin \
        --models "$MODELS" --minutes "$BASE_MINUTES" --threads "$THREADS" \
        --label "before: whole-file decode, ${BASE_MINUTES} min" \
        --audio-dir "$AUDIO_DIR" --out "$RESULTS/memory.json"
fi
say "streaming child on $MINUTES minutes of 48 kHz stereo ($THREADS threads, beam 5)"
"$VENV/bin/python" "$ROOT/bench/memory.py" --worker "$WORKER" \
    --models "$MODELS" --minutes "$MINUTES" --threads "$THREADS" \
    --label "streaming, ${MINUTES} min" \
    --audio-dir "$AUDIO_DIR" --out "$RESULTS/memory.json"
