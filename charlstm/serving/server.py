"""`charlstm serve`: an OpenAI-compatible completions server over a `BatchScheduler`.

`POST /v1/completions` (prompt, max_tokens, temperature, top_p, seed, n, stop, echo, stream as
server-sent events, stream_options.include_usage; plus charlstm's `top_k`) and `GET /v1/models`
speak OpenAI's protocol, so the official `openai` client and curl work unchanged; `GET /` is a
playground page. A token is one character (or one byte, for a byte-level model).

Every generation is one row of the scheduler's shared batch, stepped by its worker thread; the
event loop only parses requests and writes text. The worker hands each round's text to the loop
in one call, and a streaming response sends whatever has piled up for it in one write, so the
HTTP side costs per write, not per character.

Safe by default: 127.0.0.1 unless told otherwise; with an API key, every /v1 request must carry
it (compared in constant time); limits on body size, prompt length, max_tokens, n and concurrent
streams, each refused with a 4xx JSON error in OpenAI's shape; a client that goes away frees its
streams at once. FastAPI and uvicorn are imported only here (the `serve` extra).
"""

# no `from __future__ import annotations`: FastAPI reads the handlers' annotations (Request)
import asyncio
import contextlib
import hmac
import json
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from charlstm.errors import CharLSTMError, OptionError
from charlstm.generation.batching import BatchScheduler, CapacityError, SamplingParams, Stream
from charlstm.serving.chat import (
    CHAT_FIELDS,
    ChatTemplate,
    ChatView,
    chat_messages,
    default_template,
    parse_chat,
)
from charlstm.serving.limits import ServeLimits
from charlstm.serving.prompts import PromptEncoder, parse_prompts
from charlstm.serving.protocol import APIError
from charlstm.serving.scoring import MAX_COMPLETION_LOGPROBS, LogprobsWriter
from charlstm.serving.tokenizer import detokenize, tokenize, tokenizer_info

API_KEY_ENV = "CHARLSTM_API_KEY"
# fields of OpenAI's completions request we accept (the ones we cannot honour must keep their
# neutral value); anything else is refused, as OpenAI refuses it, so a typo is never ignored
FIELDS = {
    "model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "seed", "n", "stop",
    "stream", "stream_options", "echo", "user", "logprobs", "best_of", "suffix",
    "presence_penalty", "frequency_penalty", "logit_bias",
}  # fmt: skip
MAX_STOP = 4  # OpenAI's limit on stop sequences


@dataclass
class CompletionRequest:
    """A parsed, checked completions request."""

    prompts: list[str | list[int]]  # text, or the model's token ids
    params: SamplingParams
    n: int = 1
    stream: bool = False
    echo: bool = False
    include_usage: bool = False


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _typed(body: dict, name: str, default, check: Callable[[object], bool], kind: str):
    value = body.get(name)
    if value is None:
        return default
    if not check(value):
        raise APIError(400, f"{name} must be {kind}, got {json.dumps(value)[:80]}", name)
    return value


