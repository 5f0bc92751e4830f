#!/usr/bin/env bash
# Runs the whole test suite on optimised code (model code in a debug build
# is unusably slow): formatting, the models it needs, every test.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all --check
cargo build --release --locked -p rag-api
./target/release/rag models fetch
./target/release/rag models fetch smollm2-135m-instruct
# The `rag` binary sets this itself (ARCHITECTURE.md, "Dequantized weights
# on CPU"); the library tests that load models directly get it from here.
export CANDLE_DEQUANTIZE_ALL=1
cargo test --release --locked --workspace
