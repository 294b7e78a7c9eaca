"""Prompts as a client sends them: text or the model's own token ids, one or a list (OpenAI's
four shapes), and what happens to characters the vocabulary lacks (`--unknown`).

The vocabulary is the model's: one id per character (one per byte for a byte-level model), as
`GET /tokenizer_info` and `POST /tokenize` report them. Text is normalized as the training text
was; a character the vocabulary still lacks is refused (`error`, the default: a 400 naming it),
dropped (`skip`) or replaced (`replace`: by the first of U+FFFD, `?` and a space that the
vocabulary has), the same way in every route (completions, chat, tokenize).
"""

from __future__ import annotations

import numpy as np

from charlstm.errors import OptionError
from charlstm.serving.protocol import APIError

UNKNOWN_POLICIES = ("error", "skip", "replace")
REPLACEMENTS = ("\ufffd", "?", " ")  # for --unknown replace: the first one the vocabulary has


class PromptEncoder:
    """Text and token ids to the model's ids, under one `--unknown` policy."""

    def __init__(self, vocab, unknown: str = "error") -> None:
        if unknown not in UNKNOWN_POLICIES:
            raise OptionError(f"unknown --unknown {unknown!r}", "use error, skip or replace")
        self.vocab = vocab
        self.unknown = unknown
        self.replacement = None
        if unknown == "replace":
            known = [c for c in REPLACEMENTS if (vocab.encode_raw(c) >= 0).all()]
            if not known:
                raise OptionError(
                    "--unknown replace needs U+FFFD, '?' or a space in the vocabulary; "
                    "this model has none of them",
                    "use --unknown error or skip",
                )
            self.replacement = int(vocab.encode_raw(known[0])[0])

    def text(self, text: str, param: str = "prompt", what: str = "the prompt") -> np.ndarray:
        """`text` as ids (normalized as the vocabulary was); unknown characters per the policy."""
        if not text:
            return np.zeros(0, np.int64)
        normalized = self.vocab.normalize_text(text)
        ids = self.vocab.encode_raw(normalized)
        bad = np.flatnonzero(ids < 0)
        if not len(bad):
            return ids
        if self.unknown == "skip":
            return ids[ids >= 0]
        if self.unknown == "replace":
            return np.where(ids < 0, self.replacement, ids)
        message = self.vocab.unknown_message(normalized, bad, what)
        raise APIError(
            400,
            f"{message}; remove them, or start the server with --unknown skip or replace",
            param,
        )

    def ids(self, ids: list[int], param: str = "prompt") -> np.ndarray:
        """Token ids, each checked to be one of the model's."""
        size = self.vocab.size
        if min(ids) < 0 or max(ids) >= size:
            i, x = next((i, x) for i, x in enumerate(ids) if not 0 <= x < size)
            raise APIError(
                400,
                f"token id {x} (at {i}) is not one of this model's: ids are 0 to {size - 1}, "
                "see POST /tokenize",
                param,
            )
        return np.asarray(ids, dtype=np.int64)

    def prompt(self, prompt: str | list[int], param: str = "prompt") -> np.ndarray:
        return self.text(prompt, param) if isinstance(prompt, str) else self.ids(prompt, param)

    def decode(self, ids: np.ndarray) -> str:
        return self.vocab.decode(ids) if len(ids) else ""