def load_body(raw: bytes, fields: set[str], model_name: str) -> dict:
    """A request body as a JSON object of known fields, naming this server's model."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise APIError(400, f"the body is not valid JSON ({str(e)[:200]})") from None
    if not isinstance(body, dict):
        raise APIError(400, "the body must be a JSON object")
    unknown = sorted(set(body) - fields)
    if unknown:
        name = unknown[0][:80]
        raise APIError(400, f"unrecognized request argument supplied: {name}", name)
    model = body.get("model")
    if not isinstance(model, str):
        raise APIError(400, "model is required: a string, see GET /v1/models", "model")
    if model != model_name:
        raise APIError(
            404,
            f"the model {model[:80]!r} does not exist; this server has {model_name!r}",
            "model",
            "model_not_found",
        )
    return body


def check_prompt_length(longest: int, limits: ServeLimits) -> None:
    if longest > limits.max_prompt_chars:
        raise APIError(
            400,
            f"the prompt has {longest} characters; this server takes at most "
            f"{limits.max_prompt_chars}",
            "prompt",
            "context_length_exceeded",
        )


def read_max_tokens(body: dict, name: str, default: int, limits: ServeLimits) -> int:
    max_tokens = _typed(body, name, default, _is_int, "an integer")
    if not 0 <= max_tokens <= limits.max_tokens:
        raise APIError(400, f"{name} must be from 0 to {limits.max_tokens}, got {max_tokens}", name)
    return max_tokens


def parse_completion(raw: bytes, model_name: str, limits: ServeLimits) -> CompletionRequest:
    """Parse and check a completions request body; APIError says what is wrong and where."""
    body = load_body(raw, FIELDS, model_name)
    prompts = parse_prompts(body.get("prompt"), limits.max_prompts)
    check_prompt_length(max(len(p) for p in prompts), limits)
    max_tokens = read_max_tokens(body, "max_tokens", 16, limits)
    echo = _typed(body, "echo", False, lambda x: isinstance(x, bool), "true or false")
    # options we cannot honour are accepted only at their neutral value
    neutral = {
        "best_of": lambda x: x is None or (_is_int(x) and x == 1),
        "suffix": lambda x: x is None or x == "",
    }
    for name, is_neutral in neutral.items():
        if not is_neutral(body.get(name)):
            raise APIError(400, f"{name} is not supported by charlstm serve", name)
    logprobs = _typed(body, "logprobs", None, _is_int, "an integer")
    if logprobs is not None and not 0 <= logprobs <= MAX_COMPLETION_LOGPROBS:
        raise APIError(
            400,
            f"logprobs must be from 0 to {MAX_COMPLETION_LOGPROBS}, got {logprobs}",
            "logprobs",
        )
    return sampling_request(body, limits, prompts, max_tokens, echo=echo, logprobs=logprobs)


def sampling_request(
    body: dict,
    limits: ServeLimits,
    prompts: list,
    max_tokens: int,
    *,
    echo: bool = False,
    logprobs: int | None = None,
    stop_after: tuple[str, ...] = (),
) -> CompletionRequest:
    """The fields completions and chat share (n, stop, stream, sampling, the neutral ones),
    checked, with the prompts and max_tokens already read. `stop_after`: stop sequences of the
    server's own (the chat template's end of turn), added to the request's."""
    n = _typed(body, "n", 1, _is_int, "an integer")
    if not 1 <= n <= limits.max_n:
        raise APIError(400, f"n must be from 1 to {limits.max_n}, got {n}", "n")
    if n * len(prompts) > limits.max_streams:
        raise APIError(
            400,
            f"n x prompts is {n} x {len(prompts)}, more streams than this server runs at once "
            f"({limits.max_streams})",
            "n",
        )
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not (isinstance(stop, list) and len(stop) <= MAX_STOP and all(
            isinstance(s, str) and s for s in stop)):  # fmt: skip
        raise APIError(
            400, f"stop must be a non-empty string or a list of up to {MAX_STOP} of them", "stop"
        )
    stream = _typed(body, "stream", False, lambda x: isinstance(x, bool), "true or false")
    options = _typed(body, "stream_options", {}, lambda x: isinstance(x, dict), "an object")
    if options and not stream:
        raise APIError(400, "stream_options is only allowed with stream: true", "stream_options")
    if set(options) - {"include_usage"} or not isinstance(
        options.get("include_usage", False), bool
    ):
        raise APIError(400, "stream_options takes only include_usage: true or false",
                       "stream_options")  # fmt: skip
    _typed(body, "user", None, lambda x: isinstance(x, str), "a string")
    neutral = {
        "presence_penalty": lambda x: x is None or (_is_number(x) and x == 0),
        "frequency_penalty": lambda x: x is None or (_is_number(x) and x == 0),
        "logit_bias": lambda x: x is None or x == {},
    }
    for name, is_neutral in neutral.items():
        if not is_neutral(body.get(name)):
            raise APIError(400, f"{name} is not supported by charlstm serve", name)
    params = SamplingParams(
        logprobs=logprobs,
        prompt_logprobs=logprobs if echo else None,
        max_tokens=max_tokens,
        temperature=_typed(body, "temperature", 1.0, _is_number, "a number"),
        top_k=_typed(body, "top_k", 0, _is_int, "an integer"),
        top_p=_typed(body, "top_p", 1.0, _is_number, "a number"),
        seed=_typed(body, "seed", None, _is_int, "an integer"),
        stop=tuple(dict.fromkeys([*stop, *stop_after])),
    )
    problem = params.problem()
    if problem is not None:
        raise APIError(400, problem[1], problem[0])
    return CompletionRequest(
        prompts, params, n, stream, echo, bool(options.get("include_usage", False))
    )


