"""`/v1/chat/completions` against the clients people use, unchanged and offline: the official
`openai` client, LangChain's `ChatOpenAI` and LiteLLM's `completion`, plain and streamed; the
template (default and `--chat-template FILE`), `--unknown`, and every refused field."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_server import running_server
from tiny import random_checkpoint, served_run

from charlstm.data.vocab import Vocab
from charlstm.errors import OptionError
from charlstm.serving.chat import ChatTemplate, default_template
from charlstm.serving.server import serve_available

pytestmark = pytest.mark.skipif(
    not serve_available(), reason="the serve extra is not installed: pip install 'charlstm[serve]'"
)
httpx = pytest.importorskip("httpx", reason="httpx is not installed: pip install -e '.[dev]'")

CHARS = "the cat sat on a mat.\nUSER ASSISTANT: Café 東京!"
MESSAGES = [
    {"role": "system", "content": "the cat"},
    {"role": "user", "content": "sat on a mat."},
    {"role": "assistant", "content": "the mat."},
    {
        "role": "user",
        "content": [{"type": "text", "text": "Café "}, {"type": "text", "text": "東京"}],
    },
]
PROMPT = (
    "the cat\n\nUSER:\nsat on a mat.\n\nASSISTANT:\nthe mat.\n\nUSER:\nCafé 東京\n\nASSISTANT:\n"
)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return served_run(tmp_path_factory.mktemp("runs"), "chatrun", CHARS, seed=5)


@pytest.fixture(scope="module")
def server(ckpt):
    with running_server(ckpt, max_streams=16, max_n=4, max_prompt_chars=400,
                        max_body_bytes=8000) as running:  # fmt: skip
        yield running


def reference(scheduler, prompt: str, max_tokens: int, stop=("\n\n",)) -> str:
    """The greedy reply from the library (no HTTP): the model continues the rendered chat."""
    from charlstm.generation.batching import BatchScheduler, SamplingParams

    fresh = BatchScheduler(scheduler.checkpoint_path)
    params = SamplingParams(max_tokens=max_tokens, temperature=0, stop=tuple(stop))
    return fresh.generate(prompt, params)[0]


def chat(url: str, body: dict) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", json={"model": "chatrun", **body}, timeout=30)


def test_the_default_template_renders_the_documented_text():
    template = default_template()
    from charlstm.serving.chat import chat_messages

    assert template.render(chat_messages(MESSAGES)) == PROMPT
    assert template.stop == ("\n\n",)


def test_openai_client_chat_plain_and_streamed(server):
    openai = pytest.importorskip("openai", reason="pip install -e '.[dev]' for the openai client")
    url, scheduler = server
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30)
    out = client.chat.completions.create(model="chatrun", messages=MESSAGES, max_tokens=60,
                                         temperature=0)  # fmt: skip
    expected = reference(scheduler, PROMPT, 60)
    assert out.object == "chat.completion" and out.id.startswith("chatcmpl-")
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == expected
    assert out.choices[0].finish_reason == ("stop" if len(expected) < 60 else "length")
    assert out.usage.prompt_tokens == len(PROMPT)
    assert out.usage.completion_tokens >= len(expected)
    chunks = list(client.chat.completions.create(
        model="chatrun", messages=MESSAGES, max_completion_tokens=60, temperature=0, stream=True,
        stream_options={"include_usage": True}))  # fmt: skip
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == [out.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == len(PROMPT)


def test_n_seed_stop_top_p_and_max_tokens(server):
    url, scheduler = server
    body = {"messages": MESSAGES, "n": 3, "seed": 7, "temperature": 1.0, "top_p": 0.9,
            "max_tokens": 40, "stop": ["zz"]}  # fmt: skip
    first = chat(url, body).json()
    assert [c["index"] for c in first["choices"]] == [0, 1, 2]
    again = chat(url, body).json()
    assert [c["message"]["content"] for c in again["choices"]] == [
        c["message"]["content"] for c in first["choices"]
    ]
    for c in first["choices"]:
        assert len(c["message"]["content"]) <= 40 and "\n\n" not in c["message"]["content"]
    greedy = reference(scheduler, PROMPT, 100, stop=())
    stop = greedy[3:5]
    cut = chat(url, {"messages": MESSAGES, "temperature": 0, "max_tokens": 100, "stop": stop})
    reply = cut.json()["choices"][0]
    expected = reference(scheduler, PROMPT, 100, stop=(stop, "\n\n"))
    assert reply["message"]["content"] == expected and reply["finish_reason"] == "stop"
    both = chat(url, {"messages": MESSAGES, "max_tokens": 5, "max_completion_tokens": 5})
    assert both.status_code == 200 and both.json()["usage"]["completion_tokens"] <= 5


def test_langchain_chat_openai(server):
    langchain_openai = pytest.importorskip(
        "langchain_openai", reason="pip install 'charlstm[clients]' for langchain-openai"
    )
    url, scheduler = server
    model = langchain_openai.ChatOpenAI(
        model="chatrun",
        base_url=url + "/v1",
        api_key="unused",
        temperature=0,
        max_tokens=50,
        max_retries=0,
        timeout=30,
    )
    messages = [("system", "the cat"), ("human", "sat on a mat.")]
    prompt = "the cat\n\nUSER:\nsat on a mat.\n\nASSISTANT:\n"
    expected = reference(scheduler, prompt, 50)
    reply = model.invoke(messages)
    assert reply.content == expected
    assert reply.response_metadata["finish_reason"] in ("stop", "length")
    assert "".join(chunk.content for chunk in model.stream(messages)) == expected


def test_litellm_completion(server):
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no download at import
    litellm = pytest.importorskip("litellm", reason="pip install 'charlstm[clients]' for litellm")
    url, scheduler = server
    messages = [{"role": "user", "content": "sat on a mat."}]
    prompt = "USER:\nsat on a mat.\n\nASSISTANT:\n"
    expected = reference(scheduler, prompt, 50)
    reply = litellm.completion(model="openai/chatrun", api_base=url + "/v1", api_key="unused",
                               messages=messages, max_tokens=50, temperature=0)  # fmt: skip
    assert reply.choices[0].message.content == expected
    assert reply.usage.prompt_tokens == len(prompt)
    streamed = litellm.completion(
        model="openai/chatrun",
        api_base=url + "/v1",
        api_key="unused",
        messages=messages,
        max_tokens=50,
        temperature=0,
        stream=True,
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == expected


@pytest.mark.parametrize(
    "body, param, message",
    [
        ({"messages": MESSAGES, "tools": [{"type": "function", "function": {"name": "f"}}]},
         "tools", "cannot call tools"),
        ({"messages": MESSAGES, "tool_choice": "auto"}, "tool_choice", "cannot call tools"),
        ({"messages": MESSAGES, "functions": [{"name": "f"}]}, "functions", "cannot call tools"),
        ({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]},
         "messages", "cannot see images"),
        ({"messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]},
         "messages", "cannot hear audio"),
        ({"messages": MESSAGES, "modalities": ["text", "audio"]}, "modalities", "plain text"),
        ({"messages": MESSAGES, "audio": {"voice": "alloy", "format": "wav"}}, "audio",
         "no audio"),
        ({"messages": MESSAGES, "response_format": {"type": "json_object"}}, "response_format",
         "JSON"),
        ({"messages": [{"role": "tool", "content": "1", "tool_call_id": "x"}]}, "messages",
         "cannot call tools"),
        ({"messages": MESSAGES, "logprobs": True}, "logprobs", "/v1/completions"),
        ({"messages": []}, "messages", "non-empty list"),
        ({"messages": "hello"}, "messages", "non-empty list"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages", "role must be"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages", "content must be"),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages",
         "type: text"),
        ({"messages": [{"role": "user", "content": "hi", "colour": 1}]}, "messages",
         "unrecognized field"),
        ({"messages": [{"role": "user", "content": "xyz"}]}, "messages",
         "messages[0].content has 3 character(s) the vocabulary lacks"),
        ({"messages": MESSAGES, "max_tokens": 5, "max_completion_tokens": 6},
         "max_completion_tokens", "differ"),
        ({"messages": MESSAGES, "max_completion_tokens": 10**6}, "max_completion_tokens",
         "from 0 to 400"),
        ({"messages": MESSAGES, "n": 5}, "n", "from 1 to 4"),
        ({"messages": MESSAGES, "temperature": "hot"}, "temperature", "a number"),
        ({"messages": MESSAGES, "stop": [1]}, "stop", "stop must"),
        ({"messages": MESSAGES, "frequency_penalty": 1}, "frequency_penalty", "not supported"),
        ({"messages": MESSAGES, "stream_options": {"include_usage": True}}, "stream_options",
         "only allowed with stream"),
        ({"messages": MESSAGES, "prompt": "the"}, "prompt", "unrecognized"),
        ({"messages": [{"role": "user", "content": "a" * 401}]}, "prompt", "at most 400"),
    ],
)  # fmt: skip
def test_bad_chat_requests_say_why(server, body, param, message):
    response = chat(server[0], body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and message in error["message"], error


def test_bad_chat_bodies(server):
    url, _ = server
    raw = httpx.post(url + "/v1/chat/completions", content=b"{oops", timeout=30)
    assert raw.status_code == 400 and "not valid JSON" in raw.json()["error"]["message"]
    other = httpx.post(url + "/v1/chat/completions", json={"model": "gpt-4o", "messages": MESSAGES})
    assert other.status_code == 404 and other.json()["error"]["code"] == "model_not_found"


def test_tokenize_messages_and_tokenizer_info_template(server):
    url, _ = server
    out = httpx.post(url + "/tokenize", json={"messages": MESSAGES}).json()
    assert out["count"] == len(PROMPT)
    info = httpx.get(url + "/tokenizer_info").json()
    jinja2 = pytest.importorskip("jinja2", reason="jinja2 renders the reported template")
    from charlstm.serving.chat import chat_messages

    plain = [{"role": r, "content": c} for r, c in chat_messages(MESSAGES)]
    template = jinja2.Template(info["chat_template"])
    rendered = template.render(messages=plain, add_generation_prompt=True)
    assert rendered == PROMPT


def test_unknown_characters_in_messages_skip_and_replace(ckpt):
    for policy, content in (("skip", "sat"), ("replace", "s t")):
        with running_server(ckpt, app_options={"unknown": policy}) as (url, _):
            body = {"messages": [{"role": "user", "content": "s\x07t" if policy == "replace"
                                  else "s\x07a\x08t"}], "max_tokens": 0}  # fmt: skip
            reply = chat(url, body)
            assert reply.status_code == 200, reply.text
            assert reply.json()["usage"]["prompt_tokens"] == len(
                f"USER:\n{content}\n\nASSISTANT:\n"
            )


def test_chat_template_file_and_a_vocabulary_the_default_does_not_fit(tmp_path):
    lower = Vocab("char", "".join(sorted(set("the cat sat on a mat.\n:"))))
    path = tmp_path / "lower" / "best.pt"
    path.parent.mkdir()
    ckpt = random_checkpoint(path, lower, hidden_size=16, num_layers=1, seed=2)
    with running_server(ckpt) as (url, _):
        body = {"model": "lower", "messages": MESSAGES}
        reply = httpx.post(url + "/v1/chat/completions", json=body)
        assert reply.status_code == 400
        assert "--chat-template FILE" in reply.json()["error"]["message"]
        assert httpx.get(url + "/tokenizer_info").json()["chat_template"] is None
    spec = {"system": "{content}\n", "user": "the cat: {content}\n",
            "assistant": "a mat: {content}\n", "generation": "a mat:", "stop": ["\n"]}  # fmt: skip
    (tmp_path / "t.json").write_text(json.dumps(spec))
    template = ChatTemplate.load(tmp_path / "t.json")
    with running_server(ckpt, app_options={"chat_template": template}) as (url, scheduler):
        body = {"model": "lower", "messages": [{"role": "user", "content": "sat"}],
                "max_tokens": 30, "temperature": 0}  # fmt: skip
        reply = httpx.post(url + "/v1/chat/completions", json=body).json()
        expected = reference(scheduler, "the cat: sat\na mat:", 30, stop=("\n",))
        assert reply["choices"][0]["message"]["content"] == expected


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json", "is not valid JSON"),
        ("[1]", "exactly the keys"),
        (json.dumps({**{k: "{content}" for k in ("system", "user", "assistant")},
                     "generation": "x", "stop": []})[:-1] + ', "extra": 1}', "exactly the keys"),
        (json.dumps({"system": "x", "user": "{content}", "assistant": "{content}",
                     "generation": "", "stop": []}), "system must be a string holding"),
        (json.dumps({"system": "{content}", "user": "{content}", "assistant": "{content}",
                     "generation": "{content}", "stop": []}), "generation must be"),
        (json.dumps({"system": "{content}", "user": "{content}", "assistant": "{content}",
                     "generation": "", "stop": [""]}), "stop must be"),
    ],
)  # fmt: skip
def test_bad_chat_template_files(tmp_path, content, message):
    (tmp_path / "t.json").write_text(content)
    with pytest.raises(OptionError, match="--chat-template") as info:
        ChatTemplate.load(tmp_path / "t.json")
    assert message in str(info.value)


def test_cli_chat_template_missing_or_unknown_characters(ckpt, tmp_path, run_cli):
    result = run_cli("serve", str(ckpt), "--port", "0", "--chat-template", str(tmp_path / "no"))
    assert result.exit_code != 0 and "no such file" in result.output
    spec = {"system": "{content}", "user": "Ω {content}", "assistant": "{content}",
            "generation": "", "stop": []}  # fmt: skip
    (tmp_path / "t.json").write_text(json.dumps(spec))
    result = run_cli("serve", str(ckpt), "--port", "0", "--chat-template", str(tmp_path / "t.json"))
    assert result.exit_code != 0 and "lacks" in result.output and "Ω" in result.output
