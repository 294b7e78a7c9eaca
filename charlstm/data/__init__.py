"""Stage 1, data: corpora (bundled, catalog), the vocabulary, `tokenize` (text -> id arrays +
tokenizer.json), and the tokenized dataset with its truncated-BPTT streams.

The public API is listed once, in `charlstm/__init__.py`."""
