"""Model quality at a budget of *reference CPU-minutes* (issue #32): train a recipe on a corpus,
score best.pt statically (batch 1) and with `--dynamic` on the held-out split, append one JSON
line per run to a results file, and print the table.

A reference CPU-minute is what the plain fp32 loop (nn.Embedding + nn.LSTM + nn.Linear + Adam,
2 x 512, batch 32, bptt 128: `small`'s shapes) computes in one minute on the idle machine
(`REFERENCE_IDLE_CHARS_PER_S`, its fastest step there). On the idle machine that loop and the
10-minute default's shape (2 x 640, bf16 kernel) step at about the same rate at one thread
(`calibrate`: 0.94-1.00x), so a reference minute is about an idle minute of the default (at
two threads on 2026-12-07: 7,200 against auto's 9,168 chars/s for 2 x 640, 0.79x). Two
ways to give a run N of them on a machine that others share:

- `--mode steps` (the default, for comparing recipes): `--preset auto` chooses the shape as
  it would with N idle minutes, from idle speeds that are not timed here
  (`idle_chars_per_s`: the 10-minute default's idle speed scaled by parameters), and the run
  trains the steps auto predicts for that budget (its own `chars_in_budget`, the 3 %
  validation share taken off). Training is then independent of the load: two recipes at one
  seed differ only by the recipe. 10 reference minutes are 2,324 steps of 2 x 640, the mean
  of the two idle 10-minute runs in bench/RESULTS.md.
- `--mode wall` (the issue's literal protocol): the reference loop is timed before the run,
  `scale` = its rate now / idle, and the run is `charlstm train --time-budget N / scale`,
  wall clock, with validations and measuring inside the budget. Load that changes during the
  run moves the figure; use it on a quiet machine, to confirm, not to screen.

    python bench/quality.py reference                      # the reference loop's rate now
    python bench/quality.py calibrate                      # ... against the default's shape
    python bench/quality.py run default ema --seeds 1337 1 --budget 2.5 [--data DIR]
    python bench/quality.py run default --set lr=2e-3 --budget 2.5   # an ad-hoc recipe
    python bench/quality.py table [--results FILE]         # the table from the results file

Recipes are `train` options on top of `--preset auto` (`--list`); a shape given (hidden_size,
num_layers) fixes auto's shape, and a dropout or weight decay given overrides auto's by-epoch
choice. Each run goes to `--root/<corpus>-<recipe>-<budget>m-s<seed>`; a run whose line is in
the results file already is skipped (so an interrupted sweep resumes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

#: the plain fp32 loop's fastest step on the idle project machine (2-core AMD EPYC, 2 threads,
#: tiny shakespeare's 65 symbols), chars/s: measured idle on 2026-12-07 (`python
#: bench/quality.py reference`, median of 5: 6,922-7,358, load 1.4-1.6 from nothing else).
#: Before, an estimate of 16,700 (the 10-minute default's idle rate) stood here, which made
#: `--mode wall` give an idle machine 2.3 times its budget. Only `--mode wall` uses it.
REFERENCE_IDLE_CHARS_PER_S = 7_200.0
#: what the 10-minute default (2 x 640 with the bf16 kernel) trained at on the idle machine:
#: 2,436 and 2,211 steps of 4,096 characters in 10 minutes (16,546 and 15,005 chars/s overall;
#: bench/RESULTS.md "What does 10 minutes on a CPU reach on tiny shakespeare"); its fastest step
#: is a little faster than that mean. This value makes `--mode steps` give that pair's mean,
#: 2,324 steps, at 10 reference minutes (16,350 x 600 s x 0.97 / 4,096)
ANCHOR_IDLE_CHARS_PER_S = 16_350.0

RECIPES: dict[str, dict] = {
    "default": {},
    "ema": {"ema": 0.999},
    "wdrop": {"weight_drop": 0.2},
    "locked": {"locked_dropout": True},
    "minlr0": {"min_lr_ratio": 0.0},
    "lr2e-3": {"lr": 2e-3},
    "lr5e-3": {"lr": 5e-3},
    "bptt64": {"bptt": 64},
    "bptt256": {"bptt": 256, "batch_size": 16},
    "b64": {"batch_size": 64},
    "b64-lr5e-3": {"batch_size": 64, "lr": 5e-3},
    "b16": {"batch_size": 16},
    "h768": {"num_layers": 2, "hidden_size": 768},
    "h512": {"num_layers": 2, "hidden_size": 512},
    "3x512": {"num_layers": 3, "hidden_size": 512},
    "embed256": {"embed_size": 256},
}


def reference_chars_per_s(vocab_size: int = 65, steps: int = 8) -> float:
    """The plain fp32 loop (`small`'s shapes) here and now: its fastest step after one warm-up,
    as `--preset auto` times its candidates (other work only ever slows a step down)."""
    torch.manual_seed(0)
    batch, bptt, embed, hidden, layers = 32, 128, 128, 512, 2
    emb, head = nn.Embedding(vocab_size, embed), nn.Linear(hidden, vocab_size)
    lstm = nn.LSTM(embed, hidden, layers, dropout=0.1)
    params = [*emb.parameters(), *lstm.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3)
    data = torch.randint(0, vocab_size, (bptt + 1, batch))
    state, best = None, math.inf
    for step in range(steps + 1):
        start = time.perf_counter()
        out, state = lstm(F.dropout(emb(data[:-1]), 0.1), state)
        loss = F.cross_entropy(head(F.dropout(out, 0.1)).view(-1, vocab_size), data[1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        state = (state[0].detach(), state[1].detach())
        if step:
            best = min(best, time.perf_counter() - start)
    return batch * bptt / best


def idle_chars_per_s(cfg, vocab_size: int, bt_ratio: float | None = None) -> float:
    """A shape's training speed on the idle machine, without timing it on this busy one: the
    anchor (2 x 640 at batch 32, bptt 128) scaled by parameters (the step's FLOPs; on the
    idle machine chars/s x parameters held within ~10 % from 2 x 384 to 2 x 768, autopreset's
    table). A batch or bptt other than 32 x 128 changes the GEMMs' efficiency, so that factor
    is timed here, against the same shape at 32 x 128, in turns, or given (`bt_ratio`): on a
    machine loaded 4-5x over its cores the timed ratio of bptt 64 to 128 came out at 0.59,
    which the step's arithmetic does not explain, so give it where the load is heavy."""
    from charlstm.training.autopreset import _params, measure_chars_per_s

    anchor = replace(cfg, num_layers=2, hidden_size=640, embed_size=128, tie_weights=False)
    speed = ANCHOR_IDLE_CHARS_PER_S * _params(anchor, vocab_size) / _params(cfg, vocab_size)
    if bt_ratio is not None:
        speed *= bt_ratio
    elif (cfg.batch_size, cfg.bptt) != (32, 128):
        plain = replace(cfg, batch_size=32, bptt=128)
        cpu = torch.device("cpu")
        ratios = [measure_chars_per_s(cfg, vocab_size, cpu)
                  / measure_chars_per_s(plain, vocab_size, cpu) for _ in range(5)]  # fmt: skip
        speed *= float(np.median(ratios))
    return speed


def calibrate() -> None:
    """The reference loop against the shape the 10-minute default trains (2 x 640, `--preset
    auto`'s recipe, its kernel), timed in turns: the ratio turns the idle 10-minute runs' speed
    (ANCHOR_IDLE_CHARS_PER_S) into the reference loop's idle rate."""
    from charlstm.config import PRESETS, TrainConfig
    from charlstm.training.autopreset import measure_chars_per_s

    cfg = TrainConfig(**{**PRESETS["small"], "hidden_size": 640, "dropout": 0.3})
    ratios = []
    for _ in range(3):
        ref = reference_chars_per_s()
        mine = measure_chars_per_s(cfg, 65, torch.device("cpu"))
        ratios.append(mine / ref)
        print(f"ref {ref:,.0f}  2x640 {mine:,.0f}  ratio {mine / ref:.3f}  load {loadavg()}",
              file=sys.stderr)  # fmt: skip
    ratio = float(np.median(ratios))
    print(json.dumps({"ratio_2x640_to_reference": ratio, "threads": torch.get_num_threads(),
                      "reference_idle_chars_per_s": ANCHOR_IDLE_CHARS_PER_S / ratio}))  # fmt: skip


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()
    except OSError:
        return "n/a"


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_one(args, recipe: str, options: dict, seed: int) -> dict:
    """Train one recipe at one seed for the scaled budget and score its best.pt."""
    from charlstm.data.dataset import resolve_dataset
    from charlstm.evaluation.dynamic import DynamicSettings
    from charlstm.evaluation.scoring import evaluate
    from charlstm.training.autopreset import choose
    from charlstm.training.trainer import train

    dataset = resolve_dataset(args.data)
    folder = args.root / f"{dataset.name}-{recipe}-{args.budget:g}m-s{seed}-{args.mode}"
    # steps mode does not need the load: its step count comes from the idle speeds
    ref_now = reference_chars_per_s(dataset.vocab.size) if args.mode == "wall" else None
    scale = min(1.0, ref_now / args.idle_rate) if ref_now else None
    given = {**options, "seed": seed}
    record = {
        "corpus": dataset.name, "recipe": recipe, "options": options, "seed": seed,
        "budget_ref_min": args.budget, "mode": args.mode, "ref_chars_per_s": ref_now,
        "ref_idle_chars_per_s": args.idle_rate, "scale": scale, "load_before": loadavg(),
        "cpu": cpu_name(), "torch": torch.__version__, "commit": _commit(),
    }  # fmt: skip
    start = time.perf_counter()
    if args.mode == "wall":
        wall_min = args.budget / scale
        result = train(args.data, folder, preset="auto", time_budget_min=wall_min,
                       force=True, **given)  # fmt: skip
        cfg = result.auto_choice.config if result.auto_choice else None
        record.update(wall_budget_min=wall_min)
    else:

        def measure(cfg, vocab, device, world):  # the idle machine's speed, as auto sees it
            return idle_chars_per_s(cfg, vocab, args.bt_ratio)

        choice = choose({**given, "time_budget_min": args.budget},
                        len(dataset.split("train")), dataset.vocab.size, torch.device("cpu"),
                        measure=measure)  # fmt: skip
        cfg = choice.config
        steps = max(1, round(choice.rows[choice.chosen].chars_in_budget
                             / (cfg.batch_size * cfg.bptt)))  # fmt: skip
        cfg = replace(cfg, preset="small", time_budget_min=None, steps=steps,
                      eval_every=str(max(1, math.ceil(steps / 5))))  # fmt: skip
        result = train(args.data, folder, config=cfg, force=True)
        record.update(auto_reason=choice.reason, bt_ratio=args.bt_ratio)
    record.update(
        train_wall_s=time.perf_counter() - start,
        steps=result.steps if hasattr(result, "steps") else None,
        shape=f"{cfg.num_layers}x{cfg.hidden_size}" if cfg else None,
        config={
            k: getattr(cfg, k)
            for k in (
                "num_layers",
                "hidden_size",
                "embed_size",
                "dropout",
                "weight_decay",
                "bptt",
                "batch_size",
                "lr",
                "min_lr_ratio",
                "ema",
                "weight_drop",
                "locked_dropout",
            )
        }
        if cfg
        else None,
        best_val=getattr(result, "best_val_loss", None),
    )
    best = folder / "best.pt"
    static = evaluate(best, split="val", batch_size=1)
    record.update(static=static.loss, static_bpc=static.bpc, static_s=static.seconds)
    if not args.no_dynamic:
        settings = DynamicSettings()
        dyn = evaluate(best, split="val", dynamic=settings)
        record.update(dynamic=dyn.loss, dynamic_bpc=dyn.bpc, dynamic_s=dyn.seconds)
    record.update(load_after=loadavg(), finished=time.strftime("%Y-%m-%dT%H:%M:%SZ",
                  time.gmtime()))  # fmt: skip
    return record


def dynamic_grid(args) -> None:
    """`--dynamic` settings on one checkpoint, scored on the first `--chars` characters of its
    val split (static on the same characters first), one JSON line each: evaluation only, so
    a grid costs minutes where training costs hours. The statistics are computed once and
    cached beside the checkpoint, as `charlstm eval --dynamic` does."""
    import itertools

    from charlstm.data.dataset import load_dataset
    from charlstm.evaluation.dynamic import DynamicSettings, dynamic_nats
    from charlstm.evaluation.scoring import stream_nats
    from charlstm.model.checkpoint import load_checkpoint

    ckpt = load_checkpoint(args.checkpoint)
    data = (ckpt.payload.get("data") or {}).get("folder")
    if not data:
        raise SystemExit("the checkpoint does not name its data folder")
    ids = np.asarray(load_dataset(data).split("val")[: args.chars])
    total, count = stream_nats(ckpt.model, ids, 1)
    rows = [{"checkpoint": str(args.checkpoint), "chars": int(count), "mode": "static",
             "loss": total / count, "load": loadavg()}]  # fmt: skip
    print(json.dumps(rows[0]), flush=True)
    for lr, decay, segment in itertools.product(args.lr, args.decay, args.segment):
        start = time.perf_counter()
        settings = DynamicSettings(segment=segment, lr=lr, decay=decay)
        total, count, _ = dynamic_nats(ckpt, ids, settings)
        rows.append({"checkpoint": str(args.checkpoint), "chars": int(count), "mode": "dynamic",
                     "lr": lr, "decay": decay, "segment": segment, "loss": total / count,
                     "seconds": time.perf_counter() - start, "load": loadavg()})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    with args.results.open("a") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True, check=False, cwd=Path(__file__).parent)  # fmt: skip
    return out.stdout.strip()


