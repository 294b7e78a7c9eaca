"""The exception types the library raises for user mistakes."""

from __future__ import annotations


class CharLSTMError(Exception):
    """A problem the user can fix: what went wrong, and (optionally) how to fix it.

    The CLI prints ``str(error)`` as a single line on stderr and exits with ``exit_code``; a
    Python caller can read ``.message`` and ``.hint`` separately.
    """

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        text = self.message if not self.hint else f"{self.message}; {self.hint}"
        return " ".join(text.split())  # one line, always


class OptionError(CharLSTMError):
    """An option value that is malformed, out of range, or contradicts another option: a usage
    error (exit code 2), like an unknown option."""

    exit_code = 2
