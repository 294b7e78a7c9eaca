"""Tokenized data on disk, and truncated-BPTT batches sliced straight from its memory maps.

The BPTT vocabulary follows PyTorch's word_language_model: the split is cut into B contiguous
streams ("batchify"); step k feeds rows [kT, kT+T) of every stream ("get_batch") and the
hidden state is carried from one step to the next. Tokens are never copied into one big
tensor: each batch gathers its B x (T+1) ids from the `.npy` memmap.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from charlstm.atomic import fit_name, read_json
from charlstm.config import cache_dir
from charlstm.data.corpus import BUNDLED_NAME, bundled_corpus, open_source
from charlstm.data.prepare import FORMAT, FORMAT_VERSION, SPLITS, tokenize
from charlstm.data.vocab import Vocab
from charlstm.errors import CharLSTMError


@dataclass(frozen=True)
class Dataset:
    """A tokenized folder: its meta.json, vocabulary, and (lazily opened) split memmaps."""

    folder: Path
    meta: dict
    vocab: Vocab
    name: str

    @property
    def sha256(self) -> str:
        return self.meta["sha256"]

    def split(self, name: str) -> np.ndarray:
        """The ids of one split as a read-only memmap."""
        if name not in SPLITS:
            raise CharLSTMError(f"unknown split {name!r}", "use train, val or test")
        return np.load(self.folder / f"{name}.npy", mmap_mode="r")


def load_dataset(folder: str | Path, name: str | None = None) -> Dataset:
    """Open a folder written by `charlstm tokenize`, checking arrays against meta.json."""
    folder = Path(folder)
    meta_path = folder / "meta.json"
    again = f"re-run `charlstm tokenize CORPUS --out {folder} --force` to write it again"
    try:
        meta = read_json(meta_path, again)
    except FileNotFoundError:
        raise CharLSTMError(
            f"{folder} is not a tokenized folder (no meta.json)", "run `charlstm tokenize` first"
        ) from None
    marker = meta.get("format") if isinstance(meta, dict) else None
    if marker != FORMAT:
        model = "; a model folder is for eval, sample and serve" * (marker == "charlstm-model")
        raise CharLSTMError(
            f"{meta_path} is not a charlstm tokenized-data description (its format marker is "
            f"{marker!r}, not {FORMAT!r}): another tool's folder, or no data folder",
            "tokenize the text into a folder of its own: charlstm tokenize CORPUS --out "
            f"{folder.parent / (folder.name + '-charlstm')}{model}",
        )
    version = meta.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CharLSTMError(
            f"{folder} was written by a newer charlstm (format {version!r})", "upgrade charlstm"
        )
    vocab = Vocab.load(folder / "tokenizer.json")
    if vocab.size != meta.get("vocab_size"):
        raise CharLSTMError(
            f"{folder}: tokenizer.json has {vocab.size} symbols but meta.json says "
            f"{meta.get('vocab_size')}",
            "re-run `charlstm tokenize --force`",
        )
    for split in SPLITS:
        path = folder / f"{split}.npy"
        try:
            arr = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise CharLSTMError(
                f"cannot open {path}: {e}", "re-run `charlstm tokenize --force`"
            ) from None
        expected = meta.get("chars", {}).get(split)
        if arr.ndim != 1 or arr.shape[0] != expected or arr.dtype != vocab.dtype:
            raise CharLSTMError(
                f"{path} does not match meta.json ({arr.shape[0] if arr.ndim else '?'} "
                f"{arr.dtype} ids, meta.json says {expected} {vocab.dtype})",
                "re-run `charlstm tokenize --force`",
            )
    return Dataset(folder, meta, vocab, name or folder.name)


def data_name(data: str | Path | None) -> str:
    """The name `resolve_dataset(data)` gives its dataset, found without reading any text."""
    if data is None:
        return BUNDLED_NAME
    path = Path(data).expanduser()
    if path.is_dir() and (path / "meta.json").exists():
        return path.name
    if path.resolve() == bundled_corpus().resolve():
        return BUNDLED_NAME
    return path.stem if path.is_file() else path.name


def resolve_dataset(data: str | Path | None) -> Dataset:
    """A tokenized folder as is; a raw text file/folder (or None: the bundled corpus) tokenized
    with the defaults into the cache, keyed by the source's sha256 so edits are picked up."""
    if data is not None:
        path = Path(data).expanduser()
        if path.is_dir() and (path / "meta.json").exists():
            return load_dataset(path)
    src = open_source(data)
    digest = hashlib.sha256()
    for f in src.files:
        digest.update(f.relative_to(src.path).as_posix().encode() if len(src.files) > 1 else b"")
        with open(f, "rb") as fh:
            while block := fh.read(8 << 20):
                digest.update(block)
    name = BUNDLED_NAME if data is None or src.path == bundled_corpus() else src.name
    folder = cache_dir("tokenized") / fit_name(name, f"-{digest.hexdigest()[:16]}")
    if (folder / "meta.json").exists():
        try:
            return load_dataset(folder, name)
        except CharLSTMError:
            pass  # a damaged cache entry: tokenize again below
    tokenize(src.path, folder, force=True)
    return load_dataset(folder, name)