def read_results(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def print_table(rows: list[dict]) -> None:
    """One line per (corpus, budget, mode, recipe): each seed's static / dynamic and the mean,
    and the difference of the means from the same corpus's `default`."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["corpus"], r["budget_ref_min"], r["mode"], r["recipe"]), []).append(r)
    base = {k[:3]: v for k, v in groups.items() if k[3] == "default"}
    print("| corpus | ref-min | mode | recipe | shape | steps | seeds: static (dynamic) "
          "| mean static | mean dynamic | Δ static | Δ dynamic |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for key, runs in sorted(groups.items(), key=lambda kv: (kv[0][:3], kv[0][3] != "default")):
        stat = _mean(runs, "static")
        dyn = _mean(runs, "dynamic")
        ref = base.get(key[:3])
        d_stat = f"{stat - _mean(ref, 'static'):+.4f}" if ref and key[3] != "default" else ""
        d_dyn = (f"{dyn - _mean(ref, 'dynamic'):+.4f}"
                 if ref and key[3] != "default" and not math.isnan(dyn) else "")  # fmt: skip
        seeds = "; ".join(
            f"{r['seed']}: {r['static']:.4f}"
            + (f" ({r['dynamic']:.4f})" if r.get("dynamic") is not None else "")
            for r in runs
        )
        shapes = ",".join(sorted({str(r.get("shape")) for r in runs}))
        steps = ",".join(str(r.get("steps")) for r in runs)
        print(f"| {key[0]} | {key[1]:g} | {key[2]} | {key[3]} | {shapes} | {steps} | {seeds} | "
              f"{stat:.4f} | {dyn:.4f} | {d_stat} | {d_dyn} |")  # fmt: skip


def _mean(runs: list[dict] | None, key: str) -> float:
    values = [r[key] for r in runs or [] if r.get(key) is not None]
    return float(np.mean(values)) if values else math.nan


def parse_set(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("reference", help="the reference loop's rate now, and the scale")
    sub.add_parser("calibrate", help="the reference against the 10-minute default's shape")
    run = sub.add_parser("run", help="train and score recipes")
    run.add_argument("recipes", nargs="*", default=["default"])
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="an ad-hoc recipe (named by its settings) instead of named ones",
    )
    run.add_argument("--seeds", type=int, nargs="+", default=[1337])
    run.add_argument("--budget", type=float, default=10.0, help="reference CPU-minutes")
    run.add_argument("--mode", choices=("steps", "wall"), default="steps")
    run.add_argument("--data", default=None, help="tokenized folder (default: bundled corpus)")
    run.add_argument("--no-dynamic", action="store_true", help="static score only")
    run.add_argument(
        "--bt-ratio",
        type=float,
        default=None,
        help="chars/s of the recipe's batch x bptt over 32 x 128 (default: timed)",
    )
    grid = sub.add_parser("dyngrid", help="--dynamic settings on one checkpoint's val prefix")
    grid.add_argument("checkpoint", type=Path)
    grid.add_argument("--chars", type=int, default=20_000)
    grid.add_argument("--lr", type=float, nargs="+", default=[6e-5])
    grid.add_argument("--decay", type=float, nargs="+", default=[0.01])
    grid.add_argument("--segment", type=int, nargs="+", default=[20])
    grid.add_argument("--results", type=Path, default=Path("runs/quality/dynamic.jsonl"))
    table = sub.add_parser("table", help="print the results table")
    for p in (run, table):
        p.add_argument("--results", type=Path, default=Path("runs/quality/results.jsonl"))
    run.add_argument("--root", type=Path, default=Path("runs/quality"))
    run.add_argument("--idle-rate", type=float, default=REFERENCE_IDLE_CHARS_PER_S)
    parser.add_argument("--list", action="store_true", help="print the recipes and exit")
    args = parser.parse_args()
    if args.list:
        for name, options in RECIPES.items():
            print(f"{name:12s} {options or '(--preset auto as is)'}")
        return
    if args.command == "reference":
        rates = [reference_chars_per_s() for _ in range(5)]
        print(json.dumps({"ref_chars_per_s": rates, "median": float(np.median(rates)),
                          "scale": float(np.median(rates)) / REFERENCE_IDLE_CHARS_PER_S,
                          "threads": torch.get_num_threads(), "load": loadavg()}))  # fmt: skip
        return
    if args.command == "dyngrid":
        dynamic_grid(args)
        return
    if args.command == "calibrate":
        calibrate()
        return
    if args.command == "table":
        print_table(read_results(args.results))
        return
    todo = ([(",".join(f"{k}={v}" for k, v in parse_set(args.set).items()),
              parse_set(args.set))] if args.set
            else [(r, RECIPES[r]) for r in args.recipes])  # fmt: skip
    args.results.parent.mkdir(parents=True, exist_ok=True)
    done = {(r["corpus"], r["recipe"], r["seed"], r["budget_ref_min"], r["mode"])
            for r in read_results(args.results)}  # fmt: skip
    from charlstm.data.dataset import resolve_dataset

    corpus = resolve_dataset(args.data).name
    for name, options in todo:
        for seed in args.seeds:
            if (corpus, name, seed, args.budget, args.mode) in done:
                print(f"skip {name} seed {seed}: in {args.results}", file=sys.stderr)
                continue
            print(f"+ {name} {options} seed {seed} {args.budget:g} ref-min ({args.mode})",
                  file=sys.stderr, flush=True)  # fmt: skip
            record = run_one(args, name, options, seed)
            with args.results.open("a") as f:
                f.write(json.dumps(record) + "\n")
            print(json.dumps(record), file=sys.stderr, flush=True)
    print_table(read_results(args.results))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
