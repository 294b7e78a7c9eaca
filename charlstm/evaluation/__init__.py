"""Stage 3, evaluation: exact full-stream, windowed, dynamic and continuous-cache scoring of
a checkpoint on held-out text.

The public API is listed once, in `charlstm/__init__.py`."""
