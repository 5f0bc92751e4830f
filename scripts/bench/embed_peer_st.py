#!/usr/bin/env python3
"""Peer for `rag bench ingest --peer sentence-transformers`: the same
all-MiniLM-L6-v2 safetensors run by sentence-transformers on PyTorch (CPU).

The model folder holds the transformer's files only (config.json,
model.safetensors, tokenizer.json), so the pipeline is assembled here the
way the model's card defines it: transformer (256 tokens at most), mean
pooling, L2 normalisation. `encode` sorts by length and pads to each batch's
longest, as rag does. The vectors are checked against the ones
`rag bench ingest` prints before any timing is trusted.

usage: embed_peer_st.py MODEL_DIR PASSAGES_JSON [--threads N] [--batch N] [--check REF_JSON]
prints one JSON line: {engine, passages, seconds, passages_per_s, threads, batch}
"""
import argparse
import json
import os
import sys
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
warnings.filterwarnings("ignore")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("passages")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--check", help="JSON file with reference vectors for the first passages")
    args = ap.parse_args()

    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer, models

    torch.set_num_threads(args.threads)
    transformer = models.Transformer(args.model_dir, max_seq_length=256)
    pooling = models.Pooling(transformer.get_word_embedding_dimension(), "mean")
    model = SentenceTransformer(modules=[transformer, pooling, models.Normalize()], device="cpu")
    passages = json.load(open(args.passages))

    def embed(texts):
        return model.encode(texts, batch_size=args.batch, show_progress_bar=False)

    if args.check:
        ref = json.load(open(args.check))
        got = embed(passages[: len(ref)])
        worst = max(float(np.max(np.abs(np.array(r) - g))) for r, g in zip(ref, got))
        if worst > 1e-3:
            sys.exit(f"sentence-transformers disagrees with rag: max abs difference {worst}")
    embed(passages[: args.batch])  # warm-up
    started = time.perf_counter()
    embed(passages)
    seconds = time.perf_counter() - started
    print(json.dumps({"engine": "sentence-transformers", "torch": torch.__version__,
                      "passages": len(passages), "seconds": seconds,
                      "passages_per_s": len(passages) / seconds, "threads": args.threads,
                      "batch": args.batch}))


if __name__ == "__main__":
    main()
