#!/usr/bin/env python3
"""Peer for `rag bench ingest`: the same all-MiniLM-L6-v2 weights run by ONNX Runtime.

No package ships an ONNX graph of the model, so this builds one from the
safetensors with the `onnx` helper API (no torch): BERT embeddings, 6
post-norm encoder layers, then mean pooling over the attention mask and L2
normalisation, as sentence-transformers does. The graph is checked against
the vectors `rag bench ingest` prints before any timing is trusted.

usage: embed_peer.py MODEL_DIR PASSAGES_JSON [--threads N] [--batch N] [--check REF_JSON]
       embed_peer.py MODEL_DIR --export-only FILE   (used by `rag models fetch`)
prints one JSON line: {engine, passages, seconds, passages_per_s, threads, batch}
"""
import argparse
import json
import struct
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, meta in header.items():
        # Skip metadata and integer buffers (position_ids).
        if name == "__metadata__" or meta["dtype"] != "F32":
            continue
        start, end = meta["data_offsets"]
        out[name] = np.frombuffer(data[start:end], dtype=np.float32).reshape(meta["shape"])
    return out


def build_graph(weights, config):
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    head_dim = hidden // heads
    layers = config["num_hidden_layers"]
    eps = config.get("layer_norm_eps", 1e-12)
    inits, nodes = [], []

    def w(name, key=None, transpose=False):
        arr = weights[key or name]
        if transpose:
            arr = arr.T.copy()
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def const(name, value, dtype=np.int64):
        inits.append(numpy_helper.from_array(np.array(value, dtype=dtype), name))
        return name

    def node(op, inputs, output, **attrs):
        nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output

    def strip(k):
        # Some exports prefix every tensor with "bert.".
        return k if k in weights else "bert." + k

    ids, mask, types = "input_ids", "attention_mask", "token_type_ids"
    seq = node("Shape", [ids], "shape_ids")
    seq_len = node("Gather", [seq, const("one_idx", 1)], "seq_len", axis=0)
    positions = node("Range", [const("zero", 0), seq_len, const("one", 1)], "positions")
    we = node("Gather", [w("word_emb", strip("embeddings.word_embeddings.weight")), ids], "we", axis=0)
    pe = node("Gather", [w("pos_emb", strip("embeddings.position_embeddings.weight")), positions], "pe", axis=0)
    te = node("Gather", [w("type_emb", strip("embeddings.token_type_embeddings.weight")), types], "te", axis=0)
    x = node("Add", [node("Add", [we, pe], "wepe"), te], "emb")
    x = node("LayerNormalization", [x, w("emb_ln_w", strip("embeddings.LayerNorm.weight")), w("emb_ln_b", strip("embeddings.LayerNorm.bias"))], "emb_ln", axis=-1, epsilon=eps)

    # Additive mask: 0 where attended, -10000 elsewhere; [B,1,1,T].
    mask_f = node("Cast", [mask], "mask_f", to=TensorProto.FLOAT)
    inv = node("Sub", [const("one_f", 1.0, np.float32), mask_f], "mask_inv")
    add_mask = node("Mul", [inv, const("neg", -10000.0, np.float32)], "mask_add")
    add_mask = node("Unsqueeze", [add_mask, const("ax12", [1, 2])], "mask_4d")
    split_shape = const("split_shape", [0, -1, heads, head_dim])
    merge_shape = const("merge_shape", [0, -1, hidden])
    scale = const("scale", 1.0 / np.sqrt(head_dim), np.float32)

    for i in range(layers):
        p = f"encoder.layer.{i}."
        def lin(inp, name, out):
            y = node("MatMul", [inp, w(f"{out}_w", strip(p + name + ".weight"), transpose=True)], f"{out}_mm")
            return node("Add", [y, w(f"{out}_b", strip(p + name + ".bias"))], out)
        def heads_of(t, name):
            r = node("Reshape", [t, split_shape], f"{name}_r")
            return node("Transpose", [r], f"{name}_t", perm=[0, 2, 1, 3])
        q = heads_of(lin(x, "attention.self.query", f"l{i}_q"), f"l{i}_q")
        k = heads_of(lin(x, "attention.self.key", f"l{i}_k"), f"l{i}_k")
        v = heads_of(lin(x, "attention.self.value", f"l{i}_v"), f"l{i}_v")
        kt = node("Transpose", [k], f"l{i}_kt", perm=[0, 1, 3, 2])
        scores = node("Mul", [node("MatMul", [q, kt], f"l{i}_qk"), scale], f"l{i}_scaled")
        probs = node("Softmax", [node("Add", [scores, add_mask], f"l{i}_masked")], f"l{i}_probs", axis=-1)
        ctx = node("MatMul", [probs, v], f"l{i}_ctx")
        ctx = node("Reshape", [node("Transpose", [ctx], f"l{i}_ctx_t", perm=[0, 2, 1, 3]), merge_shape], f"l{i}_ctx_m")
        attn = lin(ctx, "attention.output.dense", f"l{i}_ao")
        x = node("LayerNormalization", [node("Add", [attn, x], f"l{i}_res1"), w(f"l{i}_ln1_w", strip(p + "attention.output.LayerNorm.weight")), w(f"l{i}_ln1_b", strip(p + "attention.output.LayerNorm.bias"))], f"l{i}_ln1", axis=-1, epsilon=eps)
        h = lin(x, "intermediate.dense", f"l{i}_ff1")
        # Exact GELU: 0.5 * h * (1 + erf(h / sqrt(2))).
        erf = node("Erf", [node("Mul", [h, const(f"l{i}_isq2", 1 / np.sqrt(2), np.float32)], f"l{i}_hs")], f"l{i}_erf")
        g = node("Mul", [node("Mul", [h, const(f"l{i}_half", 0.5, np.float32)], f"l{i}_hh"), node("Add", [erf, const(f"l{i}_one", 1.0, np.float32)], f"l{i}_erf1")], f"l{i}_gelu")
        out = lin(g, "output.dense", f"l{i}_ff2")
        x = node("LayerNormalization", [node("Add", [out, x], f"l{i}_res2"), w(f"l{i}_ln2_w", strip(p + "output.LayerNorm.weight")), w(f"l{i}_ln2_b", strip(p + "output.LayerNorm.bias"))], f"l{i}_ln2", axis=-1, epsilon=eps)

    m3 = node("Unsqueeze", [mask_f, const("ax2", [2])], "mask3")
    summed = node("ReduceSum", [node("Mul", [x, m3], "masked_h"), const("ax1", [1])], "summed", keepdims=0)
    counts = node("ReduceSum", [m3, const("ax1b", [1])], "counts", keepdims=0)
    mean = node("Div", [summed, counts], "mean")
    norm = node("Sqrt", [node("ReduceSum", [node("Mul", [mean, mean], "sq"), const("ax1c", [1])], "sqsum", keepdims=1)], "norm")
    node("Div", [mean, norm], "embedding")

    graph = helper.make_graph(
        nodes, "minilm",
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"]) for n in (ids, mask, types)],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", hidden])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("passages", nargs="?")
    ap.add_argument("--export-only", help="write the ONNX graph to this file and exit")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--check", help="JSON file with reference vectors for the first passages")
    args = ap.parse_args()
    if not args.export_only and not args.passages:
        ap.error("PASSAGES_JSON is required unless --export-only is given")

    config = json.load(open(f"{args.model_dir}/config.json"))
    model = build_graph(read_safetensors(f"{args.model_dir}/model.safetensors"), config)
    if args.export_only:
        onnx.save(model, args.export_only)
        return

    import onnxruntime as ort
    from tokenizers import Tokenizer
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    tok = Tokenizer.from_file(f"{args.model_dir}/tokenizer.json")
    tok.enable_truncation(256)
    passages = json.load(open(args.passages))

    def embed(texts):
        # Same batching as rag: sort by length, pad to the batch's longest.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = [None] * len(texts)
        for s in range(0, len(order), args.batch):
            idx = order[s:s + args.batch]
            tok.enable_padding()
            enc = tok.encode_batch([texts[i] for i in idx])
            ids = np.array([e.ids for e in enc], dtype=np.int64)
            mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
            vecs = session.run(["embedding"], {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
            for i, v in zip(idx, vecs):
                out[i] = v
        return out

    if args.check:
        ref = json.load(open(args.check))
        got = embed(passages[: len(ref)])
        worst = max(float(np.max(np.abs(np.array(r) - g))) for r, g in zip(ref, got))
        if worst > 1e-3:
            sys.exit(f"ONNX graph disagrees with candle: max abs difference {worst}")
    embed(passages[: args.batch])  # warm-up
    started = time.perf_counter()
    embed(passages)
    seconds = time.perf_counter() - started
    print(json.dumps({"engine": "python-onnxruntime", "passages": len(passages), "seconds": seconds,
                      "passages_per_s": len(passages) / seconds, "threads": args.threads, "batch": args.batch}))


if __name__ == "__main__":
    main()
