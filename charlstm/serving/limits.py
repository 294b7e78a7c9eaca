"""What the server lets one request ask for: the operator's limits, each a `serve` option,
each with a ceiling, and together small enough for this machine's memory."""

from __future__ import annotations

import os
from dataclasses import dataclass

from charlstm.config import option
from charlstm.errors import OptionError

# what an operator may set, at most: beyond these a limit is a typo, not a plan
LIMIT_CEILINGS = {
    "max_prompt_chars": 1_000_000,
    "max_tokens": 1_000_000,
    "max_n": 128,
    "max_prompts": 1024,
    "max_body_bytes": 64 * 2**20,
    "max_streams": 4096,
}


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

    def check(self, memory_bytes: int | None = None) -> None:
        """Refuse limits that are not positive integers, exceed their ceiling, or whose worst
        case (every stream at max_tokens, every character 4 bytes, plus a full body per
        stream) would not fit in half of `memory_bytes` (default: this machine's RAM)."""
        for name, value in vars(self).items():
            flag = "--" + name.replace("_", "-")
            ceiling = LIMIT_CEILINGS[name]
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= ceiling:
                raise OptionError(f"{flag} must be from 1 to {ceiling:,}, got {value}")
        if self.max_n > self.max_streams:
            raise OptionError(
                f"--max-n {self.max_n} is more than --max-streams {self.max_streams}",
                "a request could never fit: lower --max-n or raise --max-streams",
            )
        memory = memory_bytes if memory_bytes is not None else _physical_memory()
        worst = self.max_streams * (4 * (self.max_tokens + self.max_prompt_chars)
                                    + self.max_body_bytes)  # fmt: skip
        if memory and worst > memory // 2:
            raise OptionError(
                f"--max-streams {self.max_streams} x (--max-tokens {self.max_tokens} + "
                f"--max-prompt-chars {self.max_prompt_chars}) needs up to "
                f"{worst / 2**30:.1f} GiB, more than half of this machine's "
                f"{memory / 2**30:.1f} GiB",
                "lower --max-tokens or --max-streams",
            )


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0
