"""`ModelConfig` (the whole model description) and `TrainConfig` (one training run), presets,
and their validation. Plain frozen dataclasses that validate themselves on construction (so
every `dataclasses.replace` re-validates); they go into checkpoints and `config.json` as dicts.

`TrainConfig` is also the one source of the `train` command's options: each field carries its
flag, help text and whether it may change when a run is resumed (`option(...)` below), and the
CLI builds its options from those fields. Adding a training option is adding one field.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from charlstm.errors import OptionError

Check = Callable[[Any], str | None]  # a value -> what is wrong with it, or None


def option(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    check: Check | None = None,
    resumable: bool = False,
    choices: tuple[str, ...] | None = None,
    metavar: str | None = None,
) -> Any:
    """A config field that is also a command-line option.

    `resumable` options may differ when a run is continued with `--resume` (how long, how
    often, where); every other one must match the checkpoint's value.
    """
    meta = dict(
        help=help, flag=flag, check=check, resumable=resumable, choices=choices, metavar=metavar
    )
    return field(default=default, metadata=meta)


def flag(field_name: str, cls: type | None = None) -> str:
    """The command-line spelling of a config field, for error messages."""
    for c in (cls,) if cls else (TrainConfig, ModelConfig):
        for f in fields(c):
            if f.name == field_name and f.metadata.get("flag"):
                return f.metadata["flag"]
    return "--" + field_name.replace("_", "-")


# -- value checks: each returns the complaint (without the flag) or None -----------------------
def whole(minimum: int) -> Check:
    def check(v):
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            return f"must be a whole number >= {minimum}, got {v!r}"
        return None

    return check


def number(
    lo: float, hi: float = math.inf, *, lo_open: bool = False, hi_open: bool = True
) -> Check:
    def check(v):
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        ok = ok and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
        if ok:
            return None
        left, right = "(" if lo_open else "[", ")" if hi_open else "]"
        hi_text = "inf" if hi == math.inf else f"{hi:g}"
        return f"must be in {left}{lo:g}, {hi_text}{right}, got {v!r}"

    return check


def optional(check: Check) -> Check:
    return lambda v: None if v is None else check(v)


def cadence(unit_hint: str) -> Check:
    def check(v):
        try:
            parse_cadence(v, allow_auto=unit_hint == "auto")
        except ValueError:
            return (
                f"{v!r} is not a step count or minutes (use e.g. 500 for steps or 5m for "
                "minutes" + (", or auto)" if unit_hint == "auto" else ")")
            )
        return None

    return check


def parse_cadence(text: Any, allow_auto: bool = False) -> tuple[int | None, float | None]:
    """ "500" -> every 500 steps; "5m" -> every 5 minutes; "auto" -> (None, None)."""
    s = str(text).strip().lower()
    if allow_auto and s == "auto":
        return None, None
    if s.endswith("m"):
        minutes = float(s[:-1])
        if minutes > 0 and math.isfinite(minutes):
            return None, minutes
    elif s.isdigit() and int(s) > 0:
        return int(s), None
    raise ValueError(s)


class _Config:
    """Self-validating frozen dataclass <-> plain dict (unknown keys ignored, so a newer file
    still loads)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            check = f.metadata.get("check")
            problem = check(getattr(self, f.name)) if check else None
            if problem:
                raise OptionError(f"{flag(f.name, type(self))} {problem}")
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise OptionError(
                    f"unknown {flag(f.name, type(self))} {getattr(self, f.name)!r}",
                    f"use one of {', '.join(choices)}",
                )
        self.validate()

    def validate(self) -> None:
        """Checks that involve several fields."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class _Architecture(_Config):
    """The model's shape: the options `ModelConfig` and `TrainConfig` share."""

    num_layers: int = option(2, "LSTM layers.", flag="--layers", check=whole(1))
    hidden_size: int = option(512, "LSTM hidden size.", flag="--hidden", check=whole(1))
    embed_size: int = option(128, "Embedding size.", flag="--embed", check=whole(1))
    dropout: float = option(0.1, "Dropout probability in [0, 1).", check=number(0, 1))
    tie_weights: bool = option(
        False, "Share embedding and output weights (needs --embed = --hidden)."
    )
    weight_drop: float = option(
        0.0,
        "DropConnect on the recurrent weights in training (AWD-LSTM's weight drop).",
        check=number(0, 1),
    )
    locked_dropout: bool = option(
        False, "One dropout mask per stream, shared by all time steps of a window."
    )

    def validate(self) -> None:
        if self.tie_weights and self.embed_size != self.hidden_size:
            raise OptionError(
                f"--tie-weights needs --embed equal to --hidden (got {self.embed_size} and "
                f"{self.hidden_size})",
                f"pass --embed {self.hidden_size}, or drop --tie-weights",
            )


