#!/usr/bin/env bash
# Runs the whole test suite on optimised code (model code in a debug build
# is unusably slow): formatting, the models it needs, every test.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all --check
cargo build --release --locked -p rag-api
./target/release/rag models fetch
cargo test --release --locked --workspace
