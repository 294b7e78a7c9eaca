"""vLLM's tokenizer endpoints at the server's root, so that clients which count tokens themselves
(lm-eval's `local-completions` finds them on its own) need no tokenizer of their own.

`GET /tokenizer_info` describes the vocabulary (with the `eos_token` key lm-eval looks for:
null, since a character model has no end-of-text token; `bos_token` is a newline when the
vocabulary has one, the context a prompt-less sample starts from), `POST /tokenize`
`{"prompt"}` or `{"messages"}` (rendered by the chat template) gives `{"tokens", "count",
"max_model_len"}`, and `POST /detokenize` `{"tokens"}` gives `{"prompt"}`. A token is one
character (one byte for a byte-level model); its id is the model's own.
"""

from __future__ import annotations

import json

from charlstm.serving.prompts import PromptEncoder
from charlstm.serving.protocol import APIError, Body

TOKENIZE_FIELDS = {
    "model", "prompt", "messages", "add_special_tokens", "add_generation_prompt",
    "continue_final_message", "return_token_strs",
}  # fmt: skip
DETOKENIZE_FIELDS = {"model", "tokens"}


def tokenizer_info(encoder: PromptEncoder, max_model_len: int) -> dict:
    """What `GET /tokenizer_info` answers."""
    vocab = encoder.vocab
    newline = vocab.encode_raw("\n")
    return {
        "tokenizer_class": "charlstm",
        "level": vocab.level,
        "vocab_size": vocab.size,
        "normalize": vocab.normalize,
        "lowercase": vocab.lowercase,
        "eos_token": None,
        "bos_token": "\n" if len(newline) == 1 and newline[0] >= 0 else None,
        "pad_token": None,
        "unk_token": None,
        "add_bos_token": False,
        "unknown_characters": encoder.unknown,
        "model_max_length": max_model_len,
    }


def _body(raw_json: object, fields: set[str], model_name: str) -> dict:
    body = Body(raw_json, frozenset(fields))  # an object, with no unknown field
    model = raw_json.get("model")
    if model is not None and model != model_name:
        shown = json.dumps(model)[:80]
        raise APIError(404, f"the model {shown} does not exist; this server has {model_name!r}",
                       "model", "model_not_found")  # fmt: skip
    for name in ("add_special_tokens", "add_generation_prompt", "continue_final_message",
                 "return_token_strs"):  # fmt: skip
        body.boolean(name, False)
    return raw_json


def tokenize(raw_json: object, encoder: PromptEncoder, model_name: str, max_chars: int,
             render_chat=None) -> dict:  # fmt: skip
    """What `POST /tokenize` answers: the ids of `prompt`, or of `messages` rendered by
    `render_chat(messages, add_generation_prompt)` (the chat template)."""
    from charlstm.serving.scoring import token_strings

    body = _body(raw_json, TOKENIZE_FIELDS, model_name)
    if ("prompt" in body) == ("messages" in body):
        raise APIError(400, "send either prompt (a string) or messages (a chat), not both",
                       "prompt")  # fmt: skip
    if "messages" in body:
        if render_chat is None:
            raise APIError(400, "this server has no chat template", "messages")
        prompt = render_chat(body["messages"], body.get("add_generation_prompt", True) is True)
    else:
        prompt = body["prompt"]
        if not isinstance(prompt, str):
            raise APIError(400, "prompt must be a string", "prompt")
    if len(prompt) > max_chars:
        raise APIError(400, f"the prompt has {len(prompt)} characters; this server takes at "
                       f"most {max_chars}", "prompt", "context_length_exceeded")  # fmt: skip
    ids = encoder.text(prompt).tolist()
    out = {"count": len(ids), "max_model_len": max_chars, "tokens": ids, "token_strs": None}
    if body.get("return_token_strs"):
        out["token_strs"] = token_strings(encoder.vocab, ids)
    return out


def detokenize(raw_json: object, encoder: PromptEncoder, model_name: str, max_chars: int) -> dict:
    """What `POST /detokenize` answers: the text of `tokens` (ids), each checked."""
    body = _body(raw_json, DETOKENIZE_FIELDS, model_name)
    tokens = body.get("tokens")
    if not isinstance(tokens, list) or not all(
        isinstance(t, int) and not isinstance(t, bool) for t in tokens
    ):
        raise APIError(400, "tokens is required: a list of token ids", "tokens")
    if len(tokens) > max_chars:
        raise APIError(400, f"tokens has {len(tokens)} ids; this server takes at most "
                       f"{max_chars}", "tokens")  # fmt: skip
    if not tokens:
        return {"prompt": ""}
    return {"prompt": encoder.decode(encoder.ids(tokens, "tokens"))}
