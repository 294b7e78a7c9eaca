"""Build three real corpora of ~3 MB each, offline and reproducibly, to test charlstm beyond
tiny shakespeare (issue #14, item 5).

    python bench/corpora.py OUT_DIR                 # all three
    python bench/corpora.py OUT_DIR --only python   # one of: python, prose, russian
    python bench/corpora.py OUT_DIR --json          # the manifest on stdout

Each corpus is one UTF-8 file ``OUT_DIR/<name>.txt`` made of whole documents, so charlstm's
standard split (first 90 % train, last 10 % val) holds out whole unseen documents:

- ``python``: the running interpreter's standard library, every ``*.py`` file under
  ``sysconfig.get_paths()["stdlib"]`` (``site-packages`` excluded: it is not the stdlib)
  in sorted path order, each preceded by a ``# ---- path ----`` line, whole files until the
  byte budget. Files that are not valid UTF-8 are skipped (a few test files on purpose).
  Same interpreter version -> same bytes.
- ``prose``: English prose of mixed styles from four sources: the Python reference manual's
  topic texts (``pydoc_data/topics.py``, one per topic), GNU manuals from ``/usr/share/info``
  (Texinfo's text rendering, one node per document, the manuals taking turns), the licence
  texts of ``/usr/share/common-licenses``, and the quotations, jokes and literature of the
  ``fortunes`` package (one fortune per document, the collections taking turns). Each source
  gets a fair share of the budget (a small source gives all it has, the rest is split), and
  the sources are spread evenly through the file, so the held-out tail mixes all four in
  the proportions of the whole.
- ``russian``: Russian manual pages (Debian ``manpages-ru``, Cyrillic script), rendered with
  ``man -E UTF-8`` (80 columns, no hyphenation or justification) and ``col -bx``, pages
  in sorted path order, whole pages until the byte budget.

Needs (Debian, root): ``apt-get install -y fortunes manpages-ru man-db groff-base bsdextrautils``
(``col`` is in bsdextrautils; the GNU ``info`` files of ``/usr/share/info`` ship with base
packages such as coreutils, so which manuals exist depends on the machine: compare sha256s).
A missing source is one clear error line naming the package. The manifest (sources,
documents, characters, bytes, sha256) is printed as a table on stderr, written to
``OUT_DIR/manifest.json`` and, with ``--json``, to stdout.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

BUDGET_BYTES = 3_000_000
CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
APT_LINE = "apt-get install -y fortunes manpages-ru man-db groff-base bsdextrautils"


class MissingSource(Exception):
    """A source this corpus needs is not on the machine; the message says which package."""


@dataclass
class Corpus:
    name: str
    path: str
    sources: dict[str, int] = field(default_factory=dict)  # source -> documents taken
    source_bytes: dict[str, int] = field(default_factory=dict)  # source -> bytes taken
    documents: int = 0
    chars: int = 0
    bytes: int = 0
    sha256: str = ""


def _read_utf8(path: Path) -> str | None:
    """The file's text, or None when it is not valid UTF-8 (or gzip of it)."""
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def strip_controls(text: str) -> str:
    """Drop control characters but newline and tab: info's node separators (\\x1f), index
    markers (\\x7f, \\x08) and the backspace overstrikes of some fortunes are markup, not text.
    An overstrike ``x\\bx`` keeps one ``x``."""
    text = re.sub(r".\x08", "", text)
    return CONTROLS.sub("", text)


def take_documents(docs: Iterator[tuple[str, str]], budget_bytes: int) -> list[tuple[str, str]]:
    """Whole (source, text) documents in order until the next one would pass the budget.

    A document larger than what is left is skipped, not cut, so the corpus never ends
    mid-document; iteration stops once the budget is full to within 1 %.
    """
    taken, used = [], 0
    for source, text in docs:
        size = len(text.encode("utf-8"))
        if used + size > budget_bytes:
            if used >= 0.99 * budget_bytes:
                break
            continue
        taken.append((source, text))
        used += size
    return taken


