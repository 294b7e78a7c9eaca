"""Characters (or bytes) <-> ids, and the vocabulary as a standard Hugging Face `tokenizer.json`.

Two levels:

* ``char``: the distinct Unicode code points of the corpus, ids sorted by code point.
* ``byte``: the 256 byte values of the UTF-8 encoding, id = byte value; any file tokenizes.

The ``tokenizer.json`` we write encodes text to exactly our ids and decodes ids back to exactly
the text: a BPE model with no merges (so every symbol is one token), a pre-tokenizer that
isolates symbols (so the model never sees one giant "word"), the optional NFC/NFKC/lowercase
normalizer, and a ``Fuse`` (char) or ``ByteLevel`` (byte) decoder so that nothing is inserted
between tokens. Our own hot paths never call `tokenizers` per character: encoding here is a
numpy table look-up over whole arrays.
"""

from __future__ import annotations

import codecs
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from charlstm.errors import CharLSTMError

LEVELS = ("char", "byte")
NORMALIZATIONS = ("none", "nfc", "nfkc")
MAX_CODEPOINT = 0x10FFFF


def smallest_uint(n_symbols: int) -> np.dtype:
    """The smallest unsigned dtype that holds ids 0..n_symbols-1."""
    if n_symbols <= 1 << 8:
        return np.dtype(np.uint8)
    if n_symbols <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32)


def codepoints(text: str) -> np.ndarray:
    """The code points of ``text`` as the narrowest unsigned array that holds them (no copy loop).

    ASCII text becomes uint8, text inside the Basic Multilingual Plane uint16, anything else
    uint32.
    """
    if text.isascii():
        return np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    # numpy holds str as UCS-4, i.e. the code points: one widening copy, ~10x faster than
    # encoding to UTF-16/UTF-32 (no surrogate pairs to build or check)
    cps = np.array(text).reshape(1).view(np.uint32)
    return cps.astype(np.uint16) if cps.max() < 0x10000 else cps


def make_normalizer(normalize: str = "none", lowercase: bool = False):
    """The `tokenizers` normalizer for these options, or None when the text is used as is."""
    from tokenizers import normalizers

    if normalize not in NORMALIZATIONS:
        raise CharLSTMError(
            f"unknown normalization {normalize!r}", f"use one of {', '.join(NORMALIZATIONS)}"
        )
    steps = []
    if normalize == "nfc":
        steps.append(normalizers.NFC())
    elif normalize == "nfkc":
        steps.append(normalizers.NFKC())
    if lowercase:
        steps.append(normalizers.Lowercase())
    if not steps:
        return None
    return steps[0] if len(steps) == 1 else normalizers.Sequence(steps)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for each byte, as `tokenizers`' ByteLevel uses it."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


