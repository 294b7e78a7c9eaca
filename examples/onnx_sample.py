"""Sample text from a `charlstm export --format onnx` folder with onnxruntime, numpy and
tokenizers alone: no torch, no charlstm.

    pip install onnxruntime numpy tokenizers
    python examples/onnx_sample.py checkpoints/ts10/export-onnx --prime "ROMEO:" --length 300 \
        --temperature 0.8 --top-p 0.95 --seed 1

The prime runs through prime.onnx in one call; then each new character is one call of
step.onnx with the carried (h, c) state. With --temperature 0 (greedy) the text equals
`charlstm sample CHECKPOINT --temperature 0` for the same prime.
"""

from __future__ import annotations

import argparse
import codecs
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer


def pick(logits: np.ndarray, temperature: float, top_k: int, top_p: float, rng) -> int:
    """Greedy at temperature 0, else a draw after temperature, top-k and nucleus (top-p)."""
    if temperature == 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    if 0 < top_k < len(z):
        z[z < np.sort(z)[-top_k]] = -np.inf
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p < 1:
        order = np.argsort(-p, kind="stable")
        before = np.cumsum(p[order]) - p[order]  # the mass ahead of each symbol
        p[order[before >= top_p]] = 0.0  # the most likely symbol always stays
        p /= p.sum()
    return int(rng.choice(len(p), p=p))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path, help="a folder written by `charlstm export --format onnx`")
    ap.add_argument("--prime", default="", help="text to start from (printed first)")
    ap.add_argument("--length", type=int, default=500, help="characters to generate")
    ap.add_argument("--temperature", type=float, default=1.0, help="0 is greedy")
    ap.add_argument("--top-k", type=int, default=0, help="keep the k most likely (0: off)")
    ap.add_argument("--top-p", type=float, default=1.0, help="nucleus mass to keep (1: off)")
    ap.add_argument("--seed", type=int, default=None, help="seed for reproducible samples")
    args = ap.parse_args()

    meta = json.loads((args.folder / "model.json").read_text(encoding="utf-8"))
    tokenizer = Tokenizer.from_file(str(args.folder / "tokenizer.json"))
    prime_graph = ort.InferenceSession(str(args.folder / "prime.onnx"))
    step_graph = ort.InferenceSession(str(args.folder / "step.onnx"))
    rng = np.random.default_rng(args.seed)

    # bytes -> text as charlstm does it: hold back a partial UTF-8 character until it completes
    if meta["level"] == "byte":
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        decode = lambda ids: utf8.decode(bytes(ids))  # noqa: E731
    else:
        decode = lambda ids: tokenizer.decode(ids)  # noqa: E731

    if args.prime:
        text = (
            tokenizer.normalizer.normalize_str(args.prime) if tokenizer.normalizer else args.prime
        )
        ids = tokenizer.encode(args.prime).ids
        if meta["level"] == "char" and len(ids) != len(text):
            missing = sorted(set(text) - set(tokenizer.get_vocab()))
            sys.exit(f"error: the prime has characters the vocabulary lacks: {missing}")
        sys.stdout.write(decode(ids))
    else:
        ids = [meta["start_id"]]  # a newline as context, not printed (as `charlstm sample`)

    L, H = meta["num_layers"], meta["hidden_size"]
    h = c = np.zeros((L, 1, H), np.float32)
    tokens = np.array(ids, dtype=np.int64)[:, None]  # [T, batch 1]
    logits, h, c = prime_graph.run(None, {"tokens": tokens, "h": h, "c": c})
    logits = logits[-1, 0]
    for _ in range(args.length):
        token = pick(logits, args.temperature, args.top_k, args.top_p, rng)
        sys.stdout.write(decode([token]))
        sys.stdout.flush()
        out, h, c = step_graph.run(None, {"token": np.array([token], np.int64), "h": h, "c": c})
        logits = out[0]
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
