"""Stage 4, serving: the OpenAI-compatible HTTP server (an ASGI app) over the batched
generator, and its playground page.

The public API is listed once, in `charlstm/__init__.py`."""
