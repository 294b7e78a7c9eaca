"""`charlstm serve` on 127.0.0.1: the official `openai` client and raw HTTP against a real
uvicorn server (streaming, n, stop, seeds, every limit and bad request), the playground in
headless Chromium, and the CLI (missing extra, bad options, SIGINT/SIGTERM)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from tiny import served_run

from charlstm.serving.server import serve_available

pytestmark = pytest.mark.skipif(
    not serve_available(), reason="the serve extra is not installed: pip install 'charlstm[serve]'"
)
httpx = pytest.importorskip("httpx", reason="httpx is not installed: pip install -e '.[dev]'")

sys.path.append(str(Path(__file__).resolve().parent.parent / "bench"))  # bench/headless.py
from headless import Browser, PageReport, find_chromium  # noqa: E402

CHARS = "the cat sat on a mat.\nCafé naïve — 東京 😀!"
KEY = "s3cret-key"
LIMITS = dict(max_prompt_chars=100, max_tokens=400, max_n=3, max_body_bytes=2000, max_streams=4)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A random model in a run folder named `myrun` (the model's name in the API)."""
    return served_run(tmp_path_factory.mktemp("runs"), "myrun", CHARS, seed=3)


@contextlib.contextmanager
def running_server(ckpt: Path, api_key: str | None = None, app_options: dict | None = None,
                   **limits):  # fmt: skip
    """The app on an ephemeral 127.0.0.1 port, served by uvicorn in a thread."""
    import uvicorn

    from charlstm.generation.batching import BatchScheduler
    from charlstm.serving.server import ServeLimits, _listen, create_app, run_name

    limits = ServeLimits(**{**LIMITS, **limits})
    scheduler = BatchScheduler(ckpt, max_streams=limits.max_streams)
    app = create_app(scheduler, model_name=run_name(ckpt), api_key=api_key, limits=limits,
                     **(app_options or {}))  # fmt: skip
    sock = _listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", scheduler
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()


@pytest.fixture(scope="module")
def server(ckpt):
    with running_server(ckpt) as (url, scheduler):
        yield url, scheduler


@pytest.fixture(scope="module")
def keyed_server(ckpt):
    with running_server(ckpt, api_key=KEY) as (url, scheduler):
        yield url, scheduler


@pytest.fixture
def client(server):
    openai = pytest.importorskip("openai", reason="pip install -e '.[dev]' for the openai client")
    with openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0,
                       timeout=30) as c:  # fmt: skip
        yield c


def post(url: str, body, headers: dict | None = None, timeout: float = 30) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **(headers or {})}
    return httpx.post(url + "/v1/completions", content=content, headers=headers, timeout=timeout)


def greedy(scheduler, prompt: str, n_chars: int) -> str:
    """The reference text, from the library (no HTTP)."""
    from charlstm.generation.batching import BatchScheduler, SamplingParams

    fresh = BatchScheduler(scheduler.checkpoint_path)
    return fresh.generate(prompt, SamplingParams(max_tokens=n_chars, temperature=0))[0]


def test_openai_client_models_and_completion(client, server):
    models = client.models.list()
    assert [m.id for m in models.data] == ["myrun"]
    assert client.models.retrieve("myrun").owned_by == "charlstm"
    out = client.completions.create(model="myrun", prompt="the cat", max_tokens=60, temperature=0)
    assert out.object == "text_completion" and out.model == "myrun"
    assert out.choices[0].text == greedy(server[1], "the cat", 60)
    assert out.choices[0].finish_reason == "length"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (7, 60)
    echoed = client.completions.create(model="myrun", prompt="the cat", max_tokens=60,
                                       temperature=0, echo=True)  # fmt: skip
    assert echoed.choices[0].text == "the cat" + out.choices[0].text


