"""The tiny model the tests train: CLI arguments and library keyword arguments (milliseconds a
step on one thread)."""

# `charlstm train` options, before the ones a test adds (--steps, --dropout, --seed, ...)
TINY_ARGS = ["--preset", "tiny", "--hidden", "32", "--embed", "16", "--bptt", "16",
             "--batch-size", "4"]  # fmt: skip


def tiny_args(**extra: object) -> list[str]:
    """TINY_ARGS plus `--name value` for each keyword (underscores become dashes)."""
    out = list(TINY_ARGS)
    for name, value in extra.items():
        out += [f"--{name.replace('_', '-')}", str(value)]
    return out
