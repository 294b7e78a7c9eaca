"""`BatchScheduler`: many generations at once, each one row of a shared `FastLSTMStep` batch.

At batch 1 a step is a matrix-vector product per layer, bounded by how fast the weights can be
read (sampling.py). At batch B the same read of the weights serves B streams (a matrix-matrix
product), so B concurrent generations cost little more than one. The scheduler keeps every
active generation as one row of one batch and runs in rounds:

1. streams that were submitted since the last round join: each prompt runs through the model in
   one forward pass (shared by the `n` streams of one request) and their (h, c) rows and next-
   character logits are appended;
2. one character is sampled for every row (per-row temperature, top-k, top-p: one vectorised
   pass; a row that cannot be sampled fails alone), decoded, checked against the stream's stop
   sequences and handed to the listener;
3. finished and cancelled rows leave, and the remaining rows take one `FastLSTMStep`.

A new request therefore waits at most for the step in progress plus its own prompt's forward
pass before its first character. Every stream draws its randomness from its own generator
(seeded by its request), exactly one uniform number per character, consumed by the inverse
CDF of its row: a seeded request writes the same text whatever else shares the batch.
With `logprobs` (`prompt_logprobs`) a stream also keeps each generated (prompt) token's
log-probability and top alternatives (`logprobs.py`); the prompt's come from the pass that
primes the stream.

Plain Python, no HTTP: `submit` requests, then call `step()` yourself or `start()` a worker
thread that steps while there is work; text arrives through the listener (or `Stream.text`).
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from charlstm.errors import CharLSTMError, OptionError
from charlstm.generation.logprobs import (
    MAX_LOGPROBS,
    TokenLogprobs,
    prompt_scores,
    score_tokens,
    text_ends,
)
from charlstm.generation.sampling import DTYPES, FastLSTMStep

MAX_SEED = 2**63 - 1
MIN_TEMPERATURE = 1e-6  # below it, sampling is greedy
UNIFORM_CHUNK = 256  # uniform numbers drawn at a time from a stream's generator


class CapacityError(CharLSTMError):
    """The scheduler already runs as many streams as it may (`max_streams`)."""


@dataclass(frozen=True)
class SamplingParams:
    """How one stream samples: how many characters at most, temperature (0, or below 1e-6, is
    greedy), top-k (0, or beyond the vocabulary: off), nucleus top-p (1: off), a seed (None:
    fresh entropy), stop sequences (the text ends before the first one, not included), and
    whether to keep the log-probability and that many top alternatives of each generated token
    (`logprobs`) and prompt token (`prompt_logprobs`; None: not kept)."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None
    prompt_logprobs: int | None = None

    def problem(self) -> tuple[str, str] | None:
        """(field, what is wrong) for the first value out of range, or None."""
        number = (int, float)
        if not isinstance(self.max_tokens, int) or self.max_tokens < 0:
            return "max_tokens", f"max_tokens must be an integer >= 0, got {self.max_tokens!r}"
        t = self.temperature
        if not (isinstance(t, number) and math.isfinite(t) and t >= 0):
            return "temperature", f"temperature must be >= 0 (0 is greedy), got {t!r}"
        if not isinstance(self.top_k, int) or self.top_k < 0:
            return "top_k", f"top_k must be an integer >= 0 (0 disables it), got {self.top_k!r}"
        if not (isinstance(self.top_p, number) and 0 < self.top_p <= 1):
            return "top_p", f"top_p must be in (0, 1] (1 disables it), got {self.top_p!r}"
        if self.seed is not None and not (
            isinstance(self.seed, int) and 0 <= self.seed <= MAX_SEED
        ):
            return "seed", f"seed must be an integer from 0 to 2^63-1, got {self.seed!r}"
        if any(not isinstance(s, str) or not s for s in self.stop):
            return "stop", "stop sequences must be non-empty strings"
        for name in ("logprobs", "prompt_logprobs"):
            k = getattr(self, name)
            if k is not None and not (isinstance(k, int) and 0 <= k <= MAX_LOGPROBS):
                return name, f"{name} must be an integer from 0 to {MAX_LOGPROBS}, got {k!r}"
        return None