def test_openai_client_streaming_n_seed_and_top_k(client, server):
    chunks = list(client.completions.create(model="myrun", prompt="the", max_tokens=80,
                                            temperature=0.9, seed=11, n=3, stream=True,
                                            stream_options={"include_usage": True}))  # fmt: skip
    texts, finish = ["", "", ""], [None] * 3
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.text
            finish[choice.index] = choice.finish_reason or finish[choice.index]
    assert finish == ["length"] * 3 and all(len(t) == 80 for t in texts)
    assert len(set(texts)) == 3
    assert chunks[-1].usage.completion_tokens == 240
    again = client.completions.create(model="myrun", prompt="the", max_tokens=80,
                                      temperature=0.9, seed=11, n=3)  # fmt: skip
    assert [c.text for c in again.choices] == texts  # same seed, same texts, streamed or not
    top1 = client.completions.create(model="myrun", prompt="the", max_tokens=80,
                                     temperature=1.0, extra_body={"top_k": 1})  # fmt: skip
    assert top1.choices[0].text == greedy(server[1], "the", 80)


def test_stop_sequences_and_prompt_list(client, server):
    text = greedy(server[1], "the cat", 200)
    stop = text[50:53]
    out = client.completions.create(model="myrun", prompt="the cat", max_tokens=200,
                                    temperature=0, stop=["zz", stop])  # fmt: skip
    assert out.choices[0].text == text[: text.index(stop)]
    assert out.choices[0].finish_reason == "stop"
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model="myrun", prompt="the cat", max_tokens=200, temperature=0, stop=stop, stream=True
        )  # fmt: skip
        if c.choices
    )
    assert streamed == out.choices[0].text
    both = client.completions.create(model="myrun", prompt=["the cat", "a"], max_tokens=30,
                                     temperature=0)  # fmt: skip
    assert [c.index for c in both.choices] == [0, 1]
    assert both.choices[0].text == text[:30]
    assert both.choices[1].text == greedy(server[1], "a", 30)


def test_seeded_stream_is_unchanged_by_concurrent_and_bad_requests(server):
    """A seeded stream writes the same text alone and while other streams come and go and bad
    requests are refused beside it."""
    url, _ = server
    body = {"model": "myrun", "prompt": "the", "max_tokens": 300, "temperature": 1.0, "seed": 5}
    alone = post(url, body).json()["choices"][0]["text"]
    with httpx.stream("POST", url + "/v1/completions", json={**body, "stream": True},
                      timeout=30) as response:  # fmt: skip
        text = ""
        for i, line in enumerate(response.iter_lines()):
            if i == 2:  # mid-stream: others join, leave, and fail
                assert post(url, {**body, "seed": 6, "max_tokens": 20}).status_code == 200
                assert post(url, b"{not json").status_code == 400
                assert post(url, {**body, "prompt": "qqq"}).status_code == 400
                assert post(url, {**body, "max_tokens": 10**6}).status_code == 400
            if line.startswith("data: {"):
                text += "".join(c["text"] for c in json.loads(line[6:])["choices"])
    assert text == alone


