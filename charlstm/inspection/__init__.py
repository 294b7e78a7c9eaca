"""Stage 4, inspection: what a model does on a text, character by character (surprisal,
neurons), in the terminal or as a self-contained web page.

The public API is listed once, in `charlstm/__init__.py`."""
