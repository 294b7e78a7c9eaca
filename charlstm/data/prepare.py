"""`tokenize`: a corpus -> train/val/test id arrays (`.npy`), `tokenizer.json` and `meta.json`.

Two streaming passes over the source, so memory stays flat whatever the corpus size:

1. survey: hash the bytes, count characters, mark which code points occur (the vocabulary);
2. encode: map each piece through a code-point -> id table and append it to the split it
   falls in. Split boundaries are known after pass 1: val and test are contiguous slices from
   the end of the text (in that order), train is the rest.

Nothing here imports torch: tokenizing a corpus should cost what reading it costs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from charlstm.atomic import fit_name, read_json
from charlstm.data.corpus import Source, decode_piece, open_source, read_pieces
from charlstm.data.vocab import LEVELS, MAX_CODEPOINT, Vocab, codepoints, make_normalizer
from charlstm.errors import CharLSTMError, OptionError

FORMAT = "charlstm-tokenized"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class TokenizeResult:
    """What `tokenize` wrote and how long it took."""

    out: Path
    vocab: Vocab
    chars: dict[str, int]  # "total", "train", "val", "test"
    source_bytes: int
    sha256: str
    elapsed_s: float

    @property
    def mb_per_s(self) -> float:
        return self.source_bytes / 1e6 / max(self.elapsed_s, 1e-9)


def check_fractions(val_frac: float, test_frac: float) -> None:
    """Reject split fractions outside [0, 1) or that leave no room for training."""
    for name, frac in (("--val-frac", val_frac), ("--test-frac", test_frac)):
        if not (0.0 <= frac < 1.0):
            raise OptionError(f"{name} {frac} is outside [0, 1)", f"pass {name} 0.1, say")
    if val_frac + test_frac >= 1.0:
        raise OptionError(
            f"--val-frac {val_frac} + --test-frac {test_frac} = {val_frac + test_frac:g} leaves "
            "nothing to train on",
            "make their sum less than 1",
        )


def split_bounds(n_chars: int, val_frac: float, test_frac: float) -> tuple[int, int]:
    """(train_end, val_end): train = [0, train_end), val = [train_end, val_end), test = rest.

    Matches nanoGPT's ``int(n * 0.9)`` for the standard 90/10 split.
    """
    train_end = int(n_chars * (1.0 - val_frac - test_frac))
    val_end = n_chars if test_frac == 0 else int(n_chars * (1.0 - test_frac))
    return train_end, val_end


def default_out_dir(src: Source, level: str, normalize: str, lowercase: bool) -> Path:
    """`data/<corpus name>` plus a suffix per non-default option."""
    suffix = "".join(
        [
            "-byte" if level == "byte" else "",
            f"-{normalize}" if normalize != "none" else "",
            "-lower" if lowercase else "",
        ]
    )
    return Path("data") / fit_name(src.name, suffix)


def _pieces_as_text(src: Source, normalizer, level: str = "char") -> Callable:
    """Yield (raw piece, normalized text) pairs."""
    # byte level only decodes text in order to normalize it: raw bytes need no decoding
    hint = (
        (
            "normalization needs UTF-8 text; use --normalize none (and no --lowercase) to "
            "model the raw bytes"
        )
        if level == "byte"
        else "use --level byte to model raw bytes"
    )

    def gen():
        for piece in read_pieces(src, at_newline=normalizer is not None):
            text = decode_piece(piece, hint)
            yield piece, (text if normalizer is None else normalizer.normalize_str(text))

    return gen


def _survey(src: Source, level: str, normalizer) -> tuple[Vocab | None, int, str]:
    """Pass 1: (char vocabulary or None for byte level, length in symbols, source sha256)."""
    digest = hashlib.sha256()
    n = 0
    if level == "byte" and normalizer is None:
        for piece in read_pieces(src):
            digest.update(piece.data)
            n += len(piece.data)
        return None, n, digest.hexdigest()
    seen = np.zeros(MAX_CODEPOINT + 1, dtype=bool)
    for piece, text in _pieces_as_text(src, normalizer, level)():
        digest.update(piece.data)
        if level == "byte":
            n += len(text.encode("utf-8"))
        else:
            cps = codepoints(text)
            seen[cps] = True
            n += len(cps)
    vocab = None if level == "byte" else Vocab.from_codepoints(np.flatnonzero(seen))
    return vocab, n, digest.hexdigest()


def _encode_pieces(src: Source, vocab: Vocab, normalizer):
    """Pass 2: yield id arrays (in vocab.dtype) for consecutive pieces of the source."""
    if vocab.level == "byte":
        if normalizer is None:
            for piece in read_pieces(src):
                yield np.frombuffer(piece.data, dtype=np.uint8)
        else:
            for _, text in _pieces_as_text(src, normalizer, "byte")():
                yield np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
        return
    table = np.zeros(int(vocab._codepoints[-1]) + 1, dtype=vocab.dtype)
    table[vocab._codepoints] = np.arange(vocab.size, dtype=vocab.dtype)
    for _, text in _pieces_as_text(src, normalizer)():
        yield np.take(table, codepoints(text))  # take: faster than fancy indexing


def _write_npy_header(f, dtype: np.dtype, length: int) -> None:
    np.lib.format.write_array_header_1_0(
        f,
        {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (length,)},
    )


def _write_splits(folder: Path, ids_stream, dtype: np.dtype, bounds: list[int]) -> None:
    """Append each id array to train/val/test.npy; ``bounds`` are the absolute split ends."""
    lengths = [bounds[0], bounds[1] - bounds[0], bounds[2] - bounds[1]]
    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(open(folder / f"{name}.npy", "wb")) for name in SPLITS]
        for f, length in zip(files, lengths, strict=True):
            _write_npy_header(f, dtype, length)
        pos = 0
        for ids in ids_stream:
            lo = 0
            while lo < len(ids):
                split = next(i for i, b in enumerate(bounds) if pos + lo < b)
                hi = min(len(ids), bounds[split] - pos)
                files[split].write(ids[lo:hi].tobytes())
                lo = hi
            pos += len(ids)
        if pos != bounds[-1]:
            raise RuntimeError(f"pass 2 produced {pos} symbols, pass 1 counted {bounds[-1]}")
        for f in files:
            f.flush()
            os.fsync(f.fileno())


def is_tokenized(folder: Path) -> bool:
    """Whether `folder` holds the output of `charlstm tokenize` (its meta.json says so)."""
    try:
        meta = read_json(folder / "meta.json")
    except (OSError, CharLSTMError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def check_out_dir(src: Source, out: Path, force: bool) -> None:
    """Never lose a byte: the output may not be, contain or lie inside the corpus, and
    `force` replaces only a folder that holds an earlier tokenize output."""
    out_abs, src_abs = out.resolve(), src.path.resolve()
    if out_abs == src_abs or src_abs.is_relative_to(out_abs):
        raise CharLSTMError(
            f"output {out} would contain the corpus {src.path}",
            "choose an --out outside the corpus, e.g. data/<name>",
        )
    if src_abs.is_dir() and out_abs.is_relative_to(src_abs):
        raise CharLSTMError(
            f"output {out} lies inside the corpus folder {src.path} (it would be read as text "
            "next time)",
            "choose an --out outside the corpus folder",
        )
    if out.exists() and not out.is_dir():
        raise CharLSTMError(f"output {out} exists and is not a folder", "choose another --out")
    if out.exists() and not force:
        raise CharLSTMError(
            f"output folder {out} already exists", "pass --force to replace it, or another --out"
        )
    if out.exists() and any(out.iterdir()) and not is_tokenized(out):
        raise CharLSTMError(
            f"--force replaces only an earlier tokenize output, and {out} is not one (it has "
            "no charlstm meta.json)",
            "choose another --out; nothing was changed",
        )


def tokenize(
    corpus: str | Path | None = None,
    out: str | Path | None = None,
    *,
    level: str = "char",
    normalize: str = "none",
    lowercase: bool = False,
    val_frac: float | None = None,
    test_frac: float | None = None,
    force: bool = False,
) -> TokenizeResult:
    """Tokenize a corpus (None = the bundled one) into a folder `charlstm train` reads.

    Writes ``train.npy``, ``val.npy``, ``test.npy`` (memory-mappable, smallest unsigned dtype),
    ``tokenizer.json`` and ``meta.json``. The folder appears whole or not at all. Split
    fractions default to the standard split recorded by `charlstm corpus get` for a catalog
    corpus, else 0.1 val and no test.
    """
    from charlstm.data.catalog import recorded_split

    if level not in LEVELS:
        raise OptionError(f"unknown level {level!r}", "use --level char or --level byte")
    standard = recorded_split(corpus) or (0.1, 0.0)
    val_frac = standard[0] if val_frac is None else val_frac
    test_frac = standard[1] if test_frac is None else test_frac
    check_fractions(val_frac, test_frac)
    normalizer = make_normalizer(normalize, lowercase)
    src = open_source(corpus)
    out = Path(out) if out is not None else default_out_dir(src, level, normalize, lowercase)
    check_out_dir(src, out, force)
    out = out.resolve()  # `--out .` has no name to put a temporary folder beside

    start = time.perf_counter()
    vocab, n, sha = _survey(src, level, normalizer)
    if vocab is None:
        vocab = Vocab.bytes(normalize, lowercase)
    else:
        vocab = Vocab(vocab.level, vocab.chars, normalize, lowercase)
    chars = _split_sizes(src, n, val_frac, test_frac)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "source": str(src.path),
        "source_files": len(src.files),
        "source_bytes": src.size_bytes,
        "sha256": sha,
        "level": level,
        "normalize": normalize,
        "lowercase": lowercase,
        "val_frac": val_frac,
        "test_frac": test_frac,
        "vocab_size": vocab.size,
        "dtype": vocab.dtype.name,
        "chars": chars,
    }
    _write_folder(out, meta, vocab, _encode_pieces(src, vocab, normalizer))
    return TokenizeResult(out, vocab, chars, src.size_bytes, sha, time.perf_counter() - start)


def _split_sizes(src: Source, n: int, val_frac: float, test_frac: float) -> dict[str, int]:
    """Characters per split (and in total); a split asked for must not come out empty."""
    if n == 0:
        raise CharLSTMError(f"corpus {src.path} has no characters after normalization")
    train_end, val_end = split_bounds(n, val_frac, test_frac)
    chars = {"total": n, "train": train_end, "val": val_end - train_end, "test": n - val_end}
    for split, wanted in (("train", True), ("val", True), ("test", test_frac > 0)):
        if wanted and chars[split] == 0:
            raise CharLSTMError(
                f"the {split} split would be empty ({n} characters, --val-frac {val_frac}, "
                f"--test-frac {test_frac})",
                "use a bigger corpus or change the fractions",
            )
    return chars


def _write_folder(out: Path, meta: dict, vocab: Vocab, ids_stream) -> None:
    """Write the arrays, tokenizer.json and meta.json into a temporary folder beside `out`,
    then swap it in; on any failure nothing is left behind and `out` is as it was."""
    from charlstm.atomic import atomic_folder

    chars = meta["chars"]
    bounds = [chars["train"], chars["train"] + chars["val"], chars["total"]]
    with atomic_folder(out) as tmp:
        _write_splits(tmp, ids_stream, vocab.dtype, bounds)
        vocab.save(tmp / "tokenizer.json")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
