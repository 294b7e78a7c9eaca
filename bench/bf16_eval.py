"""`charlstm eval --precision bf16` against the exact fp32 path on one checkpoint (issue #15,
item 4): chars/s and loss of each, in alternating rounds in one process, for the ways `eval`
scores (one stream, 64 streams, --window 256).

    python bench/bf16_eval.py RUN/best.pt [--rounds 3] [--chars N]

Prints one row per scoring mode: fp32 and bf16 chars/s (best of the rounds), bf16 / fp32,
and the loss of each (bf16 moves it by bf16 rounding; fp32 is the reference). Scores the
checkpoint's own val split (its first N characters with --chars).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from charlstm.data.heldout import split_ids
from charlstm.evaluation.scoring import evaluate
from charlstm.model.checkpoint import load_checkpoint
from charlstm.runtime import has_bf16_units, keep_freed_memory

MODES = {
    "batch 1": {"batch_size": 1},
    "batch 64": {"batch_size": 64},
    "window 256": {"window": 256},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chars", type=int, default=None, help="score only the first N")
    args = parser.parse_args()
    keep_freed_memory()  # as train and bench do on a CPU
    ckpt = load_checkpoint(args.checkpoint, "cpu")
    ids, source, split = split_ids(ckpt, None, "val")
    ids = ids[: args.chars] if args.chars else ids
    cfg = ckpt.model.config
    print(
        f"{args.checkpoint}: {cfg.num_layers}x{cfg.hidden_size}, {source} {split}, "
        f"{len(ids):,} chars; bf16 units: {has_bf16_units()}"
    )
    print(f"{'mode':<11} {'fp32 chars/s':>13} {'bf16 chars/s':>13} {'bf16/fp32':>9} "
          f"{'fp32 loss':>10} {'bf16 loss':>10} {'delta':>8}")  # fmt: skip
    # evaluate() scores a split or a file: the (possibly shortened) split, decoded to a file
    text = Path(tempfile.mkdtemp()) / "val.txt"
    text.write_text(ckpt.vocab.decode(np.asarray(ids)), encoding="utf-8")
    for name, options in MODES.items():
        best = {"fp32": 0.0, "bf16": 0.0}
        loss = {}
        for _ in range(args.rounds):
            for precision in ("fp32", "bf16"):
                r = evaluate(ckpt, text=text, device="cpu", precision=precision, **options)
                best[precision] = max(best[precision], r.chars_per_s)
                loss[precision] = r.loss
        print(
            f"{name:<11} {best['fp32']:>13,.0f} {best['bf16']:>13,.0f} "
            f"{best['bf16'] / best['fp32']:>8.2f}x {loss['fp32']:>10.5f} {loss['bf16']:>10.5f} "
            f"{loss['bf16'] - loss['fp32']:>+8.5f}"
        )


if __name__ == "__main__":
    main()