@pytest.mark.bad_input("POST /v1/completions")
@pytest.mark.parametrize(
    "body, status, param, message",
    [
        (b"{not json", 400, None, "not valid JSON"),
        (b"[1, 2]", 400, None, "must be a JSON object"),
        ({"prompt": "the"}, 400, "model", "model is required"),
        ({"model": "gpt-4", "prompt": "the"}, 404, "model", "'gpt-4' does not exist"),
        ({"model": "myrun"}, 400, "prompt", "prompt is required"),
        ({"model": "myrun", "prompt": 7}, 400, "prompt", "a list of token ids"),
        ({"model": "myrun", "prompt": "the", "max_tokens": "9"}, 400, "max_tokens", "integer"),
        ({"model": "myrun", "prompt": "the", "max_tokens": True}, 400, "max_tokens", "integer"),
        ({"model": "myrun", "prompt": "the", "temperature": "hot"}, 400, "temperature", "number"),
        ({"model": "myrun", "prompt": "the", "temperature": -1}, 400, "temperature", "0 to 100"),
        ({"model": "myrun", "prompt": "the", "temperature": 1e300}, 400, "temperature", "to 100"),
        (b'{"model": "myrun", "prompt": "the", "temperature": NaN}', 400, None, "not valid JSON"),
        (b'{"model": "myrun", "prompt": "the", "top_p": Infinity}', 400, None, "not valid JSON"),
        ({"model": "myrun", "prompt": "the", "temperature": 10**400}, 400, "temperature", "number"),
        (b"[" * 1000 + b"]" * 1000, 400, None, "nests 1000 levels deep"),
        (b'{"model": "myrun", "prompt": ' + b"[" * 900, 400, None, "nests 901 levels deep"),
        ({"model": "myrun", "prompt": "the", "seed": -1}, 400, "seed", "from 0 to"),
        ({"model": "myrun", "prompt": "the", "seed": 2**64}, 400, "seed", "from 0 to"),
        ({"model": "myrun", "prompt": "the", "n": 10**30}, 400, "n", "from 1 to 3"),
        ({"model": "myrun", "prompt": "the", "max_tokens": -10**30}, 400, "max_tokens", "0 to"),
        ({"model": "myrun", "prompt": "the", "stop": "s" * 300}, 400, "stop", "at most 256"),
        ({"model": "myrun", "prompt": "the", "user": 7}, 400, "user", "a string"),
        ({"model": "myrun", "prompt": ["t"] * 33}, 400, "prompt", "at most 32 per request"),
        ({"model": "myrun", "prompt": "the", "top_p": 1.5}, 400, "top_p", "above 0 to 1"),
        ({"model": "myrun", "prompt": "the", "top_p": 0}, 400, "top_p", "above 0 to 1"),
        ({"model": "myrun", "prompt": "the", "top_k": -1}, 400, "top_k", ">= 0"),
        ({"model": "myrun", "prompt": "the", "seed": 1.5}, 400, "seed", "integer"),
        ({"model": "myrun", "prompt": "the", "stream": "yes"}, 400, "stream", "true or false"),
        ({"model": "myrun", "prompt": "the", "stop": ["a", 3]}, 400, "stop", "stop must"),
        ({"model": "myrun", "prompt": "the", "stop": list("abcde")}, 400, "stop", "up to 4"),
        ({"model": "myrun", "prompt": "the", "logprobs": 6}, 400, "logprobs", "0 to 5"),
        ({"model": "myrun", "prompt": "the", "topk": 3}, 400, "topk", "unrecognized"),
        ({"model": "myrun", "prompt": "xyz the"}, 400, "prompt", "'x' at 0"),
        ({"model": "myrun", "prompt": "a" * 101}, 400, "prompt", "at most 100"),
        ({"model": "myrun", "prompt": "the", "max_tokens": 401}, 400, "max_tokens", "0 to 400"),
        ({"model": "myrun", "prompt": "the", "n": 4}, 400, "n", "from 1 to 3"),
        ({"model": "myrun", "prompt": ["a", "t"], "n": 3}, 400, "n", "3 x 2"),
        ({"model": "myrun", "prompt": "t", "stream_options": {"include_usage": True}}, 400,
         "stream_options", "only allowed with stream"),
    ],
)  # fmt: skip
def test_bad_requests_get_openai_errors(server, body, status, param, message):
    response = post(server[0], body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and message in error["message"], error
    assert server[1].active == 0


def test_oversized_body_and_unknown_paths(server):
    url = server[0]
    big = post(url, {"model": "myrun", "prompt": "the", "user": "x" * 3000})
    assert big.status_code == 413 and "2000 bytes" in big.json()["error"]["message"]
    # without a Content-Length (chunked): counted while it is read
    chunked = httpx.post(url + "/v1/completions", content=iter([b'{"model": "', b"x" * 3000]),
                         headers={"Content-Type": "application/json"})  # fmt: skip
    assert chunked.status_code == 413
    missing = httpx.get(url + "/v2/nothing")
    assert missing.status_code == 404 and "error" in missing.json()
    wrong_method = httpx.get(url + "/v1/completions")
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()
    assert httpx.get(url + "/v1/models/other").status_code == 404


def test_api_key_is_required_on_every_request(keyed_server):
    openai = pytest.importorskip("openai", reason="pip install -e '.[dev]'")
    url = keyed_server[0]
    body = {"model": "myrun", "prompt": "the", "max_tokens": 5}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        for response in (post(url, body, headers), httpx.get(url + "/v1/models", headers=headers)):
            assert response.status_code == 401, response.text
            assert response.json()["error"]["code"] == "invalid_api_key"
    good = {"Authorization": f"Bearer {KEY}"}
    assert post(url, body, good).status_code == 200
    assert httpx.get(url + "/v1/models", headers=good).status_code == 200
    bad = openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0)
    with bad, pytest.raises(openai.AuthenticationError):
        bad.models.list()
    with openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0) as ok:
        assert ok.completions.create(model="myrun", prompt="the", max_tokens=5).choices
    assert httpx.get(url + "/").status_code == 200  # the static page; its API calls need the key


