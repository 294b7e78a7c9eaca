"""The request/stream core of `charlstm serve`, under the routes: admission of a checked request
into the scheduler, the text of its streams on the way out, and the end of every request
(finished, client gone, or the server shutting down).

The scheduler's worker thread only appends to each stream's text; the event loop reads it at
its own pace. A streaming response polls its streams every `flush_s(active streams)` and sends
all the text that is ready for each choice in one server-sent event, so a client gets at most
50 events a second however fast the model writes, and the HTTP side (this server's and the
client's) costs per event, not per character. With many streams open the interval grows, up to
`MAX_FLUSH_S`: the events of 32 streams, not their characters, are what competes with the
model for the CPU.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from charlstm.errors import CharLSTMError
from charlstm.generation.batching import BatchScheduler, CapacityError, Stream
from charlstm.serving.limits import ServeLimits
from charlstm.serving.prompts import PromptEncoder
from charlstm.serving.protocol import APIError, CompletionRequest
from charlstm.serving.scoring import LogprobsWriter

FIRST_POLL_S = 0.002  # until a request's first text: its latency
FLUSH_S = 0.02  # then: how long text may wait to be sent with more, for up to 4 streams
MAX_FLUSH_S = 0.2


def flush_s(active_streams: int) -> float:
    """How long a stream's text may wait to be sent with more, when `active_streams` run."""
    return min(MAX_FLUSH_S, FLUSH_S * max(1.0, active_streams / 4))


log = logging.getLogger("charlstm.serve")