@dataclass(frozen=True)
class ModelConfig(_Architecture):
    """Embedding -> dropout -> num_layers x LSTM(hidden_size) -> dropout -> Linear(vocab)."""

    vocab_size: int = option(0, "Vocabulary size.", check=whole(1))


# Presets: model size and the optimisation settings that go with it. The fixed default on a CPU
# is "small" (a useful model on 2 cores in minutes); "medium" and "large" are for GPUs. A CPU
# run with a time budget gets "auto" instead (charlstm.training.plan.default_preset). See
# bench/RESULTS.md for how these were chosen. TrainConfig's own defaults are "small".
PRESETS: dict[str, dict] = {
    "tiny": dict(
        embed_size=32, hidden_size=128, num_layers=1, dropout=0.0, bptt=64, batch_size=16, lr=3e-3
    ),
    "small": dict(
        embed_size=128, hidden_size=512, num_layers=2, dropout=0.1, bptt=128, batch_size=32, lr=3e-3
    ),
    "medium": dict(
        embed_size=256,
        hidden_size=1024,
        num_layers=2,
        dropout=0.25,
        bptt=128,
        batch_size=64,
        lr=2e-3,
    ),
    "large": dict(
        embed_size=512,
        hidden_size=1536,
        num_layers=3,
        dropout=0.3,
        bptt=256,
        batch_size=64,
        lr=1.5e-3,
    ),
}
CPU_DEFAULT_PRESET = "small"
GPU_DEFAULT_PRESET = "medium"
# not a fixed preset: `train` measures this machine and picks a shape (charlstm.training.autopreset)
AUTO_PRESET = "auto"
PRECISIONS = ("auto", "fp32", "tf32", "bf16")
MAX_SEED = 2**63 - 1


#: --threads above this many times the cores this process may use is a typo, not a choice
MAX_THREADS_PER_CORE = 4


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def threads_problem(v: Any) -> str | None:
    """What is wrong with `v` as a CPU thread count: 0 (auto) or 1..MAX_THREADS_PER_CORE x the
    cores; None when nothing is."""
    limit = MAX_THREADS_PER_CORE * available_cores()
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= limit:
        return f"must be a whole number from 0 (auto) to {limit}, got {v!r}"
    return None


def _seed_check(v: Any) -> str | None:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_SEED:
        return f"must be a whole number from 0 to 2^63-1, got {v!r}"
    return None


def _device_check(v: Any) -> str | None:
    if isinstance(v, str) and (v in ("auto", "cpu", "cuda", "mps") or _is_cuda_index(v)):
        return None
    return f"{v!r} is not a device (use auto, cpu, cuda, cuda:N or mps)"


def _wandb_project_check(v: Any) -> str | None:
    if isinstance(v, str) and v.strip() and not set(v) & set("/\\#?%:"):
        return None
    return f"{v!r} is not a Weights & Biases project name (no /, \\, #, ?, % or :)"


def _is_cuda_index(v: str) -> bool:
    return v.startswith("cuda:") and v[5:].isdigit()


