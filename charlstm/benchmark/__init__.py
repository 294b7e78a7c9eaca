"""Stage 4, benchmark: charlstm's speed measured against this machine's own limits.

The public API is listed once, in `charlstm/__init__.py`."""
