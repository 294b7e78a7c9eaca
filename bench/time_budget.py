"""Does `charlstm train --time-budget M` end within M minutes + 5 % + start-up, everything
included, and does a log (stderr not a terminal) get a progress line every 10 s?

Each budget runs the real command in a child process, stderr piped (so the plain progress
lines, not the bar), on the bundled corpus with the default preset (`auto` on a CPU: its
measuring counts). The child is the CLI itself with one spy: when `train` returns it writes
the run's own clock (`TrainResult.elapsed_s`) and the wall-clock time, which says when the
budget's clock started; so start-up (Python, torch, the data) is measured, not assumed. The
parent timestamps every stderr line.

    python bench/time_budget.py                      # 0.5 and 1 minute
    python bench/time_budget.py --budget 2 --budget 5

Prints one row per budget: start-up, the run (budget clock start to process exit) against the
budget, the overrun in % of the budget (the target: <= 5 %), the whole process, the validations
and their steps (five, none twice at a step), and the progress lines with the longest gap
between two (the target: <= 10 s plus a heartbeat's second).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: the child: the CLI, with `show_train` wrapped to record when `train` returned and its clock
CHILD = """
import json, os, sys, time
import charlstm.cli.ui as ui
shown = ui.show_train
def spy(result):
    with open(os.environ["TIME_BUDGET_SPY"], "w") as f:
        json.dump({"returned": time.time(), "elapsed_s": result.elapsed_s,
                   "steps": result.steps}, f)
    shown(result)
ui.show_train = spy
from charlstm.cli.app import main
sys.argv = ["charlstm", *sys.argv[1:]]
main()
"""


def run_budget(minutes: float, work: Path, extra: list[str], show: bool = False) -> dict:
    out = work / f"run-{minutes:g}"
    spy = work / f"spy-{minutes:g}.json"
    cmd = [sys.executable, "-c", CHILD, "train", "--time-budget", f"{minutes:g}",
           "--out", str(out), "--force", *extra]  # fmt: skip
    env = {**os.environ, "TIME_BUDGET_SPY": str(spy), "PYTHONPATH": str(REPO)}
    lines: list[tuple[float, str]] = []
    launched = time.time()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env=env, cwd=work)  # fmt: skip

    def read() -> None:
        for line in proc.stderr:
            lines.append((time.time(), line.rstrip("\n")))

    reader = threading.Thread(target=read)
    reader.start()
    proc.wait()
    exited = time.time()
    reader.join()
    if proc.returncode != 0:
        sys.exit(f"train exited {proc.returncode}:\n" + "\n".join(t for _, t in lines[-20:]))
    end = json.loads(spy.read_text())
    budget_start = end["returned"] - end["elapsed_s"]
    if show:  # every stderr line with its time from the budget's start
        for t, text in lines:
            if text.strip() and not set(text.strip()[:1]) & set("│┃━┏└┡┗"):
                print(f"{t - budget_start:7.1f} s  {text[:110]}")
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    eval_steps = [r["step"] for r in records if r["kind"] == "eval"]
    # the plain progress lines: "0.3/0.5 min  step 12 ...", before it "4.0 s  preparing the run"
    progress = [t for t, text in lines if " min  step " in text or "preparing the run" in text]
    # from the first line the run prints (auto's "timing model shapes", or the header)
    first = next((t for t, text in lines if "timing model shapes" in text or "training" in text),
                 budget_start)  # fmt: skip
    ticks = [first, *progress, end["returned"]]
    gaps = [b - a for a, b in zip(ticks, ticks[1:], strict=False)]
    run_s = exited - budget_start
    return {
        "budget_s": minutes * 60,
        "startup_s": budget_start - launched,
        "run_s": run_s,
        "clock_s": end["elapsed_s"],
        "overrun_pct": 100 * (run_s - minutes * 60) / (minutes * 60),
        "process_s": exited - launched,
        "steps": end["steps"],
        "validations": len(eval_steps),
        "distinct_steps": len(set(eval_steps)),
        "progress_lines": len(progress),
        "max_gap_s": max(gaps),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, action="append", help="minutes (repeatable)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--lines", action="store_true", help="print each run's stderr, timed")
    args, extra = parser.parse_known_args()  # anything else goes to `charlstm train`
    budgets = args.budget or [0.5, 1.0]
    with tempfile.TemporaryDirectory(prefix="charlstm-time-budget-") as tmp:
        rows = [run_budget(m, Path(tmp), extra, args.lines) for m in budgets]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"load average {Path('/proc/loadavg').read_text().split()[:3]}" if
          Path("/proc/loadavg").exists() else "")  # fmt: skip
    header = ("budget", "start-up", "run (exit)", "run clock", "overrun", "process", "steps",
              "validations (distinct steps)", "progress lines", "longest gap")  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print(
            f"| {r['budget_s']:.0f} s | {r['startup_s']:.1f} s | {r['run_s']:.1f} s | "
            f"{r['clock_s']:.1f} s | {r['overrun_pct']:+.1f} % | {r['process_s']:.1f} s | "
            f"{r['steps']} | {r['validations']} ({r['distinct_steps']}) | "
            f"{r['progress_lines']} | {r['max_gap_s']:.1f} s |"
        )


if __name__ == "__main__":
    main()
