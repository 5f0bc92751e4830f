#!/usr/bin/env bash
# Runs the whole test suite on optimised code (model code in a debug build
# is unusably slow): formatting, the models it needs, every test.
set -euo pipefail
cd "$(dirname "$0")/.."
# Each phase's start, with the minutes since this script began, so a CI log
# shows where its time goes.
phase() { echo "== $(date -u +%T) +$((SECONDS / 60))m$((SECONDS % 60))s: $*" >&2; }

phase formatting
cargo fmt --all --check
phase build
cargo build --release --locked -p rag-api
phase models
./target/release/rag models fetch
./target/release/rag models fetch smollm2-135m-instruct
./target/release/rag models fetch gemma3-270m
# The `rag` binary sets this itself (BENCHMARKS.md, "Quantized against
# dequantized weights"); the library tests that load models directly get it from here.
export CANDLE_DEQUANTIZE_ALL=1
phase environments
# Postgres for the store tests when the packages are there (.ci/run
# installs them); without it those tests are skipped.
if [ -z "${RAG_TEST_POSTGRES_URL:-}" ]; then
    if url=$(scripts/start-postgres.sh); then
        export RAG_TEST_POSTGRES_URL="$url"
    elif [ -n "${RAG_REQUIRE_POSTGRES:-}" ]; then
        echo "PostgreSQL is required (RAG_REQUIRE_POSTGRES) but could not be started" >&2
        exit 1
    fi
fi
# The ingest benchmark's peers (Python ONNX Runtime, sentence-transformers);
# their tests are skipped without them.
if [ -z "${RAG_BENCH_PYTHON:-}" ]; then
    if python=$(scripts/bench-venv.sh); then
        export RAG_BENCH_PYTHON="$python"
    elif [ -n "${RAG_REQUIRE_PEER:-}" ]; then
        echo "the benchmark peer is required (RAG_REQUIRE_PEER) but its environment could not be made" >&2
        exit 1
    fi
fi
if [ -z "${RAG_BENCH_ST_PYTHON:-}" ]; then
    if python=$(scripts/bench-venv.sh sentence-transformers); then
        export RAG_BENCH_ST_PYTHON="$python"
    elif [ -n "${RAG_REQUIRE_PEER:-}" ]; then
        echo "the sentence-transformers peer is required (RAG_REQUIRE_PEER) but its environment could not be made" >&2
        exit 1
    fi
fi
# The real clients (the openai Python package, playwright-core driving
# Chromium); their tests are skipped without them.
if [ -z "${RAG_CLIENT_PYTHON:-}" ] || [ -z "${RAG_CLIENT_NODE_MODULES:-}" ]; then
    if clients=$(scripts/client-env.sh); then
        export $clients
    elif [ -n "${RAG_REQUIRE_CLIENTS:-}" ]; then
        echo "the client test environments are required (RAG_REQUIRE_CLIENTS) but could not be made" >&2
        exit 1
    fi
fi
# The chat page's screenshot and other artifacts of the run.
export RAG_ARTIFACT_DIR="${RAG_ARTIFACT_DIR:-$PWD/target/artifacts}"
phase tests
cargo test --release --locked --workspace
# Kubernetes manifests: every overlay renders and validates (strict,
# Kubernetes 1.29-1.33), and a broken one is rejected.
phase manifests
scripts/k8s-check.sh
phase answer-quality gate
# The answer-quality gate: the fixture questions against the minimums in
# fixtures/eval-thresholds.toml (exit 4 below them). Report in target/eval-fixtures.
./target/release/rag --data-dir target/eval-data eval answers \
    --questions fixtures/questions.jsonl --corpus fixtures/wiki \
    --out target/eval-fixtures --fresh --thresholds fixtures/eval-thresholds.toml
phase done
