"""GPU peer for `bench_generate ... cuda`: PyTorch + transformers on the same
weights. No model hub is reachable from the GPU machine, so the weights are
a random initialisation of Qwen2.5-0.5B's shapes (24 layers, hidden 896),
saved here as bf16 safetensors for candle to load: both engines run the
very same tensors, and speed does not depend on what the weights say.

  generate_peer_gpu.py save DIR            writes DIR/config.json + model.safetensors
  generate_peer_gpu.py run DIR --prompt-tokens N --max-tokens M --runs R

`run` prints one JSON line per run in the fields of `rag bench generate`:
wall time of a one-token answer (prefill + first token), wall time of the
whole greedy answer with end-of-sequence ignored, and the rates from them.
"""

import argparse
import json
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

parser = argparse.ArgumentParser()
parser.add_argument("command", choices=["save", "run"])
parser.add_argument("dir")
parser.add_argument("--prompt-tokens", type=int, default=1024)
parser.add_argument("--max-tokens", type=int, default=256)
parser.add_argument("--runs", type=int, default=3)
args = parser.parse_args()

if args.command == "save":
    config = Qwen2Config(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        torch_dtype="bfloat16",
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(args.dir, safe_serialization=True)
    print(json.dumps({"saved": args.dir, "parameters": sum(p.numel() for p in model.parameters())}))
    raise SystemExit

model = Qwen2ForCausalLM.from_pretrained(args.dir, dtype=torch.bfloat16).cuda().eval()
model.generation_config.pad_token_id = 0
torch.manual_seed(1)
ids = torch.randint(0, 151000, (1, args.prompt_tokens), device="cuda")


def generate(n):
    torch.cuda.synchronize()
    started = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
        )
    torch.cuda.synchronize()
    return time.perf_counter() - started, out.shape[1] - ids.shape[1]


generate(2)  # warm-up, as ours
for run in range(args.runs):
    ttft, _ = generate(1)
    total, produced = generate(args.max_tokens)
    print(
        json.dumps(
            {
                "engine": f"transformers {__import__('transformers').__version__} (torch {torch.__version__})",
                "model": "qwen2-0.5b-shape-random",
                "device": "cuda",
                "dtype": "bf16",
                "attention": model.config._attn_implementation,
                "run": run,
                "prompt_tokens": args.prompt_tokens,
                "completion_tokens": produced,
                "ttft_s": ttft,
                "prefill_tokens_per_s": args.prompt_tokens / ttft,
                "decode_tokens_per_s": (produced - 1) / max(total - ttft, 1e-9),
                "total_s": total,
            }
        ),
        flush=True,
    )
