"""`ModelConfig` (the whole model description) and `TrainConfig` (one training run), presets,
and their validation. Plain dataclasses: they go into checkpoints and `config.json` as dicts."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace

from charlstm.errors import CharLSTMError

# TrainConfig field -> the CLI option that sets it (where the two names differ)
FLAGS = {
    "embed_size": "--embed",
    "hidden_size": "--hidden",
    "num_layers": "--layers",
    "time_budget_min": "--time-budget",
    "warmup_steps": "--warmup",
}


def flag(field_name: str) -> str:
    """The command-line spelling of a config field, for error messages."""
    return FLAGS.get(field_name, "--" + field_name.replace("_", "-"))


class _PlainData:
    """to/from plain dicts, for checkpoints and config.json; unknown keys are ignored so a
    newer file still loads."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class ModelConfig(_PlainData):
    """Embedding -> dropout -> num_layers x LSTM(hidden_size) -> dropout -> Linear(vocab)."""

    vocab_size: int
    embed_size: int = 128
    hidden_size: int = 512
    num_layers: int = 2
    dropout: float = 0.0
    tie_weights: bool = False

    def validate(self) -> ModelConfig:
        for name in ("vocab_size", "embed_size", "hidden_size", "num_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise CharLSTMError(f"{flag(name)} must be a positive whole number, got {value}")
        if not (0.0 <= self.dropout < 1.0):
            raise CharLSTMError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.tie_weights and self.embed_size != self.hidden_size:
            raise CharLSTMError(
                f"--tie-weights needs --embed equal to --hidden (got {self.embed_size} and "
                f"{self.hidden_size})",
                f"pass --embed {self.hidden_size}, or drop --tie-weights",
            )
        return self


# Presets: model size and the optimisation settings that go with it. The default on a CPU is
# "small" (a useful model on 2 cores in minutes); "medium" and "large" are for GPUs. See
# bench/RESULTS.md for how these were chosen.
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


@dataclass(frozen=True)
class TrainConfig(_PlainData):
    """Everything that defines a training run besides the data. Unset length means 1 epoch."""

    preset: str = CPU_DEFAULT_PRESET
    embed_size: int = 128
    hidden_size: int = 512
    num_layers: int = 2
    dropout: float = 0.2
    tie_weights: bool = False
    bptt: int = 128
    batch_size: int = 32
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 50
    weight_decay: float = 0.01
    clip: float = 1.0
    steps: int | None = None
    epochs: float | None = None
    time_budget_min: float | None = None
    eval_every: int = 500
    eval_batch_size: int = 64
    log_every: int = 10
    save_every: str = "10m"  # "N" steps or "Nm" minutes; bounds what a crash can cost
    seed: int = 1337
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    max_bad_steps: int = 20  # consecutive non-finite steps before giving up
    extra: dict = field(default_factory=dict)

    def model_config(self, vocab_size: int) -> ModelConfig:
        return ModelConfig(
            vocab_size=vocab_size,
            embed_size=self.embed_size,
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            dropout=self.dropout,
            tie_weights=self.tie_weights,
        ).validate()

    def save_every_parsed(self) -> tuple[int | None, float | None]:
        """(every N steps, every M minutes): exactly one is set."""
        text = str(self.save_every).strip().lower()
        try:
            if text.endswith("m"):
                minutes = float(text[:-1])
                if minutes > 0 and math.isfinite(minutes):
                    return None, minutes
            else:
                steps = int(text)
                if steps > 0:
                    return steps, None
        except ValueError:
            pass
        raise CharLSTMError(
            f"--save-every {self.save_every!r} is not a step count or minutes",
            "use e.g. --save-every 500 (steps) or --save-every 5m (minutes)",
        )

    def validate(self) -> TrainConfig:
        self.model_config(1)
        positive_ints = {
            "bptt": "--bptt",
            "batch_size": "--batch-size",
            "eval_every": "--eval-every",
            "eval_batch_size": "--eval-batch-size",
            "log_every": "--log-every",
        }
        for name, flag in positive_ints.items():
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise CharLSTMError(f"{flag} must be a whole number >= 1, got {value}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise CharLSTMError(f"--lr must be a positive number, got {self.lr}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise CharLSTMError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if not (self.clip >= 0 and math.isfinite(self.clip)):
            raise CharLSTMError(f"--clip must be >= 0 (0 disables clipping), got {self.clip}")
        if not (0 <= self.min_lr_ratio <= 1):
            raise CharLSTMError(f"--min-lr-ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.warmup_steps < 0:
            raise CharLSTMError(f"--warmup must be >= 0, got {self.warmup_steps}")
        lengths = [x for x in (self.steps, self.epochs, self.time_budget_min) if x is not None]
        if len(lengths) > 1:
            raise CharLSTMError(
                "give at most one of --steps, --epochs and --time-budget",
                "they all say how long to train",
            )
        if self.steps is not None and self.steps < 1:
            raise CharLSTMError(f"--steps must be >= 1, got {self.steps}")
        if self.epochs is not None and not (self.epochs > 0 and math.isfinite(self.epochs)):
            raise CharLSTMError(f"--epochs must be > 0, got {self.epochs}")
        if self.time_budget_min is not None and not (
            self.time_budget_min > 0 and math.isfinite(self.time_budget_min)
        ):
            raise CharLSTMError(f"--time-budget must be > 0 minutes, got {self.time_budget_min}")
        if self.device not in ("auto", "cpu", "cuda", "mps") and not self.device.startswith(
            "cuda:"
        ):
            raise CharLSTMError(f"unknown --device {self.device!r}", "use auto, cpu, cuda or mps")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise CharLSTMError(f"unknown --precision {self.precision!r}", "use auto, fp32 or bf16")
        self.save_every_parsed()
        return self


def resolve_config(preset: str | None = None, device: str = "auto", **overrides) -> TrainConfig:
    """A TrainConfig from a preset (None = the default for the device) plus explicit overrides.

    Overrides set to None are ignored, so CLI options that were not given keep the preset's
    value.
    """
    if preset is None:
        preset = GPU_DEFAULT_PRESET if _cuda_requested(device) else CPU_DEFAULT_PRESET
    if preset not in PRESETS:
        raise CharLSTMError(f"unknown preset {preset!r}", f"use one of {', '.join(PRESETS)}")
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise TypeError(f"unknown training option(s): {', '.join(sorted(unknown))}")
    values = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    return replace(TrainConfig(), preset=preset, device=device, **values).validate()


def _cuda_requested(device: str) -> bool:
    if device.startswith("cuda"):
        return True
    if device != "auto":
        return False
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return False
