"""Exact full-stream evaluation: loss in nats/char, bits per char and perplexity.

Every character after the first is predicted exactly once. With ``batch_size`` B > 1 the
n - 1 targets are cut into B contiguous streams that run side by side; each stream starts from
a zero state, so its first few characters are predicted with less context than a single
stream (B = 1, the reference) would have. That warm-up is the whole price of batching: the
same characters are scored, each exactly once, with the state carried from the start of its
stream. bpc = loss / ln 2 and perplexity = e^loss.

Windowed evaluation (`window_nats`, `charlstm eval --window N`) bounds the context instead:
windows of N characters start every S = N // 2 characters, each from a zero state. The first
window scores all of its N predictions (characters 1..N, from 1..N characters of context);
window k >= 1 starts at character kS and scores only its last S predictions (characters
N + (k-1)S + 1 .. N + kS), each made from N - S + 1 .. N characters of context. So every
character after the first is scored exactly once, with at most N characters of context, and
after the first window with at least N - S + 1. The windows are independent, so they run
side by side in batches: exhaustive, deterministic, and about N / S = 2x the work of one
stream.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from charlstm.data.heldout import encode_text_file, split_ids
from charlstm.errors import CharLSTMError, OptionError

EVAL_BPTT = 256  # no backward pass, so long windows only save Python overhead
# ... but a window's logits are T x B x vocab floats (twice, with the log-softmax): cap them so
# a big vocabulary with many streams cannot blow up memory (2**23 floats = 32 MB)
EVAL_MAX_LOGITS = 1 << 23
# each stream starts from a zero state, so a stream must be long enough for that warm-up to be
# a small part of it: with B streams over n characters, B is capped at n / MIN_STREAM_CHARS
MIN_STREAM_CHARS = 1000


def stream_count(n_chars: int, batch_size: int) -> int:
    """How many contiguous streams to score `n_chars` characters with, asked for `batch_size`:
    never so many that a stream is shorter than MIN_STREAM_CHARS (but at least one)."""
    return max(1, min(batch_size, (n_chars - 1) // MIN_STREAM_CHARS))


@dataclass(frozen=True)
class EvalResult:
    """Scores of one evaluation. `chars` counts the characters predicted."""

    loss: float  # nats per character
    bpc: float
    perplexity: float
    chars: int
    seconds: float
    skipped: int = 0  # unknown characters dropped with unknown="skip"
    split: str | None = None
    source: str | None = None
    streams: int = 1  # contiguous streams scored side by side
    streams_asked: int = 1  # the batch size asked for (more than `streams` when capped)
    mode: str = "static"  # "static" (full stream), "window" (bounded context), "dynamic", "cache"
    window: int | None = None  # with mode "window": the most context a character gets
    window_hop: int | None = None  # ... and how far apart the windows start
    dynamic: dict | None = None  # with mode "dynamic": its settings and gradient statistics
    cache: dict | None = None  # with mode "cache": the continuous cache's settings
    precision: str = "fp32"  # "fp32", "bf16 LSTM matmuls" (CPU), "tf32" or "bf16 autocast" (GPU)
    threads: int = 0  # the CPU threads it ended with
    thread_rates: dict | None = None  # with threads=0: chars/s by thread count, last measured

    @property
    def chars_per_s(self) -> float:
        return self.chars / max(self.seconds, 1e-9)

    def to_dict(self) -> dict:
        """Plain JSON-ready data: a non-finite number (a diverged model) becomes None (null),
        since JSON has no NaN or Infinity."""
        out = asdict(self)
        out["chars_per_s"] = self.chars_per_s
        return {
            k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in out.items()
        }


def metrics_from_nats(total_nats: float, count: int) -> tuple[float, float, float]:
    """(loss, bpc, perplexity) from a sum of -log p over `count` predictions."""
    loss = total_nats / count
    perplexity = math.exp(loss) if loss < 700 else math.inf
    return loss, loss / math.log(2), perplexity


@torch.no_grad()
def stream_nats(
    model,
    ids: np.ndarray,
    batch_size: int = 1,
    device=None,
    dtype=None,
    bptt: int = EVAL_BPTT,
    shard: tuple[int, int] | None = None,
) -> tuple[float, int]:
    """Sum of -log p(next char) over `ids` (a 1-D id array or memmap), and how many.

    The targets are cut into `batch_size` contiguous streams, hidden state carried through each
    from its start. `shard=(lo, hi)` scores only streams lo..hi-1 (one rank's share), so sums
    over disjoint shards add up to exactly the unsharded result.
    """
    from charlstm.runtime import autocast, work_done

    device = device or next(model.parameters()).device
    n_targets = len(ids) - 1
    if n_targets < 1:
        return 0.0, 0
    streams = max(1, min(batch_size, n_targets))
    stream_len = -(-n_targets // streams)
    starts = np.arange(streams, dtype=np.int64) * stream_len
    lengths = np.clip(n_targets - starts, 0, stream_len)  # last streams may be short or empty
    lo, hi = shard if shard is not None else (0, streams)
    starts, lengths = starts[lo:hi], lengths[lo:hi]
    if len(starts) == 0 or lengths.sum() == 0:
        return 0.0, 0
    bptt = max(1, min(bptt, EVAL_MAX_LOGITS // (len(starts) * model.config.vocab_size)))
    was_training = model.training
    model.eval()
    state = model.init_state(len(starts), device=device, dtype=torch.float32)
    total = 0.0  # float64 on the host: not every device has float64 (Apple's MPS has not)
    for pos in range(0, int(lengths.max()), bptt):
        steps = min(bptt, int(lengths.max()) - pos)
        offs = pos + np.arange(steps + 1, dtype=np.int64)[:, None]  # (T+1, 1)
        index = np.minimum(starts[None, :] + offs, len(ids) - 1)
        window = torch.from_numpy(np.asarray(ids[index], dtype=np.int64)).to(device)
        valid = torch.from_numpy(offs[:-1] < lengths[None, :]).to(device)  # (T, B)
        with autocast(device, dtype):
            logits, state = model(window[:-1], state)
        nats = F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]),
            window[1:].reshape(-1),
            reduction="none",
        )
        total += float((nats * valid.reshape(-1)).cpu().sum(dtype=torch.float64))
        work_done(steps * len(starts))
    model.train(was_training)
    return total, int(lengths.sum())


@torch.no_grad()
def window_nats(
    model, ids: np.ndarray, window: int, device=None, dtype=None, hop: int | None = None
) -> tuple[float, int]:
    """Sum of -log p(next char) over `ids` with at most `window` characters of context, and
    how many: every character after the first exactly once (the scheme is in the module's
    docstring). Windows of `window` ids start every `hop` (default window // 2; hop = window
    gives disjoint blocks, each character seeing 1..window); all run side by side."""
    from charlstm.runtime import autocast, work_done

    if window < 2:
        raise OptionError(f"--window must be >= 2, got {window}")
    device = device or next(model.parameters()).device
    n_targets = len(ids) - 1
    if n_targets < 1:
        return 0.0, 0
    hop = window // 2 if hop is None else hop
    if not 1 <= hop <= window:
        raise OptionError(f"--window-hop must be in 1..{window} (the window), got {hop}")
    count = 1 + max(0, -(-(n_targets - window) // hop))  # windows needed to reach the end
    starts = np.arange(count, dtype=np.int64) * hop
    length = min(window, n_targets)  # a text shorter than one window is one full-stream pass
    # window k scores its predictions from offset `first` on: 0 for the first window, then
    # window - hop (those before were scored by the window before it)
    first = np.where(starts == 0, 0, window - hop)
    per_batch = max(1, EVAL_MAX_LOGITS // (length * model.config.vocab_size))
    was_training = model.training
    model.eval()
    total, scored = 0.0, 0
    offs = np.arange(length + 1, dtype=np.int64)[:, None]  # (T+1, 1)
    for lo in range(0, count, per_batch):
        batch_starts, batch_first = starts[lo : lo + per_batch], first[lo : lo + per_batch]
        index = batch_starts[None, :] + offs
        valid = (offs[:-1] >= batch_first[None, :]) & (index[1:] <= n_targets)  # (T, B)
        tokens = torch.from_numpy(np.asarray(ids[np.minimum(index, n_targets)], np.int64))
        tokens = tokens.to(device)
        state = model.init_state(len(batch_starts), device=device, dtype=torch.float32)
        with autocast(device, dtype):
            logits, _ = model(tokens[:-1], state)
        nats = F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), tokens[1:].reshape(-1), reduction="none"
        )
        mask = torch.from_numpy(valid.reshape(-1)).to(device)
        total += float((nats * mask).cpu().sum(dtype=torch.float64))
        scored += int(valid.sum())
        work_done(length * len(batch_starts))
    model.train(was_training)
    return total, scored


def evaluate(
    checkpoint,
    *,
    data: str | Path | None = None,
    split: str | None = None,
    text: str | Path | None = None,
    batch_size: int = 1,
    device: str = "auto",
    unknown: str = "error",
    window: int | None = None,
    window_hop: int | None = None,
    dynamic=None,
    cache=None,
    precision: str = "auto",
    threads: int = 0,
) -> EvalResult:
    """Score a checkpoint (path or loaded `Checkpoint`) on a split of tokenized data (default:
    the run's own data, its test split if non-empty else val) or on a text file encoded with
    the checkpoint's vocabulary.

    `window=N` bounds every character's context to at most N characters (`window_nats`).
    `dynamic=True` (or a `DynamicSettings`) scores with dynamic evaluation instead: the
    weights adapt to the text as it is scored (`charlstm.evaluation.dynamic`); the result's `mode`
    says which, so static and dynamic numbers are never confused. `cache=True` (or a
    `CacheSettings`) mixes in a continuous cache of recent hidden states
    (`charlstm.evaluation.continuous_cache`, mode "cache").

    `precision`: "auto" scores in fp32 on a CPU (the exact reference) and on a GPU as a
    training run there would (`runtime.cuda_precision`: bf16 autocast, or TF32); "fp32" forces
    strict fp32 everywhere; "tf32" is fp32 with TF32 matmuls on a GPU, fp32 on a CPU; "bf16"
    is bf16 autocast on a GPU and, on a CPU, the bf16 LSTM kernel of training
    (`charlstm.model.lstm_bf16`: bf16 matrix products, fp32 state), faster where the CPU has
    bf16 units but off the fp32 number by bf16 rounding.
    The result's `precision` says which ran.

    `threads`: CPU threads; 0 (auto) times the scoring itself at all cores and at 1 as it
    goes, and keeps the faster (`runtime.ThreadTuner`; the result's `threads` says which)."""
    from charlstm.runtime import check_threads, cpu_threads, resolve_device

    settings, cache_settings = _scoring_modes(batch_size, window, window_hop, dynamic, cache)
    _check_options(precision, unknown, settings, cache_settings, text, data, split)
    check_threads(threads)
    dev = resolve_device(device)
    with cpu_threads(threads, dev) as tuner:
        result = _score(checkpoint=checkpoint, dev=dev, text=text, data=data, split=split,
                        unknown=unknown, settings=settings, cache_settings=cache_settings,
                        precision=precision, batch_size=batch_size, window=window,
                        window_hop=window_hop)  # fmt: skip
        return replace(
            result,
            threads=torch.get_num_threads() if tuner is None else tuner.threads,
            thread_rates=None if tuner is None else {str(t): r for t, r in tuner.rates.items()},
        )


def _score(*, checkpoint, dev, text, data, split, unknown, settings, cache_settings,
           precision, batch_size, window, window_hop) -> EvalResult:  # fmt: skip
    """Load, read the text, and score it in the mode asked for."""
    from charlstm.model.checkpoint import Checkpoint, load_checkpoint

    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint, dev)
    ckpt.model.to(dev)
    skipped = 0
    if text is not None:
        ids, skipped = encode_text_file(Path(text), ckpt.vocab, unknown)
        source, split_name = str(text), None
    else:
        ids, source, split_name = split_ids(ckpt, data, split)
    if len(ids) < 2:
        raise CharLSTMError(f"{source} has fewer than 2 characters to score", "give it more text")
    where = dict(skipped=skipped, split=split_name, source=source)
    if settings is not None:
        return _dynamic_result(ckpt, ids, settings, data, dev, where)
    if cache_settings is not None:
        return _cache_result(ckpt, ids, cache_settings, dev, where)
    return _static_result(ckpt, ids, dev, precision, batch_size, window, window_hop, where)


def _check_options(precision, unknown, settings, cache_settings, text, data, split) -> None:
    """Refuse options that contradict each other, before anything is loaded."""
    from charlstm.config import PRECISIONS

    if precision not in PRECISIONS:
        raise OptionError(f"unknown --precision {precision!r}", f"use {', '.join(PRECISIONS)}")
    if precision == "bf16" and (settings is not None or cache_settings is not None):
        raise OptionError(
            "--precision bf16 applies to static and --window scoring",
            "--dynamic and --cache score in fp32; drop --precision",
        )
    if unknown not in ("error", "skip"):
        raise OptionError(f"unknown --unknown {unknown!r}", "use error or skip")
    # with --dynamic, --data also says where the gradient statistics come from
    if text is not None and (split is not None or (data is not None and settings is None)):
        raise OptionError("--text scores a file; it does not combine with --data or --split")


def _dynamic_result(ckpt, ids, settings, data, dev, where: dict) -> EvalResult:
    from charlstm.evaluation.dynamic import dynamic_nats

    start = time.perf_counter()
    nats, count, info = dynamic_nats(ckpt, ids, settings, data=data, device=dev)
    # the speed is the scoring's: the one-off gradient statistics are timed on their own
    seconds = time.perf_counter() - start - info["stats_seconds"]
    loss, bpc, ppl = metrics_from_nats(nats, count)
    return EvalResult(
        loss, bpc, ppl, count, seconds, where["skipped"], where["split"], where["source"],
        mode="dynamic", dynamic=info,
    )  # fmt: skip


def _cache_result(ckpt, ids, cache_settings, dev, where: dict) -> EvalResult:
    from charlstm.evaluation.continuous_cache import cache_nats

    start = time.perf_counter()
    nats, count = cache_nats(ckpt.model, ids, cache_settings, dev)
    seconds = time.perf_counter() - start
    loss, bpc, ppl = metrics_from_nats(nats, count)
    return EvalResult(
        loss, bpc, ppl, count, seconds, where["skipped"], where["split"], where["source"],
        mode="cache", cache=asdict(cache_settings),
    )  # fmt: skip


def _static_result(ckpt, ids, dev, precision, batch_size, window, window_hop, where: dict):
    """Exact (full-stream) or windowed scoring, in the precision asked for."""
    from charlstm.runtime import autocast_dtype, cuda_precision, keep_freed_memory, use_tf32

    dtype = None
    if dev.type == "cuda":
        hidden = ckpt.model.config.hidden_size
        dtype = autocast_dtype(dev, precision, hidden)
        use_tf32(cuda_precision(dev, precision, hidden) != "fp32")
    if dev.type == "cpu":  # reuse the windows' large buffers, as training does (1.2-1.6x here)
        keep_freed_memory()
    model = ckpt.model
    model.eval_kernel = "bf16" if precision == "bf16" and dev.type == "cpu" else "fp32"
    used = "bf16 LSTM matmuls" if model.eval_kernel == "bf16" else "fp32"
    if dev.type == "cuda":
        used = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "fp32"
    used = "bf16 autocast" if dtype == torch.bfloat16 else used
    streams = 1 if window is not None else stream_count(len(ids), batch_size)
    start = time.perf_counter()
    try:
        if window is not None:
            nats, count = window_nats(model, ids, window, dev, dtype, window_hop)
        else:
            nats, count = stream_nats(model, ids, streams, dev, dtype)
    finally:
        model.eval_kernel = "fp32"
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    loss, bpc, ppl = metrics_from_nats(nats, count)
    return EvalResult(
        loss, bpc, ppl, count, seconds, where["skipped"], where["split"], where["source"],
        streams, batch_size, mode="static" if window is None else "window", window=window,
        window_hop=None if window is None else window_hop or window // 2, precision=used,
    )  # fmt: skip


def _mode_settings(value, settings_type, name: str):
    """None/False -> None; True -> the defaults; a `settings_type` -> itself; validated."""
    if value is None or value is False:
        return None
    settings = settings_type() if value is True else value
    if not isinstance(settings, settings_type):
        raise OptionError(f"{name} must be True or a {settings_type.__name__}")
    settings.validate()
    return settings


def _scoring_modes(batch_size, window, window_hop, dynamic, cache):
    """Check `evaluate`'s mode options (static streams, --window, --dynamic, --cache: one at a
    time); the dynamic and cache settings, or None for the modes not asked for."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise OptionError(f"--batch-size must be >= 1, got {batch_size}")
    if window is not None and (
        isinstance(window, bool) or not isinstance(window, int) or window < 2
    ):
        raise OptionError(f"--window must be >= 2, got {window}")
    if window_hop is not None and (window is None or not 1 <= window_hop <= window):
        raise OptionError(
            f"--window-hop must be in 1..N with --window N, got {window_hop}",
            "the default N // 2 gives every character N/2..N characters of context",
        )
    from charlstm.evaluation.continuous_cache import CacheSettings
    from charlstm.evaluation.dynamic import DynamicSettings

    settings = _mode_settings(dynamic, DynamicSettings, "dynamic")
    if settings is not None and window is not None:
        raise OptionError(
            "--dynamic and --window do not combine", "dynamic evaluation reads one stream"
        )
    cache_settings = _mode_settings(cache, CacheSettings, "cache")
    if cache_settings is not None and (window is not None or settings is not None):
        raise OptionError(
            "--cache does not combine with --window or --dynamic",
            "each is reported on its own; run them one at a time",
        )
    if batch_size != 1 and (
        window is not None or settings is not None or cache_settings is not None
    ):
        what = "--window" if window is not None else "--dynamic" if settings else "--cache"
        raise OptionError(
            f"--batch-size does not apply to {what}",
            "windows are batched on their own; dynamic evaluation reads one stream",
        )
    return settings, cache_settings
