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

Three parts: what a stream is and the thread-safe admission (`streams.py`), the batch of rows
that a round steps (`stepping.py`), and here the scheduler that joins them. Plain Python, no
HTTP: `submit` requests, then call `step()` yourself or `start()` a worker thread that steps
while there is work; text arrives through the listener (or `Stream.text`).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from charlstm.errors import OptionError
from charlstm.generation.logprobs import TokenLogprobs
from charlstm.generation.sampling import DTYPES
from charlstm.generation.stepping import Batch, sample_rows
from charlstm.generation.streams import (
    MAX_SEED,
    MIN_TEMPERATURE,
    Admission,
    CapacityError,
    SamplingParams,
    Stream,
    StreamEvent,
)

__all__ = [  # the generation API, wherever each part lives
    "MAX_SEED", "MIN_TEMPERATURE", "Admission", "BatchScheduler", "CapacityError",
    "SamplingParams", "Stream", "StreamEvent", "sample_rows",
]  # fmt: skip


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
        threads: int | None = None,
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
        # the worker's CPU threads: None as torch has them, N, or 0 chosen by timing the
        # steps (`runtime.ThreadTuner`); `on_threads(tuner)` hears each choice
        self.threads = threads
        self.on_threads: Callable[[object], None] | None = None
        self.error: Exception | None = None  # the last failure (a row's or a round's)
        self._admission = Admission(max_streams)
        self.batch = Batch(self.model, self.vocab, self._admission, DTYPES[dtype], self._report)
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None

    # -- requests (any thread) --------------------------------------------------------------
    def encode_prompt(self, prompt: str) -> np.ndarray:
        """The prompt's ids; unknown characters raise CharLSTMError naming them."""
        if not prompt:
            return np.zeros(0, np.int64)
        return self.vocab.encode(prompt, what="the prompt", hint="remove them from the prompt")

    @property
    def steps(self) -> int:
        """Batch steps taken."""
        return self.batch.steps

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
            self.batch.admit(group, events)
        if self.batch.rows:
            self.batch.round(events)
        if events and self.listener is not None:
            self.listener(events)
        return events

    def _report(self, s: Stream | None, e: Exception) -> None:
        self.error = e
        if self.on_error is not None:
            self.on_error(s, e)

    def _fail_all(self, e: Exception) -> None:
        events: list[StreamEvent] = []
        self.batch.fail_all(e, events)
        if events and self.listener is not None:
            self.listener(events)

    def run_until_done(self, streams: Sequence[Stream] | None = None) -> None:
        """Step in this thread until `streams` (default: every stream) have finished."""
        while True:
            pending = self._admission.pending()
            waiting = streams if streams is not None else self.batch.rows + pending
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
        tuner = self._thread_tuner()
        while self._admission.wait_for_work(lambda: bool(self.batch.rows)):
            rows = len(self.batch.rows)
            if tuner is not None:
                tuner.skip()  # the wait was not work
            try:
                self.step()
            except Exception as e:  # a bug outside any one row: end every stream, go on
                self._fail_all(e)
            if tuner is not None and rows:
                tuner.tick(rows)  # the characters of this round

    def _thread_tuner(self):
        """On the worker thread (torch's thread count is per thread): apply `threads`, or with
        0 on a CPU return the tuner that times the worker's rounds."""
        from charlstm.runtime import ThreadTuner, apply_threads

        if self.threads is None or self.device.type != "cpu":
            return None
        if self.threads:
            apply_threads(self.threads)
            return None
        return ThreadTuner(on_choice=self.on_threads)

    def close(self) -> None:
        """Stop the worker thread (running streams stay as they are)."""
        self._admission.close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