def test_stream_limit_and_disconnect_frees_the_slot(ckpt):
    """With 2 slots: two open streams fill them, a third request gets 429; closing one
    client's connection frees its slot without waiting for its text to finish."""
    with running_server(ckpt, max_streams=2, max_n=2, max_tokens=10**6) as (url, scheduler):
        body = {"model": "myrun", "prompt": "the", "max_tokens": 10**6, "stream": True}
        with httpx.Client(timeout=30) as a, httpx.Client(timeout=30) as b:
            ra = a.send(a.build_request("POST", url + "/v1/completions", json=body), stream=True)
            rb = b.send(b.build_request("POST", url + "/v1/completions", json=body), stream=True)
            lines_a, lines_b = ra.iter_lines(), rb.iter_lines()  # (kept: a dropped one closes)
            next(lines_a), next(lines_b)
            assert scheduler.active == 2, (scheduler.error, scheduler.batch.rows)
            full = post(url, {**body, "stream": False, "max_tokens": 5})
            assert full.status_code == 429
            assert full.json()["error"]["code"] == "rate_limit_exceeded"
            ra.close()  # the client goes away mid-stream
            deadline = time.monotonic() + 10
            while scheduler.active != 1:
                assert time.monotonic() < deadline, "the slot was not freed"
                time.sleep(0.01)
            assert post(url, {**body, "stream": False, "max_tokens": 5}).status_code == 200
            more = [next(lines_b) for _ in range(50)]
            more = [line for line in more if line.startswith("data: {")]
            assert len(more) >= 20  # the other stream goes on
            assert all(json.loads(line[6:])["choices"][0]["finish_reason"] is None
                       for line in more)  # fmt: skip
            rb.close()
        deadline = time.monotonic() + 10
        while scheduler.active:
            assert time.monotonic() < deadline, "the second slot was not freed"
            time.sleep(0.01)


