"""The `xz -9e` yardstick for charlstm's bits per character on a held-out tail.

For a text cut by charlstm's standard split (first 90 % train, last 10 % val, the same
``split_bounds`` that ``charlstm tokenize`` uses), xz's cost of the val characters *given the
training text* is

    bpc_xz(val | train) = 8 * (|xz(train + val)| - |xz(train)|) / chars(val)

with ``|xz(.)|`` the size in bytes of Python's ``lzma`` at preset ``9 | PRESET_EXTREME`` (what
``xz -9e`` writes; both files carry the same container overhead, so it cancels) and
``chars(val)`` counted in Unicode characters, as charlstm's char-level bpc is. A model that
has trained on ``train`` should be compared with this conditional figure, not with xz of the
val text alone (also printed: ``8 * |xz(val)| / chars(val)``, which knows nothing of train),
and how much of val repeats train verbatim (the share of val characters inside a 32-character
string that also occurs in train): text xz can copy outright.

    python bench/xz_baseline.py corpora/tinyshakespeare.txt other.txt
    python bench/xz_baseline.py corpus.txt --val-frac 0.1 --json

Compressing 3 MB at -9e takes ~10-20 s per text on one core.
"""

from __future__ import annotations

import argparse
import json
import lzma
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from charlstm.data.prepare import split_bounds  # noqa: E402

XZ_PRESET = 9 | lzma.PRESET_EXTREME
REPEAT_CHARS = 32


def verbatim_coverage(train: str, val: str, k: int = REPEAT_CHARS) -> float:
    """Fraction of val's characters that lie inside some k-character string also found in
    train: what a compressor can copy outright (LZ matches) and an LSTM that read train once
    cannot. A hash per k-gram; a rare false match only overstates the fraction slightly."""
    if len(val) < k or len(train) < k:
        return 0.0
    seen = {hash(train[i : i + k]) for i in range(len(train) - k + 1)}
    covered = bytearray(len(val))
    for i in range(len(val) - k + 1):
        if hash(val[i : i + k]) in seen:
            covered[i : i + k] = b"\x01" * k
    return sum(covered) / len(val)


@dataclass
class XzBaseline:
    text: str
    chars_train: int
    chars_val: int
    xz_train_bytes: int
    xz_train_val_bytes: int
    xz_val_bytes: int
    bpc_conditional: float  # bits per val character given the training text
    bpc_val_alone: float  # bits per val character, val compressed on its own
    val_in_repeats: float  # fraction of val characters inside a REPEAT_CHARS string of train


def xz_size(data: bytes) -> int:
    """Bytes of ``xz -9e`` output (the .xz container, like the command line)."""
    return len(lzma.compress(data, format=lzma.FORMAT_XZ, preset=XZ_PRESET))


def xz_baseline(text: str, val_frac: float = 0.1, name: str = "") -> XzBaseline:
    """xz's bits per character of the val split of ``text``, given and not given train."""
    train_end, val_end = split_bounds(len(text), val_frac, 0.0)
    train, val = text[:train_end], text[train_end:val_end]
    train_b, val_b = train.encode("utf-8"), val.encode("utf-8")
    xz_train = xz_size(train_b)
    xz_both = xz_size(train_b + val_b)
    xz_val = xz_size(val_b)
    return XzBaseline(
        text=name,
        chars_train=len(train),
        chars_val=len(val),
        xz_train_bytes=xz_train,
        xz_train_val_bytes=xz_both,
        xz_val_bytes=xz_val,
        bpc_conditional=8 * (xz_both - xz_train) / len(val),
        bpc_val_alone=8 * xz_val / len(val),
        val_in_repeats=verbatim_coverage(train, val),
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="xz -9e bits per character of the held-out tail")
    ap.add_argument("texts", nargs="+", type=Path, help="UTF-8 text files")
    ap.add_argument("--val-frac", type=float, default=0.1, help="charlstm's default: 0.1")
    ap.add_argument("--json", action="store_true", help="one JSON list on stdout")
    args = ap.parse_args(argv)
    results = []
    for path in args.texts:
        try:
            text = path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            print(f"error: cannot read {path} as UTF-8 text: {e}", file=sys.stderr)
            return 1
        results.append(xz_baseline(text, args.val_frac, name=str(path)))
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
        return 0
    print(
        f"{'text':40} {'train chars':>12} {'val chars':>10} {'xz|train bpc':>13} "
        f"{'xz(val) bpc':>12} {'val in 32-char repeats':>23}"
    )
    for r in results:
        print(
            f"{r.text:40} {r.chars_train:>12,} {r.chars_val:>10,} {r.bpc_conditional:>13.3f} "
            f"{r.bpc_val_alone:>12.3f} {r.val_in_repeats:>23.1%}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
