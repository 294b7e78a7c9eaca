"""What `charlstm eval --dynamic` and `--window N` cost next to the static full-stream
`charlstm eval --batch-size 1`, on the same text, in the same process.

    python bench/dynamic_speed.py checkpoints/ts10/best.pt --chars 20000 --threads 1,2

The text is the first --chars characters of the run's val split. For each thread count the
three evaluations take turns for --rounds rounds (this machine is shared, so single timings
are noise); reported are each one's median chars/s, its median ratio to the static speed of
the same round, and the seconds the whole val split would take at that speed. The gradient
statistics are computed (or read from the cache) once, before the timings.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--chars", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--threads", default="1,2", help="torch thread counts to time")
    args = parser.parse_args()

    import copy

    import torch

    import charlstm
    from charlstm.data.heldout import split_ids
    from charlstm.evaluation.dynamic import DynamicSettings, adapt, load_or_compute_rms
    from charlstm.evaluation.scoring import stream_nats, window_nats

    ckpt = charlstm.load_checkpoint(args.checkpoint, "cpu")
    ids, _, split = split_ids(ckpt, None, "val")
    val_chars = len(ids) - 1
    ids = ids[: args.chars + 1]
    start = time.perf_counter()
    rms, info = load_or_compute_rms(ckpt)
    print(f"gradient statistics: {info['stats']} in {time.perf_counter() - start:.1f} s")
    settings = DynamicSettings()
    print(f"{args.checkpoint}, {len(ids) - 1:,} chars of {split}, {settings}")

    def timed(fn) -> tuple[float, float]:
        start = time.perf_counter()
        nats, count = fn()[:2]
        return count / (time.perf_counter() - start), nats / count

    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        speeds: dict[str, list[float]] = {"static": [], "window": [], "dynamic": []}
        losses: dict[str, float] = {}
        for _ in range(args.rounds):
            for name, fn in (
                ("static", lambda: stream_nats(ckpt.model, ids, 1)),
                ("window", lambda: window_nats(ckpt.model, ids, args.window)),
                ("dynamic", lambda: adapt(copy.deepcopy(ckpt.model), ids, rms, settings)),
            ):
                speed, losses[name] = timed(fn)
                speeds[name].append(speed)
        print(f"\n{threads} thread(s)")
        for name, values in speeds.items():
            ratios = [v / s for v, s in zip(values, speeds["static"], strict=True)]
            speed = statistics.median(values)
            print(
                f"  {name:8s} {losses[name]:.4f} nats/char  {speed:9,.0f} chars/s  "
                f"x{statistics.median(ratios):.3f} of static  "
                f"whole {split} ({val_chars:,} chars): {val_chars / speed:6.1f} s"
            )


if __name__ == "__main__":
    main()
