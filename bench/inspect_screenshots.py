"""Render docs/inspect.md's `charlstm inspect` screenshots: the surprisal view (with the hover
details of a surprising character) and one neuron view, as PNGs taken by headless Chromium.

    python bench/inspect_screenshots.py checkpoints/ts10/best.pt docs/

writes OUTDIR/inspect-surprisal.png and OUTDIR/inspect-neuron.png (and with --page the web
page itself, OUTDIR/inspect.html). The text is the start of the run's val split (`--text FILE` for
another); the neuron view opens on the page's default cell (the best cell of the first
long-range property some cell tracks), or on `--neuron L:K:c`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from headless import capture, find_chromium  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--text", type=Path, help="inspect this file, not the val split")
    parser.add_argument("--limit", type=int, default=2000, help="characters of the val split")
    parser.add_argument("--neuron", help="the cell of the neuron view, e.g. 1:42:c")
    parser.add_argument("--page", action="store_true", help="keep the page as OUTDIR/inspect.html")
    parser.add_argument("--width", type=int, default=1100)
    parser.add_argument("--height", type=int, default=640)
    args = parser.parse_args()

    import charlstm
    from charlstm.inspection.analysis import default_cell

    if find_chromium() is None:
        print("no Chromium found: apt-get install chromium", file=sys.stderr)
        return 1
    args.outdir.mkdir(parents=True, exist_ok=True)
    result = charlstm.inspect_text(
        args.checkpoint,
        file=args.text,
        limit=None if args.text else args.limit,
        neurons=[args.neuron] if args.neuron else (),
    )
    folder = args.outdir if args.page else Path(tempfile.mkdtemp(prefix="charlstm-shots-"))
    page = folder / "inspect.html"
    size = charlstm.write_html(result, page, force=True)
    # hover the most surprising character among the first few lines (on screen)
    visible = min(len(result.ids), 400)
    hovered = int(np.nanargmax(result.nats[1:visible])) + 1
    cell, probe = default_cell(result)
    neuron_hash = f"#neurons/{cell.kind}/{cell.layer}/{cell.unit}"
    report = capture(
        page,
        ["#surprisal", neuron_hash],
        width=args.width,
        height=args.height,
        hover={"#surprisal": f'#text span[data-i="{hovered}"]', neuron_hash: "h1"},
    )
    if not args.page:
        shutil.rmtree(folder)
    if report.errors:
        print("the page reported errors:", *report.errors, sep="\n  ", file=sys.stderr)
        return 1
    for name, h in (("surprisal", "#surprisal"), ("neuron", neuron_hash)):
        path = args.outdir / f"inspect-{name}.png"
        path.write_bytes(report.screenshots[h])
        print(f"{path} ({len(report.screenshots[h]) / 1e3:.0f} kB)")
    tracked = f", tracks {probe.name} (r {probe.best[0].r:+.2f})" if probe else ""
    kept = f"{page} " if args.page else "the page "
    print(f"{kept}({size / 1e6:.2f} MB), {result.bpc:.4f} bits/char over {result.chars} chars")
    print(f"neuron view: {cell.name}{tracked}; hovered character {hovered}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