@dataclass(frozen=True)
class TrainConfig(_Architecture):
    """Everything that defines a training run besides the data. Unset length means 1 epoch.
    (The model's shape comes first, from `_Architecture`.)"""

    preset: str = option(
        CPU_DEFAULT_PRESET,
        "Model/optimizer preset. auto (needs --time-budget): time a few steps of candidate "
        "shapes here and pick the largest the budget trains well. Default: auto on a CPU "
        "given --time-budget and no --layers/--hidden; else small on a CPU, medium on CUDA.",
        choices=(*PRESETS, AUTO_PRESET),
    )
    # batches and optimisation
    bptt: int = option(128, "Truncated-BPTT window (characters).", check=whole(1))
    batch_size: int = option(32, "Parallel streams (global, over all processes).", check=whole(1))
    lr: float = option(3e-3, "Peak learning rate (AdamW).", check=number(0, lo_open=True))
    min_lr_ratio: float = option(
        0.1, "Cosine decays to lr x this at the end.", check=number(0, 1, hi_open=False)
    )
    warmup_steps: int = option(50, "Linear warm-up steps.", flag="--warmup", check=whole(0))
    weight_decay: float = option(0.01, "AdamW weight decay.", check=number(0))
    clip: float = option(1.0, "Gradient-norm clip (0: off).", check=number(0))
    ema: float = option(
        0.0,
        "Average the weights: an exponential moving average with this decay (e.g. 0.999; "
        "0: off), used by validation and saved as the checkpoints' model.",
        check=number(0, 1),
        metavar="DECAY",
    )
    seed: int = option(1337, "Random seed (0 to 2^63-1).", check=_seed_check)
    # how long (may change on resume)
    steps: int | None = option(
        None, "Train for this many steps (in all).", check=optional(whole(1)), resumable=True
    )
    epochs: float | None = option(
        None,
        "Train for this many epochs (in all).",
        check=optional(number(0, lo_open=True)),
        resumable=True,
    )
    time_budget_min: float | None = option(
        None,
        "Train for this many minutes (wall clock); on --resume, this many minutes more.",
        flag="--time-budget",
        check=optional(number(0, lo_open=True)),
        resumable=True,
        metavar="MINUTES",
    )
    # how often (may change on resume)
    eval_every: str = option(
        "auto",
        "Validate on the whole val split every N steps or Nm minutes; auto: every 500 steps, "
        "and 5 times in a --time-budget run.",
        check=cadence("auto"),
        resumable=True,
        metavar="N|Nm|auto",
    )
    save_every: str = option(
        "10m",
        "Also save last.pt every N steps, or every Nm minutes (e.g. 5m).",
        check=cadence("steps"),
        resumable=True,
        metavar="N|Nm",
    )
    log_every: int = option(10, "Log a metrics line every N steps.", check=whole(1), resumable=True)
    # where the numbers go besides metrics.jsonl (may change on resume)
    tensorboard: bool = option(
        True,
        "Write TensorBoard event files into the run folder's tb/ (on when tensorboard is "
        "installed: pip install 'charlstm[tensorboard]').",
        resumable=True,
    )
    wandb: str | None = option(
        None,
        "Also log the same numbers to this Weights & Biases project (pip install "
        "'charlstm[wandb]'; WANDB_MODE=offline keeps them on disk).",
        check=optional(_wandb_project_check),
        resumable=True,
        metavar="PROJECT",
    )
    eval_batch_size: int = option(
        64, "Streams used for validation during training.", check=whole(1)
    )
    # where and how (device and compile may change on resume)
    device: str = option(
        "auto",
        "Where to run: auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.",
        check=_device_check,
        resumable=True,
    )
    precision: str = option(
        "auto",
        "auto: on CUDA bf16 autocast, or TF32 where this GPU's measured figures favour it; on "
        "a CPU with bf16 units, bf16 LSTM matmuls with fp32 weights and state where they win; "
        "fp32 elsewhere. tf32: fp32 with TF32 tensor-core matmuls on CUDA (fp32 elsewhere).",
        choices=PRECISIONS,
    )
    threads: int = option(
        0,
        "CPU threads. 0 (auto): timed at all cores and at 1 thread before training, again at "
        "each validation and when training slows (another program took a core); the faster "
        "is kept.",
        check=threads_problem,
        resumable=True,
        metavar="N",
    )
    compile: bool = option(False, "Use torch.compile.", resumable=True)
    max_bad_steps: int = option(
        20, "Non-finite steps in a row before training stops.", check=whole(1), resumable=True
    )

    def validate(self) -> None:
        super().validate()
        lengths = [x for x in (self.steps, self.epochs, self.time_budget_min) if x is not None]
        if len(lengths) > 1:
            raise OptionError(
                "give at most one of --steps, --epochs and --time-budget",
                "they all say how long to train",
            )

    def model_config(self, vocab_size: int) -> ModelConfig:
        shape = {f.name: getattr(self, f.name) for f in fields(_Architecture)}
        return ModelConfig(vocab_size=vocab_size, **shape)

    def save_every_parsed(self) -> tuple[int | None, float | None]:
        """(every N steps, every M minutes): exactly one is set."""
        return parse_cadence(self.save_every)

    def eval_every_parsed(self, total_steps: int | None) -> tuple[int | None, float | None]:
        """(every N steps, every M minutes) for validation; "auto" resolves to every 500 steps
        (or a fifth of a shorter run), and in a time-budgeted run to every fifth of the budget
        alone (with steps as well, a validation 1 step apart from the last one was common)."""
        steps, minutes = parse_cadence(self.eval_every, allow_auto=True)
        if steps is None and minutes is None:
            if self.time_budget_min is not None:
                return None, self.time_budget_min / 5
            return (min(500, max(1, math.ceil(total_steps / 5))) if total_steps else 500), None
        return steps, minutes

    @classmethod
    def options(cls) -> list:
        """The fields that are command-line options: the preset, then in declaration order."""
        found = [f for f in fields(cls) if "help" in f.metadata]
        return sorted(found, key=lambda f: f.name != "preset")

    @classmethod
    def resumable(cls) -> set[str]:
        return {f.name for f in fields(cls) if f.metadata.get("resumable")}


