"""The request side of `charlstm serve`: where a body becomes a checked request, and nowhere else.

Every field is read through `Body`, with explicit bounds, before anything else sees it: integers
are bounded before they reach numpy or torch (`top_k` beyond the vocabulary is clamped to it,
which is "off"), floats must be finite, strings and lists have lengths, and the body's size and
nesting depth are checked before `json.loads` recurses into it. What is refused is an `APIError`:
an HTTP status and OpenAI's error object, naming the field and what it may be.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

import numpy as np

from charlstm.generation.batching import MAX_SEED, SamplingParams
from charlstm.generation.logprobs import MAX_LOGPROBS
from charlstm.serving.limits import ServeLimits

MAX_DEPTH = 16  # nesting of objects and lists in a body (a real request needs 3)
MAX_STOP = 4  # OpenAI's limit on stop sequences
MAX_STOP_CHARS = 256
MAX_STRING_CHARS = 512  # model, user
MAX_TEMPERATURE = 100.0  # far past "uniform"; OpenAI allows 2
MAX_COMPLETION_LOGPROBS = min(5, MAX_LOGPROBS)  # OpenAI's limit for the completions API
# fields of OpenAI's completions request we accept (the ones we cannot honour must keep their
# neutral value); anything else is refused, as OpenAI refuses it, so a typo is never ignored
COMPLETION_FIELDS = frozenset({
    "model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "seed", "n", "stop",
    "stream", "stream_options", "echo", "user", "logprobs", "best_of", "suffix",
    "presence_penalty", "frequency_penalty", "logit_bias",
})  # fmt: skip


class APIError(Exception):
    """A request refused: HTTP status and OpenAI's error object."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = (
            status, message, param, code, kind,
        )  # fmt: skip

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def nesting_depth(raw: bytes) -> int:
    """How deeply objects and lists nest in a JSON text (strings skipped), without parsing."""
    skeleton = np.frombuffer(_STRING.sub(b"", raw), dtype=np.uint8)
    opens = (skeleton == ord("[")) | (skeleton == ord("{"))
    closes = (skeleton == ord("]")) | (skeleton == ord("}"))
    depth = np.cumsum(opens.astype(np.int64) - closes)
    return int(depth.max()) if depth.size else 0


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def load_json(raw: bytes, limits: ServeLimits) -> object:
    """The body's JSON, after its size and nesting depth are checked."""
    if len(raw) > limits.max_body_bytes:
        raise APIError(
            413,
            f"the request body is larger than this server's {limits.max_body_bytes} bytes",
            code="request_too_large",
        )
    depth = nesting_depth(raw)
    if depth > MAX_DEPTH:
        raise APIError(400, f"the body nests {depth} levels deep; at most {MAX_DEPTH} are allowed")
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise APIError(400, f"the body is not valid JSON ({str(e)[:200]})") from None


def _shown(value) -> str:
    try:
        return json.dumps(value)[:80]
    except (ValueError, TypeError):
        return repr(value)[:80]


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


class Body:
    """A JSON object's fields, each read once with its type and bounds."""

    def __init__(self, data: object, fields: frozenset[str]) -> None:
        if not isinstance(data, dict):
            raise APIError(400, "the body must be a JSON object")
        unknown = sorted(set(data) - fields)
        if unknown:
            name = unknown[0][:80]
            shown = name if name.isprintable() and name.strip() == name else json.dumps(name)
            raise APIError(400, f"unrecognized request argument supplied: {shown}", name)
        self.data = data

    def get(self, name: str):
        return self.data.get(name)

    def _fail(self, name: str, kind: str):
        raise APIError(400, f"{name} must be {kind}, got {_shown(self.data.get(name))}", name)

    def integer(self, name: str, default, lo: int, hi: int | None, note: str = ""):
        value = self.data.get(name)
        if value is None:
            return default
        kind = f"an integer from {lo} to {hi}" if hi is not None else f"an integer >= {lo}"
        if not _is_int(value) or value < lo or (hi is not None and value > hi):
            self._fail(name, kind + note)
        return value

    def number(self, name: str, default: float, lo: float, hi: float, *, open_lo=False, note=""):
        value = self.data.get(name)
        if value is None:
            return default
        low = f"above {lo:g}" if open_lo else f"from {lo:g}"
        kind = f"a number {low} to {hi:g}{note}"
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            self._fail(name, kind)
        try:
            x = float(value)
        except OverflowError:
            self._fail(name, kind)
        if not math.isfinite(x) or x > hi or x < lo or (open_lo and x == lo):
            self._fail(name, kind)
        return x

    def boolean(self, name: str, default: bool) -> bool:
        value = self.data.get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            self._fail(name, "true or false")
        return value

    def string(self, name: str, default, max_chars: int = MAX_STRING_CHARS):
        value = self.data.get(name)
        if value is None:
            return default
        if not isinstance(value, str) or len(value) > max_chars:
            self._fail(name, f"a string of at most {max_chars} characters")
        return value

    def neutral(self, name: str, is_neutral) -> None:
        """A field we cannot honour: accepted only at its neutral value."""
        value = self.data.get(name)
        if value is not None and not is_neutral(value):
            raise APIError(400, f"{name} is not supported by charlstm serve", name)


