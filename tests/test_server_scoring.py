"""`charlstm serve` for clients that score text: `logprobs` and `echo` on /v1/completions (the
mean equals `charlstm eval`'s loss), prompts as token ids, vLLM's tokenizer routes, a 404 that
names the route, and the served name of a model folder."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from test_server import CHARS, post, running_server
from tiny import random_checkpoint, served_run

from charlstm.data.vocab import Vocab
from charlstm.serving.server import serve_available

pytestmark = pytest.mark.skipif(
    not serve_available(), reason="the serve extra is not installed: pip install 'charlstm[serve]'"
)
httpx = pytest.importorskip("httpx", reason="httpx is not installed: pip install -e '.[dev]'")

TEXT = "the cat sat on a mat.\nCafé naïve — 東京 😀! the cat sat.\n" * 3


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return served_run(tmp_path_factory.mktemp("runs"), "myrun", CHARS, seed=3)


@pytest.fixture(scope="module")
def server(ckpt):
    limits = dict(max_streams=64, max_n=8, max_prompt_chars=4000, max_body_bytes=64000)
    with running_server(ckpt, **limits) as running:
        yield running


def reference_logprobs(ckpt: Path, text: str) -> torch.Tensor:
    """log p(char t | chars < t) for t >= 1, straight from the model (no server)."""
    from charlstm.model.checkpoint import load_checkpoint

    loaded = load_checkpoint(ckpt)
    ids = torch.from_numpy(loaded.vocab.encode(text))
    with torch.no_grad():
        logits, _ = loaded.model(ids[:, None])
    return torch.log_softmax(logits[:-1, 0].float(), -1), ids


def test_echo_scores_the_prompt_and_its_mean_is_evals_loss(server, ckpt, tmp_path, run_cli):
    url, _ = server
    body = {"model": "myrun", "prompt": TEXT, "max_tokens": 0, "echo": True, "logprobs": 1}
    choice = post(url, body).json()["choices"][0]
    lp = choice["logprobs"]
    assert choice["text"] == TEXT and choice["finish_reason"] == "length"
    assert lp["tokens"] == list(TEXT) and lp["text_offset"] == list(range(len(TEXT)))
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    (tmp_path / "t.txt").write_text(TEXT, encoding="utf-8")
    result = run_cli("eval", str(ckpt), "--text", str(tmp_path / "t.txt"), "--json")
    assert result.exit_code == 0, result.output
    loss = json.loads(result.stdout)["loss"]
    mean = -sum(lp["token_logprobs"][1:]) / (len(TEXT) - 1)
    assert abs(mean - loss) < 1e-4
    # every score is the model's own, and the top entries are the most likely characters
    logp, ids = reference_logprobs(ckpt, TEXT)
    expected = logp.gather(1, ids[1:, None])[:, 0]
    assert torch.allclose(torch.tensor(lp["token_logprobs"][1:]), expected, atol=1e-5)
    for t, top in enumerate(lp["top_logprobs"][1:]):
        best = int(logp[t].argmax())
        assert CHARS_OF(ckpt)[best] in top and len(top) in (1, 2)
        # lm-eval's greedy check: the chosen token's value IS the top value when it is the argmax
        assert (max(top.values()) == lp["token_logprobs"][t + 1]) == (best == int(ids[t + 1]))


def CHARS_OF(ckpt: Path) -> str:
    return Vocab("char", "".join(sorted(set(CHARS)))).chars


def test_max_tokens_1_is_the_prompt_then_exactly_one_token(server, ckpt):
    url, _ = server
    prompt = "the cat sat"
    body = {"model": "myrun", "prompt": prompt, "max_tokens": 1, "echo": True, "logprobs": 5,
            "temperature": 0}  # fmt: skip
    choice = post(url, body).json()["choices"][0]
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(prompt) + 1 and "".join(lp["tokens"]) == choice["text"]
    assert lp["text_offset"][-1] == len(prompt)
    greedy_top = lp["top_logprobs"][-1]
    assert len(greedy_top) == 5 and max(greedy_top.values()) == lp["token_logprobs"][-1]
    assert greedy_top[lp["tokens"][-1]] == lp["token_logprobs"][-1]
    # the prompt's part is what max_tokens 0 gives
    scored = post(url, {**body, "max_tokens": 0}).json()["choices"][0]["logprobs"]
    assert lp["token_logprobs"][:-1] == scored["token_logprobs"]
    # lm-eval's arithmetic: the continuation's tokens sit at [ctxlen:-1]
    context, continuation = "the cat", " sat"
    ctxlen = len(context)
    assert sum(lp["token_logprobs"][ctxlen:-1]) == pytest.approx(
        sum(scored["token_logprobs"][ctxlen:]), abs=1e-9
    )
    assert len(lp["token_logprobs"][ctxlen:-1]) == len(continuation)


def test_openai_client_logprobs_plain_streamed_and_with_stop(server):
    openai = pytest.importorskip("openai", reason="pip install -e '.[dev]' for the openai client")
    url, _ = server
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30)
    out = client.completions.create(model="myrun", prompt="the", max_tokens=40, temperature=0.8,
                                    seed=4, logprobs=2)  # fmt: skip
    choice = out.choices[0]
    assert "".join(choice.logprobs.tokens) == choice.text and len(choice.logprobs.tokens) == 40
    assert choice.logprobs.text_offset == list(range(40))
    assert all(lp <= 0 for lp in choice.logprobs.token_logprobs)
    assert all(2 <= len(top) <= 3 for top in choice.logprobs.top_logprobs)
    tokens, logprobs, text = [], [], ""
    chunks = client.completions.create(
        model="myrun", prompt="the", max_tokens=40, temperature=0.8, seed=4, logprobs=2, stream=True
    )
    for chunk in chunks:
        for c in chunk.choices:
            text += c.text
            if c.logprobs is not None:
                tokens += c.logprobs.tokens
                logprobs += c.logprobs.token_logprobs
    assert text == choice.text and tokens == choice.logprobs.tokens
    assert logprobs == choice.logprobs.token_logprobs
    stop = choice.text[10:12]
    cut = client.completions.create(model="myrun", prompt="the", max_tokens=40, temperature=0.8,
                                    seed=4, logprobs=0, stop=stop)  # fmt: skip
    c = cut.choices[0]
    assert c.finish_reason == "stop" and c.text == choice.text[: choice.text.index(stop)]
    assert "".join(c.logprobs.tokens) == c.text
    assert all(len(top) == 1 for top in c.logprobs.top_logprobs)  # logprobs 0: the chosen one
    echoed = client.completions.create(model="myrun", prompt="the", max_tokens=5, temperature=0,
                                       echo=True, logprobs=1, stream=True)  # fmt: skip
    streamed = [t for ch in echoed for c in ch.choices if c.logprobs for t in c.logprobs.tokens]
    assert len(streamed) == 3 + 5 and streamed[:3] == ["t", "h", "e"]


def test_prompts_as_token_ids(server):
    url, _ = server
    ids = httpx.post(url + "/tokenize", json={"prompt": "the cat"}).json()["tokens"]
    base = {"model": "myrun", "max_tokens": 12, "temperature": 0}
    as_text = post(url, {**base, "prompt": "the cat"}).json()["choices"][0]["text"]
    assert post(url, {**base, "prompt": ids}).json()["choices"][0]["text"] == as_text
    two = post(url, {**base, "prompt": [ids, ids[:3]], "echo": True}).json()["choices"]
    assert [c["text"][:7] for c in two] == ["the cat", "the cat"[:3] + two[1]["text"][3:7]]
    assert two[0]["text"] == "the cat" + as_text
    # lm-eval's batches: 16 prompts of one choice each
    many = post(url, {**base, "prompt": ["the cat"] * 16, "max_tokens": 1, "echo": True,
                      "logprobs": 1})  # fmt: skip
    assert many.status_code == 200 and len(many.json()["choices"]) == 16


@pytest.mark.parametrize(
    "prompt, message",
    [
        ([0, 1, 10**30], "token id 1000000000000000000000000000000 (at 2)"),
        ([[0, 1], [-1]], "token id -1 (at 0)"),
        ([[0, 1], "the"], "a list of token ids"),
        ([0, "t"], "a list of token ids"),
        ([[]], "a list of token ids"),
        ([], "prompt is required"),
        ([True, False], "a list of token ids"),
        ([0.5], "a list of token ids"),
        (["t"] * 33, "at most 32 per request"),
    ],
)  # fmt: skip
def test_bad_token_id_prompts(server, prompt, message):
    response = post(server[0], {"model": "myrun", "prompt": prompt})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "prompt" and message in error["message"], error


def test_tokenizer_routes_round_trip_any_text(server):
    url, scheduler = server
    info = httpx.get(url + "/tokenizer_info").json()
    assert "eos_token" in info and info["eos_token"] is None and info["bos_token"] == "\n"
    assert info["vocab_size"] == scheduler.vocab.size
    text = "Café naïve — 東京 😀!\n"
    out = httpx.post(url + "/tokenize", json={"prompt": text, "add_special_tokens": False}).json()
    assert out["count"] == len(text) == len(out["tokens"])
    assert out["tokens"] == scheduler.vocab.encode(text).tolist()
    back = httpx.post(url + "/detokenize", json={"tokens": out["tokens"]}).json()
    assert back == {"prompt": text}
    strs = httpx.post(url + "/tokenize", json={"prompt": text, "return_token_strs": True,
                                              "model": "myrun"}).json()  # fmt: skip
    assert strs["token_strs"] == list(text)
    assert httpx.post(url + "/detokenize", json={"tokens": []}).json() == {"prompt": ""}


@pytest.mark.parametrize(
    "route, body, status, param, message",
    [
        ("/tokenize", {"prompt": "xyz"}, 400, "prompt", "'x' at 0"),
        ("/tokenize", {"prompt": 5}, 400, "prompt", "prompt must be a string"),
        ("/tokenize", {}, 400, "prompt", "either prompt"),
        ("/tokenize", {"prompt": "t", "messages": []}, 400, "prompt", "not both"),
        ("/tokenize", {"prompt": "t", "add_special_tokens": "no"}, 400, "add_special_tokens",
         "true or false"),
        ("/tokenize", {"prompt": "t", "model": "gpt-4"}, 404, "model", "does not exist"),
        ("/tokenize", {"prompt": "t", "extra": 1}, 400, "extra", "unrecognized"),
        ("/tokenize", {"prompt": "t" * 4001}, 400, "prompt", "at most 4000"),
        ("/tokenize", [1], 400, None, "JSON object"),
        ("/detokenize", {"tokens": [0, 99]}, 400, "tokens", "token id 99 (at 1)"),
        ("/detokenize", {"tokens": "abc"}, 400, "tokens", "a list of token ids"),
        ("/detokenize", {"tokens": [1.5]}, 400, "tokens", "a list of token ids"),
        ("/detokenize", {}, 400, "tokens", "tokens is required"),
        ("/detokenize", {"tokens": [0], "prompt": "t"}, 400, "prompt", "unrecognized"),
    ],
)  # fmt: skip
def test_tokenizer_routes_bad_requests(server, route, body, status, param, message):
    response = httpx.post(server[0] + route, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and message in error["message"], error


def test_bad_json_on_tokenize(server):
    response = httpx.post(server[0] + "/tokenize", content=b"{nope")
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]


def test_unknown_route_is_a_404_naming_it(server):
    response = httpx.post(server[0] + "/v1/embeddings", json={"model": "myrun", "input": "t"})
    assert response.status_code == 404
    message = response.json()["error"]["message"]
    assert "POST /v1/embeddings" in message and "model" not in message
    wrong = httpx.get(server[0] + "/v1/completions")
    assert wrong.status_code == 405 and "GET /v1/completions" in wrong.json()["error"]["message"]


def test_unknown_characters_skip_and_replace(ckpt):
    # CHARS has no U+FFFD and no '?': a space replaces
    for policy, expected in (("skip", "thecat"), ("replace", "the cat")):
        with running_server(ckpt, app_options={"unknown": policy}) as (url, _):
            body = {"model": "myrun", "prompt": "the\x07cat", "max_tokens": 0, "echo": True}
            text = post(url, body).json()["choices"][0]["text"]
            assert text == expected
            tokens = httpx.post(url + "/tokenize", json={"prompt": "the\x07cat"}).json()
            assert tokens["count"] == len(expected)


def test_byte_level_model_scores_bytes(tmp_path):
    path = tmp_path / "bytes" / "best.pt"
    path.parent.mkdir()
    ckpt = random_checkpoint(path, Vocab.bytes(), hidden_size=16, num_layers=1, seed=1)
    with running_server(ckpt) as (url, _):
        body = {"model": "bytes", "prompt": "aé!", "max_tokens": 0, "echo": True, "logprobs": 1}
        lp = post(url, body).json()["choices"][0]["logprobs"]
        assert lp["tokens"] == ["a", "bytes:\\xc3", "bytes:\\xa9", "!"]
        assert lp["text_offset"] == [0, 1, 1, 2]
        assert all(math.isfinite(x) for x in lp["token_logprobs"][1:])
        info = httpx.get(url + "/tokenizer_info").json()
        assert info["level"] == "byte" and info["vocab_size"] == 256


def test_served_name_of_a_model_folder_is_the_folder(ckpt, tmp_path, run_cli):
    pytest.importorskip("safetensors", reason="pip install -e '.[dev]' for safetensors")
    from charlstm.serving.server import run_name

    out = tmp_path / "exported-model"
    result = run_cli("export", str(ckpt), "--format", "safetensors", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert run_name(out) == "exported-model" and run_name(ckpt) == "myrun"
    with running_server(out) as (url, _):
        models = httpx.get(url + "/v1/models").json()
        assert [m["id"] for m in models["data"]] == ["exported-model"]


def test_unknown_policy_is_checked_against_the_vocabulary():
    from charlstm.errors import OptionError
    from charlstm.serving.prompts import PromptEncoder

    with pytest.raises(OptionError, match="needs U\\+FFFD, '\\?' or a space"):
        PromptEncoder(Vocab("char", "ab"), "replace")
    with pytest.raises(OptionError, match="use error, skip or replace"):
        PromptEncoder(Vocab("char", "ab"), "drop")
    assert PromptEncoder(Vocab("char", "?ab"), "replace").text("axb").tolist() == [1, 0, 2]