def round_robin(*streams: Iterator[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    """Interleave document streams one document each in turn until all are exhausted."""
    live = [iter(s) for s in streams]
    while live:
        for it in list(live):
            try:
                yield next(it)
            except StopIteration:
                live.remove(it)


# -- python -------------------------------------------------------------------------------


def python_documents(stdlib: Path | None = None) -> Iterator[tuple[str, str]]:
    """Every stdlib ``*.py`` in sorted path order, with a header line naming it."""
    root = Path(stdlib or sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise MissingSource(f"python: no standard library at {root}")
    paths = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*.py")
        if "site-packages" not in p.relative_to(root).parts and p.is_file()
    )
    for rel in paths:
        text = _read_utf8(root / rel)
        if text is not None:
            yield "python-stdlib", f"# ---- {rel} ----\n{text}"


# -- prose --------------------------------------------------------------------------------


def pydoc_topic_documents() -> Iterator[tuple[str, str]]:
    """The Python Language Reference, as pydoc ships it: one text per topic, sorted."""
    try:
        from pydoc_data.topics import topics
    except ImportError as e:
        raise MissingSource("prose: pydoc_data.topics is missing from this Python") from e
    for key in sorted(topics):
        yield "python-reference", topics[key].strip() + "\n\n"


def info_documents(root: Path = Path("/usr/share/info")) -> Iterator[tuple[str, str]]:
    """GNU manuals (``*.info[-N].gz``, Texinfo's text rendering), one node per document, the
    manuals (sorted by file) taking turns node by node so that no one manual dominates."""
    files = sorted(root.glob("*.info*")) if root.is_dir() else []
    if not files:
        raise MissingSource(f"prose: no GNU info manuals in {root} (apt-get install -y coreutils)")

    def nodes(path: Path) -> Iterator[tuple[str, str]]:
        text = _read_utf8(path) or ""
        for node in text.split("\x1f")[1:]:  # [0] is the file's preamble
            node = strip_controls(node).strip()
            if node.startswith("File:") and len(node) > 200:  # skip tag tables, indirect lists
                yield "gnu-info", node + "\n\n"

    return round_robin(*(nodes(p) for p in files))


def license_documents(
    root: Path = Path("/usr/share/common-licenses"),
) -> Iterator[tuple[str, str]]:
    """Licence texts (symlinks such as GPL -> GPL-3 skipped, so each text is in once)."""
    files = (
        sorted(p for p in root.iterdir() if p.is_file() and not p.is_symlink())
        if root.is_dir()
        else []
    )
    if not files:
        raise MissingSource(f"prose: no licences in {root} (apt-get install -y base-files)")
    for path in files:
        text = _read_utf8(path)
        if text is not None:
            yield "licenses", text.strip() + "\n\n"


def fortune_documents(
    root: Path = Path("/usr/share/games/fortunes"),
) -> Iterator[tuple[str, str]]:
    """The ``fortunes`` package's English quotations, jokes and literature, one fortune per
    document, the collections (sorted by name) taking turns; ``.dat`` indexes, ``.u8`` links
    and ``ascii-art`` (drawings, not prose) skipped."""
    files = (
        sorted(
            p
            for p in root.iterdir()
            if p.is_file() and not p.suffix and not p.is_symlink() and p.name != "ascii-art"
        )
        if root.is_dir()
        else []
    )
    if len(files) < 10:
        raise MissingSource(f"prose: the fortunes collections are missing in {root} ({APT_LINE})")

    def fortunes(path: Path) -> Iterator[tuple[str, str]]:
        for item in strip_controls(_read_utf8(path) or "").split("\n%\n"):
            if item.strip():
                yield "fortunes", item.strip("\n") + "\n\n"

    return round_robin(*(fortunes(p) for p in files))


PROSE_SOURCES: dict[str, Callable[[], Iterator[tuple[str, str]]]] = {
    "python-reference": pydoc_topic_documents,
    "gnu-info": info_documents,
    "licenses": license_documents,
    "fortunes": fortune_documents,
}


def fair_shares(sizes: list[int], budget: int) -> list[int]:
    """Split a byte budget over sources: a source smaller than an equal share gives all it
    has, and what it leaves is shared by the larger ones (water-filling)."""
    shares = [0] * len(sizes)
    left, todo = budget, sorted(range(len(sizes)), key=lambda i: sizes[i])
    for k, i in enumerate(todo):
        shares[i] = min(sizes[i], left // (len(todo) - k))
        left -= shares[i]
    return shares


def proportional_merge(groups: list[list[tuple[str, str]]]) -> list[tuple[str, str]]:
    """Interleave document lists so each is spread evenly over the result (next: the list with
    the smallest fraction of its bytes emitted so far; ties by position), so the corpus's
    held-out tail mixes all sources in the proportions of the whole."""
    totals = [max(1, sum(len(t.encode("utf-8")) for _, t in g)) for g in groups]
    done, pos, out = [0] * len(groups), [0] * len(groups), []
    while True:
        live = [i for i, g in enumerate(groups) if pos[i] < len(g)]
        if not live:
            return out
        i = min(live, key=lambda j: (done[j] / totals[j], j))
        doc = groups[i][pos[i]]
        out.append(doc)
        done[i] += len(doc[1].encode("utf-8"))
        pos[i] += 1


def prose_documents(budget_bytes: int = BUDGET_BYTES) -> Iterator[tuple[str, str]]:
    """Each source's documents up to its fair share of the budget, spread evenly."""
    docs = [list(make()) for make in PROSE_SOURCES.values()]
    sizes = [sum(len(t.encode("utf-8")) for _, t in d) for d in docs]
    shares = fair_shares(sizes, budget_bytes)
    return iter(
        proportional_merge([take_documents(iter(d), b) for d, b in zip(docs, shares, strict=True)])
    )


# -- russian ------------------------------------------------------------------------------


def render_man(path: Path) -> str:
    """A manual page as plain UTF-8 text: ``man -E UTF-8 -l`` then ``col -bx`` (no overstrikes)."""
    env = dict(os.environ, MANWIDTH="80", LANG="C.UTF-8", MAN_KEEP_FORMATTING="0")
    man = subprocess.run(
        ["man", "--nh", "--nj", "-E", "UTF-8", "-l", str(path)],
        env=env,
        capture_output=True,
        check=False,
    )
    col = subprocess.run(["col", "-bx"], input=man.stdout, capture_output=True, check=False)
    return col.stdout.decode("utf-8", errors="replace")


def package_files(package: str) -> list[Path]:
    """The files a Debian package installed (``dpkg -L``), or [] when it is not installed."""
    listing = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=False)
    return (
        [Path(line) for line in listing.stdout.splitlines() if line]
        if listing.returncode == 0
        else []
    )


def russian_documents(package: str = "manpages-ru") -> Iterator[tuple[str, str]]:
    """Every page of ``manpages-ru`` (only that package's, so other installed translations do
    not change the corpus), sorted by path, rendered as text."""
    pages = sorted(
        p
        for p in package_files(package)
        if p.suffix == ".gz" and "/man/ru" in str(p) and p.is_file() and not p.is_symlink()
    )
    if len(pages) < 100:
        raise MissingSource(f"russian: the {package} package is not installed ({APT_LINE})")
    for page in pages:
        text = render_man(page).strip()
        if text:
            yield "manpages-ru", text + "\n\n"


# -- build --------------------------------------------------------------------------------

BUILDERS: dict[str, Callable[[], Iterator[tuple[str, str]]]] = {
    "python": python_documents,
    "prose": prose_documents,
    "russian": russian_documents,
}


def build(name: str, out_dir: Path, budget_bytes: int = BUDGET_BYTES) -> Corpus:
    """Write ``out_dir/<name>.txt`` and return its manifest entry."""
    make = BUILDERS[name]
    docs = take_documents(make(budget_bytes) if name == "prose" else make(), budget_bytes)
    text = "".join(t for _, t in docs)
    data = text.encode("utf-8")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.txt"
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    corpus = Corpus(
        name,
        str(path),
        documents=len(docs),
        chars=len(text),
        bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )
    for source, doc in docs:
        corpus.sources[source] = corpus.sources.get(source, 0) + 1
        corpus.source_bytes[source] = corpus.source_bytes.get(source, 0) + len(doc.encode("utf-8"))
    return corpus


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--only", choices=sorted(BUILDERS), action="append")
    ap.add_argument("--budget-bytes", type=int, default=BUDGET_BYTES)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    names = args.only or list(BUILDERS)
    manifest_path = args.out_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    for name in names:
        try:
            corpus = build(name, args.out_dir, args.budget_bytes)
        except MissingSource as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        manifest[name] = asdict(corpus)
        srcs = ", ".join(
            f"{s}: {n} docs, {corpus.source_bytes[s]:,} B" for s, n in corpus.sources.items()
        )
        print(
            f"{name:8} {corpus.chars:>10,} chars {corpus.bytes:>10,} bytes "
            f"{corpus.documents:>5} docs  sha256 {corpus.sha256[:16]}  ({srcs})",
            file=sys.stderr,
        )
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    if args.json:
        print(json.dumps(manifest, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
