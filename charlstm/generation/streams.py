"""What one generation is: its options (`SamplingParams`), its text and randomness (`Stream`),
what it hands out (`StreamEvent`), and the thread-safe side of a scheduler that streams join and
leave through (`Admission`: slots, the groups waiting to join, the end of streams).

A stream draws its randomness from its own generator (seeded by its request), exactly one
uniform number per character, so that a seeded request writes the same text whatever else
shares the batch (`stepping.py` turns each number into a character).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from charlstm.errors import CharLSTMError
from charlstm.generation.logprobs import MAX_LOGPROBS, TokenLogprobs

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
