"""What TensorBoard logging and the validation's 200-character greedy sample cost per validation,
against the validation itself (the full tiny-shakespeare val split, as `train` runs it).

    python bench/logging_cost.py [--preset small] [--repeats 5]

One process, one thread count (torch's default); every number is the median of --repeats, and
the ratios come from the same run, so a busy machine moves them less than the absolute times.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch

from charlstm.config import resolve_config
from charlstm.data.dataset import resolve_dataset
from charlstm.training.build import build_model, build_optimizer
from charlstm.training.distributed import Dist
from charlstm.training.runstate import RunState
from charlstm.training.sinks import Sinks, TensorBoardSink
from charlstm.training.validation import SAMPLE_CHARS, Validator


def median_s(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    dataset = resolve_dataset(None)  # the bundled tiny shakespeare
    cfg = resolve_config(args.preset, device="cpu")
    device = torch.device("cpu")
    model = build_model(cfg.model_config(dataset.vocab.size), "fp32", device)
    state = RunState(model, build_optimizer(model, cfg, device))
    dist = Dist()
    validator = Validator(dataset.split("val"), cfg.eval_batch_size, device, None, dist)

    validation_s = median_s(lambda: validator.loss(model), max(1, args.repeats // 2))
    sample_s = median_s(lambda: validator.sample(state, dataset.vocab), args.repeats)
    text = validator.sample(state, dataset.vocab)
    with tempfile.TemporaryDirectory() as tmp:
        sinks = Sinks([TensorBoardSink(Path(tmp) / "tb", None)], print)
        step = iter(range(1, 10**9))
        train_record = {"kind": "train", "train_loss": 1.5, "grad_norm": 0.4, "lr": 3e-3,
                        "chars_per_s": 9000.0}  # fmt: skip
        eval_record = {"kind": "eval", "val_loss": 1.4, "bpc": 1.4 / math.log(2), "sample": text}
        train_s = median_s(lambda: sinks.record({**train_record, "step": next(step)}), 50)
        eval_s = median_s(lambda: sinks.record({**eval_record, "step": next(step)}), 20)
        sinks.close()

    print(f"{args.preset}: {model.num_parameters():,} parameters, {torch.get_num_threads()} "
          f"threads, val split {len(dataset.split('val')):,} characters")  # fmt: skip
    print(f"validation (full val split)        {validation_s * 1e3:9.1f} ms")
    print(f"greedy sample, {SAMPLE_CHARS} characters     {sample_s * 1e3:9.1f} ms  "
          f"({sample_s / validation_s:.2%} of the validation)")  # fmt: skip
    print(f"TensorBoard: a validation's record {eval_s * 1e3:9.2f} ms  (scalars, text, flush)")
    print(f"TensorBoard: a train log record    {train_s * 1e3:9.2f} ms  (4 scalars, no flush)")


if __name__ == "__main__":
    main()
