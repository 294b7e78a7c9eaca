"""`charlstm serve`: an OpenAI-compatible completions server, as thin routes over `ServingCore`.

`POST /v1/completions` (prompt, max_tokens, temperature, top_p, seed, n, stop, echo, stream as
server-sent events, stream_options.include_usage; plus charlstm's `top_k`) and `GET /v1/models`
speak OpenAI's protocol, so the official `openai` client and curl work unchanged; `GET /` is a
playground page. A token is one character (or one byte, for a byte-level model).

Where things live: `protocol` turns a body into a checked request (every field bounded, in one
place); `core` admits it into the scheduler and turns its streams into responses; this module
holds the routes, the access log and `serve()`, which checks its configuration before it loads
anything and shuts down gracefully. Every generation is one row of the scheduler's shared batch,
stepped by its worker thread; the event loop only parses requests and writes text.

Safe by default: 127.0.0.1 unless told otherwise; with an API key, every /v1 request must carry
it (compared in constant time); limits on body size, prompt length, max_tokens, n and concurrent
streams, each refused with a 4xx JSON error in OpenAI's shape; a client that goes away frees its
streams at once. FastAPI and uvicorn are imported only here (the `serve` extra).
"""

# no `from __future__ import annotations`: FastAPI reads the handlers' annotations (Request)
import asyncio
import contextlib
import functools
import ipaddress
import json
import logging
import socket
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from charlstm.errors import CharLSTMError, OptionError
from charlstm.generation.batching import BatchScheduler
from charlstm.serving.chat import (
    CHAT_FIELDS,
    ChatTemplate,
    ChatView,
    chat_messages,
    default_template,
    parse_chat,
)
from charlstm.serving.core import Job, ServingCore
from charlstm.serving.limits import ServeLimits
from charlstm.serving.prompts import PromptEncoder
from charlstm.serving.protocol import (
    APIError,
    Body,
    check_model,
    check_prompt_length,
    load_json,
    parse_completion,
    sampling_request,
)
from charlstm.serving.tokenizer import detokenize, tokenize, tokenizer_info

__all__ = ["APIError", "ServeLimits", "create_app", "serve", "serve_available", "run_name"]
API_KEY_ENV = "CHARLSTM_API_KEY"
GRACE_S = 3.0  # how long running requests may finish after SIGTERM / SIGINT
access_log = logging.getLogger("charlstm.serve.access")
threads_log = logging.getLogger("charlstm.serve.threads")  # --quiet hides it too
log = logging.getLogger("charlstm.serve")


def run_name(checkpoint: str | Path) -> str:
    """The model's name in the API: its run's name (the checkpoint's folder), or a model
    folder's own name."""
    path = Path(checkpoint).resolve()
    return (path.name if path.is_dir() else path.parent.name) or "charlstm"


def playground_html() -> str:
    return resources.files("charlstm.serving").joinpath("playground.html").read_text("utf-8")


