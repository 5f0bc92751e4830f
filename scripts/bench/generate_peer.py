"""Peer for `rag bench generate --peer`: mistral.rs (its Python wheel) on the
same GGUF file, the same prompt (read from stdin, rendered by the GGUF's own
chat template), the same answer length and the same thread count. Prints one
JSON line per run, in the fields `rag bench generate` prints.

Measured the same way as ours: wall time of a one-token answer is the time
to first token; wall time of the full answer, end-of-sequence ignored, is
the total; decode speed is the tokens after the first over the time after
the first. Prefix caching is off, so every run prefills the whole prompt.
"""

import argparse
import json
import os
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("model", help="path to the .gguf file")
parser.add_argument("--max-tokens", type=int, default=64)
parser.add_argument("--runs", type=int, default=1)
parser.add_argument("--threads", type=int, default=os.cpu_count())
parser.add_argument("--prompt-tokens", type=int, default=0, help="ours, for the record")
args = parser.parse_args()
os.environ["RAYON_NUM_THREADS"] = str(args.threads)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mistralrs import ChatCompletionRequest, Runner, Which  # noqa: E402

question = sys.stdin.read()
folder, name = os.path.split(os.path.abspath(args.model))
runner = Runner(
    which=Which.GGUF(quantized_model_id=folder, quantized_filename=name),
    token_source="none",
    no_paged_attn=True,
    prefix_cache_n=0,
)


def generate(max_tokens):
    started = time.perf_counter()
    response = runner.send_chat_completion_request(
        ChatCompletionRequest(
            model="peer",
            messages=[{"role": "user", "content": question}],
            max_tokens=max_tokens,
            temperature=0.0,
            ignore_eos=True,
        )
    )
    return time.perf_counter() - started, response.usage


generate(2)  # warm-up, as ours
for run in range(args.runs):
    ttft, first = generate(1)
    total, full = generate(args.max_tokens)
    decoded = max(full.completion_tokens - 1, 0)
    print(
        json.dumps(
            {
                "engine": "mistral.rs",
                "model": name,
                "device": "cpu",
                "threads": args.threads,
                "run": run,
                "prompt_tokens": first.prompt_tokens,
                "completion_tokens": full.completion_tokens,
                "ttft_s": ttft,
                "prefill_tokens_per_s": first.prompt_tokens / ttft,
                "decode_tokens_per_s": decoded / max(total - ttft, 1e-9),
                "total_s": total,
            }
        ),
        flush=True,
    )
