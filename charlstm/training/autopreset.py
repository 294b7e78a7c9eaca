"""`--preset auto`: the largest model a time budget trains well on this machine.

A few training steps of each candidate shape are timed on the real device, with the real
vocabulary and the LSTM kernel `--precision` picks (`charlstm.runtime.lstm_kernel`); the speed
predicts how many characters the budget shows each shape, and the rule below turns that into a
choice. The candidates and the constants of the rule live here and only here.

The rule, from the measured tables in bench/RESULTS.md ("Which hidden size and depth at equal
wall time", "What does small reach in 10 minutes with fp32"; 2 CPU cores, tiny shakespeare, 10
minutes), where a shape's
characters seen per parameter decided whether it kept up with `small`:

    shape    params  chars seen  chars/param  val loss (mean of seeds)
    2x384    2.0 M   10.2 M      5.1          1.4407   level
    1x768    2.8 M    6.8 M      2.4          1.4284   level
    2x512    3.5 M    5.7 M      1.7          1.4420   level (`small`; 2.1 in the real run)
    2x640    5.3 M    4.2 M      0.78         1.4331   level, within seed noise (0.011-0.018)
    3x512    5.6 M    3.6 M      0.66         1.4918   loses (deeper)
    2x768    7.5 M    2.8 M      0.37         1.4549   loses
    2x1024  13.7 M    2.0 M      0.15         1.6371   loses badly (`medium`)

So a shape keeps up while it sees at least ~0.8 characters per parameter and falls behind
below ~0.4-0.7. `MIN_CHARS_PER_PARAM` = 1.5 is that lowest level point (0.78) with a ~2x
margin: the speed comes from a few seconds of timing on a machine that may be shared (20-30 %
off is common), and a shape that is only level within seed noise is not worth 1.5x the weights
for every character sampled or evaluated afterwards. With it, this CPU at 10 minutes picks
2x512 (`small`, 2.1 chars/param in the confirmation run) and rejects 2x640 (~1.0): at least as
good as `small` by construction. The rule is about chars/param only; the corpus size sets the
dropout and weight decay (`regularisation_for_epochs`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial

import torch

from charlstm.config import AUTO_PRESET, PRESETS, TrainConfig, flag
from charlstm.errors import OptionError

#: the largest candidate that sees at least this many characters per parameter in the budget
#: wins (derived in the module docstring)
MIN_CHARS_PER_PARAM = 1.5
#: the share of a budgeted run spent on validation and checkpoints, not training: 5
#: validations of tiny shakespeare's val split and their saves, ~3 % of 10 minutes with `small`
#: (`charlstm bench --section train` reports it as the overhead figure)
OVERHEAD = 0.03
#: measuring stops climbing once it has taken this long, or this share of the budget
MEASURE_CAP_S = 15.0
MEASURE_CAP_SHARE = 0.05
#: (up to this many epochs, dropout, weight decay). Measured on tiny shakespeare
#: (bench/RESULTS.md): at ~6 epochs dropout 0.1 beat 0.2 (S1-S3); at ~12.8 epochs (`small` for
#: 10 minutes with the bf16 kernel, 3,120 steps) 0.3 beat 0.2 and 0.1 (1.4192 / 1.4246 / 1.4324
#: best val, same seed; 0.3 with a second seed 1.4342), 0.1 peaking at 8 epochs and then
#: overfitting. The boundary at 8 epochs lies between the two measurements. Past it, AdamW weight
#: decay 0.3 beat the default 0.01 at auto's 10-minute compute (2x640, dropout 0.3, 9.4 epochs:
#: best val 1.3935 / 1.3894 against 1.4199 / 1.4076 at two seeds; 0.1 and 1.0 gain less;
#: "Which weight decay at auto's 10-minute compute" in RESULTS). Assumed, not measured here:
#: <= 1 epoch -> dropout 0.0 (no character is seen twice, so there is nothing to overfit; the
#: practice of single-epoch language-model training), and the last band beyond ~16 epochs as
#: well (the `large` preset's dropout; AWD-LSTM uses 0.4 and more over hundreds of epochs of PTB).
REGULARISATION_BY_EPOCHS: tuple[tuple[float, float, float], ...] = (
    (1.0, 0.0, 0.01),
    (8.0, 0.1, 0.01),
    (math.inf, 0.3, 0.3),
)
MEASURED_EPOCHS = (1.0, 16.0)  # the epochs whose regularisation is a measurement, for the table


@dataclass(frozen=True)
class Candidate:
    """A shape to try; it trains with the embedding, bptt, batch and lr of `preset`."""

    num_layers: int
    hidden_size: int
    preset: str

    @property
    def name(self) -> str:
        return f"{self.num_layers}x{self.hidden_size}"


#: ordered by size: climbing stops at the first one the budget cannot train well
LADDER: tuple[Candidate, ...] = (
    Candidate(2, 384, "small"),
    Candidate(2, 512, "small"),
    Candidate(2, 640, "small"),
    Candidate(2, 768, "small"),
    Candidate(2, 1024, "medium"),
    Candidate(3, 1024, "medium"),
    Candidate(3, 1536, "large"),
)

#: the options auto chooses; any of them the user gives wins
CHOSEN_FIELDS = ("num_layers", "hidden_size", "embed_size", "dropout", "weight_decay", "bptt",
                 "batch_size", "lr")  # fmt: skip


REGULARISERS = ("dropout", "weight_decay")  # what regularisation_for_epochs sets


def regularisation_for_epochs(epochs: float) -> dict[str, float]:
    """Dropout and weight decay for a run that sees its training text `epochs` times (see
    REGULARISATION_BY_EPOCHS)."""
    _, *values = next(band for band in REGULARISATION_BY_EPOCHS if epochs <= band[0])
    return dict(zip(REGULARISERS, values, strict=True))


def parameter_count(num_layers: int, hidden: int, embed: int, vocab: int, tied: bool) -> int:
    """CharLSTM's parameters: embedding, LSTM layers (two bias vectors each), head."""
    lstm = sum(4 * hidden * ((embed if k == 0 else hidden) + hidden) + 8 * hidden
               for k in range(num_layers))  # fmt: skip
    return vocab * embed + lstm + (0 if tied else hidden * vocab) + vocab


