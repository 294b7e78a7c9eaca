"""`charlstm export`: ONNX graphs checked against PyTorch with onnxruntime (and sampled with
onnxruntime alone, torch blocked), and the web page run in headless Chromium (from disk, and
served over http) against `charlstm sample --temperature 0`."""

from __future__ import annotations

import base64
import functools
import html
import http.server
import json
import re
import shutil
import struct
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO
from tiny import random_checkpoint

import charlstm.export.formats as exporting
from charlstm.config import ModelConfig
from charlstm.data.vocab import Vocab
from charlstm.errors import CharLSTMError
from charlstm.model.checkpoint import load_checkpoint, save_checkpoint
from charlstm.model.network import CharLSTM

CHARS = "the cat sat on a mat.\nCafé naïve — 東京 😀!"
PRIME = "Café 東京 😀 the"  # multi-byte characters of every UTF-8 length
LONG_PRIME = CHARS * 60  # ~2,500 characters: the page reads it in slices, yielding between
EXAMPLE = REPO / "examples" / "onnx_sample.py"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

needs_onnxruntime = pytest.mark.skipif(
    not exporting.onnxruntime_available(),
    reason="onnxruntime is not installed: pip install 'charlstm[export]' (or '.[dev]')",
)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium)"
)


@pytest.fixture(scope="module")
def char_ckpt(tmp_path_factory) -> Path:
    """2 x LSTM(32) over a vocabulary with é, 東 and 😀; weights scaled so the text depends on
    the whole context (and greedy text does not settle into a one-character loop)."""
    vocab = Vocab("char", "".join(sorted(set(CHARS))))
    path = tmp_path_factory.mktemp("char") / "best.pt"
    return random_checkpoint(path, vocab, hidden_size=32, num_layers=2, seed=0, scale=2.0)


@pytest.fixture(scope="module")
def byte_ckpt(tmp_path_factory) -> Path:
    """1 x LSTM(48) over the 256 byte values: greedy text is full of partial UTF-8."""
    path = tmp_path_factory.mktemp("byte") / "best.pt"
    return random_checkpoint(path, Vocab.bytes(), hidden_size=48, num_layers=1, seed=0)


def greedy_sample(run_cli, ckpt: Path, prime: str, length: int = 300) -> str:
    """What `charlstm sample --temperature 0` prints, without its final newline."""
    result = run_cli("sample", ckpt, "--prime", prime, "--length", length, "--temperature", 0)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.endswith("\n")
    return result.stdout[:-1]


def torch_greedy_path(ckpt: Path, prime: str, length: int) -> tuple[list[int], np.ndarray]:
    """The ids of the prime and `length` greedy characters, and PyTorch's logits after each of
    them, computed as `charlstm sample` does (prime in one pass, then `FastLSTMStep`)."""
    from charlstm.generation.sampling import FastLSTMStep

    loaded = load_checkpoint(ckpt)
    ids = loaded.vocab.encode(prime).tolist()
    with torch.no_grad():
        logits, state = loaded.model(torch.tensor(ids)[:, None])
        rows = list(logits[:, 0].numpy())
        step = FastLSTMStep(loaded.model, 1)
        step.load_state(state)
        for _ in range(length):
            ids.append(int(rows[-1].argmax()))
            rows.append(step(torch.tensor(ids[-1:])).numpy()[0].copy())
    return ids, np.array(rows)


# -- the output folder ---------------------------------------------------------------------------


def test_export_refuses_to_overwrite_unless_forced_and_only_an_export(run_cli, char_ckpt, tmp_path):
    out = tmp_path / "web"
    first = run_cli("export", char_ckpt, "--format", "web", "--out", out)
    assert first.exit_code == 0, first.stderr
    assert "file://" in first.stderr and first.stdout == ""
    (out / "index.html").write_text("mine")
    again = run_cli("export", char_ckpt, "--format", "web", "--out", out)
    assert again.exit_code == 1
    assert "already exists and is not empty" in again.stderr and "--force" in again.stderr
    assert (out / "index.html").read_text() == "mine"  # untouched
    forced = run_cli("export", char_ckpt, "--format", "web", "--out", out, "--force")
    assert forced.exit_code == 0, forced.stderr
    assert "charlstm.js" in (out / "index.html").read_text()

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "thesis.tex").write_text("years of work")
    refused = run_cli("export", char_ckpt, "--format", "web", "--out", notes, "--force")
    assert refused.exit_code == 1 and "not an earlier charlstm export" in refused.stderr
    assert (notes / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes", "web"]  # no temp folders

    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli("export", char_ckpt, "--format", "web", "--out", empty).exit_code == 0


def test_export_bad_input_is_one_line_and_writes_nothing(run_cli, char_ckpt, tmp_path):
    cases = [
        (["export", tmp_path / "missing.pt", "--format", "web", "--out", tmp_path / "a"], 1,
         "checkpoint not found"),
        (["export", char_ckpt, "--format", "web", "--out", char_ckpt.parent, "--force"], 1,
         "holds the checkpoint"),
        (["export", char_ckpt, "--format", "tflite", "--out", tmp_path / "b"], 2, "tflite"),
        (["export", char_ckpt, "--out", tmp_path / "c"], 2, "--format"),
    ]  # fmt: skip
    afile = tmp_path / "a-file"
    afile.write_text("x")
    cases.append((["export", char_ckpt, "--format", "web", "--out", afile], 1, "not a folder"))
    for args, code, message in cases:
        result = run_cli(*args)
        assert result.exit_code == code, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]
    assert sorted(p.name for p in char_ckpt.parent.iterdir()) == ["best.pt"]


