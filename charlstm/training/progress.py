"""What a training run reports as it goes, as plain typed numbers: `RunInfo` once at the start
(after `AutoChoice`, what `--preset auto` measured and chose), `StepStats` at every log line,
`EvalStats` at every validation, and `TrainResult` at the end. A `Reporter` receives them
(`charlstm.cli.ui.TrainProgress` draws them with Rich; a notebook or a test can implement the
methods itself)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from charlstm.config import ModelConfig

if TYPE_CHECKING:
    from charlstm.training.autopreset import AutoChoice
    from charlstm.training.verdict import Baselines, RunWarning


@dataclass(frozen=True)
class RunInfo:
    """What a run is, told once at its start."""

    run_dir: Path
    data: str
    train_chars: int
    val_chars: int
    vocab_size: int
    model: ModelConfig
    params: int
    batch_size: int
    bptt: int
    lr: float
    processes: int
    device: str
    precision: str
    compiled: bool
    total_steps: int | None
    budget_min: float | None
    resumed_at: int | None  # the step a resumed run continues from
    threads: str = ""  # the CPU threads, or how they are chosen
    elapsed_s: float = 0.0  # of the run when training starts (earlier sessions, auto's measuring)


@dataclass(frozen=True)
class StepStats:
    """Where a run stands after a logged step (numbers only; `ui` formats them)."""

    step: int
    total_steps: int | None
    elapsed_s: float  # of the whole run, earlier sessions included
    budget_s: float | None
    train_loss: float | None  # mean since the last log line
    val_loss: float | None  # the last validation
    lr: float
    chars_per_s: float
    skipped: int
    eta_s: float | None  # to the end of the run, from this session's pace


@dataclass(frozen=True)
class EvalStats:
    step: int
    val_loss: float
    improved: bool
    streams: int


class Reporter(Protocol):
    """How the trainer talks to a human; `charlstm.cli.ui.TrainProgress` draws it with Rich."""

    def start(self, info: RunInfo) -> None: ...
    def step(self, stats: StepStats) -> None: ...
    def validating(self, step: int) -> None: ...
    def evaluated(self, stats: EvalStats) -> None: ...
    def message(self, text: str) -> None: ...
    def auto_chosen(self, choice: AutoChoice) -> None: ...
    def close(self) -> None: ...


class NullReporter:
    def start(self, info):
        pass

    def step(self, stats):
        pass

    def validating(self, step):
        pass

    def evaluated(self, stats):
        pass

    def message(self, text):
        pass

    def auto_chosen(self, choice):
        pass

    def close(self):
        pass


@dataclass
class TrainResult:
    """What a finished (or interrupted) run achieved and where it put its files."""

    run_dir: Path
    steps: int
    chars_seen: int
    elapsed_s: float
    params: int
    chars_per_s: float
    best_val_loss: float | None = None
    last_val_loss: float | None = None
    interrupted: bool = False
    skipped_steps: int = 0
    files: dict[str, Path] = field(default_factory=dict)
    auto_choice: AutoChoice | None = None  # what --preset auto measured and chose
    data_name: str | None = None  # the data's name (checkpoints/<data name>-<preset>)
    budget_min: float | None = None  # the run's --time-budget, if it had one
    baselines: Baselines | None = None  # what guessing scores on the val split
    warnings: list[RunWarning] = field(default_factory=list)  # why it is not a useful model

    @property
    def best_val_bpc(self) -> float | None:
        return None if self.best_val_loss is None else self.best_val_loss / math.log(2)

    @property
    def best_val_perplexity(self) -> float | None:
        return None if self.best_val_loss is None else math.exp(self.best_val_loss)