@dataclass(frozen=True)
class CandidateRow:
    """One line of the table: a candidate as it would train, and what was measured."""

    name: str
    config: TrainConfig
    params: int
    chars_per_s: float | None = None  # None: not measured (climbing stopped below it)
    chars_in_budget: float | None = None
    verdict: str = "not measured"

    @property
    def chars_per_param(self) -> float | None:
        return None if self.chars_in_budget is None else self.chars_in_budget / self.params

    @property
    def fits(self) -> bool:
        cpp = self.chars_per_param
        return cpp is not None and cpp >= MIN_CHARS_PER_PARAM


@dataclass(frozen=True)
class AutoChoice:
    """What `--preset auto` measured and chose, and why (`charlstm.cli.ui.show_auto_choice`)."""

    budget_min: float
    device: str
    kernel: str  # the LSTM kernel the steps were timed with
    train_chars: int
    rows: list[CandidateRow]
    chosen: int  # index into rows
    epochs: float
    regularisation_measured: bool  # the epochs band is a measurement, not an assumption
    measure_s: float
    reason: str
    user_set: dict = field(default_factory=dict)  # options the user gave that auto would set
    threads: int | None = None  # the CPU threads the shapes were timed with (None: not chosen)
    thread_rates: dict = field(default_factory=dict)  # the first shape's chars/s by threads

    @property
    def config(self) -> TrainConfig:
        return self.rows[self.chosen].config

    def shortfall(self):
        """When no shape fits the budget, the warning that says so before training (a
        `training.verdict.RunWarning`: the measured reason and the budget that would fit)."""
        from charlstm.training.verdict import SMALL_FIX, RunWarning

        row = self.rows[self.chosen]
        if row.fits or row.chars_per_s is None or row.chars_per_param is None:
            return None
        train_s = MIN_CHARS_PER_PARAM * row.params / row.chars_per_s
        minutes = math.ceil((train_s / (1 - OVERHEAD) + self.measure_s) / 60)
        return RunWarning(
            f"no model shape trains well in {self.budget_min:g} min here: the smallest, "
            f"{row.name}, sees {row.chars_per_param:.2f} characters per parameter at the "
            f"{row.chars_per_s:,.0f} chars/s measured (a useful model needs "
            f"{MIN_CHARS_PER_PARAM:g}), so expect a poor model",
            f"give --time-budget {minutes} or more, or a smaller model: {SMALL_FIX}",
        )

    @property
    def regularisation(self) -> dict[str, float]:
        """The chosen dropout and weight decay, auto's or the user's."""
        return {k: getattr(self.config, k) for k in REGULARISERS}