def stream_text(url: str, body: dict, headers: dict | None = None, timeout: float = 60,
                started: threading.Event | None = None):  # fmt: skip
    """POST a streaming completion: (text, the finish reasons seen, whether [DONE] came);
    `started` is set at its first event."""
    text, reasons, done = "", [], False
    with httpx.stream("POST", url + "/v1/completions", json={**body, "stream": True},
                      headers=headers, timeout=timeout) as response:  # fmt: skip
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: {"):
                if started is not None:
                    started.set()
                for choice in json.loads(line[6:])["choices"]:
                    text += choice["text"]
                    if choice["finish_reason"] is not None:
                        reasons.append(choice["finish_reason"])
    return text, reasons, done


class Neighbour:
    """A normal stream running in a thread beside whatever a test sends."""

    def __init__(self, url: str, max_tokens: int = 400, headers: dict | None = None) -> None:
        self.body = {"model": "myrun", "prompt": "the", "max_tokens": max_tokens, "seed": 1}
        self.result: tuple | None = None
        self.thread = threading.Thread(
            target=lambda: setattr(self, "result", stream_text(url, self.body, headers))
        )

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.thread.join(60)

    def finished(self) -> tuple[str, list[str], bool]:
        self.thread.join(60)
        assert self.result is not None, "the neighbour stream did not finish"
        return self.result


def test_a_huge_top_k_beside_a_running_stream(server):
    """#35 item 1: a top_k of 10**30 overflowed inside the batch worker and ended every other
    stream with "error". Now it is clamped to the vocabulary (off), and the neighbour ends
    with its length."""
    url, scheduler = server
    with Neighbour(url) as neighbour:
        time.sleep(0.05)
        body = {"model": "myrun", "prompt": "t", "top_k": 10**30, "max_tokens": 30}
        for _ in range(5):
            response = post(url, body)
            assert response.status_code == 200, response.text
            assert response.json()["choices"][0]["finish_reason"] == "length"
    text, reasons, done = neighbour.finished()
    assert reasons == ["length"] and done and len(text) == 400
    assert scheduler.error is None, scheduler.error


def test_deep_nesting_is_a_400_not_a_recursion_error(ckpt):
    """#35 item 4: 50,000 [ in a 100 KB body was a 500 RecursionError with a traceback."""
    with running_server(ckpt, max_body_bytes=200_000) as (url, scheduler):
        with Neighbour(url, max_tokens=200) as neighbour:
            for raw in (b"[" * 50_000 + b"]" * 50_000, b'{"a":' * 20_000 + b"1" + b"}" * 20_000,
                        b'{"model": "myrun", "prompt": ' + b"[" * 99_000):  # fmt: skip
                response = post(url, raw)
                assert response.status_code == 400, response.text
                assert "levels deep; at most 16" in response.json()["error"]["message"]
        assert neighbour.finished()[1] == ["length"]


def playground_run(url: str, key: str | None = None) -> dict:
    """Load the playground in headless Chromium, type `key` if given, generate 150 greedy
    characters after 'the cat'; what the page showed, and its console report."""
    binary = find_chromium()
    if binary is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium)")
    report = PageReport()
    with Browser(binary, 1100, 800, timeout=30) as browser:
        browser.call("Page.navigate", {"url": url + "/"}, session=True)
        browser.wait_for_event("Page.loadEventFired")
        wait = """new Promise((resolve) => { const t0 = Date.now(); (function poll() {
            const s = document.body.dataset.state;
            if (%s || Date.now() - t0 > 20000) resolve(s); else setTimeout(poll, 20); })(); })"""
        seen = {
            "state": browser.evaluate(wait % 's !== "loading"'),
            "model": browser.evaluate("document.getElementById('model').textContent"),
            "error": browser.evaluate("document.getElementById('error').textContent"),
        }
        typed = {"api_key": key or "", "prompt": "the cat", "max_tokens": "150", "temperature": "0"}
        browser.evaluate(f"""(() => {{ for (const [id, v] of Object.entries({json.dumps(typed)}))
            document.getElementById(id).value = v;
            document.getElementById('generate').click(); }})()""")
        seen["end"] = browser.evaluate(wait % 's === "done" || s === "error"')
        seen["output"] = browser.evaluate("document.getElementById('output').textContent")
        seen["status"] = browser.evaluate("document.getElementById('status').textContent")
        browser.report_into(report)
    seen["console_errors"] = report.errors
    return seen


def test_playground_generates_in_chromium(server):
    url, scheduler = server
    seen = playground_run(url)
    assert (seen["state"], seen["model"], seen["end"]) == ("ready", "myrun", "done")
    assert seen["output"] == "the cat" + greedy(scheduler, "the cat", 150)
    assert re.search(r"150 characters in [\d.]+ s \([\d,]+ chars/s", seen["status"]), seen
    assert seen["console_errors"] == []


def test_playground_asks_for_the_key_before_calling_a_keyed_server(keyed_server):
    """No request goes out without the key (no 401 in the console); with it, text comes."""
    url, scheduler = keyed_server
    seen = playground_run(url, key=KEY)
    assert seen["model"] != "myrun" and "needs an API key" in seen["error"]
    assert seen["end"] == "done"
    assert seen["output"] == "the cat" + greedy(scheduler, "the cat", 150)
    assert seen["console_errors"] == []


# -- the command line ------------------------------------------------------------------------


def test_serve_without_the_extra_says_how_to_get_it(run_cli, ckpt, monkeypatch):
    import charlstm.serving.server

    monkeypatch.setattr(charlstm.serving.server, "serve_available", lambda: False)
    result = run_cli("serve", ckpt)
    assert result.exit_code == 1
    assert "pip install 'charlstm[serve]'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.bad_input("serve")
