"""`POST /v1/chat/completions`: a chat rendered into one plain-text prompt, continued by the model.

A character model knows no roles, so a chat becomes text the model can continue, by a template
made only of characters it knows. The default reads like the play a Shakespeare model learnt
(a speaker's name on its own line, a blank line between speeches):

    {system}\\n\\n          (each system or developer message)
    USER:\\n{user}\\n\\n     (each user message)
    ASSISTANT:\\n{text}\\n\\n (each earlier assistant message)
    ASSISTANT:\\n          (then the model writes; a blank line ends its turn)

`serve --chat-template FILE` replaces it with a JSON file of the same five keys
(`DEFAULT_TEMPLATE`): the four role texts, each holding `{content}` once, and `stop`, the
sequences that end the model's turn. The template's own characters are checked against the
vocabulary at start; a message's characters the vocabulary lacks follow `--unknown`.
The model writes text only: tools, images, audio and JSON formats are refused with a 400 that
says so, never ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from charlstm.errors import OptionError
from charlstm.serving.protocol import APIError

CONTENT = "{content}"
ROLES = ("system", "user", "assistant")
DEFAULT_TEMPLATE = {
    "system": "{content}\n\n",
    "user": "USER:\n{content}\n\n",
    "assistant": "ASSISTANT:\n{content}\n\n",
    "generation": "ASSISTANT:\n",
    "stop": ["\n\n"],
}
MAX_STOP = 4  # OpenAI's limit on a request's own stop sequences
MAX_MESSAGES = 256
# fields of OpenAI's chat request: honoured, accepted as bookkeeping, or refused with a reason
CHAT_FIELDS = {
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k",
    "seed", "n", "stop", "stream", "stream_options", "user", "logprobs", "top_logprobs",
    "presence_penalty", "frequency_penalty", "logit_bias", "response_format", "tools",
    "tool_choice", "functions", "function_call", "parallel_tool_calls", "modalities", "audio",
    "store", "metadata", "service_tier", "reasoning_effort", "prediction", "web_search_options",
    "prompt_cache_key", "safety_identifier", "verbosity",
}  # fmt: skip
TEXT_ONLY = "this model reads and writes plain text"
UNSUPPORTED = {  # field: why it is refused (when set to anything but its neutral value)
    "tools": f"{TEXT_ONLY}; it cannot call tools or functions",
    "functions": f"{TEXT_ONLY}; it cannot call tools or functions",
    "function_call": f"{TEXT_ONLY}; it cannot call tools or functions",
    "audio": f"{TEXT_ONLY}; it has no audio",
    "prediction": "predicted outputs are not supported by charlstm serve",
    "web_search_options": f"{TEXT_ONLY}; it cannot search the web",
    "reasoning_effort": "this model does not reason before it writes",
    "verbosity": "verbosity is not supported by charlstm serve",
    "logprobs": "chat logprobs are not supported; /v1/completions has logprobs",
    "top_logprobs": "chat logprobs are not supported; /v1/completions has logprobs",
}


@dataclass(frozen=True)
class ChatTemplate:
    """How a chat becomes a prompt: a text per role holding `{content}`, the text that starts
    the model's turn (`generation`), and the sequences that end it (`stop`)."""

    system: str
    user: str
    assistant: str
    generation: str
    stop: tuple[str, ...]

    @classmethod
    def from_dict(cls, spec: object, source: str = "the chat template") -> ChatTemplate:
        keys = set(DEFAULT_TEMPLATE)
        if not isinstance(spec, dict) or set(spec) != keys:
            raise OptionError(
                f"{source} must be a JSON object with exactly the keys {', '.join(sorted(keys))}",
                "see docs/serve.md (Chat) for the default template",
            )
        for role in ROLES:
            text = spec[role]
            if not isinstance(text, str) or text.count(CONTENT) != 1:
                raise OptionError(f"{source}: {role} must be a string holding {CONTENT} once")
        if not isinstance(spec["generation"], str) or CONTENT in spec["generation"]:
            raise OptionError(f"{source}: generation must be a string without {CONTENT}")
        stop = spec["stop"]
        if not (isinstance(stop, list) and len(stop) <= MAX_STOP
                and all(isinstance(s, str) and s for s in stop)):  # fmt: skip
            raise OptionError(f"{source}: stop must be a list of up to {MAX_STOP} strings")
        return cls(spec["system"], spec["user"], spec["assistant"], spec["generation"],
                   tuple(stop))  # fmt: skip

    @classmethod
    def load(cls, path: str | Path) -> ChatTemplate:
        """A template from a JSON file (`--chat-template FILE`)."""
        try:
            spec = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise OptionError(f"--chat-template {path}: no such file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise OptionError(f"--chat-template {path}: cannot read it ({e})") from None
        except ValueError as e:
            raise OptionError(f"--chat-template {path} is not valid JSON ({e})") from None
        return cls.from_dict(spec, f"--chat-template {path}")

    def fixed_text(self) -> str:
        """Every character the template itself writes."""
        parts = [getattr(self, r).replace(CONTENT, "") for r in ROLES]
        return "".join(parts) + self.generation + "".join(self.stop)

    def unknown_characters(self, vocab) -> str:
        """The template's characters that `vocab` lacks (after its normalization), in order."""
        text = vocab.normalize_text(self.fixed_text())
        ids = vocab.encode_raw(text)
        return "".join(dict.fromkeys(c for c, i in zip(text, ids.tolist(), strict=True) if i < 0))

    def render(self, messages: list[tuple[str, str]], add_generation_prompt: bool = True) -> str:
        """The prompt for (role, content) messages; the model's turn starts at its end."""
        pieces = [getattr(self, role).replace(CONTENT, content) for role, content in messages]
        return "".join(pieces) + (self.generation if add_generation_prompt else "")

    def to_jinja(self) -> str:
        """The same template in Jinja, as `/tokenizer_info` reports a chat template (lm-eval's
        remote tokenizer renders chats with it)."""

        def literal(text: str) -> str:
            return "{{ " + json.dumps(text) + " }}"

        def role(name: str) -> str:
            before, after = getattr(self, name).split(CONTENT)
            return literal(before) + "{{ message['content'] }}" + literal(after)

        return (
            "{% for message in messages %}"
            "{% if message['role'] in ('system', 'developer') %}" + role("system") +
            "{% elif message['role'] == 'user' %}" + role("user") +
            "{% else %}" + role("assistant") + "{% endif %}{% endfor %}"
            "{% if add_generation_prompt %}" + literal(self.generation) + "{% endif %}"
        )  # fmt: skip


def default_template() -> ChatTemplate:
    return ChatTemplate.from_dict(DEFAULT_TEMPLATE)


def chat_messages(value: object) -> list[tuple[str, str]]:
    """OpenAI's `messages` as (role, text) pairs; developer counts as system, text parts are
    joined; tool, function, image, audio and file parts are refused with the reason."""
    if not isinstance(value, list) or not value:
        raise APIError(400, "messages is required: a non-empty list of {role, content}",
                       "messages")  # fmt: skip
    if len(value) > MAX_MESSAGES:
        raise APIError(400, f"messages has {len(value)} messages; at most {MAX_MESSAGES}",
                       "messages")  # fmt: skip
    out = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise APIError(400, f"{where} must be an object with role and content", "messages")
        role = message.get("role")
        if (
            role in ("tool", "function")
            or message.get("tool_calls")
            or message.get("function_call")
        ):
            raise APIError(400, f"{where}: {UNSUPPORTED['tools']}", "messages")
        if role not in ("system", "developer", "user", "assistant"):
            raise APIError(
                400,
                f"{where}.role must be system, developer, user or assistant, got "
                f"{json.dumps(role)[:40]}",
                "messages",
            )
        extra = sorted(set(message) - {"role", "content", "name", "refusal"})
        if extra:
            raise APIError(400, f"{where}: unrecognized field {extra[0][:40]}", "messages")
        out.append(("system" if role == "developer" else role, _content(message, where)))
    return out


def _content(message: dict, where: str) -> str:
    content = message.get("content")
    if content is None and message.get("role") == "assistant":
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise APIError(400, f"{where}.content must be a string or a list of text parts",
                       "messages")  # fmt: skip
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("image_url", "input_image", "image"):
            raise APIError(400, f"{where}.content[{j}]: {TEXT_ONLY}; it cannot see images",
                           "messages")  # fmt: skip
        if kind in ("input_audio", "audio"):
            raise APIError(400, f"{where}.content[{j}]: {TEXT_ONLY}; it cannot hear audio",
                           "messages")  # fmt: skip
        if kind == "file":
            raise APIError(400, f"{where}.content[{j}]: {TEXT_ONLY}; it cannot read files",
                           "messages")  # fmt: skip
        if kind != "text" or not isinstance(part.get("text"), str):
            raise APIError(400, f"{where}.content[{j}] must be {{type: text, text: string}}",
                           "messages")  # fmt: skip
        texts.append(part["text"])
    return "".join(texts)


def _refuse_unsupported(body: dict) -> None:
    for name, why in UNSUPPORTED.items():
        value = body.get(name)
        if value is None or value is False or value == [] or value == {}:
            continue
        raise APIError(400, f"{name}: {why}", name)
    choice = body.get("tool_choice")
    if choice is not None and choice != "none":
        raise APIError(400, f"tool_choice: {UNSUPPORTED['tools']}", "tool_choice")
    modalities = body.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise APIError(400, f'modalities: {TEXT_ONLY}; only ["text"] is possible', "modalities")
    response_format = body.get("response_format")
    if response_format is not None and response_format != {"type": "text"}:
        raise APIError(
            400,
            f"response_format: {TEXT_ONLY}; it cannot follow a JSON format or schema",
            "response_format",
        )


def parse_chat(body: dict) -> tuple[list[tuple[str, str]], str]:
    """A chat request's messages, after its refused fields are refused; and which field holds
    its max_tokens (`max_completion_tokens`, as LangChain sends it, or `max_tokens`, as
    LiteLLM does; both only if equal). The other fields are the server's to read."""
    _refuse_unsupported(body)
    messages = chat_messages(body.get("messages"))
    given = [k for k in ("max_completion_tokens", "max_tokens") if body.get(k) is not None]
    if len(given) == 2 and body[given[0]] != body[given[1]]:
        raise APIError(400, "max_tokens and max_completion_tokens differ: send one of them",
                       "max_completion_tokens")  # fmt: skip
    return messages, given[0] if given else "max_tokens"


def chunk(job, choices: list[dict], usage: dict | None = None) -> str:
    data = {"id": job.id, "object": "chat.completion.chunk", "created": job.created,
            "model": job.model, "choices": choices}  # fmt: skip
    if usage is not None:
        data["usage"] = usage
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


class ChatView:
    """How a chat request's streams are written: `chat.completion` objects, or
    `chat.completion.chunk` events ending in `data: [DONE]` (each with all the text ready for
    a choice, as the completions events)."""

    prefix = "chatcmpl"

    @staticmethod
    async def events(job):
        yield "".join(
            chunk(
                job,
                [
                    {
                        "index": s.index,
                        "delta": {"role": "assistant", "content": ""},
                        "finish_reason": None,
                    }
                ],
            )  # fmt: skip
            for s in job.streams
        )
        async for pieces in job.rounds():
            yield "".join(
                chunk(
                    job,
                    [
                        {
                            "index": s.index,
                            "delta": {"content": text} if text else {},
                            "finish_reason": reason,
                        }
                    ],
                )  # fmt: skip
                for s, text, reason in pieces
            )
        if job.request.include_usage:
            yield chunk(job, [], job.usage())
        yield "data: [DONE]\n\n"

    @staticmethod
    def response(job) -> dict:
        choices = [
            {"index": s.index, "message": {"role": "assistant", "content": s.text,
                                           "refusal": None},
             "logprobs": None, "finish_reason": s.finish_reason}
            for s in job.streams
        ]  # fmt: skip
        return {"id": job.id, "object": "chat.completion", "created": job.created,
                "model": job.model, "system_fingerprint": None, "choices": choices,
                "usage": job.usage()}  # fmt: skip