def check_auto_length(given: dict) -> None:
    """`--preset auto` sizes the model to a time budget: without one there is nothing to size."""
    if given.get("time_budget_min") is None:
        length = next((flag(k) for k in ("steps", "epochs") if given.get(k) is not None), None)
        raise OptionError(
            "--preset auto needs --time-budget MINUTES"
            + (f" instead of {length}" if length else "")
            + " (it picks the model that trains best in that time)",
            "add e.g. --time-budget 10, or name a preset (tiny, small, medium, large)",
        )


def candidate_configs(given: dict) -> list[tuple[str, TrainConfig]]:
    """Each ladder shape as it would train: its preset's values, then the user's options
    (which win). Shapes the user's options make alike (`--hidden 256`: 2x256 twice) are tried
    once, with the smaller preset's recipe."""
    out: dict[str, tuple[str, TrainConfig]] = {}
    for cand in LADDER:
        values = {**PRESETS[cand.preset], "num_layers": cand.num_layers,
                  "hidden_size": cand.hidden_size, **given, "preset": AUTO_PRESET}  # fmt: skip
        if values.get("tie_weights") and "embed_size" not in given:
            values["embed_size"] = values["hidden_size"]
        cfg = TrainConfig(**values)
        name = f"{cfg.num_layers}x{cfg.hidden_size}"
        out.setdefault(name, (name, cfg))
    return list(out.values())


Measure = Callable[[TrainConfig, int, torch.device, int], float]