@pytest.mark.parametrize(
    "args, message",
    [
        (["--port", "70000"], "--port must be from 0 to 65535"),
        (["--max-streams", "0"], "--max-streams must be from 1 to 4,096"),
        (["--max-tokens", "-3"], "--max-tokens must be from 1 to 1,000,000"),
        (["--max-tokens", "100000000000"], "--max-tokens must be from 1 to 1,000,000"),
        (["--max-body-bytes", str(2**40)], "--max-body-bytes must be from 1 to"),
        (["--max-n", "100", "--max-streams", "10"], "--max-n 100 is more than --max-streams 10"),
        (["--max-tokens", "1000000", "--max-streams", "4096"], "more than half of this machine"),
        (["--api-key", " "], "the API key (--api-key or CHARLSTM_API_KEY) is empty"),
        (["--api-key", ""], "the API key (--api-key or CHARLSTM_API_KEY) is empty"),
        (["--api-key", "clé"], "must be printable ASCII"),
        (["--api-key", " key"], "must be printable ASCII"),
        (["--grace-s", "-1"], "--grace-s must be from 0 to 600"),
        (["--grace-s", "nan"], "--grace-s must be from 0 to 600"),
    ],
)
def test_serve_bad_options(run_cli, ckpt, args, message):
    result = run_cli("serve", ckpt, *args)
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.bad_input("serve")
@pytest.mark.parametrize("value", ["", "  ", "\t"])
def test_serve_refuses_an_empty_key_from_the_environment(run_cli, ckpt, monkeypatch, value):
    """#35: Click treats an empty CHARLSTM_API_KEY as unset; serve must not run keyless."""
    monkeypatch.setenv("CHARLSTM_API_KEY", value)
    result = run_cli("serve", ckpt, "--port", "0")
    assert result.exit_code == 2, result.stderr
    assert "is empty" in result.stderr and "unset CHARLSTM_API_KEY" in result.stderr


def test_check_config_warns_about_an_open_address_without_a_key():
    from charlstm.serving.server import ServeLimits, check_config

    for host in ("127.0.0.1", "::1", "localhost"):
        assert check_config(host, 0, None, ServeLimits()) == []
    assert check_config("0.0.0.0", 0, "k", ServeLimits()) == []
    (warning,) = check_config("0.0.0.0", 0, None, ServeLimits())
    assert "without an API key" in warning and "--api-key" in warning


def test_serve_missing_checkpoint_and_busy_port(run_cli, ckpt, tmp_path):
    result = run_cli("serve", tmp_path / "nope.pt")
    assert result.exit_code == 1 and "checkpoint not found" in result.stderr
    with socket.create_server(("127.0.0.1", 0)) as busy:
        result = run_cli("serve", ckpt, "--port", busy.getsockname()[1])
    assert result.exit_code == 1
    assert "cannot listen on 127.0.0.1:" in result.stderr and "--port" in result.stderr


def test_serve_subprocess_answers_and_stops_gracefully(ckpt):
    env = {**os.environ, "CHARLSTM_API_KEY": KEY}
    proc = subprocess.Popen(
        [sys.executable, "-m", "charlstm", "serve", str(ckpt), "--port", "0"],
        stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        line = proc.stderr.readline()
        found = re.search(r"serving (http://127\.0\.0\.1:\d+)", line)
        assert found, line
        assert "API key is required" in line
        url = found.group(1)
        auth = {"Authorization": f"Bearer {KEY}"}
        assert post(url, {"model": "myrun", "prompt": "the", "max_tokens": 5}).status_code == 401
        body = {"model": "myrun", "prompt": "the", "max_tokens": 50, "temperature": 0}
        response = post(url, body, auth)
        assert response.status_code == 200
        assert response.json()["choices"][0]["text"] == greedy_from(ckpt, "the", 50)
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        assert proc.wait(30) == 0
        assert "stopped" in rest and "Traceback" not in rest
    finally:
        kill(proc)


def exit_log(proc) -> str:
    """The rest of a stopped server's log, once it has exited 0 on its own."""
    log = proc.stderr.read()
    assert proc.wait(30) == 0
    return log


def kill(proc) -> None:
    """End a server a failed test left running."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def start_serve(ckpt: Path, *args: str, env: dict | None = None):
    """`charlstm serve CKPT --port 0 ARGS` in a child process; (process, its URL)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "charlstm", "serve", str(ckpt), "--port", "0", *args],
        stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
    )  # fmt: skip
    line = proc.stderr.readline()
    found = re.search(r"serving (http://\S+?:\d+)", line)
    if not found:
        proc.kill()
        raise AssertionError(line + proc.stderr.read())
    return proc, found.group(1).replace("0.0.0.0", "127.0.0.1")


