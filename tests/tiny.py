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


WORDS = "the cat sat on a mat and then it ran to see what the dog was doing in the old red barn"


def word_text(n_chars: int, seed: int = 0) -> str:
    """`n_chars` of random eight-word sentences from a small vocabulary (reproducible)."""
    import random

    rng = random.Random(seed)
    words = WORDS.split()
    text = ""
    while len(text) < n_chars:
        text += " ".join(rng.choice(words) for _ in range(8)) + ".\n"
    return text[:n_chars]


def random_checkpoint(
    path,
    vocab,
    *,
    hidden_size: int,
    num_layers: int = 2,
    seed: int = 0,
    scale: float = 2.0,
    extra: dict | None = None,
):
    """A randomly initialised CharLSTM saved as a charlstm checkpoint. The weights are scaled
    up so predictions depend strongly on the context (a fresh LSTM is nearly context-free,
    which would make checks on the carried state toothless)."""
    import torch

    from charlstm.checkpoint import save_checkpoint
    from charlstm.config import ModelConfig
    from charlstm.model import CharLSTM

    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=vocab.size, embed_size=16, hidden_size=hidden_size,
                         num_layers=num_layers, dropout=0.0)  # fmt: skip
    model = CharLSTM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "weight" in name:
                p.mul_(scale)
    payload = {"model_config": config.to_dict(), "model": model.state_dict(),
               "vocab": vocab.to_json(), **(extra or {})}  # fmt: skip
    save_checkpoint(payload, path)
    return path
