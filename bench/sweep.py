"""Equal-compute comparisons of training recipes: every run trains the same number of steps of
the same size on tiny shakespeare's standard split, so the comparison is immune to other work
on the machine (wall time is reported, but not compared). How the rows of bench/RESULTS.md were
made.

    python bench/sweep.py --list                         # the recipes it knows
    python bench/sweep.py base wdrop locked --seeds 0 1  # run some, two seeds each
    python bench/sweep.py base --steps 300 --out /tmp/sweep   # a short smoke run

Each run is `charlstm train` in a child process (`--out OUT/<recipe>-s<seed>`, resumable:
a finished run is read back, not trained again); the table is printed as Markdown.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

# recipe name -> `charlstm train` options on top of the small preset
RECIPES: dict[str, list[str]] = {
    "base": [],
    "fp32": ["--precision", "fp32"],
    "bf16": ["--precision", "bf16"],
    "wdrop": ["--weight-drop", "0.2"],
    "wdrop-d0": ["--weight-drop", "0.2", "--dropout", "0"],
    "locked": ["--locked-dropout"],
    "locked-d2": ["--locked-dropout", "--dropout", "0.2"],
    "locked-wdrop": ["--locked-dropout", "--weight-drop", "0.2"],
    "ema": ["--ema", "0.999"],
    "h640": ["--hidden", "640"],
    "h768-1": ["--hidden", "768", "--layers", "1"],
}


def run(recipe: str, seed: int, steps: int, out: Path, extra: list[str]) -> dict:
    folder = out / f"{recipe}-s{seed}"
    cmd = [sys.executable, "-m", "charlstm", "train", "--steps", str(steps), "--seed", str(seed),
           "--eval-every", str(max(1, steps // 4)), "--out", str(folder), "--quiet",
           *RECIPES[recipe], *extra]  # fmt: skip
    done = folder / "metrics.jsonl"
    records = _records(done) if done.exists() else []
    if not any(r["kind"] == "eval" and r["step"] == steps for r in records):
        start = time.perf_counter()
        resume = ["--resume"] if (folder / "last.pt").exists() else ["--force"]
        print(f"+ {' '.join(cmd[3:])} {resume[0]}", file=sys.stderr, flush=True)
        subprocess.run(cmd + resume, check=True)
        print(f"  {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        records = _records(done)
    evals = [r for r in records if r["kind"] == "eval"]
    speeds = [r["chars_per_s"] for r in records if r["kind"] == "train"][2:]
    return {
        "recipe": recipe,
        "seed": seed,
        "val": {r["step"]: r["val_loss"] for r in evals},
        "chars_per_s": sorted(speeds)[len(speeds) // 2] if speeds else float("nan"),
        "minutes": records[-1]["elapsed_s"] / 60,
    }


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipes", nargs="*", help="recipe names (see --list)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=1400)
    parser.add_argument("--out", type=Path, default=Path("runs/sweep"))
    parser.add_argument("--list", action="store_true", help="print the recipes and exit")
    parser.add_argument("--extra", default="", help="more train options for every run")
    args = parser.parse_args()
    if args.list or not args.recipes:
        for name, options in RECIPES.items():
            print(f"{name:14s} {' '.join(options) or '(the small preset as is)'}")
        return
    unknown = [r for r in args.recipes if r not in RECIPES]
    if unknown:
        parser.error(f"unknown recipe(s) {', '.join(unknown)}; see --list")
    rows = [run(r, s, args.steps, args.out, args.extra.split()) for r in args.recipes
            for s in args.seeds]  # fmt: skip
    marks = sorted({step for row in rows for step in row["val"]})
    print("| recipe | seed | " + " | ".join(f"val @ {m:,}" for m in marks)
          + " | chars/s | minutes |")  # fmt: skip
    print("|---|---|" + "---|" * len(marks) + "---|---|")
    for row in rows:
        vals = " | ".join(f"{row['val'].get(m, float('nan')):.4f}" for m in marks)
        print(f"| {row['recipe']} | {row['seed']} | {vals} | {row['chars_per_s']:,.0f} | "
              f"{row['minutes']:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
