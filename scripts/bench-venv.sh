#!/usr/bin/env bash
# A Python virtual environment for the benchmark peer
# (scripts/bench/embed_peer.py): ONNX Runtime on the same graph as ours;
# and mistral.rs's wheel for the generation peer (scripts/bench/generate_peer.py).
# Idempotent; prints the environment's python.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${RAG_BENCH_VENV:-target/bench-venv}
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import onnx, onnxruntime, tokenizers, numpy, mistralrs" 2>/dev/null; then
    python3 -m venv "$VENV" >&2
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
        onnx==1.23.2 onnxruntime==1.32.0 tokenizers==0.23.3 numpy==2.4.6 mistralrs==0.9.5 >&2
fi
echo "$PWD/$VENV/bin/python"