@dataclass(frozen=True)
class Vocab:
    """A character- or byte-level vocabulary, with the normalization its text went through."""

    level: str = "char"
    chars: str = ""  # char level: the symbols in id order (sorted by code point)
    normalize: str = "none"
    lowercase: bool = False
    _lut: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise CharLSTMError(f"unknown level {self.level!r}", "use --level char or byte")
        if self.level == "char" and list(self.chars) != sorted(set(self.chars)):
            raise ValueError("char vocabulary must be distinct characters sorted by code point")

    @classmethod
    def from_codepoints(cls, cps: np.ndarray, normalize="none", lowercase=False) -> Vocab:
        """A char-level vocabulary from a sorted array of distinct code points."""
        text = np.asarray(cps, dtype="<u4").tobytes().decode("utf-32-le", "surrogatepass")
        return cls("char", text, normalize, lowercase)

    @classmethod
    def bytes(cls, normalize: str = "none", lowercase: bool = False) -> Vocab:
        return cls("byte", "", normalize, lowercase)

    @property
    def size(self) -> int:
        return 256 if self.level == "byte" else len(self.chars)

    @property
    def dtype(self) -> np.dtype:
        return smallest_uint(self.size)

    @cached_property
    def _codepoints(self) -> np.ndarray:
        return codepoints(self.chars).astype(np.uint32)

    @cached_property
    def _normalizer(self):
        return make_normalizer(self.normalize, self.lowercase)

    def normalize_text(self, text: str) -> str:
        """Apply this vocabulary's normalization (the same one its corpus went through)."""
        return text if self._normalizer is None else self._normalizer.normalize_str(text)

    def symbol(self, token_id: int) -> str:
        """A printable name for one id (for error messages and previews)."""
        if self.level == "byte":
            return f"0x{token_id:02x}"
        return self.chars[token_id]

    # -- encoding -------------------------------------------------------------------------
    def encode_raw(self, text: str) -> np.ndarray:
        """Ids for already-normalized text as int64, with -1 where a character is unknown."""
        if self.level == "byte":
            return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)
        cps = codepoints(text)
        table = self._lut.get("encode")
        if table is None:
            table = np.full(int(self._codepoints[-1]) + 2 if self.size else 1, -1, np.int64)
            table[self._codepoints] = np.arange(self.size)
            self._lut["encode"] = table
        # every code point past the last known one maps to the final -1 slot; the bound is
        # clipped to the dtype of `cps` (numpy 2 refuses a scalar it cannot hold, e.g. an
        # ASCII prime, uint8, against a vocabulary that reaches past code point 255)
        return table[np.minimum(cps, min(len(table) - 1, np.iinfo(cps.dtype).max))]

    def encode(
        self, text: str, unknown: str = "error", what: str = "text", hint: str = "remove them"
    ) -> np.ndarray:
        """Normalize and encode ``text``; unknown characters raise (``unknown="error"``) or are
        dropped (``unknown="skip"``)."""
        text = self.normalize_text(text)
        ids = self.encode_raw(text)
        bad = np.flatnonzero(ids < 0)
        if len(bad) and unknown == "error":
            raise CharLSTMError(self.unknown_message(text, bad, what), hint)
        return ids[ids >= 0] if len(bad) else ids

    def unknown_message(self, text: str, bad: np.ndarray, what: str) -> str:
        """'<what> has N character(s) the vocabulary lacks: 'x' at 3, ...' (first five)."""
        if self.level == "byte":
            return f"{what} cannot be encoded"
        shown = ", ".join(f"{text[int(i)]!r} at {int(i)}" for i in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        return f"{what} has {len(bad)} character(s) the vocabulary lacks: {shown}{more}"

    def decode(self, ids) -> str:
        """Text for a sequence of ids (exact inverse of encode for char level)."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.level == "byte":
            return ids.astype(np.uint8).tobytes().decode("utf-8", errors="replace")
        return self._codepoints[ids].astype("<u4").tobytes().decode("utf-32-le", "surrogatepass")

    def stream_decoder(self):
        """A function ids -> text for text produced piece by piece (holds back partial UTF-8)."""
        if self.level == "char":
            return self.decode
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        return lambda ids: decoder.decode(np.asarray(ids, dtype=np.uint8).tobytes())

    # -- tokenizer.json -------------------------------------------------------------------
    def to_tokenizer(self):
        """This vocabulary as a `tokenizers.Tokenizer`."""
        from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

        if self.level == "byte":
            stand_in = _bytes_to_unicode()
            tok = Tokenizer(models.BPE(vocab={stand_in[b]: b for b in range(256)}, merges=[]))
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
            tok.decoder = decoders.ByteLevel()
        else:
            tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(self.chars)}, merges=[]))
            tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
            tok.decoder = decoders.Fuse()
        if self._normalizer is not None:
            tok.normalizer = self._normalizer
        return tok

    def to_json(self) -> str:
        """The standard tokenizer.json text."""
        return self.to_tokenizer().to_str(pretty=True)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def from_json(cls, text: str) -> Vocab:
        """Read a tokenizer.json written by charlstm."""
        try:
            spec = json.loads(text)
            model_vocab: dict[str, int] = spec["model"]["vocab"]
            pre = (spec.get("pre_tokenizer") or {}).get("type")
            norm = spec.get("normalizer")
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise CharLSTMError(f"not a charlstm tokenizer.json ({e})") from None
        parts = [] if norm is None else norm.get("normalizers", [norm])
        types = [p.get("type") for p in parts]
        normalize = "nfc" if "NFC" in types else "nfkc" if "NFKC" in types else "none"
        lowercase = "Lowercase" in types
        if pre == "ByteLevel":
            return cls.bytes(normalize, lowercase)
        chars = "".join(sorted(model_vocab, key=model_vocab.__getitem__))
        if len(chars) != len(model_vocab) or [model_vocab[c] for c in chars] != list(
            range(len(chars))
        ):
            raise CharLSTMError("not a charlstm tokenizer.json (ids are not 0..n-1 characters)")
        return cls("char", chars, normalize, lowercase)

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        from charlstm.atomic import METADATA_MAX_BYTES, read_regular

        try:
            text = read_regular(path, METADATA_MAX_BYTES).decode("utf-8")
        except FileNotFoundError:
            raise CharLSTMError(f"cannot read vocabulary {path}: it does not exist") from None
        except UnicodeDecodeError:
            raise CharLSTMError(f"cannot read vocabulary {path}: not UTF-8") from None
        return cls.from_json(text)
