"""The page of `charlstm inspect --html`: self-contained and small, the embedded numbers equal
the library's, and in a real browser (headless Chromium) its script runs clean, fetches
nothing, shows the model's guesses on hover and draws every view in colour."""

from __future__ import annotations

import base64
import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny import random_checkpoint, word_text

from charlstm.data.vocab import Vocab
from charlstm.errors import CharLSTMError
from charlstm.inspection.analysis import inspect_text
from charlstm.inspection.html import page_data, render_html, write_html

sys.path.append(str(Path(__file__).resolve().parent.parent / "bench"))  # bench/headless.py
from headless import capture, find_chromium  # noqa: E402

TEXT = 'ROMEO:\nShe said "the cat (the red one) sat", and LEFT.\n\n' + word_text(2000, seed=1)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    root = tmp_path_factory.mktemp("page")
    vocab = Vocab("char", "".join(sorted(set(TEXT))))
    path = random_checkpoint(root / "a.pt", vocab, hidden_size=16, scale=1.0)
    other = random_checkpoint(root / "b.pt", vocab, hidden_size=16, seed=1, scale=3.0)
    return inspect_text(path, TEXT, against=other, neurons=["1:3"], device="cpu")


def embedded(page: str) -> dict:
    match = re.search(r'<script type="application/json" id="data">(.*?)</script>', page, re.S)
    return json.loads(match.group(1))


def test_page_is_self_contained_and_carries_the_numbers(result):
    page = render_html(result)
    assert page.startswith("<!doctype html>") and "</html>" in page
    for outside in ("http://", "https://", "<link", " src=", "@import", "url("):
        assert outside not in page, outside  # nothing fetched: it opens offline
    data = embedded(page)
    assert data["tokens"] == result.tokens
    bits = np.frombuffer(base64.b64decode(data["bits"]), "<f4")
    np.testing.assert_allclose(bits[1:], result.bits[1:], rtol=1e-6)
    assert np.isnan(bits[0])
    probs = np.frombuffer(base64.b64decode(data["topProbs"]), "<u2").reshape(-1, 5) / 65535
    np.testing.assert_allclose(probs[1:], result.top_probs[1:], atol=1e-4)
    assert {"c/1/3", "h/1/3"} <= set(data["cells"]) and data["neurons"] == ["c/1/3", "h/1/3"]
    cell = data["cells"]["c/1/3"]
    values = np.frombuffer(base64.b64decode(cell["data"]), np.int8) / 127 * cell["scale"]
    np.testing.assert_allclose(values, result.c[:, 1, 3], atol=cell["scale"] / 127)
    assert data["against"]["bpc"] == pytest.approx(result.against.bpc)


def test_text_cannot_break_out_of_the_page(tmp_path):
    text = "</script><script>alert(1)</script><!-- & -->"
    vocab = Vocab("char", "".join(sorted(set(text))))
    path = random_checkpoint(tmp_path / "x.pt", vocab, hidden_size=8)
    page = render_html(inspect_text(path, text, device="cpu"))
    assert page.count("</script>") == 2  # the data's and the program's own
    assert embedded(page)["tokens"] == list(text)


def test_ten_thousand_characters_stay_small(tmp_path):
    text = word_text(10_000, seed=2)
    vocab = Vocab("char", "".join(sorted(set(text))))
    path = random_checkpoint(tmp_path / "m.pt", vocab, hidden_size=64)
    result = inspect_text(path, text, neurons=["0:1", "1:2"], device="cpu")
    size = len(render_html(result).encode())
    assert size < 2_000_000, size  # "a few MB at most"; in practice well under 1 MB
    assert len(page_data(result)["cells"]) <= 9 * 3 + 4


def test_write_html_never_overwrites_by_accident(result, tmp_path):
    page = tmp_path / "p.html"
    size = write_html(result, page)
    assert size == page.stat().st_size
    page.write_text("mine")
    with pytest.raises(CharLSTMError, match="already exists"):
        write_html(result, page)
    assert page.read_text() == "mine"
    write_html(result, page, force=True)
    assert page.read_text().startswith("<!doctype html>")
    with pytest.raises(CharLSTMError, match="does not exist"):
        write_html(result, tmp_path / "missing" / "p.html")
    assert [p.name for p in tmp_path.iterdir()] == ["p.html"]  # no temporary files left


# -- in a real browser --------------------------------------------------------------------------
def coloured_share(png: bytes, box: list[float]) -> float:
    """Share of the pixels inside `box` (left, top, right, bottom) that are clearly coloured
    (not white, grey or black)."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB").crop(tuple(round(v) for v in box))
    pixels = np.asarray(image, dtype=np.int16)
    spread = pixels.max(-1) - pixels.min(-1)
    return float((spread > 50).mean())


def test_page_runs_clean_in_chromium_and_draws_every_view(result, tmp_path):
    if find_chromium() is None:
        pytest.skip("no Chromium to load the page in: apt-get install chromium")
    pytest.importorskip("PIL", reason="Pillow reads the screenshots: pip install -e '.[dev]'")
    page = tmp_path / "inspect.html"
    write_html(result, page)
    hashes = ["#surprisal", "#neurons", "#neurons/h/1/3", "#compare"]
    probe = """({
      spans: document.querySelectorAll("#text span").length,
      tip: document.getElementById("tip").style.display,
      guesses: document.querySelectorAll("#tip tr").length,
      tipText: document.getElementById("tip").textContent,
      active: document.querySelector("#tabs a.active").dataset.view,
      legend: document.getElementById("legend").textContent,
      box: (r => [r.left, r.top, Math.min(r.right, innerWidth), Math.min(r.bottom, innerHeight)])(
        document.getElementById("text").getBoundingClientRect()),
    })"""
    hover = {"#surprisal": '#text span[data-i="9"]', "#compare": '#text span[data-i="9"]'}
    report = capture(page, hashes, width=1100, height=700, probe=probe, hover=hover)
    assert report.errors == []  # no exception, no console.error, no failed load
    assert not [m for m in report.console if m.startswith(("warning", "error"))], report.console
    assert report.requests == [page.resolve().as_uri()]  # nothing fetched
    for h in hashes:
        values = report.values[h]
        assert values["spans"] == len(result.tokens), h
        assert values["active"] == h.strip("#").split("/")[0]
        # the text itself is coloured (not just the legend or the tabs)
        assert coloured_share(report.screenshots[h], values["box"]) > 0.02, h
    surprisal = report.values["#surprisal"]
    assert surprisal["tip"] == "block" and surprisal["guesses"] == 5  # the top-5 on hover
    assert "bits" in surprisal["tipText"] and "bits of surprise" in surprisal["legend"]
    assert "the other:" in report.values["#compare"]["tipText"]
    assert "h 1:3" in report.values["#neurons/h/1/3"]["legend"]
    shots = list(report.screenshots.values())
    assert len({bytes(s) for s in shots}) == len(shots)  # each view draws something else
