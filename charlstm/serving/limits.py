"""What the server lets one request ask for: the operator's limits, each a `serve` option."""

from __future__ import annotations

from dataclasses import dataclass

from charlstm.config import option
from charlstm.errors import OptionError


@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask for; beyond it, a 4xx error (413 body, 429 streams, else 400)."""

    max_streams: int = option(64, "Concurrent streams (all requests; more get a 429).")
    max_tokens: int = option(4096, "Largest max_tokens a request may ask.")
    max_n: int = option(8, "Most choices per prompt (n).")
    max_prompts: int = option(32, "Most prompts per request (lm-eval's --batch_size).")
    max_prompt_chars: int = option(8192, "Longest prompt, in characters.")
    max_body_bytes: int = option(256 * 1024, "Largest request body (a bigger one gets a 413).")

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        for name, value in vars(self).items():
            if not isinstance(value, int) or value < 1:
                flag = "--" + name.replace("_", "-")
                raise OptionError(f"{flag} must be >= 1, got {value}")