@dataclass(eq=False)
class Stream:
    """One generation: the text produced so far, and why it ended (None while running).

    Another thread may read `text` and then `finish_reason` at any time: the text is complete
    once the reason is set (the stepping thread appends the text first)."""

    request_id: str
    index: int
    prompt_ids: np.ndarray
    params: SamplingParams
    rng: np.random.Generator = field(repr=False)  # this stream's own randomness
    decode: Callable = field(repr=False)
    text: str = ""
    tokens: int = 0  # characters (ids) sampled so far
    finish_reason: str | None = None  # "length", "stop", "cancelled", "error"
    error: str | None = None  # what went wrong, when finish_reason is "error"
    logprobs: TokenLogprobs | None = None  # generated tokens' scores, with params.logprobs
    prompt_logprobs: TokenLogprobs | None = None  # the prompt's, with params.prompt_logprobs
    _held: str = field(default="", repr=False)  # may be the start of a stop sequence
    _holds_slot: bool = field(default=True, repr=False)
    _uniforms: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32), repr=False)
    _drawn: int = field(default=0, repr=False)  # uniform numbers drawn so far

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def next_uniform(self) -> float:
        """The uniform number of the next character: drawn from the stream's generator in
        chunks (the same sequence as one draw of max_tokens numbers, without allocating it)."""
        k = self.tokens - self._drawn + len(self._uniforms)  # its place in the current chunk
        if k >= len(self._uniforms):
            self._uniforms = self.rng.random(UNIFORM_CHUNK, dtype=np.float32)
            self._drawn += UNIFORM_CHUNK
            k = 0
        return float(self._uniforms[k])

    def advance(self, piece: str) -> tuple[str, str | None]:
        """Take the text of one more character: (text to hand out now, finish reason)."""
        self.tokens += 1
        buf = self._held + piece
        self._held = ""
        stops = self.params.stop
        if stops:
            found = [i for i in (buf.find(s) for s in stops) if i >= 0]
            if found:
                out = buf[: min(found)]
                self.text += out
                return out, "stop"
            hold = max((_overlap(buf, s) for s in stops), default=0)
            if hold:
                buf, self._held = buf[:-hold], buf[-hold:]
        if self.tokens >= self.params.max_tokens:
            buf += self._held  # not the start of a stop after all: the text ends here
            self._held = ""
            self.text += buf
            return buf, "length"
        self.text += buf
        return buf, None


def _overlap(text: str, stop: str) -> int:
    """The length of the longest end of `text` that is a proper start of `stop`."""
    for k in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:k]):
            return k
    return 0


@dataclass(frozen=True)
class StreamEvent:
    """New text of a stream, and its finish reason when this is its last event."""

    stream: Stream
    text: str
    finish_reason: str | None = None


def sample_rows(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    uniforms: torch.Tensor,
    kinds: tuple[bool, bool, bool] | None = None,
) -> torch.Tensor:
    """One id per row of `logits` (B, V), each row with its own temperature (below 1e-6:
    argmax), top-k (0: off), top-p and uniform number in [0, 1): the same distribution as
    `sampling.filter_logits`, sampled by inverting the row's CDF at its uniform.

    The CDF runs over the vocabulary in id order for every row, so a row's character depends
    on its own options and uniform only, never on whether another row of the batch filters;
    the sort that top-k and top-p need happens only in a batch where some row filters.
    `kinds`: (any row greedy, every row greedy, any row filters) when the caller knows them,
    which spares the device round trips that find them out."""
    V = logits.shape[-1]
    greedy = temperature < MIN_TEMPERATURE  # 1/temperature would overflow float32
    k = torch.where((top_k > 0) & (top_k < V), top_k, V)
    if kinds is None:
        kinds = (bool(greedy.any()), bool(greedy.all()), bool(((k < V) | (top_p < 1)).any()))
    any_greedy, all_greedy, filtering = kinds
    if all_greedy:
        return logits.argmax(-1)
    scale = torch.where(greedy, 1.0, temperature) if any_greedy else temperature
    probs = torch.softmax(logits.float() / scale[:, None], -1)
    if filtering:
        probs = _filtered(probs, k, top_p)
    cdf = probs.cumsum(-1)
    target = (uniforms * cdf[:, -1])[:, None]
    pick = torch.searchsorted(cdf, target, right=True).clamp_max_(V - 1)[:, 0]
    return torch.where(greedy, logits.argmax(-1), pick) if any_greedy else pick


