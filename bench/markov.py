"""Quality check against a known answer: an order-2 Markov source over 12 symbols.

Generates 5M characters from a random order-2 Markov chain, computes its entropy rate exactly
(stationary distribution of the pair chain x conditional entropies), trains charlstm on it
with the standard 90/10 split, and compares the full-stream val loss with the entropy rate —
the best any model can do on average. Target: within 0.5 % (issue #14; it was 2 %).

    python bench/markov.py                 # ~1.5 minutes on 2 cores
    python bench/markov.py --chars 1000000 --steps 1500 --json    # the old, smaller setting

Why 5M characters and 6,000 steps (bench/RESULTS.md): with 1M (0.9M to train on) the 1 x 128
model stops at 1.010x (1,500 steps) and 1.008x (6,000), and more passes over the same 0.9M
characters do not help (a larger batch or dropout 0.2 make it worse): what is left is the
sample, not the model. The source is unlimited, so the benchmark draws more of it: the same
model and 6,000 steps (2.7 passes over 4.5M characters) reach 1.002x.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np

SYMBOLS = "abcdefghijkl"


def make_chain(k: int = 12, concentration: float = 0.3, seed: int = 0) -> np.ndarray:
    """P[a, b, c] = p(next = c | previous two = a, b), Dirichlet rows (peaked, so there is
    something to learn)."""
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.full(k, concentration), size=(k, k))


def entropy_rate(p: np.ndarray) -> float:
    """Nats per symbol: sum over pair states (a, b) of pi(a, b) * H(p(. | a, b))."""
    k = p.shape[0]
    # pair chain: (a, b) -> (b, c) with probability p[a, b, c]
    t = np.zeros((k * k, k * k))
    for a in range(k):
        for b in range(k):
            t[a * k + b, b * k : (b + 1) * k] = p[a, b]
    pi = np.full(k * k, 1.0 / (k * k))
    for _ in range(10_000):
        nxt = pi @ t
        if np.abs(nxt - pi).max() < 1e-15:
            break
        pi = nxt
    cond = -(p * np.log(p)).sum(axis=2).reshape(-1)
    return float(pi @ cond)


def sample_text(p: np.ndarray, n: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    k = p.shape[0]
    cdf = np.cumsum(p, axis=2)
    u = rng.random(n)
    out = np.empty(n, dtype=np.int64)
    a, b = 0, 1
    for i in range(n):  # generation only: the benchmark's own setup, not charlstm's hot path
        c = int(np.searchsorted(cdf[a, b], u[i]))
        out[i] = min(c, k - 1)
        a, b = b, out[i]
    return out


def true_model_loss(p: np.ndarray, ids: np.ndarray) -> float:
    """What the source itself scores on these characters (the empirical floor)."""
    return float(-np.log(p[ids[:-2], ids[1:-1], ids[2:]]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chars", type=int, default=5_000_000)
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from charlstm.data.prepare import tokenize
    from charlstm.training.trainer import train

    p = make_chain()
    h = entropy_rate(p)
    ids = sample_text(p, args.chars)
    work = Path(tempfile.mkdtemp(prefix="charlstm-markov-"))
    (work / "markov.txt").write_text("".join(SYMBOLS[i] for i in ids))
    data = tokenize(work / "markov.txt", work / "data")
    val = np.load(data.out / "val.npy").astype(np.int64)
    floor = true_model_loss(p, val)
    start = time.perf_counter()
    result = train(
        data.out,
        work / "run",
        preset="tiny",
        hidden_size=128,
        embed_size=32,
        bptt=64,
        batch_size=32,
        lr=3e-3,
        steps=args.steps,
        eval_every=500,
    )
    figures = {
        "entropy_rate_nats": h,
        "true_model_on_val_nats": floor,
        "charlstm_val_nats": result.best_val_loss,
        "ratio_to_entropy_rate": result.best_val_loss / h,
        "within_half_percent": result.best_val_loss <= 1.005 * h,
        "train_seconds": time.perf_counter() - start,
        "steps": args.steps,
    }
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(f"entropy rate            {h:.4f} nats/char ({h / math.log(2):.4f} bpc)")
        print(f"the source itself (val) {floor:.4f}")
        print(
            f"charlstm val            {result.best_val_loss:.4f}  "
            f"({figures['ratio_to_entropy_rate']:.4f}x the entropy rate, target <= 1.005: "
            f"{'PASS' if figures['within_half_percent'] else 'FAIL'})"
        )


if __name__ == "__main__":
    main()