def stream_offsets(length: int, batch_size: int, offset: int = 0) -> tuple[np.ndarray, int]:
    """batchify: start index of each of B contiguous streams, and the stream length.

    Stream b covers ids [offset + b*L, offset + (b+1)*L] (one extra id for the last target).
    """
    stream_len = (length - offset - 1) // batch_size
    return offset + np.arange(batch_size, dtype=np.int64) * stream_len, stream_len


def get_batch(ids: np.ndarray, starts: np.ndarray, pos: int, bptt: int) -> np.ndarray:
    """get_batch: rows [pos, pos + bptt] of every stream as a (bptt + 1, B) int64 array.

    Row t is the input at time t and the target at time t - 1.
    """
    index = starts[None, :] + (pos + np.arange(bptt + 1, dtype=np.int64))[:, None]
    return np.asarray(ids[index], dtype=np.int64)


class TrainStreams:
    """The train split as `batch_size` contiguous streams, read a window of `bptt` characters
    at a time. Each epoch moves the window boundaries by a random offset in [0, bptt) derived
    from (seed, epoch), so a resumed run sees the same windows as an uninterrupted one."""

    def __init__(self, ids: np.ndarray, batch_size: int, bptt: int, seed: int) -> None:
        self.ids, self.batch_size, self.bptt, self.seed = ids, batch_size, bptt, seed
        self.per_epoch = steps_per_epoch(len(ids), batch_size, bptt)
        self._starts: tuple[int, np.ndarray] | None = None
        if self.per_epoch < 1:
            raise CharLSTMError(
                f"the train split ({len(ids):,} characters) is too short for --batch-size "
                f"{batch_size} x --bptt {bptt}",
                "lower --batch-size or --bptt, or use more text",
            )

    def starts(self, epoch: int) -> np.ndarray:
        """Where every stream begins in this epoch."""
        if self._starts is None or self._starts[0] != epoch:
            offset = epoch_offset(self.seed, epoch, self.bptt)
            self._starts = (epoch, stream_offsets(len(self.ids), self.batch_size, offset)[0])
        return self._starts[1]

    def window(self, epoch: int, epoch_step: int, lo: int, hi: int) -> np.ndarray:
        """Streams lo..hi-1 (one rank's share) at window `epoch_step`: (bptt + 1, hi - lo)."""
        starts = self.starts(epoch)[lo:hi]
        return get_batch(self.ids, starts, epoch_step * self.bptt, self.bptt)


def epoch_offset(seed: int, epoch: int, bptt: int) -> int:
    """A random start offset for each epoch so window boundaries move; derived from (seed,
    epoch) alone so a resumed run sees the same offsets."""
    return int(np.random.default_rng([seed, epoch]).integers(bptt))


def steps_per_epoch(length: int, batch_size: int, bptt: int) -> int:
    """Full windows per epoch (at the largest possible offset, so it is the same every epoch)."""
    return max(0, (length - bptt - 1) // batch_size // bptt)