def measure_chars_per_s(
    cfg: TrainConfig,
    vocab_size: int,
    device: torch.device,
    world_size: int = 1,
    min_time_s: float = 0.3,
    max_time_s: float = 3.0,
    max_steps: int = 8,
) -> float:
    """Training characters per second of `cfg`'s model here: real steps (forward, loss,
    backward, clipping, fused AdamW) on random ids, with the kernel and autocast the trainer
    would use. The first step (allocation, weight packing) is not timed, unless it alone took
    `max_time_s` (a short budget on a busy machine: then it is the figure, a pessimistic one);
    then steps until at least 2 and `min_time_s` (or `max_time_s` in all, or `max_steps`), and
    the fastest counts:
    other work on a shared machine only ever slows a step down (on 2 busy cores a 2-thread
    step was seen to take 40x its idle time now and then), so the fastest step is the nearest
    to what the machine itself does. Under torchrun each process trains its share of the
    streams, so the rate counts all of them."""
    from charlstm.runtime import autocast_dtype
    from charlstm.training.build import build_model, build_optimizer
    from charlstm.training.kernel import choose_kernel
    from charlstm.training.step import probe_step

    begun = time.perf_counter()
    # --precision auto: the kernel this shape trains fastest with here (timed once per machine)
    kernel = choose_kernel(cfg, vocab_size, device, may_measure=world_size == 1)
    if kernel.how == "measured":  # both kernels were just timed at this shape: no need again
        return kernel.rates[kernel.kernel]
    model_config = cfg.model_config(vocab_size)
    model = build_model(model_config, cfg.precision, device, kernel.kernel)
    model.train()
    optimizer = build_optimizer(model, cfg, device)
    amp = autocast_dtype(device, cfg.precision, cfg.hidden_size)
    streams = max(1, cfg.batch_size // world_size)
    state = model.init_state(streams, device, torch.float32)
    window = torch.randint(0, vocab_size, (cfg.bptt + 1, streams), device=device)
    step_s: list[float] = []
    for step in range(max_steps + 1):
        start = time.perf_counter()
        state = probe_step(model, optimizer, window, state, cfg.clip, amp)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        now = time.perf_counter()
        if step > 0:  # the first step is the warm-up...
            step_s.append(now - start)
        elif now - begun >= max_time_s:  # ...unless it took all the time: then it is the figure
            step_s.append(now - start)
            break
        enough = len(step_s) >= 2 and sum(step_s) >= min_time_s
        if enough or (step_s and now - begun >= max_time_s):
            break
    del model, optimizer, state
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return cfg.batch_size * cfg.bptt / min(step_s)


def measure_cap_s(budget_min: float) -> float:
    """How long the measuring may climb: MEASURE_CAP_S, or MEASURE_CAP_SHARE of the budget."""
    return min(MEASURE_CAP_S, MEASURE_CAP_SHARE * budget_min * 60)


def choose(
    given: dict,
    train_chars: int,
    vocab_size: int,
    device: torch.device,
    world_size: int = 1,
    measure: Measure | None = None,
) -> AutoChoice:
    """Time the candidates from the smallest up, stop at the first the budget cannot train
    well (bigger ones only do worse) or at the measuring cap, and take the largest that fits;
    its dropout and weight decay follow from how many epochs the budget gives it. `given`
    holds the options the user set (time_budget_min among them); those win over auto's."""
    from charlstm.training.kernel import choose_kernel

    candidates = candidate_configs(given)
    climb = _climb(given, candidates, vocab_size, device, world_size, measure)
    train_s = max(0.0, given["time_budget_min"] * 60 - climb.measure_s) * (1 - OVERHEAD)
    rows = [CandidateRow(name, cfg, _params(cfg, vocab_size)) for name, cfg in candidates]
    for i, speed in enumerate(climb.speeds):
        row = replace(rows[i], chars_per_s=speed, chars_in_budget=speed * train_s)
        rows[i] = replace(row, verdict="fits" if row.fits else "too few chars")
    fitting = [i for i, r in enumerate(rows) if r.fits]
    chosen = fitting[-1] if fitting else 0
    row = rows[chosen]
    epochs = (row.chars_in_budget or 0.0) / max(1, train_chars)
    reg = {**regularisation_for_epochs(epochs), **{k: given[k] for k in given if k in REGULARISERS}}
    verdict = "chosen" if fitting else "chosen: none fits"
    rows[chosen] = replace(row, config=replace(row.config, **reg), verdict=verdict)
    kernel = choose_kernel(row.config, vocab_size, device, may_measure=False).kernel
    return AutoChoice(
        budget_min=given["time_budget_min"],
        device=str(device),
        kernel=kernel,
        train_chars=train_chars,
        rows=rows,
        chosen=chosen,
        epochs=epochs,
        regularisation_measured=MEASURED_EPOCHS[0] < epochs <= MEASURED_EPOCHS[1],
        measure_s=climb.measure_s,
        reason=_reason(given, row, bool(fitting), climb.stopped, epochs, train_chars, reg),
        user_set={flag(k): given[k] for k in CHOSEN_FIELDS if k in given},
        threads=climb.threads,
        thread_rates=climb.thread_rates,
    )


@dataclass
class _Climb:
    """What timing the candidates found: the speed of each one timed (smallest first), why
    the climb stopped, the seconds it took, and the thread counts timed on the first."""

    speeds: list[float]
    stopped: str
    measure_s: float
    thread_rates: dict[int, float]

    @property
    def threads(self) -> int | None:
        from charlstm.runtime import choose_threads

        return choose_threads(self.thread_rates) if self.thread_rates else None


def _climb(given, candidates, vocab_size, device, world_size, measure) -> _Climb:
    """Time the candidates from the smallest up until one falls short of the budget, the next
    would take the measuring past its cap, or one does not fit in memory."""
    from charlstm.runtime import apply_threads, choose_threads, thread_candidates

    budget_s = given["time_budget_min"] * 60
    cap_s = measure_cap_s(given["time_budget_min"])
    if measure is None:  # a candidate's own timing stops at the cap too (a warm-up and a step)
        measure = partial(measure_chars_per_s, max_time_s=min(3.0, cap_s))
    # the first shape is timed at every thread count (all cores, 1) and the rest at the faster:
    # beside a busy program one thread can beat all of them (runtime.ThreadTuner)
    threads_before = torch.get_num_threads()
    auto_threads = given.get("threads", 0) == 0 and device.type == "cpu" and world_size == 1
    counts = thread_candidates() if auto_threads else (given.get("threads") or threads_before,)
    apply_threads(counts[0])
    climb = _Climb([], "climbing ended at the largest candidate", 0.0, {})
    start = time.perf_counter()
    cost_s = 0.0
    for i, (name, cfg) in enumerate(candidates):
        spent = time.perf_counter() - start
        params = _params(cfg, vocab_size)
        if (
            climb.speeds
            and spent + cost_s * params / _params(candidates[i - 1][1], vocab_size) > cap_s
        ):
            climb.stopped = f"the next would take the measuring past its {cap_s:.3g} s cap"
            break
        try:
            if not climb.speeds and len(counts) > 1:
                for count in counts:
                    apply_threads(count)
                    climb.thread_rates[count] = measure(cfg, vocab_size, device, world_size)
                apply_threads(choose_threads(climb.thread_rates))
                climb.speeds.append(climb.thread_rates[choose_threads(climb.thread_rates)])
            else:
                climb.speeds.append(measure(cfg, vocab_size, device, world_size))
        except torch.OutOfMemoryError:
            climb.stopped = f"{name} does not fit in memory"
            break
        cost_s = time.perf_counter() - start - spent
        train_s = (budget_s - (time.perf_counter() - start)) * (1 - OVERHEAD)
        if climb.speeds[-1] * train_s < MIN_CHARS_PER_PARAM * params:
            climb.stopped = f"{name} falls short, so every larger one would"
            break
    climb.measure_s = time.perf_counter() - start
    apply_threads(threads_before)
    return climb


def _reason(given, row, fits: bool, stopped: str, epochs: float, train_chars: int, reg) -> str:
    """Why auto chose `row`, and the regularisation its epochs give, in one sentence."""
    budget = given["time_budget_min"]
    if fits:
        why = (
            f"{row.name} is the largest shape that sees at least {MIN_CHARS_PER_PARAM:g} "
            f"characters per parameter in {budget:g} min ({row.chars_per_param:.2f}; {stopped})"
        )
    else:
        why = (
            f"no shape sees {MIN_CHARS_PER_PARAM:g} characters per parameter in {budget:g} "
            f"min, so the smallest, {row.name}"
        )
    return (
        why
        + f"; {epochs:.1f} epochs of {train_chars:,} train chars -> "
        + ", ".join(
            f"{k.replace('_', ' ')} {v:g}" + (" (yours)" if k in given else "")
            for k, v in reg.items()
        )
    )


def _params(cfg: TrainConfig, vocab_size: int) -> int:
    return parameter_count(
        cfg.num_layers, cfg.hidden_size, cfg.embed_size, vocab_size, cfg.tie_weights
    )


def choose_preset(
    data=None,
    time_budget_min: float = 10.0,
    *,
    device: str = "auto",
    measure: Measure | None = None,
    **overrides,
) -> AutoChoice:
    """What `charlstm train --preset auto --time-budget M` would choose on `data` here, without
    training (`overrides` as for `train`: the options the user would give)."""
    from charlstm.data.dataset import resolve_dataset
    from charlstm.runtime import resolve_device

    given = {k: v for k, v in overrides.items() if v is not None}
    given.update(time_budget_min=time_budget_min, device=device)
    check_auto_length(given)
    dataset = resolve_dataset(data)
    return choose(
        given, len(dataset.split("train")), dataset.vocab.size, resolve_device(device),
        measure=measure,
    )  # fmt: skip
