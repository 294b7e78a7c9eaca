"""Log-probabilities of tokens: the scores a client asks for with `logprobs` (and `echo`).

A token's log-probability is under the model's own distribution, log softmax of its logits
at temperature 1 before any top-k / top-p filter (as vLLM reports it by default), so a text's
scores do not depend on how it was sampled. The prompt's scores come from the same forward
pass that primes a stream (`BatchScheduler._admit`): one pass over the whole prompt from a
zero state, as `charlstm eval` scores a text, so their mean over a text is `eval`'s loss.

The chosen token's value and the top alternatives are read from one log-softmax tensor, so
when the chosen token is the argmax its value and its top entry are the identical float
(lm-eval's greedy check compares them with `==`).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np
import torch

MAX_LOGPROBS = 20  # alternatives per token: the most any API asks for (OpenAI's chat: 20)


@dataclass
class TokenLogprobs:
    """Per-token scores of a sequence, column by column: the token ids, each one's
    log-probability (None for a first prompt token, which nothing predicts), its top
    alternatives (ids and log-probabilities, None for that first token), and `ends`: how many
    characters of text the sequence has produced after each token (a byte-level model
    produces none for the leading bytes of a multi-byte character)."""

    ids: list[int] = field(default_factory=list)
    logprobs: list[float | None] = field(default_factory=list)
    top_ids: list[list[int] | None] = field(default_factory=list)
    top_logprobs: list[list[float] | None] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)

    def append(self, token_id: int, logprob: float, top_ids, top_logprobs, chars: int) -> None:
        """One more (generated) token, which added `chars` characters to the text."""
        self.ids.append(token_id)
        self.logprobs.append(logprob)
        self.top_ids.append(top_ids)
        self.top_logprobs.append(top_logprobs)
        self.ends.append((self.ends[-1] if self.ends else 0) + chars)

    def covering(self, n_chars: int, complete: bool = False) -> int:
        """How many tokens make up the first `n_chars` characters of the text: those that end
        by then, less trailing bytes of a character not yet complete (all, when `complete`)."""
        if complete:
            return len(self.ids)
        m = bisect.bisect_right(self.ends, n_chars)
        while m and self.ends[m - 1] == (self.ends[m - 2] if m > 1 else 0):
            m -= 1  # leading bytes of a character that is not part of the text yet
        return m


@torch.no_grad()
def score_tokens(logits: torch.Tensor, ids: torch.Tensor, k: int) -> tuple[list, list, list]:
    """For each row of `logits` (N, V) and the token `ids` (N,) that followed it: the token's
    log-probability, and the `k` most likely tokens' ids and log-probabilities (lists)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    chosen = logp.gather(1, ids.long()[:, None])[:, 0]
    k = min(k, logp.shape[-1])
    if k > 0:
        top_lp, top_ids = logp.topk(k, dim=-1)
        return chosen.tolist(), top_ids.tolist(), top_lp.tolist()
    empty = [[] for _ in range(len(ids))]
    return chosen.tolist(), empty, [[] for _ in range(len(ids))]


def prompt_scores(
    logits: torch.Tensor, ids: torch.Tensor, k: int, ends: list[int]
) -> TokenLogprobs:
    """A prompt's scores from the logits of one pass over it (T, V): token 0 has none, token
    t > 0 is scored by the logits after token t - 1. `ends`: the text's length after each
    token (`TokenLogprobs.ends`)."""
    if len(ids) == 0:
        return TokenLogprobs()
    lps, top_ids, top_lps = score_tokens(logits[:-1], ids[1:], k)
    return TokenLogprobs(ids.tolist(), [None, *lps], [None, *top_ids], [None, *top_lps], ends)


def text_ends(ids: np.ndarray, level: str) -> list[int]:
    """The text's length in characters after each token of `ids`: one character per id at the
    char level; at the byte level a character counts when its last UTF-8 byte arrives (the
    byte after it is not a continuation byte)."""
    n = len(ids)
    if level != "byte":
        return list(range(1, n + 1))
    continuation = (np.asarray(ids) & 0xC0) == 0x80
    starts = np.cumsum(~continuation)  # characters begun by each byte
    pending = np.append(continuation[1:], False)  # the next byte still belongs to this one
    return (starts - pending).tolist()
