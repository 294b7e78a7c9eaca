"""Throughput and peak memory of the whole `charlstm tokenize` process on a 100 MB corpus.

The corpus is the bundled tiny shakespeare repeated to the requested size, with CJK phrases
(several hundred distinct ideographs, so the char vocabulary passes 256 and ids are uint16) and
a few emoji sprinkled in: about 3% of the characters are not ASCII. It is generated once and
cached in --workdir. Each level runs as its own child process, timed from spawn to exit, so the
figures include interpreter start-up and imports, as a user sees them; peak RSS is the child's
own ``ru_maxrss`` from ``wait4``.

    python bench/tokenize_bench.py                # table
    python bench/tokenize_bench.py --json         # figures as JSON on stdout

Targets: at least 50 MB/s at char level, peak RSS at most 3x the text size.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from charlstm.data.corpus import bundled_corpus

CORPUS_VERSION = 1  # bump when the generator changes, so stale cached corpora are not reused
MIN_CHAR_MB_PER_S = 50.0
MAX_RSS_PER_TEXT = 3.0
N_IDEOGRAPHS = 600
EMOJI = ["😀", "😂", "🤔", "👍", "🎭", "🌹", "⚔️", "👑", "💀", "🕯️"]


def sprinkled_block(repetition: int) -> str:
    """Tiny shakespeare with a CJK phrase on every 6th line and an emoji on every 97th; the
    ideographs rotate with ``repetition`` so every block is a little different."""
    lines = bundled_corpus().read_text(encoding="utf-8").split("\n")
    out = []
    for i, line in enumerate(lines):
        if i % 6 == 0 and line:
            start = (i * 7 + repetition * 131) % N_IDEOGRAPHS
            line += (
                " 「" + "".join(chr(0x4E00 + (start + k) % N_IDEOGRAPHS) for k in range(4)) + "」"
            )
        if i % 97 == 0 and line:
            line += " " + EMOJI[(i // 97 + repetition) % len(EMOJI)]
        out.append(line)
    return "\n".join(out)


def make_corpus(workdir: Path, size_mb: int) -> Path:
    """The cached benchmark corpus of ``size_mb`` million bytes (ends at a line end)."""
    path = workdir / f"bench-{size_mb}mb-v{CORPUS_VERSION}.txt"
    if path.is_file():
        return path
    workdir.mkdir(parents=True, exist_ok=True)
    target = size_mb * 1_000_000
    written = 0
    fd, tmp = tempfile.mkstemp(dir=workdir, suffix=".partial")
    with os.fdopen(fd, "wb") as f:
        repetition = 0
        while written < target:
            data = sprinkled_block(repetition).encode("utf-8")
            if written + len(data) > target:
                data = data[: data.rfind(b"\n", 0, target - written) + 1]
                if not data:
                    break
            f.write(data)
            written += len(data)
            repetition += 1
    os.replace(tmp, path)
    return path


def run_tokenize(corpus: Path, out: Path, level: str) -> dict:
    """Run `python -m charlstm tokenize` once; wall time and the child's peak RSS."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "charlstm", "tokenize", str(corpus), "--out", str(out)]
    cmd += ["--level", level]
    with tempfile.TemporaryFile() as stderr:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr)
        _, status, usage = os.wait4(proc.pid, 0)  # rusage of this child alone
        wall_s = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            stderr.seek(0)
            sys.exit(f"{' '.join(cmd)} failed:\n{stderr.read().decode(errors='replace')}")
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    text_bytes = corpus.stat().st_size
    peak_rss_bytes = usage.ru_maxrss * 1024  # Linux reports KiB
    mb_per_s = text_bytes / 1e6 / wall_s
    rss_per_text = peak_rss_bytes / text_bytes
    return {
        "level": level,
        "text_mb": text_bytes / 1e6,
        "symbols": meta["chars"]["total"],
        "vocab_size": meta["vocab_size"],
        "dtype": meta["dtype"],
        "wall_s": wall_s,
        "mb_per_s": mb_per_s,
        "peak_rss_mb": peak_rss_bytes / 1e6,
        "rss_per_text": rss_per_text,
        "speed_ok": None if level != "char" else mb_per_s >= MIN_CHAR_MB_PER_S,
        "rss_ok": rss_per_text <= MAX_RSS_PER_TEXT,
    }


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else "PASS" if ok else "FAIL"


def print_table(rows: list[dict]) -> None:
    header = (
        f"{'level':<6} {'vocab':>7} {'dtype':>6} {'text MB':>8} {'wall s':>7} {'MB/s':>7} "
        f"{'peak RSS MB':>12} {'RSS/text':>9}  {'speed':>5}  {'memory':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['level']:<6} {r['vocab_size']:>7} {r['dtype']:>6} {r['text_mb']:>8.1f} "
            f"{r['wall_s']:>7.2f} {r['mb_per_s']:>7.1f} {r['peak_rss_mb']:>12.1f} "
            f"{r['rss_per_text']:>9.2f}  {verdict(r['speed_ok']):>5}  {verdict(r['rss_ok']):>6}"
        )
    print(
        f"targets: char level >= {MIN_CHAR_MB_PER_S:g} MB/s (whole process); "
        f"peak RSS <= {MAX_RSS_PER_TEXT:g}x the text size"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/charlstm-bench"))
    parser.add_argument("--size-mb", type=int, default=100, help="corpus size in MB (1e6 bytes)")
    parser.add_argument("--levels", nargs="+", default=["char", "byte"], choices=["char", "byte"])
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    corpus = make_corpus(args.workdir, args.size_mb)
    if (elapsed_s := time.perf_counter() - start) > 1:
        print(f"generated {corpus} in {elapsed_s:.1f} s", file=sys.stderr)
    rows = [run_tokenize(corpus, args.workdir / f"out-{level}", level) for level in args.levels]
    for level in args.levels:
        shutil.rmtree(args.workdir / f"out-{level}", ignore_errors=True)
    if args.json:
        print(json.dumps({"corpus": str(corpus), "runs": rows}, indent=2))
    else:
        print_table(rows)
    return 0 if all(r["speed_ok"] is not False and r["rss_ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
