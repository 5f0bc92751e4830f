#!/usr/bin/env bash
# Runs the whole test suite on optimised code (model code in a debug build
# is unusably slow): formatting, the models it needs, every test.
#
#   scripts/test.sh           everything (what CI runs, through .ci/run)
#   scripts/test.sh --quick   the edit-test loop: formatting, clippy, the
#                             unit, handler and crate tests of the workspace
#                             on the `fast` profile (incremental); no e2e or
#                             hardening suite, no manifests, no answer gate
set -euo pipefail
cd "$(dirname "$0")/.."
# Each phase's start, with the minutes since this script began, so a CI log
# shows where its time goes.
phase() { echo "== $(date -u +%T) +$((SECONDS / 60))m$((SECONDS % 60))s: $*" >&2; }

quick=
case "${1:-}" in
"") ;;
--quick) quick=1 ;;
*)
    echo "usage: $0 [--quick]" >&2
    exit 2
    ;;
esac
profile=$([ -n "$quick" ] && echo fast || echo release)
RAG=./target/$profile/rag

phase formatting
cargo fmt --all --check
if [ -n "$quick" ]; then
    phase clippy
    cargo clippy --profile fast --locked --workspace --all-targets -- -D warnings
fi
phase build
cargo build --profile "$profile" --locked -p rag-api
phase models
"$RAG" models fetch
"$RAG" models fetch smollm2-135m-instruct
"$RAG" models fetch gemma3-270m
"$RAG" models fetch nomic-embed-text-v1.5
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
# The benchmark peers and real clients serve the end-to-end suite, which
# the quick tier leaves out.
if [ -z "$quick" ]; then
    # The benchmark peers that check our vectors and answers against a
    # reference on the same files (Python ONNX Runtime, mistral.rs); their tests
    # are skipped without them. The sentence-transformers peer (PyTorch, about
    # 6 GB) is opt-in: its test runs when the caller sets RAG_BENCH_ST_PYTHON.
    if [ -z "${RAG_BENCH_PYTHON:-}" ]; then
        if python=$(scripts/bench-venv.sh); then
            export RAG_BENCH_PYTHON="$python"
        elif [ -n "${RAG_REQUIRE_PEER:-}" ]; then
            echo "the benchmark peer is required (RAG_REQUIRE_PEER) but its environment could not be made" >&2
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
fi
# The chat page's screenshot and other artifacts of the run.
export RAG_ARTIFACT_DIR="${RAG_ARTIFACT_DIR:-$PWD/target/artifacts}"
phase tests
if [ -n "$quick" ]; then
    # Every test target but the end-to-end and hardening suites (tests/):
    # the libraries' unit tests and each crate's tests/ folder.
    targets=()
    for t in */tests/*.rs; do
        targets+=(--test "$(basename "$t" .rs)")
    done
    cargo test --profile fast --locked --workspace --lib --bins "${targets[@]}"
    phase done
    exit 0
fi
cargo test --release --locked --workspace
# Kubernetes manifests: every overlay renders and validates (strict,
# Kubernetes 1.29-1.33), and a broken one is rejected.
phase manifests
scripts/k8s-check.sh
phase answer-quality gate
# The answer-quality gate: the fixture questions against the minimums in
# fixtures/eval-thresholds.toml (exit 4 below them). Report in target/eval-fixtures.
"$RAG" --data-dir target/eval-data eval answers \
    --questions fixtures/questions.jsonl --corpus fixtures/wiki \
    --out target/eval-fixtures --fresh --thresholds fixtures/eval-thresholds.toml
phase done