def run_name(checkpoint: str | Path) -> str:
    """The model's name in the API: its run's name (the checkpoint's folder), or a model
    folder's own name."""
    path = Path(checkpoint).resolve()
    return (path.name if path.is_dir() else path.parent.name) or "charlstm"


def playground_html() -> str:
    return resources.files("charlstm.serving").joinpath("playground.html").read_text("utf-8")


def create_app(
    scheduler: BatchScheduler,
    *,
    model_name: str,
    api_key: str | None = None,
    limits: ServeLimits | None = None,
    unknown: str = "error",
    chat_template: ChatTemplate | None = None,
):
    """The ASGI app (FastAPI) over `scheduler`, whose worker it starts and stops with its
    lifespan. `unknown`: what happens to characters the vocabulary lacks (`prompts.py`);
    `chat_template`: how chats become prompts (None: the default, `chat.py`)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    limits = limits or ServeLimits()
    encoder = PromptEncoder(scheduler.vocab, unknown)
    template, chat_problem = chat_template, None
    lacks = (template or default_template()).unknown_characters(scheduler.vocab)
    shown = json.dumps(lacks, ensure_ascii=False)[:80]
    if lacks and template is not None:
        raise OptionError(
            f"the chat template writes characters this model lacks: {shown}",
            "write it with characters the model knows",
        )
    if lacks:
        chat_problem = (
            f"the default chat template writes characters this model lacks ({shown}); start "
            "charlstm serve with --chat-template FILE (see docs/serve.md)"
        )
    template = template or default_template()
    queues: dict[Stream, asyncio.Queue] = {}
    loop_box: list[asyncio.AbstractEventLoop] = []
    created = int(time.time())
    with contextlib.suppress(OSError):
        created = int(scheduler.checkpoint_path.stat().st_mtime)

    def dispatch(events) -> None:  # on the event loop: route each round's text to its request
        for event in events:
            queue = queues.get(event.stream)
            if queue is not None:
                queue.put_nowait(event)

    def listener(events) -> None:  # on the scheduler's worker thread
        if loop_box:
            loop_box[0].call_soon_threadsafe(dispatch, events)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        loop_box.append(asyncio.get_running_loop())
        scheduler.listener = listener
        scheduler.start()
        try:
            yield
        finally:
            scheduler.close()

    app = FastAPI(
        title="charlstm", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )

    @app.exception_handler(APIError)
    async def _api_error(request, error: APIError):
        headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
        return JSONResponse(error.body(), status_code=error.status, headers=headers)

    @app.exception_handler(HTTPException)
    async def _http_error(request, error: HTTPException):  # 404, 405 in the same shape
        route = f"{request.method} {request.url.path[:200]}"
        message = str(error.detail)
        if error.status_code == 404:
            message = f"no route {route} on this server; see docs/serve.md for its routes"
        elif error.status_code == 405:
            message = f"{route}: method not allowed on this route"
        error = APIError(error.status_code, message, code=None)
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(Exception)
    async def _bug(request, error: Exception):
        error = APIError(500, f"internal error: {type(error).__name__}", kind="server_error")
        return JSONResponse(error.body(), status_code=500)

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise APIError(
                401,
                "an API key is required: send the header 'Authorization: Bearer KEY'",
                code="invalid_api_key",
            )
        if not hmac.compare_digest(given.strip().encode(), api_key.encode()):
            raise APIError(401, "incorrect API key provided", code="invalid_api_key")

    async def read_body(request: Request) -> bytes:
        too_big = APIError(
            413,
            f"the request body is larger than this server's {limits.max_body_bytes} bytes",
            code="request_too_large",
        )
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
            raise too_big
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limits.max_body_bytes:
                raise too_big
        return bytes(body)

    def model_card() -> dict:
        return {"id": model_name, "object": "model", "created": created, "owned_by": "charlstm"}

    class _EventStream(StreamingResponse):
        """Server-sent events that free the request's streams however the response ends
        (finished, or the client disconnected: Starlette then cancels the sending task)."""

        def __init__(self, content, on_close: Callable[[], None]) -> None:
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            super().__init__(content, media_type="text/event-stream", headers=headers)
            self.on_close = on_close

        async def __call__(self, scope, receive, send) -> None:
            try:
                await super().__call__(scope, receive, send)
            finally:
                self.on_close()

    # the page itself needs no key; it is told whether the API does, so that it asks for the
    # key before calling the API instead of meeting a 401
    page = playground_html().replace(
        '<body data-state="loading">',
        f'<body data-state="loading" data-key-required="{str(api_key is not None).lower()}">',
    )

    @app.get("/", response_class=HTMLResponse)
    async def playground():
        return HTMLResponse(page)

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str, request: Request):
        authorize(request)
        if name != model_name:
            raise APIError(404, f"the model {name!r} does not exist", "model", "model_not_found")
        return model_card()

    def json_body(raw: bytes):
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise APIError(400, f"the body is not valid JSON ({str(e)[:200]})") from None

    # vLLM's tokenizer routes, at the root and without a key, as vLLM has them (tokenizer.py)
    @app.get("/tokenizer_info")
    async def tokenizer_info_route():
        info = tokenizer_info(encoder, limits.max_prompt_chars)
        info["chat_template"] = None if chat_problem else template.to_jinja()
        return info

    @app.post("/tokenize")
    async def tokenize_route(request: Request):
        body = json_body(await read_body(request))
        return tokenize(body, encoder, model_name, limits.max_prompt_chars, render_chat)

    def render_chat(messages, add_generation_prompt: bool = True) -> str:
        if chat_problem:
            raise APIError(400, chat_problem, "messages")
        return template.render(chat_messages(messages), add_generation_prompt)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        authorize(request)
        body = load_body(await read_body(request), CHAT_FIELDS, model_name)
        if chat_problem:
            raise APIError(400, chat_problem, "messages")
        messages, max_tokens_field = parse_chat(body)
        for i, (_, content) in enumerate(messages):  # an unknown character, named where it is
            encoder.text(content, "messages", f"messages[{i}].content")
        prompt = template.render(messages)
        check_prompt_length(len(prompt), limits)
        max_tokens = read_max_tokens(body, max_tokens_field, limits.max_tokens, limits)
        req = sampling_request(body, limits, [prompt], max_tokens, stop_after=template.stop)
        return await run_job(request, req, [encoder.text(prompt, "messages")], ChatView)

    @app.post("/detokenize")
    async def detokenize_route(request: Request):
        body = json_body(await read_body(request))
        return detokenize(body, encoder, model_name, limits.max_prompt_chars)

    @app.post("/v1/completions")
    async def completions(request: Request):
        authorize(request)
        req = parse_completion(await read_body(request), model_name, limits)
        prompt_ids = [encoder.prompt(p) for p in req.prompts]
        return await run_job(request, req, prompt_ids)

    async def run_job(request: Request, req: CompletionRequest, prompt_ids: list, view=None):
        """Submit the request's streams; stream their events or wait for their text, written
        by `view` (None: a completions response; chat.py writes chat's)."""
        cid = f"{'cmpl' if view is None else view.prefix}-{uuid.uuid4().hex}"
        queue: asyncio.Queue = asyncio.Queue()
        streams: list[Stream] = []
        try:
            for p, ids in enumerate(prompt_ids):
                group = scheduler.submit(ids, req.params, n=req.n, first_index=p * req.n,
                                         request_id=cid)  # fmt: skip
                for s in group:
                    queues[s] = queue
                streams += group
        except CapacityError as e:
            release(streams)
            raise APIError(429, str(e), code="rate_limit_exceeded", kind="requests") from None
        except CharLSTMError as e:
            release(streams)
            raise APIError(400, str(e)) from None
        job = _Job(cid, int(time.time()), model_name, req, prompt_ids, streams, queue,
                   scheduler.vocab)  # fmt: skip
        if req.stream:
            events = job.events() if view is None else view.events(job)
            return _EventStream(events, on_close=lambda: release(streams))
        try:
            await _until_done_or_gone(job, request.receive)
        finally:
            release(streams)
        if not all(s.done for s in streams) or any(s.finish_reason == "error" for s in streams):
            raise APIError(500, "generation failed", kind="server_error")
        return job.response() if view is None else view.response(job)

    def release(streams: list[Stream]) -> None:
        """The request is over (done, or its client gone): free what it still holds."""
        for s in streams:
            if not s.done:
                scheduler.cancel(s)
            queues.pop(s, None)

    return app


async def _until_done_or_gone(job: "_Job", receive) -> None:
    """Collect a non-streaming request's text; stop early if its client disconnects."""

    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    collect = asyncio.ensure_future(job.collect())
    gone = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait([collect, gone], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (collect, gone):
            task.cancel()


@dataclass
class _Job:
    """One completions request in flight: its streams and the queue their text arrives on."""

    id: str
    created: int
    model: str
    request: CompletionRequest
    prompt_ids: list
    streams: list[Stream]
    queue: asyncio.Queue
    vocab: object

    def __post_init__(self) -> None:
        # what echo writes: the prompt as the model read it (its ids decoded)
        self.prompt_texts = [self.vocab.decode(ids) if len(ids) else "" for ids in self.prompt_ids]
        self.scores = {
            s: LogprobsWriter(
                self.vocab,
                s.prompt_logprobs,
                s.logprobs,
                len(self._prompt_of(s)) if self.request.echo else 0,
            )  # fmt: skip
            for s in self.streams
            if s.params.logprobs is not None
        }

    def _chunk(self, choices: list[dict], usage: dict | None = None) -> str:
        data = {"id": self.id, "object": "text_completion", "created": self.created,
                "model": self.model, "choices": choices}  # fmt: skip
        if usage is not None:
            data["usage"] = usage
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    def usage(self) -> dict:
        prompt = sum(len(ids) for ids in self.prompt_ids) * self.request.n
        completion = sum(s.tokens for s in self.streams)
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion}  # fmt: skip

    def _prompt_of(self, s: Stream) -> str:
        return self.prompt_texts[s.index // self.request.n]

    def _logprobs(self, s: Stream, echo: bool, chars: int | None = None, finish=None):
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

    async def _rounds(self):
        """Batches of events as they arrive (all that piled up since the last batch)."""
        waiting = set(self.streams)  # each stream's last event carries its finish_reason
        while waiting:
            batch = [await self.queue.get()]
            while not self.queue.empty():
                batch.append(self.queue.get_nowait())
            for event in batch:
                if event.finish_reason is not None:
                    waiting.discard(event.stream)
            yield batch

    async def collect(self) -> None:
        async for _ in self._rounds():
            pass

    async def events(self):
        """The server-sent events of a streaming response: text as it comes, one chunk per
        choice per write, each choice's last chunk with its finish_reason, then [DONE]."""
        sent = dict.fromkeys(self.streams, 0)  # characters written, per stream
        # with echo, a choice starts with its prompt when its first event comes (its prompt
        # has run through the model then, so its scores are there for logprobs)
        echo = set(self.streams) if self.request.echo else set()
        async for batch in self._rounds():
            text: dict[Stream, str] = {}
            finish: dict[Stream, str] = {}
            for event in batch:
                text[event.stream] = text.get(event.stream, "") + event.text
                if event.finish_reason is not None:
                    finish[event.stream] = event.finish_reason
            chunks = []
            for s, piece in text.items():
                if s in echo:
                    echo.discard(s)
                    scores = self._logprobs(s, echo=True, chars=0)
                    chunks.append(self._chunk([_choice(s.index, self._prompt_of(s), None, scores)]))
                sent[s] += len(piece)
                scores = self._logprobs(s, False, sent[s], finish.get(s))
                chunks.append(self._chunk([_choice(s.index, piece, finish.get(s), scores)]))
            yield "".join(chunks)
        if self.request.include_usage:
            yield self._chunk([], self.usage())
        yield "data: [DONE]\n\n"

    def response(self) -> dict:
        choices = []
        for s in self.streams:
            text = (self._prompt_of(s) if self.request.echo else "") + s.text
            choices.append(_choice(s.index, text, s.finish_reason, self._logprobs(s, False)))
        return {"id": self.id, "object": "text_completion", "created": self.created,
                "model": self.model, "choices": choices, "usage": self.usage()}  # fmt: skip


def _choice(index: int, text: str, finish_reason: str | None, logprobs: dict | None = None) -> dict:
    return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish_reason}


def serve_available() -> bool:
    """Whether the `serve` extra (FastAPI, uvicorn) is installed."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("fastapi", "uvicorn"))


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, reuse_port=False)
    except OSError as e:
        raise CharLSTMError(
            f"cannot listen on {host}:{port}: {e.strerror or e}",
            "pass another --port (0 picks a free one)" if port else "pass another --host",
        ) from None


def serve(
    checkpoint,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    limits: ServeLimits | None = None,
    device: str = "cpu",
    dtype: str = "fp32",
    threads: int = 0,
    unknown: str = "error",
    chat_template: str | Path | None = None,
    on_ready: Callable[[dict], None] | None = None,
) -> None:
    """Serve `checkpoint` until SIGINT or SIGTERM; then stop taking connections, give running
    streams a few seconds to finish, and return. `threads`: torch's CPU threads (0: as is).
    `unknown`: characters the vocabulary lacks are refused ("error"), skipped or replaced;
    `chat_template`: a JSON file (`chat.py`) instead of the default chat template.
    `on_ready(facts)` is called once the socket listens (facts: url, model, host, port,
    api_key_required)."""
    import signal
    import threading

    if not serve_available():
        raise CharLSTMError(
            "charlstm serve needs FastAPI and uvicorn", "pip install 'charlstm[serve]'"
        )
    import uvicorn

    limits = limits or ServeLimits()
    limits.check()
    if not (isinstance(port, int) and 0 <= port <= 65535):
        raise OptionError(f"--port must be from 0 to 65535, got {port}")
    if api_key is not None and not api_key.strip():
        raise OptionError("--api-key is empty", f"pass a key, or unset {API_KEY_ENV}")
    if not isinstance(threads, int) or threads < 0:
        raise OptionError(f"--threads must be >= 0 (0: PyTorch's default), got {threads}")
    if threads:
        import torch

        # on a small shared CPU one thread often beats two: no hand-offs, no spinning
        torch.set_num_threads(threads)
    template = None if chat_template is None else ChatTemplate.load(chat_template)
    scheduler = BatchScheduler(checkpoint, device=device, dtype=dtype,
                               max_streams=limits.max_streams)  # fmt: skip
    name = run_name(scheduler.checkpoint_path)
    app = create_app(scheduler, model_name=name, api_key=api_key, limits=limits,
                     unknown=unknown, chat_template=template)  # fmt: skip
    sock = _listen(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=3,
                            access_log=False, lifespan="on")  # fmt: skip
    server = uvicorn.Server(config)
    if on_ready is not None:
        on_ready({"url": f"http://{shown}:{bound}", "model": name, "host": host, "port": bound,
                  "api_key_required": api_key is not None})  # fmt: skip
    # uvicorn catches SIGINT/SIGTERM for its graceful shutdown and afterwards re-raises them
    # to the handlers it found; these make that re-raise a no-op, so `serve` returns normally
    main = threading.current_thread() is threading.main_thread()
    previous = {}
    if main:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: None)
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
        scheduler.close()