def upload_and_vanish(url: str) -> None:
    """A client that announces a 1,000-byte body, sends 10 bytes and disconnects."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                     b"application/json\r\nContent-Length: 1000\r\n\r\n{\"model\": ")  # fmt: skip
        time.sleep(0.2)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_shutdown_ends_every_request_gracefully(ckpt, sig):
    """#35 item 3: on SIGTERM / SIGINT an open stream ends with a finish_reason and [DONE]
    within the grace period, a waiting request gets a 503 in OpenAI's shape, the exit is 0,
    and the log has one access line per request (a 4xx with its reason; a client that
    vanished mid-upload or mid-stream in one line) and no traceback."""
    proc, url = start_serve(ckpt, "--grace-s", "1", "--max-tokens", "1000000")
    try:
        long = {"model": "myrun", "prompt": "the", "max_tokens": 1_000_000}
        waiting: dict = {}
        started = threading.Event()
        plain = threading.Thread(target=lambda: waiting.update(p=post(url, long)))
        stream = threading.Thread(
            target=lambda: waiting.update(s=stream_text(url, long, started=started))
        )
        plain.start(), stream.start()
        assert post(url, {**long, "top_k": -1}).status_code == 400
        upload_and_vanish(url)
        with httpx.stream("POST", url + "/v1/completions", json={**long, "stream": True},
                          timeout=30) as gone:  # fmt: skip
            next(gone.iter_lines())  # one event, then the client goes away mid-stream
        assert started.wait(20)
        time.sleep(0.3)  # (the non-streaming request is in flight by now)
        t0 = time.monotonic()
        proc.send_signal(sig)
        stream.join(20), plain.join(20)
        assert time.monotonic() - t0 < 5
        text, reasons, done = waiting["s"]
        assert reasons == ["length"] and done and len(text) > 0
        assert waiting["p"].status_code == 503
        assert waiting["p"].json()["error"]["code"] == "server_shutting_down"
        log = exit_log(proc)
    finally:
        kill(proc)
    assert "Traceback" not in log and "Error" not in log.replace("error", ""), log
    lines = log.strip().splitlines()
    assert lines[-1] == "stopped"
    assert sum("POST /v1/completions 400" in x and "top_k must be" in x for x in lines) == 1
    assert sum("disconnected during the upload" in x for x in lines) == 1
    assert sum(x.endswith(": the client disconnected") for x in lines) == 1
    assert sum("POST /v1/completions 503" in x for x in lines) == 1
    assert (
        sum(re.search(r"POST /v1/completions 200 \d+ chars", x) is not None for x in lines) == 2
    )  # the stream cut at shutdown, the one whose client left
    assert len(lines) <= 10, log


def test_quiet_and_the_warning_for_an_open_address(ckpt):
    """#34 item 5: --quiet turns the access log off; serving beyond loopback without a key
    prints one warning line."""
    proc, url = start_serve(ckpt, "--host", "0.0.0.0", "--quiet")
    try:
        assert post(url, {"model": "myrun", "prompt": "t", "max_tokens": 3}).status_code == 200
        proc.send_signal(signal.SIGTERM)
        log = exit_log(proc)
    finally:
        kill(proc)
    warning = ("warning: serving on 0.0.0.0 without an API key: anyone who can reach it may use "
               "it (pass --api-key or set CHARLSTM_API_KEY)")  # fmt: skip
    assert log.strip().splitlines() == [warning, "stopped"]


def greedy_from(ckpt: Path, prompt: str, n_chars: int) -> str:
    from charlstm.generation.batching import BatchScheduler, SamplingParams

    return BatchScheduler(ckpt).generate(prompt, SamplingParams(n_chars, temperature=0))[0]


def test_the_server_logs_each_thread_choice_once():
    import logging

    from charlstm.serving.server import _threads_chosen

    class Tuner:
        def __init__(self, threads):
            self.threads = threads

        def describe(self):
            return f"{self.threads} threads"

    lines = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("charlstm.serve.threads")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        note = _threads_chosen()
        for t in (2, 2, 1, 1, 2):
            note(Tuner(t))
    finally:
        logger.removeHandler(handler)
    assert lines == ["threads: 2 threads", "threads: 1 threads", "threads: 2 threads"]