def test_export_appears_whole_or_not_at_all(char_ckpt, tmp_path, monkeypatch):
    def broken_check(folder):
        assert (folder / "weights.bin").exists()  # written, checked, then refused
        raise CharLSTMError("the checker refused the graph")

    monkeypatch.setattr(exporting, "_check_onnx", broken_check)
    with pytest.raises(CharLSTMError, match="checker refused"):
        exporting.export_onnx(char_ckpt, tmp_path / "onnx")
    assert list(tmp_path.iterdir()) == []


def test_onnx_needs_the_extra(run_cli, char_ckpt, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if it were not installed
    result = run_cli("export", char_ckpt, "--format", "onnx", "--out", tmp_path / "o")
    assert result.exit_code == 1
    assert "pip install 'charlstm[export]'" in result.stderr
    assert not (tmp_path / "o").exists()


def test_onnx_without_onnxruntime_exports_and_says_it_is_unverified(
    run_cli, char_ckpt, tmp_path, monkeypatch
):
    pytest.importorskip("onnx", reason="onnx is not installed: pip install 'charlstm[export]'")
    monkeypatch.setattr(exporting, "onnxruntime_available", lambda: False)
    result = run_cli("export", char_ckpt, "--format", "onnx", "--out", tmp_path / "o", "--json")
    assert result.exit_code == 0, result.stderr
    assert "onnxruntime is not installed: the export is not verified" in result.stderr
    assert json.loads(result.stdout)["check"] is None
    assert (tmp_path / "o" / "step.onnx").exists()


# -- ONNX ----------------------------------------------------------------------------------------


@needs_onnxruntime
def test_onnx_logits_equal_pytorch_over_1000_steps(char_ckpt, tmp_path):
    import onnx
    import onnxruntime as ort

    result = exporting.export_onnx(char_ckpt, tmp_path / "onnx", verify=False)
    assert result.check is None
    out = result.out
    assert sorted(result.files) == sorted(p.name for p in out.iterdir()) == [
        "model.json", "prime.onnx", "step.onnx", "tokenizer.json", "weights.bin",
    ]  # fmt: skip
    for graph in ("prime.onnx", "step.onnx"):
        onnx.checker.check_model(str(out / graph), full_check=True)
    meta = json.loads((out / "model.json").read_text())
    vocab = load_checkpoint(char_ckpt).vocab
    assert meta["level"] == "char" and meta["vocab_size"] == vocab.size
    assert meta["start_id"] == int(vocab.encode("\n")[0])
    assert Vocab.load(out / "tokenizer.json") == vocab

    check = exporting.verify_onnx(out, char_ckpt, steps=1000, prime_len=64, batch_size=2)
    assert check.max_abs_diff <= 1e-5, check
    assert check.max_abs_logit > 1.0  # the comparison has teeth: logits are not all ~0
    assert check.greedy_agree and check.ok

    # dynamic time and batch: another length and batch than the check used
    model = load_checkpoint(char_ckpt).model
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, vocab.size, size=(5, 3))
    h = rng.standard_normal((2, 3, 32)).astype(np.float32)
    c = rng.standard_normal((2, 3, 32)).astype(np.float32)
    got = ort.InferenceSession(str(out / "prime.onnx")).run(
        None, {"tokens": tokens, "h": h, "c": c}
    )
    with torch.no_grad():
        logits, (h_t, c_t) = model(
            torch.from_numpy(tokens), (torch.from_numpy(h), torch.from_numpy(c))
        )
    for ours, theirs in zip(got, (logits, h_t, c_t), strict=True):
        np.testing.assert_allclose(ours, theirs.numpy(), atol=1e-5, rtol=0)


