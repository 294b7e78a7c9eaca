"""Learning curves of a run: read metrics.jsonl, summarise it, draw it as text or as a PNG.

The text chart is a plain grid of characters (no terminal tricks), so it reads the same in a
terminal, a log file and a test. The PNG needs matplotlib, an optional extra
(`pip install 'charlstm[plot]'`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from charlstm.atomic import METRICS_MAX_BYTES, atomic_open, open_regular, remove_stale_temporaries
from charlstm.errors import CharLSTMError


@dataclass
class Curves:
    """Train and val loss against characters seen, and the run's summary numbers."""

    train: list[tuple[int, float]] = field(default_factory=list)  # (chars, loss)
    val: list[tuple[int, float]] = field(default_factory=list)
    steps: int = 0
    elapsed_s: float = 0.0
    chars_per_s: float = 0.0

    @property
    def best(self) -> tuple[int, float] | None:
        return min(self.val, key=lambda p: p[1]) if self.val else None

    def summary(self) -> dict:
        best = self.best
        return {
            "steps": self.steps,
            "chars_seen": max([c for c, _ in self.train + self.val], default=0),
            "elapsed_s": self.elapsed_s,
            "last_train_loss": self.train[-1][1] if self.train else None,
            "best_val_loss": best[1] if best else None,
            "best_val_bpc": best[1] / math.log(2) if best else None,
            "best_val_perplexity": math.exp(best[1]) if best else None,
            "best_at_chars": best[0] if best else None,
            "chars_per_s": self.chars_per_s,
        }


def read_curves(run_dir: str | Path) -> Curves:
    """Curves from RUN_DIR/metrics.jsonl. Lines that are torn (a crash mid-write), not JSON,
    not valid UTF-8 or have fields of the wrong type are skipped: a damaged log still draws."""
    run_dir = Path(run_dir)
    if run_dir.is_file():
        hint = f"pass the run folder, e.g. {run_dir.parent}"
        if run_dir.name != "metrics.jsonl":
            raise CharLSTMError(f"{run_dir} is a file, not a run folder", hint)
        path = run_dir
    else:
        path = run_dir / "metrics.jsonl"
    if not path.exists() and not path.is_symlink():
        raise CharLSTMError(f"no metrics.jsonl in {run_dir}", "pass a run folder of charlstm train")
    remove_stale_temporaries(path.parent)
    curves = Curves()
    fix = "metrics.jsonl is written by charlstm train; remove this one or pass another run"
    try:
        with open_regular(path, METRICS_MAX_BYTES, fix) as f:
            for line in f:
                try:
                    _add_record(curves, json.loads(line.decode("utf-8", errors="replace")))
                except (ValueError, TypeError, KeyError, AttributeError, OverflowError):
                    continue
    except FileNotFoundError:
        raise CharLSTMError(f"{path} is a broken link", fix) from None
    if not curves.train and not curves.val:
        raise CharLSTMError(f"{path} has no training records yet")
    return curves


def _add_record(curves: Curves, r: dict) -> None:
    step, elapsed = int(r.get("step", 0)), float(r.get("elapsed_s", 0.0))
    if r.get("kind") == "train" and r.get("train_loss") is not None:
        point = (int(r["chars"]), float(r["train_loss"]))
        curves.train.append(point)
        curves.chars_per_s = float(r.get("chars_per_s", curves.chars_per_s))
    elif r.get("kind") == "eval" and r.get("val_loss") is not None:
        curves.val.append((int(r["chars"]), float(r["val_loss"])))
    curves.steps = max(curves.steps, step)
    curves.elapsed_s = max(curves.elapsed_s, elapsed)


def text_chart(curves: Curves, width: int = 64, height: int = 16) -> list[str]:
    """The curves on a character grid: '.' train loss, 'o' val loss, '*' the best val point.

    Returns lines: the plot with a loss axis on the left, then an axis of characters seen.
    """
    points = [p for p in curves.train + curves.val if math.isfinite(p[1])]
    if not points:
        return ["(no finite losses to draw)"]
    x_max = max(c for c, _ in points) or 1
    lo = min(v for _, v in points)
    hi = max(v for _, v in points)
    if hi - lo < 1e-9:
        hi = lo + 1.0
    grid = [[" "] * width for _ in range(height)]

    def put(chars: int, loss: float, mark: str) -> None:
        col = min(width - 1, round(chars / x_max * (width - 1)))
        row = min(height - 1, round((hi - loss) / (hi - lo) * (height - 1)))
        if mark == "." and grid[row][col] != " ":
            return  # val marks win over train marks
        grid[row][col] = mark

    for c, v in curves.train:
        if math.isfinite(v):
            put(c, v, ".")
    for c, v in curves.val:
        if math.isfinite(v):
            put(c, v, "o")
    if curves.best:
        put(*curves.best, "*")
    lines = []
    for r, row in enumerate(grid):
        label = hi - (hi - lo) * r / (height - 1)
        lines.append(f"{label:7.3f} |{''.join(row)}")
    lines.append(" " * 8 + "+" + "-" * width)
    right = f"{x_max:,} chars"
    lines.append(" " * 9 + "0" + right.rjust(width - 1))
    lines.append(" " * 9 + ". train loss   o val loss   * best val (nats/char)")
    return lines


def write_png(curves: Curves, path: str | Path, title: str = "") -> Path:
    """Plot train and val loss vs characters seen (best point marked) to a PNG."""
    try:
        # a Figure with its own Agg canvas: no pyplot, so the caller's matplotlib backend and
        # open figures are left alone
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise CharLSTMError(
            "writing a PNG needs matplotlib, which is not installed",
            "pip install 'charlstm[plot]' (or pip install matplotlib)",
        ) from None
    fig = Figure(figsize=(7, 4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    if curves.train:
        ax.plot(*zip(*curves.train, strict=False), lw=1, alpha=0.7, label="train loss")
    if curves.val:
        ax.plot(*zip(*curves.val, strict=False), "o-", ms=3, label="val loss")
    if curves.best:
        c, v = curves.best
        ax.plot(
            [c],
            [v],
            "*",
            ms=12,
            color="crimson",
            label=f"best val {v:.4f} ({v / math.log(2):.3f} bpc)",
        )
    ax.set_xlabel("characters seen")
    ax.set_ylabel("loss (nats/char)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    try:
        with atomic_open(path) as f:  # stopped half way, no torn PNG is left
            fig.savefig(f, format="png")
    except OSError as e:
        raise CharLSTMError(f"cannot write {path}: {e.strerror}") from None
    return path


def has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True
