"""Stage 2, the model: `CharLSTM`, the bf16 LSTM layer and its C cell kernel, and checkpoints
(atomic save, safe load, format version).

The public API is listed once, in `charlstm/__init__.py`."""