@dataclass(eq=False)
class Job:
    """One completions request in flight: its streams, and how much of their text is sent."""

    id: str
    created: int
    model: str
    request: CompletionRequest
    prompt_ids: list
    streams: list[Stream]
    vocab: object
    sent: dict = field(default_factory=dict)  # stream -> characters handed out
    reported: set = field(default_factory=set)  # streams whose finish_reason went out
    cut: bool = False  # ended by the server's shutdown
    active: Callable[[], int] = lambda: 1  # streams running on the server
    chars: int = 0  # characters handed out, all streams

    def __post_init__(self) -> None:
        # what echo writes: the prompt as the model read it (its ids decoded)
        self.prompt_texts = [self.vocab.decode(ids) if len(ids) else "" for ids in self.prompt_ids]
        self.scores: dict[Stream, LogprobsWriter] = {}

    def add(self, streams: list[Stream]) -> None:
        self.streams += streams
        echo = self.request.echo
        for s in streams:
            if s.params.logprobs is not None:
                chars = len(self.prompt_of(s)) if echo else 0
                self.scores[s] = LogprobsWriter(self.vocab, s.prompt_logprobs, s.logprobs, chars)

    def logprobs(self, s: Stream, echo: bool, chars: int | None = None, finish=None):
        """The choice's logprobs (None without): the prompt's (`echo`), those of the text's
        first `chars` characters not written yet (with the event's `finish` reason), or with
        `chars` None all of them, for the whole response."""
        writer = self.scores.get(s)
        if writer is None:
            return None
        writer.prompt = s.prompt_logprobs or writer.prompt  # set once the prompt has run
        if chars is None:
            return writer.whole(self.request.echo, len(s.text), s.finish_reason == "length")
        return writer.echo() if echo else writer.more(chars, finish == "length")

    def take(self) -> list[tuple[Stream, str, str | None]]:
        """Each stream's text since the last call, and its finish reason once it is over."""
        pieces = []
        for s in self.streams:
            if s in self.reported:
                continue
            reason = s.finish_reason  # read before the text: the text is complete once set
            start = self.sent.get(s, 0)
            text = s.text[start:]
            self.sent[s] = start + len(text)
            self.chars += len(text)
            if reason is not None:
                self.reported.add(s)
            if text or reason is not None:
                pieces.append((s, text, reason))
        return pieces

    @property
    def over(self) -> bool:
        return len(self.reported) == len(self.streams)

    async def rounds(self):
        """Batches of (stream, text, finish reason) as the text becomes ready."""
        wait = FIRST_POLL_S
        while not self.over:
            pieces = self.take()
            if pieces:
                yield pieces
                wait = flush_s(self.active())
            if not self.over:
                await asyncio.sleep(wait)

    def _prefix(self) -> str:
        return (f'data: {{"id":"{self.id}","object":"text_completion","created":{self.created},'
                f'"model":{json.dumps(self.model)},"choices":[')  # fmt: skip

    async def events(self):
        """The server-sent events of a streaming response: all the text ready for a choice in
        one event (lean: id, object, created, model, and each choice's index, text and
        finish_reason), then [DONE]."""
        prefix = self._prefix()
        # with echo, a choice starts with its prompt when its first event comes (its prompt
        # has run through the model then, so its scores are there for logprobs)
        echo = set(self.streams) if self.request.echo else set()
        async for pieces in self.rounds():
            chunks = []
            for s, text, reason in pieces:
                if s in echo:
                    echo.discard(s)
                    scores = self.logprobs(s, echo=True, chars=0)
                    chunks.append(_chunk_choice(s.index, self.prompt_of(s), None, scores))
                scores = self.logprobs(s, False, self.sent[s], reason)
                chunks.append(_chunk_choice(s.index, text, reason, scores))
            yield "".join(f"{prefix}{chunk}]}}\n\n" for chunk in chunks)
        if self.request.include_usage:
            yield f'{prefix}],"usage":{json.dumps(self.usage())}}}\n\n'
        yield "data: [DONE]\n\n"

    def usage(self) -> dict:
        prompt = sum(len(ids) for ids in self.prompt_ids) * self.request.n
        completion = sum(s.tokens for s in self.streams)
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion}  # fmt: skip

    def prompt_of(self, s: Stream) -> str:
        return self.prompt_texts[s.index // self.request.n]

    def response(self) -> dict:
        choices = []
        for s in self.streams:
            text = (self.prompt_of(s) if self.request.echo else "") + s.text
            choices.append({"text": text, "index": s.index, "logprobs": self.logprobs(s, False),
                            "finish_reason": s.finish_reason})  # fmt: skip
        return {"id": self.id, "object": "text_completion", "created": self.created,
                "model": self.model, "choices": choices, "usage": self.usage()}  # fmt: skip


def _chunk_choice(index: int, text: str, reason: str | None, logprobs: dict | None = None) -> str:
    # finish_reason is always there (OpenAI's types require it); logprobs only when asked for
    end = f'"{reason}"' if reason is not None else "null"
    scores = f',"logprobs":{json.dumps(logprobs)}' if logprobs is not None else ""
    text = json.dumps(text, ensure_ascii=False)
    return f'{{"index":{index},"text":{text}{scores},"finish_reason":{end}}}'


class ServingCore:
    """What every route shares: the scheduler, the limits, the key, the requests in flight,
    and the shutdown that ends them all."""

    def __init__(
        self,
        scheduler: BatchScheduler,
        model_name: str,
        api_key: str | None,
        limits: ServeLimits,
        encoder: PromptEncoder,
    ) -> None:
        self.scheduler = scheduler
        self.encoder = encoder
        self.model_name = model_name
        self.api_key = api_key
        self.limits = limits
        self.jobs: set[Job] = set()
        self.draining = False
        scheduler.on_error = self._on_error

    @staticmethod
    def _on_error(stream: Stream | None, error: Exception) -> None:  # on the worker thread
        who = f"stream {stream.request_id}/{stream.index}" if stream else "the batch"
        log.error("%s failed: %s: %s", who, type(error).__name__, error)

    def authorize(self, headers) -> None:
        if self.api_key is None:
            return
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise APIError(
                401,
                "an API key is required: send the header 'Authorization: Bearer KEY'",
                code="invalid_api_key",
            )
        if not hmac.compare_digest(given.strip().encode(), self.api_key.encode()):
            raise APIError(401, "incorrect API key provided", code="invalid_api_key")

    def check_open(self) -> None:
        if self.draining:
            raise APIError(503, "the server is shutting down; retry on another one",
                           code="server_shutting_down", kind="server_error")  # fmt: skip

    def start(self, req: CompletionRequest, prefix: str = "cmpl") -> Job:
        """Encode the prompts and submit every stream; a 400 or 429 frees what was taken.
        `prefix` starts the request's id (chat's are "chatcmpl")."""
        self.check_open()
        prompt_ids = [self.encoder.prompt(p) for p in req.prompts]
        job = Job(f"{prefix}-{uuid.uuid4().hex}", int(time.time()), self.model_name, req,
                  prompt_ids, [], self.scheduler.vocab)  # fmt: skip
        job.active = lambda: self.scheduler.active
        try:
            for p, ids in enumerate(prompt_ids):
                job.add(self.scheduler.submit(
                    ids, req.params, n=req.n, first_index=p * req.n, request_id=job.id
                ))  # fmt: skip
        except CapacityError as e:
            self.release(job)
            raise APIError(429, str(e), code="rate_limit_exceeded", kind="requests") from None
        except CharLSTMError as e:
            self.release(job)
            raise APIError(400, str(e)) from None
        self.jobs.add(job)
        return job

    def release(self, job: Job) -> None:
        """The request is over (done, client gone, or cut): free what it still holds."""
        for s in job.streams:
            if not s.done:
                self.scheduler.cancel(s)
        self.jobs.discard(job)

    async def complete(self, job: Job, receive, view=None) -> dict:
        """A non-streaming request's answer, written by `view` (None: a completions response;
        chat.py's `ChatView` writes chat's); stops early if its client disconnects (then the
        answer goes nowhere) or the server cuts it (503)."""

        async def disconnected() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        collect = asyncio.ensure_future(_drain(job.rounds()))
        gone = asyncio.ensure_future(disconnected())
        try:
            await asyncio.wait([collect, gone], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (collect, gone):
                task.cancel()
            self.release(job)
        if job.cut:
            raise APIError(503, "the server shut down before this request finished",
                           code="server_shutting_down", kind="server_error")  # fmt: skip
        if not job.over:  # nobody to answer: 499, as nginx logs it
            raise APIError(499, "the client disconnected", code="client_disconnected")
        failed = [s.error for s in job.streams if s.finish_reason == "error"]
        if failed:
            raise APIError(500, f"generation failed: {failed[0]}", kind="server_error")
        return job.response() if view is None else view.response(job)

    async def shutdown(self, grace_s: float) -> None:
        """Refuse new requests; give running ones `grace_s` to finish, then cut them: a stream
        ends with finish_reason "length" and [DONE], a waiting request gets a 503."""
        self.draining = True
        deadline = time.monotonic() + grace_s
        while self.jobs and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for job in list(self.jobs):
            job.cut = True
            for s in job.streams:
                if not s.done:
                    self.scheduler.cancel(s, "length" if job.request.stream else "cancelled")
        if self.jobs:
            log.warning("shutting down: cut %d request(s) still running after %.0f s",
                        len(self.jobs), grace_s)  # fmt: skip


async def _drain(rounds) -> None:
    async for _ in rounds:
        pass
