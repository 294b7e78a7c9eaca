"""Which `--ema` decay pays, at exactly equal compute: one `charlstm train` run (the same steps,
data order, dropout masks and weights as the plain command) that also keeps averages with
other decays and validates each of them beside the run's own at every validation. The run
folder is that of `charlstm train ... --ema DECAY`; metrics.jsonl's eval lines gain
`val_ema_<d>` (with the warm-up), `val_ema_<d>_plain` (without it) beside `val_loss` (the
run's average) and `trained_val_loss` (the trained weights). Extra averages cost one lerp a
step and one validation each per validation; nothing they do touches the training.

    python bench/ema_decays.py --out RUN --steps 3120 --dropout 0.3 --ema 0.999 [--seed 1]
        [--also 0.99 --also 0.995 ...] [--plain 0.999 ...]
"""

from __future__ import annotations

import argparse
import json

import charlstm.training.trainer as trainer_module
from charlstm.cli import ui
from charlstm.training.ema import WeightAverage


class _PlainAverage(WeightAverage):
    """The same average without the warm-up: decay D from the first update."""

    def current_decay(self) -> float:
        return self.decay


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", default=None)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=3120)
    parser.add_argument("--dropout", type=float, default=0.3)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--also", type=float, action="append", default=[])
    parser.add_argument("--plain", type=float, action="append", default=[])
    args = parser.parse_args()
    extra = [(f"val_ema_{d:g}", WeightAverage, d) for d in args.also]
    extra += [(f"val_ema_{d:g}_plain", _PlainAverage, d) for d in args.plain]

    class Sweep(trainer_module.Trainer):
        def __init__(self, *a, **k) -> None:
            super().__init__(*a, **k)
            self.extra = [(key, cls(self.model, d)) for key, cls, d in extra]

        def train_step(self):
            loss, ok = super().train_step()
            if ok:
                for _, average in self.extra:
                    average.update()
            return loss, ok

        def start(self, resumed):
            record = self.writer.record

            def with_extra(entry: dict) -> None:
                if entry["kind"] == "eval":
                    for key, average in self.extra:
                        with average.applied():
                            entry[key] = self.validator.loss(self.model)
                    ui.console.print(json.dumps(entry))
                record(entry)

            self.writer.record = with_extra
            return super().start(resumed)

    trainer_module.Trainer = Sweep  # train() builds its Trainer by this name
    result = trainer_module.train(
        args.data,
        args.out,
        steps=args.steps,
        dropout=args.dropout,
        ema=args.ema,
        seed=args.seed,
        reporter=ui.TrainProgress(),
    )
    print(json.dumps({"best_val_loss": result.best_val_loss, "steps": result.steps}))


if __name__ == "__main__":
    main()
