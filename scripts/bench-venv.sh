#!/usr/bin/env bash
# Python virtual environments for the benchmark peers. Idempotent; prints
# the environment's python.
#
#   scripts/bench-venv.sh
#       target/bench-venv: ONNX Runtime on the same graph as ours
#       (scripts/bench/embed_peer.py) and mistral.rs's wheel for the
#       generation peer (scripts/bench/generate_peer.py).
#   scripts/bench-venv.sh sentence-transformers
#       target/st-venv: sentence-transformers on PyTorch, the other ingest
#       peer (scripts/bench/embed_peer_st.py). PyPI's Linux torch brings
#       its CUDA libraries along: about 6 GB on disk, unused on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
"")
    VENV=${RAG_BENCH_VENV:-target/bench-venv}
    IMPORTS="import onnx, onnxruntime, tokenizers, numpy, mistralrs"
    PACKAGES=(onnx==1.23.2 onnxruntime==1.32.0 tokenizers==0.23.3 numpy==2.4.6 mistralrs==0.9.5)
    ;;
sentence-transformers)
    VENV=${RAG_ST_VENV:-target/st-venv}
    IMPORTS="import sentence_transformers, torch, numpy"
    PACKAGES=(sentence-transformers==6.2.0 transformers==5.24.0 torch==2.15.0 numpy==2.4.6)
    ;;
*)
    echo "usage: $0 [sentence-transformers]" >&2
    exit 2
    ;;
esac
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "$IMPORTS" 2>/dev/null; then
    python3 -m venv "$VENV" >&2
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${PACKAGES[@]}" >&2
fi
echo "$PWD/$VENV/bin/python"