@needs_onnxruntime
def test_onnx_export_through_the_cli_is_verified(run_cli, byte_ckpt, tmp_path):
    result = run_cli("export", byte_ckpt, "-f", "onnx", "-o", tmp_path / "o", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["check"]["steps"] == 1000 and report["check"]["max_abs_diff"] <= 1e-5
    assert report["total_bytes"] == sum(p.stat().st_size for p in (tmp_path / "o").iterdir())
    assert "max |logit diff|" in result.stderr


@needs_onnxruntime
def test_a_failed_verification_writes_nothing(char_ckpt, tmp_path, monkeypatch):
    bad = exporting.OnnxCheck(0.5, 3.0, 64, 1000, 2, False)
    monkeypatch.setattr(exporting, "verify_onnx", lambda *a, **k: bad)
    with pytest.raises(CharLSTMError, match="differ from PyTorch's by up to 0.5"):
        exporting.export_onnx(char_ckpt, tmp_path / "o")
    assert list(tmp_path.iterdir()) == []


def _run_example(folder: Path, *args: str) -> subprocess.CompletedProcess:
    """examples/onnx_sample.py in a child process where `import torch` (and charlstm) fails."""
    code = (
        "import sys, runpy; sys.modules['torch'] = None; sys.modules['charlstm'] = None; "
        f"sys.argv = {['onnx_sample.py', str(folder), *args]!r}; "
        f"runpy.run_path({str(EXAMPLE)!r}, run_name='__main__'); "
        "assert sys.modules['torch'] is None"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


@needs_onnxruntime
@pytest.mark.parametrize("which", ["char", "byte"])
def test_onnx_example_samples_without_torch(which, char_ckpt, byte_ckpt, run_cli, tmp_path):
    ckpt = char_ckpt if which == "char" else byte_ckpt
    out = exporting.export_onnx(ckpt, tmp_path / "onnx", verify=False).out
    greedy = _run_example(out, "--prime", PRIME, "--length", "300", "--temperature", "0")
    assert greedy.returncode == 0, greedy.stderr
    assert greedy.stdout == greedy_sample(run_cli, ckpt, PRIME) + "\n"

    sampling = ["--length", "200", "--temperature", "0.9", "--top-k", "10", "--top-p", "0.95"]
    one = _run_example(out, "--prime", PRIME, *sampling, "--seed", "3")
    two = _run_example(out, "--prime", PRIME, *sampling, "--seed", "3")
    assert one.returncode == 0, one.stderr
    assert one.stdout == two.stdout and one.stdout.startswith(PRIME)
    if which == "char":
        assert set(one.stdout) <= set(CHARS) | {"\n"}
        bad = _run_example(out, "--prime", "xyz")
        assert bad.returncode == 1 and "'x', 'y', 'z'" in bad.stderr
    else:  # no prime: starts from a newline that is not printed, as `charlstm sample` does
        bare = _run_example(out, "--length", "50", "--temperature", "0")
        ref = run_cli("sample", ckpt, "--length", 50, "--temperature", 0)
        assert bare.stdout == ref.stdout


# -- web -----------------------------------------------------------------------------------------


def test_web_files_carry_the_checkpoint(char_ckpt, tmp_path):
    result = exporting.export_web(char_ckpt, tmp_path / "web")
    out = result.out
    assert sorted(p.name for p in out.iterdir()) == [
        "charlstm.js", "index.html", "model.json", "tokenizer.json", "weights.js",
        "weights.safetensors",
    ]  # fmt: skip
    blob = (out / "weights.safetensors").read_bytes()
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8 : 8 + n])
    assert (8 + n) % 8 == 0  # Float32Array views need 4-byte aligned offsets
    state = load_checkpoint(char_ckpt).model.state_dict()
    assert set(header) - {"__metadata__"} == set(state)
    for name, tensor in state.items():
        begin, end = header[name]["data_offsets"]
        data = np.frombuffer(blob[8 + n + begin : 8 + n + end], "<f4").reshape(tensor.shape)
        np.testing.assert_array_equal(data, tensor.numpy())
    js = (out / "weights.js").read_text()
    b64 = re.search(r'CHARLSTM_WEIGHTS_B64 = "([A-Za-z0-9+/=]+)";', js).group(1)
    assert base64.b64decode(b64) == blob
    page = (out / "index.html").read_text(encoding="utf-8")
    inline = re.search(r'<script id="charlstm-model" type="application/json">(.*?)</script>',
                       page, re.S).group(1)  # fmt: skip
    model = json.loads(inline)
    assert "".join(map(chr, model["codepoints"])) == load_checkpoint(char_ckpt).vocab.chars
    assert model["start_id"] == json.loads((out / "model.json").read_text())["start_id"]


