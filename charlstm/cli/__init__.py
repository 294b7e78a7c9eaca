"""The `charlstm` command line: Typer commands over the library, and `ui` (Rich), the only code
that knows Typer or Rich."""

from charlstm.cli.app import main

__all__ = ["main"]
