"""What `charlstm inspect` costs next to `charlstm eval --batch-size 1` on the same text, and
how big its web page is.

    python bench/inspect_speed.py checkpoints/ts10/best.pt --chars 10000

The text is the first --chars characters of the run's val split. Both run in this process,
taking turns for --rounds rounds (this machine is shared, so single timings are noise); the
ratio reported is the median of the per-round ratios. inspect does more than eval: every
layer's h and c for every character (each layer run on its own, plus the cell states
recomputed from the gates), the top-k guesses and the correlation of every cell with every
text property.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--chars", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    import numpy as np
    import torch

    import charlstm
    from charlstm.inspection.analysis import _excerpt_ids

    ckpt = charlstm.load_checkpoint(args.checkpoint, "cpu")
    ids, source = _excerpt_ids(ckpt, None, "val", args.chars)
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "text.txt"
        text.write_text(ckpt.vocab.decode(ids), encoding="utf-8")
        ratios, inspect_s, eval_s = [], [], []
        for _ in range(args.rounds):
            start = time.perf_counter()
            result = charlstm.inspect_text(ckpt, file=text, limit=len(ids), device="cpu")
            inspect_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            scored = charlstm.evaluate(ckpt, text=text, batch_size=1, device="cpu")
            eval_s.append(time.perf_counter() - start)
            ratios.append(inspect_s[-1] / eval_s[-1])
        size = charlstm.write_html(result, Path(tmp) / "page.html")
    cfg = ckpt.config
    threads = torch.get_num_threads()
    t_inspect, t_eval = statistics.median(inspect_s), statistics.median(eval_s)
    print(f"checkpoint  {args.checkpoint} ({cfg.num_layers} x LSTM({cfg.hidden_size}))")
    print(f"text        {source}, first {len(ids):,} characters; torch threads {threads}")
    print(f"loss        inspect {result.loss:.6f}, eval --batch-size 1 {scored.loss:.6f} nats/char")
    print(f"time        inspect {t_inspect:.2f} s, eval {t_eval:.2f} s (medians of {args.rounds})")
    print(
        f"ratio       inspect / eval = {statistics.median(ratios):.2f} (median of rounds; "
        f"range {min(ratios):.2f}-{max(ratios):.2f})"
    )
    print(f"activations {(result.h.nbytes + result.c.nbytes) / 1e6:.1f} MB (h and c, float32)")
    print(f"html        {size / 1e6:.2f} MB ({size / len(ids):.0f} bytes a character)")
    assert np.isclose(result.loss, scored.loss, atol=1e-6)


if __name__ == "__main__":
    main()