@dataclass
class CompletionRequest:
    """A parsed, checked completions request."""

    prompts: list[str | list[int]]  # text, or the model's token ids
    params: SamplingParams
    n: int = 1
    stream: bool = False
    echo: bool = False
    include_usage: bool = False


def parse_completion(
    raw: bytes, model_name: str, limits: ServeLimits, vocab_size: int
) -> CompletionRequest:
    """Parse and check a completions request body; APIError says what is wrong and where."""
    body = Body(load_json(raw, limits), COMPLETION_FIELDS)
    check_model(body, model_name)
    prompts = _prompts(body, limits)
    max_tokens = body.integer("max_tokens", 16, 0, limits.max_tokens)
    echo = body.boolean("echo", False)
    logprobs = body.integer("logprobs", None, 0, MAX_COMPLETION_LOGPROBS)
    body.neutral("best_of", lambda x: _is_int(x) and x == 1)
    body.neutral("suffix", lambda x: x == "")
    return sampling_request(body, limits, vocab_size, prompts, max_tokens, echo=echo,
                            logprobs=logprobs)  # fmt: skip


def sampling_request(
    body: Body,
    limits: ServeLimits,
    vocab_size: int,
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
    n = body.integer("n", 1, 1, limits.max_n)
    if n * len(prompts) > limits.max_streams:
        raise APIError(
            400,
            f"n x prompts is {n} x {len(prompts)}, more streams than this server runs at once "
            f"({limits.max_streams})",
            "n",
        )
    stream = body.boolean("stream", False)
    options = body.get("stream_options")
    if options is not None and not stream:
        raise APIError(400, "stream_options is only allowed with stream: true", "stream_options")
    options = options if options is not None else {}
    if not (
        isinstance(options, dict)
        and set(options) <= {"include_usage"}
        and isinstance(options.get("include_usage", False), bool)
    ):
        raise APIError(400, "stream_options takes only include_usage: true or false",
                       "stream_options")  # fmt: skip
    body.string("user", None)
    for name, is_neutral in NEUTRAL.items():
        body.neutral(name, is_neutral)
    params = SamplingParams(
        logprobs=logprobs,
        prompt_logprobs=logprobs if echo else None,
        max_tokens=max_tokens,
        temperature=body.number("temperature", 1.0, 0.0, MAX_TEMPERATURE, note=" (0 is greedy)"),
        # any count is meaningful, and beyond the vocabulary it is "off": clamped before torch
        top_k=min(body.integer("top_k", 0, 0, None, " (0 disables it)"), vocab_size),
        top_p=body.number("top_p", 1.0, 0.0, 1.0, open_lo=True, note=" (1 disables it)"),
        seed=body.integer("seed", None, 0, MAX_SEED),
        stop=tuple(dict.fromkeys([*_stops(body), *stop_after])),
    )
    return CompletionRequest(prompts, params, n, stream, echo,
                             bool(options.get("include_usage", False)))  # fmt: skip


def check_prompt_length(longest: int, limits: ServeLimits) -> None:
    if longest > limits.max_prompt_chars:
        raise APIError(
            400,
            f"the prompt has {longest} characters; this server takes at most "
            f"{limits.max_prompt_chars}",
            "prompt",
            "context_length_exceeded",
        )


def check_model(body: Body, model_name: str) -> None:
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


def _is_ids(x) -> bool:
    return isinstance(x, list) and bool(x) and all(_is_int(i) for i in x)


def parse_prompts(prompt, max_prompts: int) -> list[str | list[int]]:
    """OpenAI's prompt shapes, as a list of prompts (each text, or a list of token ids): a
    string, a list of strings, a list of ids, a list of lists of ids."""
    shapes = "a string, a list of strings, a list of token ids or a list of such lists"
    if isinstance(prompt, str) or _is_ids(prompt):
        prompts = [prompt]
    elif (
        isinstance(prompt, list)
        and prompt
        and (all(isinstance(p, str) for p in prompt) or all(_is_ids(p) for p in prompt))
    ):
        prompts = prompt
    else:
        raise APIError(400, f"prompt is required: {shapes}", "prompt")
    if len(prompts) > max_prompts:
        raise APIError(
            400,
            f"prompt has {len(prompts)} prompts; this server takes at most {max_prompts} "
            "per request (--max-prompts)",
            "prompt",
        )
    return prompts


def _prompts(body: Body, limits: ServeLimits) -> list[str | list[int]]:
    prompts = parse_prompts(body.get("prompt"), limits.max_prompts)
    check_prompt_length(max(len(p) for p in prompts), limits)
    return prompts


def _stops(body: Body) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stop = [stop] if isinstance(stop, str) else stop
    if not (
        isinstance(stop, list)
        and len(stop) <= MAX_STOP
        and all(isinstance(s, str) and 1 <= len(s) <= MAX_STOP_CHARS for s in stop)
    ):
        raise APIError(
            400,
            f"stop must be a non-empty string or a list of up to {MAX_STOP} of them "
            f"(each at most {MAX_STOP_CHARS} characters)",
            "stop",
        )
    return tuple(stop)


def _zero(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == 0


# options we cannot honour, accepted only at their neutral value
NEUTRAL = {
    "presence_penalty": _zero,
    "frequency_penalty": _zero,
    "logit_bias": lambda x: x == {},
}
