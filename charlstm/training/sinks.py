"""Where a run's numbers go besides metrics.jsonl: TensorBoard event files in the run folder's
`tb/`, and Weights & Biases. Each is an optional extra, imported here and only when it is used.

`RunWriter.record` hands every metrics record to the open sinks (`Sinks`); each sink writes the
same scalars under the same names (`scalars`), and the validation's sample as text. A sink that
fails (a `tb/` that cannot be written, a full disk, a W&B login missing) is closed and the run
goes on without it, saying so once: logging never costs a run, and metrics.jsonl has every
number.

Resume continues the same logs without duplicated steps. TensorBoard: a fresh event file that
opens with a purge marker at the checkpoint's step + 1 (`SummaryWriter(purge_step=...)`), so
readers drop whatever the earlier session logged after the checkpoint it resumes from, as
metrics.jsonl does (`MetricsLog.truncate_after`). W&B: the same run, rewound to the
checkpoint's step (`wandb.init(resume_from="<id>?_step=<step>")`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from charlstm.atomic import read_regular, write_text
from charlstm.config import TrainConfig
from charlstm.errors import OptionError
from charlstm.training.rundir import TENSORBOARD, WANDB_ID

# metrics.jsonl field -> the scalar's name in TensorBoard and W&B, per kind of record
SCALARS: dict[str, dict[str, str]] = {
    "train": {
        "train_loss": "train/loss",
        "lr": "train/lr",
        "grad_norm": "train/grad_norm",
        "chars_per_s": "train/chars_per_s",
    },
    "eval": {"val_loss": "val/loss", "bpc": "val/bpc", "trained_val_loss": "val/trained_loss"},
}
SAMPLE_TAG = "val/sample"  # the greedy text written at each validation
TENSORBOARD_EXTRA = "pip install 'charlstm[tensorboard]'"
WANDB_EXTRA = "pip install 'charlstm[wandb]'"


def scalars(record: dict) -> dict[str, float]:
    """The record's numbers under their TensorBoard / W&B names (missing ones left out)."""
    names = SCALARS.get(record.get("kind", ""), {})
    return {
        tag: float(record[key])
        for key, tag in names.items()
        if isinstance(record.get(key), (int, float)) and math.isfinite(record[key])
    }


class MetricsSink(Protocol):
    """One place the numbers go: `write` a step's scalars and texts; `close` at the end."""

    name: str  # for the one message that says it stopped

    def write(self, step: int, values: dict[str, float], texts: dict[str, str]) -> None: ...
    def close(self) -> None: ...


class Sinks:
    """The open sinks. A sink that raises is closed and dropped, with one message."""

    def __init__(self, sinks: list[MetricsSink], message: Callable[[str], None]) -> None:
        self.sinks, self.message = list(sinks), message

    def record(self, record: dict) -> None:
        values = scalars(record)
        texts = {SAMPLE_TAG: record["sample"]} if record.get("sample") else {}
        if not values and not texts:
            return
        for sink in list(self.sinks):
            try:
                sink.write(int(record["step"]), values, texts)
            except Exception as e:  # whatever a logger raises, the run goes on
                self._drop(sink, e)

    def close(self) -> None:
        for sink in list(self.sinks):
            try:
                sink.close()
            except Exception as e:  # as in record
                self._drop(sink, e)
        self.sinks = []

    def _drop(self, sink: MetricsSink, error: Exception) -> None:
        self.sinks.remove(sink)
        with contextlib.suppress(Exception):  # it already failed once; the message says so
            sink.close()
        self.message(
            f"{sink.name} logging stopped ({_reason(error)}); training goes on, "
            "metrics.jsonl has every number"
        )


def _reason(error: BaseException) -> str:
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    path = getattr(error, "filename", None)
    return " ".join(f"{text}: {path}".split() if path else str(text).split())[:200]


