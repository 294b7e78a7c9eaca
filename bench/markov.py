"""Quality check against a known answer: an order-2 Markov source over 12 symbols.

Generates 1M characters from a random order-2 Markov chain, computes its entropy rate exactly
(stationary distribution of the pair chain x conditional entropies), trains charlstm on it
with the standard 90/10 split, and compares the full-stream val loss with the entropy rate —
the best any model can do on average. Target: within 2 %.

    python bench/markov.py                 # ~2-3 minutes on 2 cores
    python bench/markov.py --steps 3000 --json
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
    parser.add_argument("--chars", type=int, default=1_000_000)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from charlstm.prepare import tokenize
    from charlstm.trainer import train

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
        "within_2_percent": result.best_val_loss <= 1.02 * h,
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
            f"({figures['ratio_to_entropy_rate']:.4f}x the entropy rate, target <= 1.02: "
            f"{'PASS' if figures['within_2_percent'] else 'FAIL'})"
        )


if __name__ == "__main__":
    main()
