#!/usr/bin/env bash
# Builds what the GPU check carries (scripts/gpu/check.sh) into
# target/gpu-carry: the generation benchmark with candle's CUDA kernels, and
# the Qwen tokenizer. No GPU is needed to build: nvcc and the CUDA 13.0
# libraries come from PyPI wheels, and the driver (libcuda) is a stub with
# the right soname; the GPU machine's own is used at run time. The first
# build compiles candle's kernels (about 25 minutes on 2 cores).
#
# Then, on a lent GPU: `run` with carry ["target/gpu-carry"] and the command
# `bash scripts/gpu/check.sh`.
set -euo pipefail
cd "$(dirname "$0")/../.."
CUDA=$PWD/target/cuda-toolkit
if [ ! -x "$CUDA/bin/nvcc" ]; then
    mkdir -p "$CUDA.wheels"
    python3 -m pip download -q --no-deps -d "$CUDA.wheels" \
        nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-cuda-runtime==13.0.96 \
        nvidia-nvvm==13.0.88 nvidia-cuda-cccl==13.0.85 nvidia-cublas==13.0.2.14 \
        nvidia-curand==10.4.5.25 nvidia-cuda-nvrtc==13.0.88
    rm -rf "$CUDA.x" && mkdir -p "$CUDA.x"
    for w in "$CUDA".wheels/*.whl; do python3 -m zipfile -e "$w" "$CUDA.x"; done
    rm -rf "$CUDA" && mv "$CUDA.x/nvidia/cu13" "$CUDA" && rm -rf "$CUDA.x"
    chmod +x "$CUDA"/bin/* "$CUDA"/nvvm/bin/* 2>/dev/null || true
    ln -sfn lib "$CUDA/lib64"
    (cd "$CUDA/lib" && for l in libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13 libcudart.so.13; do
        ln -sf "$l" "${l%.so.*}.so"; done)
    # A libcuda stub: every driver function cudarc links to, with the soname
    # of the real driver.
    mkdir -p "$CUDA/stubs"
    grep -ho 'load::<_F>("cu[A-Za-z0-9_]*")' "$HOME"/.cargo/registry/src/*/cudarc-0.19.*/src/driver/sys/mod.rs |
        sed 's/.*("\(.*\)")/\1/' | sort -u | sed 's/.*/int &(void){return 999;}/' >"$CUDA/stubs/cuda_stub.c"
    gcc -shared -fPIC -o "$CUDA/stubs/libcuda.so.1" -Wl,-soname,libcuda.so.1 "$CUDA/stubs/cuda_stub.c"
    ln -sf libcuda.so.1 "$CUDA/stubs/libcuda.so"
fi
export CUDA_ROOT=$CUDA CUDA_PATH=$CUDA CUDA_HOME=$CUDA PATH=$CUDA/bin:$PATH
export CUDA_COMPUTE_CAP=90 CUDARC_CUDA_VERSION=13000
export RUSTFLAGS="-L $CUDA/stubs -L $CUDA/lib"
cargo build --release --locked -p rag-inference --features cuda --example bench_generate --target-dir target/cuda
cargo build --release --locked -p rag-inference --example gguf_tokenizer
mkdir -p target/gpu-carry
strip -o target/gpu-carry/bench_generate target/cuda/release/examples/bench_generate
xz -T0 -6 -f target/gpu-carry/bench_generate
target/release/examples/gguf_tokenizer \
    "${RAG_MODELS_DIR:-models}/Qwen2.5-Coder-0.5B-Instruct/Qwen2.5-Coder-0.5B-Instruct.gguf" \
    target/gpu-carry/tokenizer.json
ls -la target/gpu-carry
