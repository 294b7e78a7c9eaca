"""`write_html`: an `Inspection` as one self-contained web page (template, CSS and script in
charlstm/assets/).

Everything is inline (CSS, JavaScript, the data as JSON), nothing is fetched, so the file
opens offline in any browser and can be mailed or archived. The big arrays travel as base64
typed arrays (float32 losses, uint16 top-k guesses and probabilities, int8 activations scaled
by each cell's largest |value|), which keeps 10,000 characters well under a few MB. The page
has one tab per view (surprisal, neurons, comparison), details on hover, a legend per view,
and opens on the view named in the URL's hash (#surprisal, #neurons, #neurons/c/1/42,
#compare).
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path

import numpy as np

from charlstm.atomic import atomic_open
from charlstm.errors import CharLSTMError
from charlstm.inspection.analysis import Cell, Inspection, colour_range, default_cell, summary

CELLS_SHOWN_PER_PROBE = 3  # activations embedded per property (each ~1 byte a character)


def _b64(array: np.ndarray, dtype: str) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype=dtype).tobytes()).decode("ascii")


def _cell_key(cell: Cell) -> str:
    return f"{cell.kind}/{cell.layer}/{cell.unit}"


def page_data(result: Inspection) -> dict:
    """The numbers the page shows, as JSON-ready data."""
    k = result.top_ids.shape[1]
    index_dtype = "<u2" if len(result.symbols) <= 1 << 16 else "<i4"
    cells: list[Cell] = list(result.neurons)
    for probe in result.probes:
        cells += [rc.cell for rc in probe.best[:CELLS_SHOWN_PER_PROBE] if rc.cell not in cells]
    first, first_probe = default_cell(result)
    if first not in cells:
        cells.append(first)
    activations = {}
    for cell in cells:
        values = result.activation(cell)
        scale = float(np.abs(values).max()) or 1.0
        quantized = np.rint(values / scale * 127).astype(np.int8)
        activations[_cell_key(cell)] = {
            "scale": scale,  # the values are data / 127 * scale
            "range": colour_range(values),  # |value| of the strongest colour
            "data": _b64(quantized, "i1"),
        }
    against = None
    if result.against is not None:
        a = result.against
        against = {
            "checkpoint": a.checkpoint,
            "loss": a.loss,
            "bpc": a.bpc,
            "bits": _b64(a.nats / math.log(2), "<f4"),
        }
    return {
        **summary(result),
        "symbols": result.symbols,
        "k": k,
        "indexType": "u2" if index_dtype == "<u2" else "i4",
        "bits": _b64(result.bits, "<f4"),
        "rank": _b64(result.rank, index_dtype),
        "topIds": _b64(np.maximum(result.top_ids, 0), index_dtype),
        "topProbs": _b64(np.rint(result.top_probs * 65535), "<u2"),
        "spans": [
            {"start": s.start, "end": s.end, "bits": s.bits} for s in result.surprising_spans()
        ],
        "probes": [
            {
                "name": p.name,
                "description": p.description,
                "support": p.support,
                "best": [
                    {"cell": _cell_key(rc.cell), "r": rc.r} for rc in p.best[:CELLS_SHOWN_PER_PROBE]
                ],
            }
            for p in result.probes
        ],
        "neurons": [_cell_key(c) for c in result.neurons],
        "defaultCell": _cell_key(first),
        "defaultProbe": first_probe.name if first_probe else None,
        "cells": activations,
        "against": against,
    }


def render_html(result: Inspection) -> str:
    """The whole page as a string."""
    data = json.dumps(page_data(result), separators=(",", ":"), allow_nan=False)
    # inside <script>, "</script>" or "<!--" in the text must not end the element
    data = data.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    title = f"charlstm inspect: {Path(result.checkpoint).name}"
    return (
        _asset("inspect.html")
        .replace("{{TITLE}}", _escape(title))
        .replace("{{CSS}}", _asset("inspect.css"))
        .replace("{{JS}}", _asset("inspect.js"))
        .replace("{{DATA}}", data)
    )


def _asset(name: str) -> str:
    """A file of charlstm/assets/ (the page's template, style sheet and script)."""
    from importlib.resources import files

    return files("charlstm.inspection").joinpath("assets", name).read_text(encoding="utf-8")


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def check_html_path(path: str | Path, force: bool = False) -> Path:
    """Refuse, before any work, a path whose folder is missing or that would overwrite a file
    (unless `force`)."""
    path = Path(path)
    if path.is_dir():
        raise CharLSTMError(f"--html {path} is a folder", "pass a file path such as inspect.html")
    if not path.parent.is_dir():
        raise CharLSTMError(
            f"--html {path}: the folder {path.parent} does not exist", "create it first"
        )
    if path.exists() and not force:
        raise CharLSTMError(
            f"--html {path} already exists", "pass --force to overwrite it, or another path"
        )
    return path


def write_html(result: Inspection, path: str | Path, force: bool = False) -> int:
    """Write the page (to a temporary file in the same folder, then renamed, so a failure
    leaves no half-written file); returns its size in bytes."""
    path = check_html_path(path, force)
    page = render_html(result).encode("utf-8")
    try:
        with atomic_open(path) as f:
            f.write(page)
    except OSError as e:
        raise CharLSTMError(f"cannot write {path}: {e.strerror}") from None
    return len(page)
