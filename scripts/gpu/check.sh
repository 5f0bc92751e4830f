#!/usr/bin/env bash
# The GPU check, run on the lent GPU machine after scripts/gpu/build.sh:
# candle on CUDA against transformers, same
# weights, same prompt length and answer length, in one run; then CLIENTS
# (default 8) requests at once, decoded together and one at a time.
set -uo pipefail
PY=/opt/torch/.venv/bin/python
LIBS=/usr/local/cuda/targets/x86_64-linux/lib:/usr/local/nvidia/lib64
for d in /opt/torch/.venv/lib/python3.12/site-packages/nvidia/*/lib; do LIBS=$LIBS:$d; done
export LD_LIBRARY_PATH=$LIBS:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
$PY -c "import lzma,sys; sys.stdout.buffer.write(lzma.open('target/gpu-carry/bench_generate.xz').read())" > /tmp/bench_generate
chmod +x /tmp/bench_generate
M=/tmp/qwen-random
$PY scripts/bench/generate_peer_gpu.py save $M 2>&1 | tail -1
cp target/gpu-carry/tokenizer.json $M/
ls -la $M
P=${PROMPT:-1024}; N=${MAX:-256}; R=${RUNS:-3}; C=${CLIENTS:-8}
/tmp/bench_generate $M cuda $P $N $R $C | tee $OUT/ours.jsonl
PT=$(head -1 $OUT/ours.jsonl | $PY -c "import json,sys; print(json.loads(sys.stdin.readline())['prompt_tokens'])")
$PY scripts/bench/generate_peer_gpu.py run $M --prompt-tokens $PT --max-tokens $N --runs $R 2>/dev/null | tee $OUT/peer.jsonl