class AccessLog:
    """ASGI middleware: one line per request on the `charlstm.serve.access` logger — client,
    method, path, status, characters sent, seconds — and, for a 4xx, its reason."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        note = scope.setdefault("state", {})
        status = [500]
        t0 = time.perf_counter()

        async def send_status(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            client = (scope.get("client") or ("-",))[0]
            reason = note.get("reason")
            access_log.info(
                "%s %s %s %d %d chars %.3f s%s", client, scope["method"], scope["path"],
                status[0], note.get("chars", 0), time.perf_counter() - t0,
                f": {reason}" if reason else "",
            )  # fmt: skip


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
    `chat_template`: how chats become prompts (None: the default, `chat.py`).
    `app.state.core` is its `ServingCore` (`await core.shutdown(grace_s)` ends every request
    gracefully)."""
    from fastapi import FastAPI

    limits = limits or ServeLimits()
    encoder = PromptEncoder(scheduler.vocab, unknown)
    core = ServingCore(scheduler, model_name, api_key, limits, encoder)
    chat = _chat_template(chat_template, scheduler.vocab)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        scheduler.start()
        try:
            yield
        finally:
            scheduler.close()

    app = FastAPI(
        title="charlstm", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.core = core
    app.add_middleware(AccessLog)
    _error_handlers(app)
    _info_routes(app, core, chat)
    _generation_routes(app, core, chat)
    return app


def _error_handlers(app) -> None:
    """Every refusal in OpenAI's shape, its reason noted for the access log."""
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    def refuse(request, error: APIError):
        request.state.reason = error.message
        headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
        return JSONResponse(error.body(), status_code=error.status, headers=headers)

    @app.exception_handler(APIError)
    async def _api_error(request, error: APIError):
        return refuse(request, error)

    @app.exception_handler(HTTPException)
    async def _http_error(request, error: HTTPException):  # 404, 405 in the same shape
        route = f"{request.method} {request.url.path[:200]}"
        message = str(error.detail)
        if error.status_code == 404:
            message = f"no route {route} on this server; see docs/serve.md for its routes"
        elif error.status_code == 405:
            message = f"{route}: method not allowed on this route"
        return refuse(request, APIError(error.status_code, message))


def _info_routes(app, core: ServingCore, chat: tuple) -> None:
    """The playground, the model list and vLLM's tokenizer routes (at the root and without a
    key, as vLLM has them; tokenizer.py)."""
    from fastapi import Request
    from fastapi.responses import HTMLResponse

    template, chat_problem = chat
    limits, encoder, name = core.limits, core.encoder, core.model_name
    created = int(time.time())
    with contextlib.suppress(OSError):
        created = int(core.scheduler.checkpoint_path.stat().st_mtime)
    card = {"id": name, "object": "model", "created": created, "owned_by": "charlstm"}
    # the page itself needs no key; it is told whether the API does, so that it asks for the
    # key before calling the API instead of meeting a 401
    page = playground_html().replace(
        '<body data-state="loading">',
        f'<body data-state="loading" data-key-required="{str(core.api_key is not None).lower()}">',
    )

    @app.get("/", response_class=HTMLResponse)
    async def playground():
        return HTMLResponse(page)

    @app.get("/v1/models")
    async def models(request: Request):
        core.authorize(request.headers)
        return {"object": "list", "data": [card]}

    @app.get("/v1/models/{model:path}")
    async def model(model: str, request: Request):
        core.authorize(request.headers)
        if model != name:
            raise APIError(404, f"the model {model!r} does not exist", "model", "model_not_found")
        return card

    @app.get("/tokenizer_info")
    async def tokenizer_info_route():
        info = tokenizer_info(encoder, limits.max_prompt_chars)
        info["chat_template"] = None if chat_problem else template.to_jinja()
        return info

    def render_chat(messages, add_generation_prompt: bool = True) -> str:
        if chat_problem:
            raise APIError(400, chat_problem, "messages")
        return template.render(chat_messages(messages), add_generation_prompt)

    @app.post("/tokenize")
    async def tokenize_route(request: Request):
        body = load_json(await read_body(request, limits), limits)
        return tokenize(body, encoder, name, limits.max_prompt_chars, render_chat)

    @app.post("/detokenize")
    async def detokenize_route(request: Request):
        body = load_json(await read_body(request, limits), limits)
        return detokenize(body, encoder, name, limits.max_prompt_chars)


def _generation_routes(app, core: ServingCore, chat: tuple) -> None:
    """`/v1/completions` and `/v1/chat/completions`: a checked request into the core, its
    streams out as events or one answer."""
    from fastapi import Request

    template, chat_problem = chat
    limits, name, vocab_size = core.limits, core.model_name, core.scheduler.vocab_size

    @app.post("/v1/completions")
    async def completions(request: Request):
        core.authorize(request.headers)
        core.check_open()
        req = parse_completion(await read_body(request, limits), name, limits, vocab_size)
        return await run(request, core.start(req))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        core.authorize(request.headers)
        core.check_open()
        body = Body(load_json(await read_body(request, limits), limits), frozenset(CHAT_FIELDS))
        check_model(body, name)
        if chat_problem:
            raise APIError(400, chat_problem, "messages")
        messages, max_tokens_field = parse_chat(body.data)
        for i, (_, content) in enumerate(messages):  # an unknown character, named where it is
            core.encoder.text(content, "messages", f"messages[{i}].content")
        prompt = template.render(messages)
        check_prompt_length(len(prompt), limits)
        max_tokens = body.integer(max_tokens_field, limits.max_tokens, 0, limits.max_tokens)
        req = sampling_request(body, limits, vocab_size, [prompt], max_tokens,
                               stop_after=template.stop)  # fmt: skip
        return await run(request, core.start(req, ChatView.prefix), ChatView)

    async def run(request: Request, job: Job, view=None):
        """Stream the job's events, or wait for its answer; written by `view` (None: a
        completions response, `ChatView`: chat's)."""
        if job.request.stream:
            events = job.events() if view is None else view.events(job)
            return _event_stream()(job, core, request.state, events)
        answer = await core.complete(job, request.receive, view)
        request.state.chars = job.chars
        return answer


async def read_body(request, limits: ServeLimits) -> bytes:
    """The request's body, refused (413) as soon as it is longer than the limit; a client
    that goes away mid-upload is a 499 (for the access log: nobody reads the answer)."""
    from starlette.requests import ClientDisconnect

    too_big = APIError(
        413,
        f"the request body is larger than this server's {limits.max_body_bytes} bytes",
        code="request_too_large",
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise too_big
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limits.max_body_bytes:
                raise too_big
    except ClientDisconnect:
        raise APIError(499, "the client disconnected during the upload",
                       code="client_disconnected") from None  # fmt: skip
    return bytes(body)


@functools.cache
def _event_stream():
    """The response class of server-sent events (Starlette is imported only when serving)."""
    from fastapi.responses import StreamingResponse

    class EventStream(StreamingResponse):
        """Server-sent events that free the request's streams however the response ends
        (finished, cut, or the client disconnected: Starlette then cancels the sending task)."""

        def __init__(self, job: Job, core: ServingCore, note, events) -> None:
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            super().__init__(events, media_type="text/event-stream", headers=headers)
            self.job, self.core, self.note = job, core, note

        async def __call__(self, scope, receive, send) -> None:
            try:
                await super().__call__(scope, receive, send)
            except OSError:  # the client went away mid-write: its access line says so
                pass
            finally:
                if not self.job.over:
                    self.note.reason = "the client disconnected"
                self.note.chars = self.job.chars
                self.core.release(self.job)

    return EventStream


def _chat_template(given: ChatTemplate | None, vocab) -> tuple[ChatTemplate, str | None]:
    """The chat template, and why chat cannot work (None: it can). A given template that writes
    characters the model lacks is refused at start; the default one only disables chat."""
    template = given or default_template()
    lacks = template.unknown_characters(vocab)
    shown = json.dumps(lacks, ensure_ascii=False)[:80]
    if lacks and given is not None:
        raise OptionError(
            f"the chat template writes characters this model lacks: {shown}",
            "write it with characters the model knows",
        )
    if lacks:
        return template, (
            f"the default chat template writes characters this model lacks ({shown}); start "
            "charlstm serve with --chat-template FILE (see docs/serve.md)"
        )
    return template, None


def serve_available() -> bool:
    """Whether the `serve` extra (FastAPI, uvicorn) is installed."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("fastapi", "uvicorn"))


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable only from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_config(
    host: str,
    port: int,
    api_key: str | None,
    limits: ServeLimits,
    threads: int = 0,
    grace_s: float = GRACE_S,
) -> list[str]:
    """Refuse a configuration that cannot work (OptionError, one line); return the warnings
    for one that works but is risky."""
    limits.check()
    if not (isinstance(port, int) and 0 <= port <= 65535):
        raise OptionError(f"--port must be from 0 to 65535, got {port}")
    if api_key is not None:
        if not api_key.strip():
            raise OptionError(
                f"the API key (--api-key or {API_KEY_ENV}) is empty",
                f"pass a key, or unset {API_KEY_ENV}",
            )
        if not api_key.isascii() or not api_key.isprintable() or api_key != api_key.strip():
            raise OptionError(
                f"the API key (--api-key or {API_KEY_ENV}) must be printable ASCII without "
                "surrounding spaces",
                "HTTP headers carry ASCII: a client could never send this key",
            )
    from charlstm.runtime import check_threads

    check_threads(threads)  # 0 (chosen by timing) to 4 per core
    if not (isinstance(grace_s, (int, float)) and 0 <= grace_s <= 600):
        raise OptionError(f"--grace-s must be from 0 to 600, got {grace_s}")
    if api_key is None and not is_loopback(host):
        return [f"serving on {host} without an API key: anyone who can reach it may use it "
                f"(pass --api-key or set {API_KEY_ENV})"]  # fmt: skip
    return []


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
    grace_s: float = GRACE_S,
    unknown: str = "error",
    chat_template: str | Path | None = None,
    on_ready: Callable[[dict], None] | None = None,
) -> None:
    """Serve `checkpoint` until SIGINT or SIGTERM; then stop taking connections, give running
    requests `grace_s` seconds, end the rest gracefully (see `ServingCore.shutdown`), and
    return. `threads`: the model's CPU threads (0: chosen by timing the batch's rounds, and
    timed again when they slow down and periodically: 10 s after a choice that changed, up
    to 2 minutes after choices that held). `unknown`: characters the vocabulary
    lacks are refused ("error"), skipped or replaced; `chat_template`: a JSON file (`chat.py`)
    instead of the default chat template. `on_ready(facts)` is called once the
    socket listens (facts: url, model, host, port, api_key_required, warnings)."""
    if not serve_available():
        raise CharLSTMError(
            "charlstm serve needs FastAPI and uvicorn", "pip install 'charlstm[serve]'"
        )
    limits = limits or ServeLimits()
    warnings = check_config(host, port, api_key, limits, threads, grace_s)
    if threads:
        import torch

        # on a small shared CPU one thread often beats two: no hand-offs, no spinning
        torch.set_num_threads(threads)
    template = None if chat_template is None else ChatTemplate.load(chat_template)
    scheduler = BatchScheduler(checkpoint, device=device, dtype=dtype,
                               max_streams=limits.max_streams, threads=threads)  # fmt: skip
    scheduler.on_threads = _threads_chosen()
    name = run_name(scheduler.checkpoint_path)
    app = create_app(scheduler, model_name=name, api_key=api_key, limits=limits,
                     unknown=unknown, chat_template=template)  # fmt: skip
    sock = _listen(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    if on_ready is not None:
        on_ready({"url": f"http://{shown}:{bound}", "model": name, "host": host, "port": bound,
                  "api_key_required": api_key is not None, "warnings": warnings})  # fmt: skip
    try:
        _run(app, sock, grace_s)
    finally:
        sock.close()
        scheduler.close()


def _threads_chosen():
    """A log line for the worker's first thread choice and for each change of it."""
    said: list[int] = []

    def note(tuner) -> None:
        if said[-1:] != [tuner.threads]:
            said.append(tuner.threads)
            threads_log.info("threads: %s", tuner.describe())

    return note


def _run(app, sock: socket.socket, grace_s: float) -> None:
    """uvicorn until a signal; the signal first starts the app's graceful shutdown."""
    import signal
    import threading

    import uvicorn

    core: ServingCore = app.state.core
    loop_box: list[asyncio.AbstractEventLoop] = []

    stopping: list[int] = []

    class Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            loop_box.append(asyncio.get_running_loop())
            await super().startup(sockets)

        def handle_exit(self, sig, frame) -> None:
            if stopping or not loop_box:  # a second signal: uvicorn's way (SIGINT forces)
                return super().handle_exit(sig, frame)
            stopping.append(sig)
            loop_box[0].call_soon_threadsafe(lambda: asyncio.ensure_future(_stop()))

    async def _stop() -> None:
        await core.shutdown(grace_s)
        server.should_exit = True

    # uvicorn's own graceful wait is a backstop: the core has ended every request by then
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=grace_s + 5,
                            access_log=False, lifespan="on")  # fmt: skip
    server = Server(config)
    # uvicorn re-raises the signals it caught once it has stopped; these make that a no-op,
    # so that `serve` returns normally
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: None)
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
