"""OpenAI's legacy `logprobs` object for `/v1/completions`: one token per character (per byte for
a byte-level model), each with its log-probability, its top alternatives and its offset.

`{"tokens": [...], "token_logprobs": [...], "top_logprobs": [{token: logprob}, ...],
"text_offset": [...]}`. With `echo` the prompt's tokens come first, the first one `null` (nothing
predicts it); `top_logprobs` holds the `logprobs` most likely tokens plus the chosen one (so up
to logprobs + 1 entries, as OpenAI documents); offsets count characters of the choice's text.
The numbers come from `charlstm.generation.logprobs`: the model's own distribution at
temperature 1, unfiltered, and for the prompt one pass from a zero state, as `charlstm eval`.
"""

from __future__ import annotations

from charlstm.generation.logprobs import TokenLogprobs

MAX_COMPLETION_LOGPROBS = 5  # OpenAI's limit for the completions API
FLOOR = -9999.0  # JSON has no -Infinity: a probability of 0 is reported as this (as vLLM does)


def token_strings(vocab, ids: list[int]) -> list[str]:
    """Each token as text: its character, or for a byte-level model its byte (ASCII as itself,
    others as OpenAI writes a partial character, `bytes:\\xNN`)."""
    if vocab.level == "byte":
        return [chr(b) if b < 0x80 else f"bytes:\\x{b:02x}" for b in ids]
    return list(vocab.decode(ids)) if ids else []


class LogprobsWriter:
    """The `logprobs` objects of one choice: everything at once (`whole`), or piece by piece as
    its text streams (`more`), each token exactly once."""

    def __init__(self, vocab, prompt: TokenLogprobs | None, generated: TokenLogprobs | None,
                 echo_chars: int) -> None:  # fmt: skip
        self.vocab = vocab
        self.prompt = prompt if prompt is not None else TokenLogprobs()
        self.generated = generated if generated is not None else TokenLogprobs()
        self.base = echo_chars  # the generated text's offset in the choice's text
        self.sent = 0  # generated tokens already written

    def echo(self) -> dict:
        """The prompt's tokens (with echo)."""
        return self._block(self.prompt, 0, len(self.prompt.ids), 0)

    def more(self, text_chars: int, complete: bool) -> dict:
        """The generated tokens that the first `text_chars` characters of the text now cover
        and were not written yet (`complete`: the stream ended by length, all of them)."""
        upto = self.generated.covering(text_chars, complete)
        block = self._block(self.generated, self.sent, max(upto, self.sent), self.base)
        self.sent = max(upto, self.sent)
        return block

    def whole(self, echo: bool, text_chars: int, complete: bool) -> dict:
        out = self.echo() if echo else _empty()
        tail = self.more(text_chars, complete)
        for key in out:
            out[key] += tail[key]
        return out

    def _block(self, scores: TokenLogprobs, lo: int, hi: int, base: int) -> dict:
        ids = scores.ids[lo:hi]
        names = token_strings(self.vocab, ids)
        starts = [base + (scores.ends[t - 1] if t else 0) for t in range(lo, hi)]
        lps = [None if lp is None else max(lp, FLOOR) for lp in scores.logprobs[lo:hi]]
        tops = []
        for t, name, lp in zip(range(lo, hi), names, lps, strict=True):
            if lp is None:
                tops.append(None)
                continue
            top_ids = scores.top_ids[t]
            values = [max(x, FLOOR) for x in scores.top_logprobs[t]]
            top = dict(zip(token_strings(self.vocab, top_ids), values, strict=True))
            top.setdefault(name, lp)  # the chosen token is always there
            tops.append(top)
        return {"tokens": names, "token_logprobs": lps, "top_logprobs": tops, "text_offset": starts}


def _empty() -> dict:
    return {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