def resolve_config(
    preset: str | None = None, device: str | None = "auto", **overrides
) -> TrainConfig:
    """A TrainConfig from a fixed preset (None = the device's: small, or medium on CUDA) plus
    explicit overrides.

    Overrides set to None are ignored, so CLI options that were not given keep the preset's
    value.
    """
    device = device or "auto"
    if preset is None:
        preset = GPU_DEFAULT_PRESET if cuda_requested(device) else CPU_DEFAULT_PRESET
    if preset == AUTO_PRESET:
        raise OptionError(
            "preset 'auto' is chosen by measuring, when training starts",
            "pass it to train(preset='auto', time_budget_min=...), or name a preset",
        )
    if preset not in PRESETS:
        raise OptionError(f"unknown preset {preset!r}", f"use one of {', '.join(PRESETS)}")
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise TypeError(f"unknown training option(s): {', '.join(sorted(unknown))}")
    values = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    return TrainConfig(preset=preset, device=device, **values)


def cache_root() -> Path:
    """charlstm's cache (raw corpora tokenized for `train`, downloads, compiled kernels,
    measurements of this machine): $CHARLSTM_CACHE, else the XDG cache. Here, below both
    `data` and `runtime`, so that each can use it."""
    env = os.environ.get("CHARLSTM_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        try:
            base = Path.home() / ".cache"
        except (RuntimeError, KeyError):  # no HOME and no password entry (a bare container)
            import tempfile

            base = Path(tempfile.gettempdir()) / f"charlstm-cache-{os.getuid()}"
    return Path(base) / "charlstm"


def cache_dir(name: str) -> Path:
    """The cache's folder `name`, created if need be; one that cannot be made or written is
    one error naming the variable that chose it."""
    from charlstm.errors import CharLSTMError

    folder = cache_root() / name
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        writable = os.access(folder, os.W_OK | os.X_OK)
        reason = "it is not writable"
    except OSError as e:
        writable, reason = False, e.strerror or str(e)
    if not writable:
        chosen = (
            f"CHARLSTM_CACHE={os.environ['CHARLSTM_CACHE']}"
            if os.environ.get("CHARLSTM_CACHE")
            else f"the default cache {cache_root()} (CHARLSTM_CACHE is not set)"
        )
        raise CharLSTMError(
            f"cannot write charlstm's cache folder {folder}: {reason}; it comes from {chosen}",
            "set CHARLSTM_CACHE to a writable folder",
        )
    return folder


def cuda_requested(device: str) -> bool:
    if device.startswith("cuda"):
        return True
    if device != "auto":
        return False
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return False
