"""Stage 3, training: the run's plan (new or resumed from its folder), `--preset auto`, the loop
as small named steps, the run folder, progress events, weight averaging, torchrun/DDP.

The public API is listed once, in `charlstm/__init__.py`."""