def test_web_inline_json_cannot_close_its_script_element():
    text = exporting._inline_json({"x": "</script><script>alert(1)</script>"})
    assert "</" not in text and json.loads(text)["x"].startswith("</script>")


def test_tied_weights_export(tmp_path):
    vocab = Vocab("char", "".join(sorted(set(CHARS))))
    config = ModelConfig(vocab_size=vocab.size, embed_size=16, hidden_size=16, num_layers=1,
                         tie_weights=True)  # fmt: skip
    model = CharLSTM(config)
    path = tmp_path / "tied.pt"
    save_checkpoint({"model_config": config.to_dict(), "model": model.state_dict(),
                     "vocab": vocab.to_json()}, path)  # fmt: skip
    web = exporting.export_web(path, tmp_path / "web")
    assert web.meta["tie_weights"] is True
    if exporting.onnxruntime_available():
        onnx = exporting.export_onnx(path, tmp_path / "onnx")
        assert onnx.check is not None and onnx.check.max_abs_diff <= 1e-5


def _browse(url: str, timeout: float = 90) -> dict:
    """Open `url` in headless Chromium the way a user would (no flags that loosen security),
    and return the page's title, #output, #status, #error and every console message."""
    proc = subprocess.run(
        [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=120000", "--dump-dom", url],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    dom = proc.stdout

    def element(tag: str, ident: str) -> str | None:
        found = re.search(rf'<{tag} id="{ident}"[^>]*>(.*?)</{tag}>', dom, re.S)
        return None if found is None else html.unescape(found.group(1))

    title = re.search(r"<title>(.*?)</title>", dom, re.S)
    return {
        "title": title and html.unescape(title.group(1)),
        "output": element("pre", "output"),
        "status": element("p", "status"),
        "error": element("p", "error"),
        "console": [line for line in proc.stderr.splitlines() if ":CONSOLE" in line],
        "dom": dom,
    }


def _query(**params) -> str:
    return urllib.parse.urlencode(params, quote_via=urllib.parse.quote)


@needs_chromium
def test_web_page_from_disk_greedy_equals_charlstm_sample(char_ckpt, run_cli, tmp_path):
    out = exporting.export_web(char_ckpt, tmp_path / "web").out
    expected = greedy_sample(run_cli, char_ckpt, PRIME)
    assert len(set(expected)) > 8  # a varied text, not one character repeated
    url = (
        (out / "index.html").as_uri()
        + "?"
        + _query(prime=PRIME, length=300, temperature=0, autostart=1)
    )
    page = _browse(url)
    assert page["console"] == []  # no errors, no warnings: the file:// path fetches nothing
    assert page["title"] == "done", page["error"] or page["dom"][-2000:]
    assert page["output"] == expected
    assert re.search(r"300 characters in [\d.]+ s \([\d,]+ chars/s\)", page["status"])


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    requested: list[str] = []

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        type(self).requested.append(self.path)
        super().do_GET()


HARNESS = """<!doctype html><html><head><meta charset="utf-8"><title>waiting</title>
<link rel="icon" href="data:,"></head><body><pre id="results"></pre><script>
const job = %s;
const frames = job.frames;
const results = {};
function probe() {  // the JavaScript step's logits along job.tokens, in the frame job.probe
  const { model } = document.querySelector(`iframe[name="${job.probe}"]`).contentWindow.charlstm;
  const state = model.zeroState();
  const logits = new Float32Array(model.V);
  const rows = [];
  for (const t of job.tokens) {
    model.step(t, state, logits);
    rows.push(Array.from(logits));
  }
  return rows;
}
for (const [name, url] of Object.entries(frames)) {
  const frame = document.createElement("iframe");
  frame.src = url;
  frame.name = name;
  document.body.appendChild(frame);
  const poll = setInterval(() => {
    const doc = frame.contentDocument;
    if (!doc || !["done", "error"].includes(doc.title)) return;
    clearInterval(poll);
    results[name] = {title: doc.title, output: doc.getElementById("output").textContent,
                     error: doc.getElementById("error").textContent};
    if (Object.keys(results).length === Object.keys(frames).length) {
      results.probe = probe();
      document.getElementById("results").textContent = JSON.stringify(results);
      document.title = "all done";
    }
  }, 20);
}
</script></body></html>"""


@needs_chromium
def test_web_page_served_over_http(char_ckpt, byte_ckpt, run_cli, tmp_path):
    """One browser run, many pages (same-origin iframes): byte-level greedy equals `charlstm
    sample`, top-k 1 is greedy, a seed reproduces a sample, bad options and unknown characters
    are reported on the page, and the binary weights are fetched (not the base64 copy)."""
    site = tmp_path / "site"
    exporting.export_web(char_ckpt, site / "char")
    exporting.export_web(byte_ckpt, site / "byte")
    # NFKC + lowercase: the page normalizes the prime as the tokenizer does (ＣＡＦÉ -> café)
    folded = Vocab("char", "".join(sorted(set(CHARS.lower()))), "nfkc", lowercase=True)
    norm_ckpt = random_checkpoint(tmp_path / "norm.pt", folded, hidden_size=24, seed=2)
    exporting.export_web(norm_ckpt, site / "norm")
    sampled = dict(prime=PRIME, length=200, temperature=0.9, top_p=0.95, autostart=1)
    frames = {
        "byte_greedy": "byte/index.html?" + _query(prime=PRIME, length=300, temperature=0,
                                                   autostart=1),
        "byte_top1": "byte/index.html?" + _query(prime=PRIME, length=300, temperature=1,
                                                 top_k=1, autostart=1),
        "char_seed_a": "char/index.html?" + _query(**sampled, seed=7),
        "char_seed_b": "char/index.html?" + _query(**sampled, seed=7),
        "char_seed_c": "char/index.html?" + _query(**sampled, seed=8),
        "char_no_prime": "char/index.html?" + _query(length=100, temperature=0, autostart=1),
        "char_unknown": "char/index.html?" + _query(prime="xyz", autostart=1),
        "char_bad_length": "char/index.html?" + _query(length=-1, autostart=1),
        "char_long_prime": "char/index.html?" + _query(prime=LONG_PRIME, length=50,
                                                       temperature=0, autostart=1),
        "norm_greedy": "norm/index.html?" + _query(prime="ＣＡＦÉ The", length=100,
                                                   temperature=0, autostart=1),
    }  # fmt: skip
    tokens, ref_logits = torch_greedy_path(byte_ckpt, PRIME, 300)
    job = {"frames": frames, "probe": "byte_greedy", "tokens": tokens}
    (site / "harness.html").write_text(HARNESS % json.dumps(job), encoding="utf-8")
    _QuietHandler.requested = []
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        page = _browse(f"http://127.0.0.1:{server.server_address[1]}/harness.html")
    finally:
        server.shutdown()
        server.server_close()
    assert page["title"] == "all done", page["dom"][-2000:]
    assert page["console"] == []
    results = json.loads(html.unescape(re.search(r'<pre id="results">(.*?)</pre>',
                                                 page["dom"], re.S).group(1)))  # fmt: skip

    js_logits = np.array(results["probe"])
    assert np.abs(js_logits - ref_logits).max() <= 1e-5
    assert np.abs(ref_logits).max() > 1.0
    expected = greedy_sample(run_cli, byte_ckpt, PRIME)
    assert "\ufffd" in expected  # the model emits invalid UTF-8: decoded as Python does
    assert results["byte_greedy"]["output"] == expected
    assert results["byte_top1"]["output"] == expected
    a, b, c = (results[f"char_seed_{s}"]["output"] for s in "abc")
    assert a == b != c and a.startswith(PRIME) and len(a) == len(PRIME) + 200
    assert set(a) <= set(CHARS)
    no_prime = run_cli("sample", char_ckpt, "--length", 100, "--temperature", 0).stdout[:-1]
    assert results["char_no_prime"]["output"] == no_prime
    unknown = results["char_unknown"]
    assert unknown["title"] == "error" and "3 character(s) the vocabulary lacks" in unknown["error"]
    assert results["char_bad_length"]["error"] == 'length must be a whole number >= 0, got "-1"'
    long_prime = greedy_sample(run_cli, char_ckpt, LONG_PRIME, length=50)
    assert results["char_long_prime"]["output"] == long_prime
    norm = greedy_sample(run_cli, norm_ckpt, "ＣＡＦÉ The", length=100)
    assert norm.startswith("café the") and results["norm_greedy"]["output"] == norm
    fetched = [p.split("?")[0] for p in _QuietHandler.requested]
    assert "/byte/weights.safetensors" in fetched and "/byte/weights.js" not in fetched
