"""The held-out text a model is scored on: a split of its run's tokenized data (checked to
share the model's vocabulary), or a text file encoded with that vocabulary."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from charlstm.data.dataset import load_dataset
from charlstm.errors import CharLSTMError


def encode_text_file(path: Path, vocab, unknown: str) -> tuple[np.ndarray, int]:
    """A text file as ids of `vocab` (normalised as the vocabulary was) and how many characters
    it lacks were skipped; `unknown` "error" refuses such a file, naming them."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CharLSTMError(f"text file not found: {path}") from None
    except IsADirectoryError:
        raise CharLSTMError(f"{path} is a folder", "pass a text file to --text") from None
    except OSError as e:
        raise CharLSTMError(f"cannot read {path}: {e.strerror}") from None
    if vocab.level == "byte" and vocab.normalize == "none" and not vocab.lowercase:
        return np.frombuffer(raw, dtype=np.uint8).astype(np.int64), 0
    try:
        content = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CharLSTMError(
            f"{path} is not valid UTF-8 (byte offset {e.start})",
            "this checkpoint models characters; convert the file to UTF-8",
        ) from None
    content = vocab.normalize_text(content)
    ids = vocab.encode_raw(content)
    bad = np.flatnonzero(ids < 0)
    if len(bad) and unknown == "error":
        message = vocab.unknown_message(content, bad, str(path))
        raise CharLSTMError(message, "pass --unknown skip to score the rest")
    return ids[ids >= 0], int(len(bad))


def split_ids(ckpt, data, split, instead: str = "--text FILE") -> tuple[np.ndarray, str, str]:
    """A split of the run's own tokenized data (or of `data`), checked to share the
    checkpoint's vocabulary: (ids, the folder, the split's name). `instead` names the other
    way to give text, for the error messages. `ckpt` is anything with `.vocab` and the
    `.payload` of a checkpoint (which names the data folder the run was trained on)."""
    if data is None:
        folder = ckpt.payload.get("data", {}).get("folder")
        if not folder or not Path(folder).exists():
            raise CharLSTMError(
                f"the data this model was trained on ({folder}) is not available here",
                f"pass --data DIR (a tokenized folder) or {instead}",
            )
        data = folder
    dataset = load_dataset(data)
    if dataset.vocab.to_json() != ckpt.vocab.to_json():
        raise CharLSTMError(
            f"{data} was tokenized with a different vocabulary than this checkpoint",
            f"pass the data the model was trained on, or {instead}",
        )
    if split is None:
        split = "test" if dataset.meta["chars"]["test"] > 0 else "val"
    ids = dataset.split(split)
    if len(ids) == 0:
        raise CharLSTMError(f"the {split} split of {data} is empty", "choose another --split")
    return ids, str(dataset.folder), split