def _filtered(probs: torch.Tensor, k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Each row's probabilities after its top-k (ties with the k-th kept) and then its nucleus
    over the renormalized top-k (a symbol is dropped when the mass before it already reaches
    top_p; the top one stays); unnormalized, in id order."""
    sorted_p, order = probs.sort(-1, descending=True)
    kth = sorted_p.gather(1, (k - 1)[:, None])
    sorted_p = sorted_p.masked_fill(sorted_p < kth, 0.0)
    mass_before = sorted_p.cumsum(-1) - sorted_p
    sorted_p = sorted_p.masked_fill(mass_before >= top_p[:, None] * sorted_p.sum(-1, True), 0.0)
    return torch.zeros_like(probs).scatter_(1, order, sorted_p)


class Admission:
    """The thread-safe side of a scheduler: slots, the groups waiting to join the batch, and
    the end of streams (finished, cancelled, failed). Any thread may call it."""

    def __init__(self, max_streams: int) -> None:
        self.max_streams = max_streams
        self.used = 0  # slots held: pending or running streams, not yet finished
        self.closing = False
        self._pending: list[tuple[Stream, ...]] = []
        self._cond = threading.Condition()

    def add(self, streams: tuple[Stream, ...]) -> None:
        with self._cond:
            if self.closing:
                raise CharLSTMError("the scheduler is shut down")
            if self.used + len(streams) > self.max_streams:
                raise CapacityError(
                    f"{self.used} of {self.max_streams} streams are running; "
                    f"{len(streams)} more do not fit",
                    "retry when some finish",
                )
            self.used += len(streams)
            self._pending.append(streams)
            self._cond.notify_all()

    def take(self) -> list[tuple[Stream, ...]]:
        """The groups submitted since the last call."""
        with self._cond:
            groups, self._pending = self._pending, []
        return groups

    def pending(self) -> list[Stream]:
        with self._cond:
            return [s for g in self._pending for s in g]

    def end(self, stream: Stream, reason: str, error: str | None = None) -> None:
        """Set the stream's finish reason (unless it has one) and free its slot."""
        with self._cond:
            if stream.finish_reason is None:
                stream.error = error
                stream.finish_reason = reason
            if stream._holds_slot:
                stream._holds_slot = False
                self.used -= 1
            self._cond.notify_all()

    def wait_for_work(self, has_rows: Callable[[], bool]) -> bool:
        """Block until there is work; False once closing."""
        with self._cond:
            while not self.closing and not self._pending and not has_rows():
                self._cond.wait()
            return not self.closing

    def close(self) -> None:
        with self._cond:
            self.closing = True
            self._cond.notify_all()


class BatchScheduler:
    """Generations from one checkpoint, batched: streams join and leave between steps.

    `submit()` and `cancel()` may be called from any thread (they go through `Admission`);
    `step()` from one thread at a time (the worker of `start()`, or the caller's own loop).
    `listener(events)` receives each round's `StreamEvent`s on the stepping thread;
    `on_error(stream, exc)` hears of a stream that failed (None: the whole round failed).

    A failure is confined to the stream that caused it: a group whose prompt cannot run, a row
    whose sampling or decoding raises, ends alone with finish_reason "error"; the rest of the
    batch goes on.
    """

    def __init__(
        self,
        checkpoint,
        *,
        device: str = "cpu",
        dtype: str = "fp32",
        max_streams: int = 64,
        listener: Callable[[list[StreamEvent]], None] | None = None,
    ) -> None:
        from charlstm.model.checkpoint import Checkpoint, load_checkpoint
        from charlstm.runtime import resolve_device

        if dtype not in DTYPES:
            raise OptionError(f"unknown --dtype {dtype!r}", "use fp32 or bf16")
        if max_streams < 1:
            raise OptionError(f"--max-streams must be >= 1, got {max_streams}")
        self.device = resolve_device(device)
        ckpt = (
            checkpoint
            if isinstance(checkpoint, Checkpoint)
            else load_checkpoint(checkpoint, self.device)
        )
        self.checkpoint_path = Path(ckpt.path)
        self.model = ckpt.model.to(self.device).eval()
        self.vocab = ckpt.vocab
        self.vocab_size = self.model.config.vocab_size
        self.max_streams = max_streams
        self.listener = listener
        self.on_error: Callable[[Stream | None, Exception], None] | None = None
        self.steps = 0  # batch steps taken
        self.error: Exception | None = None  # the last failure (a row's or a round's)
        newline = self.vocab.encode_raw("\n")
        self._context_only = newline if len(newline) and newline[0] >= 0 else np.zeros(1, np.int64)
        self._admission = Admission(max_streams)
        self._step = FastLSTMStep(self.model, 0, DTYPES[dtype])
        self._logits = torch.empty(0, self.vocab_size, device=self.device)
        self._rows: list[Stream] = []  # the batch, in row order (stepping thread only)
        self._row_options: list[tuple[float, int, float]] = []  # (temperature, top_k, top_p)
        self._row_params: tuple[torch.Tensor, ...] | None = None
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None

    # -- requests (any thread) --------------------------------------------------------------
    def encode_prompt(self, prompt: str) -> np.ndarray:
        """The prompt's ids; unknown characters raise CharLSTMError naming them."""
        if not prompt:
            return np.zeros(0, np.int64)
        return self.vocab.encode(prompt, what="the prompt", hint="remove them from the prompt")

    @property
    def active(self) -> int:
        """Streams holding a slot: submitted or running, not yet finished or cancelled."""
        return self._admission.used

    def submit(
        self,
        prompt: str | np.ndarray,
        params: SamplingParams | None = None,
        *,
        n: int = 1,
        first_index: int = 0,
        request_id: str | None = None,
    ) -> list[Stream]:
        """Queue `n` generations of `prompt` (text, or ids from `encode_prompt`); they join the
        batch at the next round. Stream i draws from a generator seeded by (seed, first_index
        + i), or from fresh entropy without a seed. Raises CapacityError when `n` more streams
        would exceed `max_streams`."""
        params = params or SamplingParams()
        problem = params.problem()
        if problem is not None:
            raise OptionError(problem[1])
        if not isinstance(n, int) or n < 1:
            raise OptionError(f"n must be >= 1, got {n}")
        ids = self.encode_prompt(prompt) if isinstance(prompt, str) else np.asarray(prompt)
        request_id = request_id or f"gen-{next(self._ids)}"
        streams = []
        for i in range(first_index, first_index + n):
            seed = [params.seed, i] if params.seed is not None else None
            rng = np.random.default_rng(seed)  # None: fresh entropy from the OS
            scores = None if params.logprobs is None else TokenLogprobs()
            decode = self.vocab.stream_decoder()
            streams.append(Stream(request_id, i, ids, params, rng, decode, logprobs=scores))
        self._admission.add(tuple(streams))
        return streams

    def cancel(self, stream: Stream, reason: str = "cancelled") -> None:
        """Stop a stream now with `reason`: its slot is free at once, its row leaves before
        the next step."""
        self._admission.end(stream, reason)

    # -- stepping (one thread) ---------------------------------------------------------------
    @torch.no_grad()
    def step(self) -> list[StreamEvent]:
        """One round: admit the submitted streams, sample one character for every row, drop
        the rows that finished, advance the rest by one step. Returns the round's events."""
        events: list[StreamEvent] = []
        for group in self._admission.take():
            self._admit_isolated(group, events)
        if self._rows:
            ids = self._sample()
            self._emit(ids, events)
            self._drop_finished(ids)
        if events and self.listener is not None:
            self.listener(events)
        return events

    def _admit_isolated(self, group: Sequence[Stream], events: list[StreamEvent]) -> None:
        try:
            self._admit(group, events)
        except Exception as e:  # this request's prompt or options: it fails alone
            for s in group:
                self._fail(s, e, events)

    def _admit(self, group: Sequence[Stream], events: list[StreamEvent]) -> None:
        """Run the group's shared prompt through the model (scoring it, if asked); its live
        streams join the batch (those with max_tokens 0 finish here)."""
        live = [s for s in group if not s.done]
        if not any(s.params.max_tokens or s.params.prompt_logprobs is not None for s in live):
            for s in live:  # nothing to generate or score: no pass
                self._admission.end(s, "length")
                events.append(StreamEvent(s, "", "length"))
            return
        p = live[0].params
        # bounded here, before torch sees them: a top_k beyond the vocabulary means "off"
        options = (float(p.temperature), min(int(p.top_k), self.vocab_size), float(p.top_p))
        ids = group[0].prompt_ids
        if len(ids) == 0:
            ids = self._context_only  # a newline as context, as `charlstm sample` starts
        tokens = torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64)).to(self.device)
        logits, (h, c) = self.model(tokens[:, None])  # the whole prompt in one pass
        self._score_prompt(live, logits, tokens)
        for s in live:
            if s.params.max_tokens == 0:
                self._admission.end(s, "length")
                events.append(StreamEvent(s, "", "length"))
        live = [s for s in live if not s.done]
        if not live:
            return
        n = len(live)
        self._step.join((h.expand(-1, n, -1), c.expand(-1, n, -1)))
        self._logits = torch.cat([self._logits, logits[-1].float().expand(n, -1)])
        self._rows = self._rows + live
        self._row_options = self._row_options + [options] * n
        self._row_params = None

    def _score_prompt(self, live: list[Stream], logits: torch.Tensor, tokens: torch.Tensor) -> None:
        scored = [s for s in live if s.params.prompt_logprobs is not None]
        prompt_ids = live[0].prompt_ids
        if scored and len(prompt_ids):
            k = max(s.params.prompt_logprobs for s in scored)
            ends = text_ends(prompt_ids, self.vocab.level)
            scores = prompt_scores(logits[:, 0], tokens, k, ends)
            for s in scored:
                s.prompt_logprobs = scores

    def _sample(self) -> torch.Tensor:
        """One id per row, all rows in one vectorised pass; if that fails, row by row, so
        that only the rows that fail are lost (they get id -1 and are ended by `_emit`)."""
        try:
            uniforms = [s.next_uniform() for s in self._rows]
            *params, kinds = self._params()
            return sample_rows(self._logits, *params, self._tensor(uniforms), kinds)
        except Exception:
            return torch.stack([self._sample_row(r) for r in range(len(self._rows))])

    def _sample_row(self, r: int) -> torch.Tensor:
        s = self._rows[r]
        try:
            t, k, p = (self._tensor([x]) for x in self._row_options[r])
            return sample_rows(self._logits[r : r + 1], t, k.long(), p,
                               self._tensor([s.next_uniform()]))[0]  # fmt: skip
        except Exception as e:
            s.error = f"{type(e).__name__}: {e}"
            self._report(s, e)
            return torch.tensor(-1, device=self.device)

    def _emit(self, ids: torch.Tensor, events: list[StreamEvent]) -> None:
        """Decode each row's character, check its stops and length; a row that fails ends alone."""
        ids_np = ids.cpu().numpy()
        scores = self._scores(ids)
        for r, s in enumerate(self._rows):
            if s.done:  # cancelled since the last round
                continue
            try:
                if ids_np[r] < 0:
                    raise RuntimeError(s.error or "sampling failed")
                piece = s.decode(ids_np[r : r + 1])
                if scores is not None and s.logprobs is not None:
                    k = s.params.logprobs
                    lp, top_ids, top_lps = (column[r] for column in scores)
                    s.logprobs.append(int(ids_np[r]), lp, top_ids[:k], top_lps[:k], len(piece))
                text, finish = s.advance(piece)
            except Exception as e:
                self._fail(s, e, events)
                continue
            if finish is not None:
                self._admission.end(s, finish)
            if text or finish:
                events.append(StreamEvent(s, text, finish))

    def _drop_finished(self, ids: torch.Tensor) -> None:
        """Finished and cancelled rows leave; the rest take one step."""
        rows = self._rows
        keep = [r for r, s in enumerate(rows) if not s.done]
        if len(keep) < len(rows):
            index = torch.tensor(keep, dtype=torch.long, device=self.device)
            self._step.keep(index)
            ids = ids.index_select(0, index)
            self._rows = [rows[r] for r in keep]
            self._row_options = [self._row_options[r] for r in keep]
            self._row_params = None
        if self._rows:
            try:
                self._logits = self._step(ids)
                self.steps += 1
            except Exception as e:  # not one row's doing: every running stream ends
                self._fail_all(e)
        else:
            self._logits = self._logits[:0]

    def _scores(self, ids: torch.Tensor) -> tuple[list, list, list] | None:
        """The sampled ids' log-probabilities and top alternatives, when a row keeps them."""
        ks = [s.params.logprobs for s in self._rows if s.params.logprobs is not None]
        if not ks:
            return None
        return score_tokens(self._logits, ids.clamp(min=0), max(ks))  # (-1: a failed row)

    def _params(self) -> tuple:
        """Per-row temperature, top-k and top-p tensors and `sample_rows`'s kinds (rebuilt
        when the batch changes)."""
        if self._row_params is None:
            t, k, p = zip(*self._row_options, strict=True)
            greedy = [x < MIN_TEMPERATURE for x in t]
            filters = any(0 < x < self.vocab_size for x in k) or any(x < 1 for x in p)
            kinds = (any(greedy), all(greedy), filters)
            self._row_params = (self._tensor(t), self._tensor(k).long(), self._tensor(p), kinds)
        return self._row_params

    def _tensor(self, values) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32, device=self.device)

    def _fail(self, s: Stream, e: Exception, events: list[StreamEvent]) -> None:
        self._admission.end(s, "error", s.error or f"{type(e).__name__}: {e}")
        events.append(StreamEvent(s, "", "error"))
        self._report(s, e)

    def _report(self, s: Stream | None, e: Exception) -> None:
        self.error = e
        if self.on_error is not None:
            self.on_error(s, e)

    def _fail_all(self, e: Exception) -> None:
        events: list[StreamEvent] = []
        for s in self._rows + [s for g in self._admission.take() for s in g]:
            if not s.done:
                self._admission.end(s, "error", f"{type(e).__name__}: {e}")
                events.append(StreamEvent(s, "", "error"))
            self._admission.end(s, "error")  # frees the slot of a cancelled row too
        self._rows, self._row_options, self._row_params = [], [], None
        self._step.keep(torch.zeros(0, dtype=torch.long, device=self.device))
        self._logits = self._logits[:0]
        self._report(None, e)
        if events and self.listener is not None:
            self.listener(events)

    def run_until_done(self, streams: Sequence[Stream] | None = None) -> None:
        """Step in this thread until `streams` (default: every stream) have finished."""
        while True:
            pending = self._admission.pending()
            waiting = streams if streams is not None else self._rows + pending
            if all(s.done for s in waiting) and (streams is not None or not pending):
                return
            self.step()

    def generate(self, prompt: str, params: SamplingParams | None = None, n: int = 1) -> list[str]:
        """Submit and step in this thread until done (no worker): the texts of the n streams."""
        streams = self.submit(prompt, params, n=n)
        self.run_until_done(streams)
        return [s.text for s in streams]

    # -- the worker thread --------------------------------------------------------------------
    def start(self) -> None:
        """Step in a daemon thread whenever there is work, until `close()`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="charlstm-batch", daemon=True)
            self._thread.start()

    def _work(self) -> None:
        while self._admission.wait_for_work(lambda: bool(self._rows)):
            try:
                self.step()
            except Exception as e:  # a bug outside any one row: end every stream, go on
                self._fail_all(e)

    def close(self) -> None:
        """Stop the worker thread (running streams stay as they are)."""
        self._admission.close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
