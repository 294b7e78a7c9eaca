"""The tiny model the tests train: CLI arguments and library keyword arguments (milliseconds a
step on one thread)."""

from charlstm.config import flag
from charlstm.training.progress import NullReporter

# `charlstm.train` keyword arguments of the tiny model, before the ones a test adds
TINY_KWARGS: dict = dict(preset="tiny", hidden_size=32, embed_size=16, bptt=16, batch_size=4)


def tiny_args(**extra: object) -> list[str]:
    """The same model as `charlstm train` options, plus `--name value` for each keyword
    (spelled as the CLI spells it: hidden_size -> --hidden)."""
    out: list[str] = []
    for name, value in {**TINY_KWARGS, **extra}.items():
        out += [flag(name), str(value)]
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

    from charlstm.config import ModelConfig
    from charlstm.model.checkpoint import save_checkpoint
    from charlstm.model.network import CharLSTM

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


class InterruptAt(NullReporter):
    """A reporter that presses Ctrl-C once the run has logged step `at` (the trainer's own
    graceful handler must be installed, or this would stop pytest)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def step(self, stats):
        import os
        import signal

        if stats.step == self.at:
            handler = signal.getsignal(signal.SIGINT)
            assert getattr(handler, "__self__", None).__class__.__name__ == "Interrupt"
            os.kill(os.getpid(), signal.SIGINT)


def word_run(root, n_chars: int, *, val_frac: float, **checkpoint_kwargs):
    """Word text of `n_chars` tokenized into root/data, and a random checkpoint (root/model.pt,
    `random_checkpoint`'s options) that records that folder as its data, as a trained run's
    does; (checkpoint path, data folder)."""
    from pathlib import Path

    from charlstm.data.prepare import tokenize
    from charlstm.data.vocab import Vocab

    root = Path(root)
    source = root / "corpus.txt"
    source.write_text(word_text(n_chars, seed=0), encoding="utf-8")
    data = tokenize(source, root / "data", val_frac=val_frac).out
    vocab = Vocab.load(data / "tokenizer.json")
    extra = {"data": {"folder": str(data.resolve())}, **checkpoint_kwargs.pop("extra", {})}
    return random_checkpoint(root / "model.pt", vocab, extra=extra, **checkpoint_kwargs), data


def tokenized_run(root, n_chars: int) -> dict:
    """A tokenized folder of `n_chars` of word text under `root` and a 6-step single-thread run
    on it: {"root", "data", "run", "source"}."""
    import torch

    from charlstm.data.prepare import tokenize
    from charlstm.training.trainer import train

    source = root / "corpus.txt"
    source.write_text(word_text(n_chars), encoding="utf-8")
    data = tokenize(source, root / "tok").out
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(data, root / "run", **TINY_KWARGS, steps=6, eval_every=3, dropout=0.0, device="cpu")
    finally:
        torch.set_num_threads(threads)
    return {"root": root, "data": data, "run": root / "run", "source": source}


def served_run(root, run: str, chars: str, *, seed: int):
    """A random 2x32 char model over `chars` as `root/run/best.pt`: the folder's name is the
    model's name in the server's API."""
    from charlstm.data.vocab import Vocab

    path = root / run / "best.pt"
    path.parent.mkdir()
    vocab = Vocab("char", "".join(sorted(set(chars))))
    return random_checkpoint(path, vocab, hidden_size=32, num_layers=2, seed=seed, scale=2.0)


#: a tiny model that learns fast, for runs whose steps a test counts (train's keyword arguments)
TINY_TRAINING = dict(
    **TINY_KWARGS, lr=1e-2, dropout=0.0, eval_batch_size=4, log_every=5, device="cpu"
)


def tokenized_words(folder, n_chars: int = 3000):
    """`n_chars` of random words tokenized in `folder` (90 % to train on): the tokenized folder."""
    from charlstm.data.prepare import tokenize

    (folder / "corpus.txt").write_text(word_text(n_chars), encoding="utf-8")
    return tokenize(folder / "corpus.txt", folder / "tok").out
