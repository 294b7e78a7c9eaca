"""Stage 3, generation: sampling from a checkpoint with carried state (temperature, top-k,
top-p, prime, seed), and the batched stepper that many generations share.

The public API is listed once, in `charlstm/__init__.py`."""
