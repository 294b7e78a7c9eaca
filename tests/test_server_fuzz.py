"""Arbitrary JSON against every endpoint of `charlstm serve` (hypothesis), with normal streams
running beside it: each answer is a 200 or a 4xx in OpenAI's error shape, never a 500, and
every neighbour stream ends with its full length. Bounded: a fixed number of examples per
endpoint, derandomized (the same inputs on every run), each request with a timeout."""

from __future__ import annotations

import json
import threading
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_server import CHARS, ckpt, httpx, running_server, stream_text  # noqa: F401

EXAMPLES = 120  # per endpoint
STATUSES: list[int] = []
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# the integers and floats that broke servers before: beyond int64, beyond float32, negative
edge_ints = st.sampled_from([0, 1, -1, 2**31, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30,
                             -(10**30), 10**300])  # fmt: skip
edge_floats = st.sampled_from([0.0, -0.0, 1e-45, 1e-320, 1e300, -1e300, 1.5, 2.0, 1e38, 3.5e38])
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | edge_ints
    | st.floats(allow_nan=True, allow_infinity=True)
    | edge_floats
    | st.text(max_size=30)
    | st.text(alphabet=CHARS, max_size=30)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),  # fmt: skip
    max_leaves=12,
)


def bodies(fields: dict[str, st.SearchStrategy]):
    """Request bodies: the endpoint's fields, each either a plausible value or any JSON, some
    left out; now and then an unknown field; or, less often, any JSON at all, or raw bytes
    nested far deeper than any request."""

    def one_field(plausible):
        return plausible | json_values

    shaped = st.fixed_dictionaries(
        {},
        optional={name: one_field(plausible) for name, plausible in fields.items()},
    )
    unknown = st.dictionaries(st.text(max_size=10), json_values, max_size=2)
    with_unknown = st.tuples(shaped, unknown).map(lambda t: {**t[1], **t[0]})
    deep = st.integers(17, 3000).map(lambda d: b"[" * d + b"]" * d)
    return (
        shaped.map(_encode)
        | with_unknown.map(_encode)
        | json_values.map(_encode)
        | deep
        | st.binary(max_size=64)
    )


def _encode(value) -> bytes:
    return json.dumps(value).encode()  # NaN and Infinity as JS literals, as a client might


prompts = st.text(alphabet=CHARS, max_size=20)
#: the sampling fields that completions and chat share
SAMPLING_FIELDS = {
    "model": st.just("myrun"),
    "max_tokens": st.integers(0, 60) | edge_ints,
    "temperature": st.floats(0, 3) | edge_floats,
    "top_p": st.floats(0, 1) | edge_floats,
    "top_k": st.integers(0, 100) | edge_ints,
    "seed": st.integers(0, 2**63 - 1) | edge_ints,
    "n": st.integers(1, 3) | edge_ints,
    "stop": st.text(alphabet=CHARS, min_size=1, max_size=3),
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
}
COMPLETION_FIELDS = {
    **SAMPLING_FIELDS,
    "prompt": prompts | st.lists(prompts, min_size=1, max_size=3),
    "echo": st.booleans(),
    "user": st.text(max_size=10),
    "logprobs": st.integers(0, 5) | edge_ints,
    "best_of": st.just(1),
    "presence_penalty": st.just(0),
}


class Neighbours:
    """Normal streams, one after another in a thread, for as long as the fuzzing runs."""

    def __init__(self, url: str) -> None:
        self.url, self.results, self.stop = url, [], threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        body = {"model": "myrun", "prompt": "the", "max_tokens": 300, "seed": 2}
        while not self.stop.is_set():
            self.results.append(stream_text(self.url, body))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(60)


def check_answer(response: httpx.Response) -> None:
    assert response.status_code == 200 or 400 <= response.status_code < 500, response.text
    if response.status_code != 200:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        assert isinstance(error["message"], str) and "\n" not in error["message"]


@pytest.fixture(scope="module")
def fuzz_server(ckpt):  # noqa: F811
    with running_server(ckpt, max_streams=16) as (url, scheduler):
        yield url, scheduler


def fuzz(url: str, path: str, scheduler, strategy) -> None:
    """Send `strategy`'s bodies to `path` beside neighbour streams; check every answer."""
    with Neighbours(url) as neighbours, httpx.Client(timeout=30) as client:

        @FUZZ
        @given(strategy)
        def send(raw: bytes) -> None:
            headers = {"Content-Type": "application/json"}
            with client.stream("POST", url + path, content=raw, headers=headers) as response:
                response.read()
            check_answer(response)
            STATUSES.append(response.status_code)

        send()
    assert neighbours.results, "no neighbour stream ran"
    for text, reasons, done in neighbours.results:
        assert reasons == ["length"] and done and len(text) == 300
    assert scheduler.error is None, scheduler.error


def test_fuzz_completions(fuzz_server):
    url, scheduler = fuzz_server
    fuzz(url, "/v1/completions", scheduler, bodies(COMPLETION_FIELDS))


@FUZZ
@given(name=st.text(max_size=40))
def test_fuzz_model_names(fuzz_server, name):
    response = httpx.get(fuzz_server[0] + "/v1/models/" + quote(name, safe=""), timeout=30)
    check_answer(response)


TOKENIZE_FIELDS = {
    "model": st.just("myrun"),
    "prompt": prompts,
    "messages": st.lists(
        st.fixed_dictionaries({"role": st.sampled_from(["user", "system"]), "content": prompts}),
        max_size=2,
    ),  # fmt: skip
    "add_special_tokens": st.booleans(),
    "add_generation_prompt": st.booleans(),
    "return_token_strs": st.booleans(),
}
DETOKENIZE_FIELDS = {
    "model": st.just("myrun"),
    "tokens": st.lists(st.integers(0, 30) | edge_ints, max_size=10),
}


def test_fuzz_tokenize(fuzz_server):
    url, scheduler = fuzz_server
    fuzz(url, "/tokenize", scheduler, bodies(TOKENIZE_FIELDS))


def test_fuzz_detokenize(fuzz_server):
    url, scheduler = fuzz_server
    fuzz(url, "/detokenize", scheduler, bodies(DETOKENIZE_FIELDS))


messages = st.lists(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["system", "user", "assistant", "tool"]),
            "content": prompts | json_values,
        }
    ),  # fmt: skip
    min_size=1,
    max_size=3,
)
CHAT_FUZZ_FIELDS = {
    **SAMPLING_FIELDS,
    "messages": messages,
    "max_completion_tokens": st.integers(0, 60) | edge_ints,
    "tools": st.just([]),
    "response_format": st.just({"type": "text"}),
}


def test_fuzz_chat(fuzz_server):
    url, scheduler = fuzz_server
    fuzz(url, "/v1/chat/completions", scheduler, bodies(CHAT_FUZZ_FIELDS))