def installed(module: str) -> bool:
    """Whether `module` can be imported (without importing it: both are slow to import)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a module blocked in sys.modules (None) has no spec
        return False


def check_extras(cfg: TrainConfig, asked: dict) -> None:
    """Before anything is written: a logger asked for by name (`asked`: the options the caller
    gave) must be installed. One on by default (TensorBoard), or kept from a resumed run's
    options, falls back quietly instead (`open_sinks` says so once)."""
    if asked.get("wandb") and not installed("wandb"):
        raise OptionError(
            f"--wandb {cfg.wandb} needs the wandb package, which is not installed", WANDB_EXTRA
        )
    if asked.get("tensorboard") is True and not installed("tensorboard"):
        raise OptionError(
            "--tensorboard needs the tensorboard package, which is not installed",
            f"{TENSORBOARD_EXTRA}, or leave --tensorboard out",
        )


def open_sinks(
    cfg: TrainConfig,
    run_dir: Path,
    config: dict,
    resumed_at: int | None,
    message: Callable[[str], None],
) -> Sinks:
    """The sinks `cfg` asks for, opened for a new run or for one resumed at `resumed_at`. One
    that cannot be opened is left out with one message; the run goes on."""
    sinks = []
    if cfg.tensorboard:
        folder = run_dir / TENSORBOARD
        sinks.append(_start(TensorBoardSink, "tensorboard", message, folder, resumed_at))
    if cfg.wandb:
        sinks.append(_start(WandbSink, "wandb", message, cfg.wandb, run_dir, config, resumed_at))
    return Sinks([s for s in sinks if s is not None], message)


def _start(kind: type, module: str, message: Callable[[str], None], *args) -> MetricsSink | None:
    """`kind(*args)`, or None with one message when `module` is missing or it cannot start."""
    if not installed(module):
        extra = TENSORBOARD_EXTRA if module == "tensorboard" else WANDB_EXTRA
        message(f"{kind.name} logging is off: {module} is not installed ({extra})")
        return None
    try:
        return kind(*args)
    except Exception as e:  # a logger that cannot start never stops the run
        message(
            f"{kind.name} logging is off for this run ({_reason(e)}); training goes on, "
            "metrics.jsonl has every number"
        )
        return None


class TensorBoardSink:
    """Event files in `folder` (the run's tb/), written by torch's SummaryWriter."""

    name = "TensorBoard"

    def __init__(self, folder: Path, resumed_at: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # a resumed session starts a new event file whose purge marker tells readers to drop
        # the steps after the checkpoint that an earlier session had logged
        purge_step = None if resumed_at is None else resumed_at + 1
        self.writer = SummaryWriter(str(folder), purge_step=purge_step, flush_secs=30)

    def write(self, step: int, values: dict[str, float], texts: dict[str, str]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        for tag, text in texts.items():
            self.writer.add_text(tag, as_markdown_code(text), step)
        if texts:  # a validation: worth having on disk now
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def as_markdown_code(text: str) -> str:
    """TensorBoard renders text as Markdown: an indented code block keeps the sample's
    newlines and spaces, and nothing in it is read as markup."""
    return "\n".join("    " + line for line in text.split("\n"))


class WandbSink:
    """A Weights & Biases run in `project`, its files under the run folder's wandb/. The run's
    id is kept in the run folder (`WANDB_ID`), so a resumed run continues the same W&B run."""

    name = "Weights & Biases"

    def __init__(self, project: str, run_dir: Path, config: dict, resumed_at: int | None) -> None:
        import wandb

        self.wandb = wandb
        id_file = run_dir / WANDB_ID
        settings = wandb.Settings(silent=True, console="off")  # the library never prints
        common = dict(project=project, dir=str(run_dir), config=config, settings=settings)
        previous = ""
        if id_file.is_file():  # a run id is 8 hex digits: anything far larger is not one
            previous = read_regular(id_file, 4096).decode("ascii", "replace").strip()
        if resumed_at is not None and previous:
            self.run = wandb.init(resume_from=f"{previous}?_step={resumed_at}", **common)
        else:
            run_id = secrets.token_hex(4)  # W&B's own id maker is not public API
            write_text(id_file, run_id + "\n")
            self.run = wandb.init(id=run_id, name=Path(run_dir).resolve().name, **common)

    def write(self, step: int, values: dict[str, float], texts: dict[str, str]) -> None:
        import html

        data: dict = dict(values)
        for tag, text in texts.items():
            data[tag] = self.wandb.Html(f"<pre>{html.escape(text)}</pre>")
        self.run.log(data, step=step)

    def close(self) -> None:
        self.run.finish()
