"""What a finished run is worth, said plainly. Its score beside what guessing scores on the same
text (`Baselines`: a uniform guess, and each character's frequency in the train split), and,
when the run could not reach a useful model, one `RunWarning` per measured cause with its fix:
too few steps for the model, too little text for the model, a machine running far below the
speed measured at the start, a model that overfit (its val loss rose after its best), or a
score no better than guessing from frequencies.

The thresholds are generous on purpose: a warning must mean the run really is poor."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: characters seen per parameter below which a run has had too few steps: a third of the
#: 1.5 that `--preset auto` sizes a model for (`autopreset.MIN_CHARS_PER_PARAM`); the issue's
#: run (39 steps of a 2.0 M model, 0.08) reached 3.83 bpc
MIN_SEEN_PER_PARAM = 0.5
#: train characters per parameter below which a model memorises its text instead of learning
#: to predict it: tiny shakespeare with `small` has 0.29 and generalises with dropout; a 20 KB
#: text with auto's smallest shape (2.0 M) has 0.01 and ends worse than a uniform guess
MIN_TEXT_PER_PARAM = 0.05
#: a session that trained at less than this share of the rate measured at its start ran on a
#: machine busy with other work (measured: a busy core costs 2-8x, issue 36)
SLOW_SHARE = 0.5
#: nats/char by which the last validation, rising over the one before, must sit above the best
#: for a run to have overfit (seeds differ by 0.011-0.018, so less is noise): the 60-minute
#: auto run on tiny shakespeare was best at step 3,387 (1.4019), then 1.4086, then 1.4153
OVERFIT_RISE = 0.01
#: the smallest preset, the fix for a model too big for its text or its budget
SMALL_FIX = "--preset tiny (1 x LSTM(128), about 0.1 M parameters)"


#: measured scores a user can set theirs beside, by the data's name (docs/results.md)
REFERENCE_SCORES: dict[str, tuple[float, str]] = {
    "tinyshakespeare": (1.386, "`charlstm train --time-budget 10` on a 2-core AMD EPYC, idle"),
}


@dataclass(frozen=True)
class RunWarning:
    """One reason a run cannot be a useful model: what was measured, and the fix."""

    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.message}; {self.fix}"


@dataclass(frozen=True)
class Baselines:
    """What guessing scores on the val split, in nats per character."""

    uniform_nats: float  # every symbol of the vocabulary equally likely: ln V
    unigram_nats: float  # each character's frequency in the train split (add-one smoothed)


def baselines(train_ids: np.ndarray, val_ids: np.ndarray, vocab_size: int) -> Baselines:
    """The two guesses a model must beat, scored on the val split (vectorised counts)."""
    counts = np.bincount(np.asarray(train_ids), minlength=vocab_size).astype(np.float64) + 1.0
    log_p = np.log(counts / counts.sum())
    val = np.asarray(val_ids[1:])  # the characters a model is scored on: all but the first
    unigram = float(-log_p[val].mean()) if len(val) else math.log(vocab_size)
    return Baselines(uniform_nats=math.log(vocab_size), unigram_nats=unigram)


@dataclass(frozen=True)
class RunFacts:
    """What a finished session measured, for `diagnose`."""

    steps: int  # of the whole run
    chars_seen: int
    params: int
    train_chars: int
    train_chars_per_s: float  # this session's steps over their own time (no validation)
    reference_chars_per_s: float | None  # the rate measured at the start, if any
    reference: str  # where that rate comes from, for the message
    best_val_nats: float | None
    baselines: Baselines
    budget_min: float | None
    minutes_so_far: float
    tiny_params: int = 0  # what `--preset tiny` has on this vocabulary: a fix only if smaller
    val_history: tuple[tuple[int, float], ...] = ()  # (step, val loss) of this session


def diagnose(f: RunFacts) -> list[RunWarning]:
    """Every measured reason this run is not a useful model, each with its fix."""
    warnings: list[RunWarning] = []
    if f.train_chars < MIN_TEXT_PER_PARAM * f.params:
        need = MIN_TEXT_PER_PARAM * f.params
        warnings.append(
            RunWarning(
                f"too little text for this model: {f.train_chars:,} train characters for "
                f"{_millions(f.params)} parameters ({f.train_chars / f.params:.3f} per "
                "parameter), so it memorises the text instead of learning to predict it",
                f"give it more text (at least {need:,.0f} characters for this size)" + _smaller(f),
            )
        )
    if f.chars_seen < MIN_SEEN_PER_PARAM * f.params:
        warnings.append(_too_few_steps(f))
    slow = f.reference_chars_per_s and f.train_chars_per_s < SLOW_SHARE * f.reference_chars_per_s
    if slow:
        warnings.append(
            RunWarning(
                f"this machine ran far below its measured speed: {f.train_chars_per_s:,.0f} "
                f"chars/s, {f.train_chars_per_s / f.reference_chars_per_s:.2f}x the "
                f"{f.reference_chars_per_s:,.0f} of {f.reference}, so other programs are "
                "using the CPU and the run trained that much less",
                "close them, or train when the machine is idle",
            )
        )
    overfit = _overfit(f)
    if overfit is not None:
        warnings.append(overfit)
    best, guess = f.best_val_nats, f.baselines.unigram_nats
    if best is not None and best >= guess and not warnings:
        warnings.append(
            RunWarning(
                f"the model is no better than guessing each character from its frequency: "
                f"val loss {best:.3f} nats/char against {guess:.3f} for that guess",
                "train longer (a larger --time-budget or --steps)",
            )
        )
    return warnings


def _overfit(f: RunFacts) -> RunWarning | None:
    """The val loss rose over the last two validations, and ended OVERFIT_RISE above the best:
    the steps after the best one taught the model its train text, not the language."""
    history = f.val_history
    if len(history) < 3:
        return None
    best_step, best = min(history, key=lambda h: h[1])
    (_, before), (last_step, last) = history[-2:]
    if not (last - best >= OVERFIT_RISE and last >= before > best):
        return None
    share = best_step / max(1, f.steps)
    message = (
        f"the model overfit: val loss was best at step {best_step:,} ({best:.4f} nats/char) "
        f"and rose to {last:.4f} by step {last_step:,}, so best.pt holds step {best_step:,}'s "
        f"weights and the last {1 - share:.0%} of the steps taught it nothing that generalises"
    )
    fix = "more regularisation (a higher --dropout or --weight-decay) or a smaller model"
    if f.budget_min is not None:
        minutes = math.ceil(share * f.budget_min)
        fix += f"; a --time-budget of about {minutes:g} min reaches the same"
    return RunWarning(message, fix)


def _too_few_steps(f: RunFacts) -> RunWarning:
    need_chars = MIN_SEEN_PER_PARAM * 3 * f.params  # auto's 1.5 chars per parameter
    message = (
        f"too few steps for this model: {f.steps:,} steps saw {f.chars_seen:,} characters, "
        f"{f.chars_seen / f.params:.2f} per parameter of its {_millions(f.params)} (a useful "
        f"model needs about {MIN_SEEN_PER_PARAM * 3:g})"
    )
    if f.budget_min is not None and f.train_chars_per_s > 0:
        minutes = need_chars / f.train_chars_per_s / 60
        fix = (
            f"train for about {math.ceil(minutes):,} minutes at this run's "
            f"{f.train_chars_per_s:,.0f} chars/s (--time-budget)" + _smaller(f)
        )
    else:
        per_step = f.chars_seen / max(1, f.steps)
        fix = f"train for about {math.ceil(need_chars / per_step):,} steps (--steps)" + _smaller(f)
    return RunWarning(message, fix)


def _smaller(f: RunFacts) -> str:
    """`--preset tiny` as the other fix, where it is smaller than the run's model."""
    return f", or a smaller model: {SMALL_FIX}" if f.params > 1.5 * f.tiny_params else ""


def _millions(n: int) -> str:
    return f"{n / 1e6:.1f} M" if n >= 100_000 else f"{n:,}"
