"""Stage 4, export: a checkpoint as ONNX graphs, or as a web page that samples offline.

The public API is listed once, in `charlstm/__init__.py`."""
