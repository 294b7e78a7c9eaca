"""How faithful and how fast the exports of a checkpoint are (the figures in docs/export.md
and bench/RESULTS.md).

    python bench/export_bench.py checkpoints/ts10/best.pt            # ~1 minute for `small`
    python bench/export_bench.py run/best.pt --chars 300 --json

ONNX (needs charlstm[export]): the largest |logit difference| between onnxruntime and PyTorch
over a 64-token prime and 1,000 sampled steps (`charlstm.verify_onnx`), and onnxruntime's
batch-1 sampling speed against PyTorch's `FastLSTMStep`, in alternating rounds.

Web (needs chromium): the exported page is served on 127.0.0.1 and driven from a harness page
in headless Chromium with real clocks (no virtual time), which POSTs its figures back: the
greedy text over --chars characters for each --prime against `charlstm.generate(temperature=0)`;
the largest |logit difference| between the JavaScript step and PyTorch along those texts and
along 2,000 sampled characters, with the closest top-2 gap (how near a tie came); and the
page's own chars/s over --speed-chars sampled characters (alone on the page), in rounds
alternating with PyTorch. Also the folder size, and what weights.js (the base64 copy for
file://) adds to it.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np

HARNESS = """<!doctype html><html><head><meta charset="utf-8"><title>bench</title>
<link rel="icon" href="data:,"></head><body><script>
// Drive the exported page in same-origin iframes, one at a time, then POST the figures back.
const job = %s;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function open(query) {
  const frame = document.createElement("iframe");
  frame.src = "web/index.html?" + query;
  document.body.appendChild(frame);
  for (;;) {
    await sleep(20);
    const doc = frame.contentDocument;
    if (doc && doc.title === "error") throw new Error(doc.getElementById("error").textContent);
    if (frame.contentWindow.charlstm && (!query.includes("autostart") || doc.title === "done"))
      return frame;
  }
}
(async () => {
  const report = { greedy: [], logits: [] };
  try {
    let frame;
    for (const query of job.greedy) {
      frame = await open(query);
      report.greedy.push(frame.contentDocument.getElementById("output").textContent);
      frame.remove();
    }
    // the JavaScript step's logits along each path of tokens, from a zero state
    frame = await open("");
    const { model } = frame.contentWindow.charlstm;
    for (const tokens of job.paths) {
      const state = model.zeroState();
      const logits = new Float32Array(model.V);
      const rows = [];
      for (const t of tokens) {
        model.step(t, state, logits);
        rows.push(Array.from(logits));
      }
      report.logits.push(rows);
    }
    frame.remove();
    // speed: the page alone (nothing else competes for the thread), taking turns with PyTorch,
    // which the server times while it holds the answer to /tick
    report.chars_per_s = [];
    for (let round = 0; round < job.rounds; round++) {
      frame = await open(job.speed);
      report.status = frame.contentDocument.getElementById("status").textContent;
      report.chars_per_s.push(Number(frame.contentDocument.getElementById("output").dataset.charsPerS));
      frame.remove();
      await fetch("/tick", { method: "POST", body: "{}" });
    }
  } catch (e) {
    report.error = String(e);
  }
  await fetch("/report", { method: "POST", body: JSON.stringify(report) });
})();
</script></body></html>"""


def run_harness(work: Path, job: dict, on_tick, timeout: float = 900) -> dict:
    """Serve `work` on 127.0.0.1, open the harness in headless Chromium and wait for the
    report it POSTs back; `on_tick()` runs (and the page waits) at each POST /tick."""
    (work / "harness.html").write_text(HARNESS % json.dumps(job), encoding="utf-8")
    reports: list[dict] = []
    arrived = threading.Event()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.path == "/tick":
                on_tick()
            else:
                reports.append(json.loads(body))
            self.send_response(204)
            self.end_headers()
            if self.path != "/tick":
                arrived.set()

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(work))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/harness.html"
    browser = subprocess.Popen(
        [shutil.which("chromium") or "chromium", "--headless=new", "--no-sandbox",
         "--disable-gpu", "--no-first-run", f"--user-data-dir={work / 'profile'}", url],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        if not arrived.wait(timeout):
            raise SystemExit(f"no report from the page within {timeout:.0f} s")
    finally:
        browser.terminate()
        browser.wait(30)
        server.shutdown()
        server.server_close()
    if "error" in reports[0]:
        raise SystemExit(f"the page failed: {reports[0]['error']}")
    return reports[0]


def torch_path_logits(ckpt, ids: np.ndarray, prime_len: int) -> np.ndarray:
    """PyTorch's logits after each token of `ids`, the way `charlstm sample` computes them:
    the prime in one forward pass, then one `FastLSTMStep` per token."""
    import torch

    from charlstm.generation.sampling import FastLSTMStep

    model = ckpt.model
    with torch.no_grad():
        logits, state = model(torch.from_numpy(ids[:prime_len])[:, None])
        rows = list(logits[:, 0].numpy())
        step = FastLSTMStep(model, 1)
        step.load_state(state)
        for token in ids[prime_len:]:
            rows.append(step(torch.tensor([int(token)])).numpy()[0].copy())
    return np.array(rows)


def sampling_speed(ckpt, onnx_dir: Path, chars: int, rounds: int, threads: int) -> dict:
    """Batch-1 steps per second: onnxruntime's step.onnx vs PyTorch's FastLSTMStep, taking
    turns; the ratio is the median of the per-round ratios."""
    import onnxruntime as ort
    import torch

    from charlstm.generation.sampling import FastLSTMStep

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(onnx_dir / "step.onnx"), options)
    cfg = ckpt.config
    step = FastLSTMStep(ckpt.model, 1)
    ort_rates, torch_rates = [], []
    for _ in range(rounds):
        h = c = np.zeros((cfg.num_layers, 1, cfg.hidden_size), np.float32)
        token = np.zeros(1, np.int64)
        start = time.perf_counter()
        for _ in range(chars):
            logits, h, c = sess.run(None, {"token": token, "h": h, "c": c})
            token = logits.argmax(-1)
        ort_rates.append(chars / (time.perf_counter() - start))
        t = torch.zeros(1, dtype=torch.long)
        start = time.perf_counter()
        for _ in range(chars):
            t = step(t).argmax(-1)
        torch_rates.append(chars / (time.perf_counter() - start))
    return {
        "onnxruntime_chars_per_s": statistics.median(ort_rates),
        "pytorch_chars_per_s": statistics.median(torch_rates),
        "ratio_median": statistics.median(
            a / b for a, b in zip(ort_rates, torch_rates, strict=True)
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument(
        "--prime",
        action="append",
        help="a prime for the greedy comparison (repeatable; default: five Shakespeare ones)",
    )
    ap.add_argument("--chars", type=int, default=300, help="greedy characters compared")
    ap.add_argument("--speed-chars", type=int, default=1000, help="characters timed per round")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds against PyTorch")
    ap.add_argument("--threads", type=int, default=1, help="threads for torch and onnxruntime")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()

    import torch

    from charlstm.export.formats import export_onnx, export_web, onnxruntime_available, verify_onnx
    from charlstm.generation.sampling import FastLSTMStep, generate
    from charlstm.model.checkpoint import load_checkpoint

    torch.set_num_threads(args.threads)
    args.prime = args.prime or ["ROMEO:", "JULIET:\nO", "First Citizen:\n", "The king ",
                                "KING HENRY VI:\nWhat"]  # fmt: skip
    ckpt = load_checkpoint(args.checkpoint)
    figures: dict = {"checkpoint": str(args.checkpoint), "model": ckpt.config.to_dict()}
    work = Path(tempfile.mkdtemp(prefix="charlstm-export-bench-"))
    try:
        if onnxruntime_available():
            onnx = export_onnx(ckpt, work / "onnx", verify=False)
            check = verify_onnx(onnx.out, ckpt, steps=1000, batch_size=1)
            figures["onnx"] = {
                "bytes": onnx.total_bytes,
                "max_abs_logit_diff_1000_steps": check.max_abs_diff,
                "max_abs_logit": check.max_abs_logit,
                "greedy_agree": check.greedy_agree,
                **sampling_speed(ckpt, onnx.out, 500, args.rounds, args.threads),
            }
        web = export_web(ckpt, work / "web")

        def query(prime: str, **params) -> str:
            return urllib.parse.urlencode({"prime": prime, "autostart": 1, **params})

        expected = [
            generate(ckpt, prime=prime, length=args.chars, temperature=0)[0] for prime in args.prime
        ]
        sampled = generate(ckpt, prime=args.prime[0], length=2000, temperature=1.0, seed=5)[0]
        paths = [(ckpt.vocab.encode(text), prime) for text, prime in zip(
            [*expected, sampled], [*args.prime, args.prime[0]], strict=True)]  # fmt: skip
        job = {
            "greedy": [query(prime, length=args.chars, temperature=0) for prime in args.prime],
            "paths": [ids.tolist() for ids, _ in paths],
            "speed": query(args.prime[0], length=args.speed_chars, temperature=0.8, seed=1),
            "rounds": args.rounds,
        }
        torch_rates: list[float] = []
        step = FastLSTMStep(ckpt.model, 1)

        def torch_round() -> None:  # the same characters, batch 1, as `charlstm sample` steps
            torch.set_num_threads(args.threads)  # per thread in OpenMP: this is the server's
            t = torch.zeros(1, dtype=torch.long)
            start = time.perf_counter()
            for _ in range(args.speed_chars):
                t = step(t).argmax(-1)
            torch_rates.append(args.speed_chars / (time.perf_counter() - start))

        report = run_harness(work, job, torch_round)
        js_rates = report["chars_per_s"]
        diffs, agree, gaps, top = [], 0, [], 0.0
        for rows, (ids, prime) in zip(report["logits"], paths, strict=True):
            rows = np.array(rows)
            ref = torch_path_logits(ckpt, ids, len(ckpt.vocab.encode(prime)))
            diffs.append(float(np.abs(rows - ref).max()))
            agree += int((rows.argmax(-1) == ref.argmax(-1)).sum())
            top = max(top, float(np.abs(ref).max()))
            ranked = np.sort(ref, -1)
            gaps.append(float((ranked[:, -1] - ranked[:, -2]).min()))
        figures["web"] = {
            "bytes": web.total_bytes,
            "bytes_without_weights_js": web.total_bytes - web.files["weights.js"],
            "files": web.files,
            "greedy_equal": [
                got == want for got, want in zip(report["greedy"], expected, strict=True)
            ],
            "max_abs_logit_diff_greedy": max(diffs[:-1]),
            "max_abs_logit_diff_sampled_2000": diffs[-1],
            "max_abs_logit": top,
            "argmax_agree": agree,
            "argmax_positions": sum(len(ids) for ids, _ in paths),
            "smallest_top2_gap": min(gaps),
            "chars_per_s": statistics.median(js_rates),
            "pytorch_chars_per_s": statistics.median(torch_rates),
            "ratio_median": statistics.median(
                a / b for a, b in zip(js_rates, torch_rates, strict=True)
            ),
            "status": report["status"],
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    w = figures["web"]
    if "onnx" in figures:
        o = figures["onnx"]
        print(f"onnx: {o['bytes'] / 1e6:.1f} MB; max |logit diff| vs PyTorch over 1,000 steps "
              f"{o['max_abs_logit_diff_1000_steps']:.2g} (largest logit {o['max_abs_logit']:.3g})"
              f"; greedy agrees: {o['greedy_agree']}")  # fmt: skip
        print(f"onnx: batch-1 sampling {o['onnxruntime_chars_per_s']:,.0f} chars/s vs PyTorch "
              f"{o['pytorch_chars_per_s']:,.0f} (median ratio {o['ratio_median']:.2f}, "
              f"{args.threads} thread(s))")  # fmt: skip
    print(f"web: {w['bytes'] / 1e6:.1f} MB ({w['bytes_without_weights_js'] / 1e6:.1f} MB without "
          f"weights.js, the base64 copy for file://)")  # fmt: skip
    print(f"web: greedy {args.chars} chars equal to PyTorch for {sum(w['greedy_equal'])} of "
          f"{len(w['greedy_equal'])} primes; JS vs PyTorch max |logit diff| "
          f"{w['max_abs_logit_diff_greedy']:.2g} along them, "
          f"{w['max_abs_logit_diff_sampled_2000']:.2g} along 2,000 sampled chars (largest logit "
          f"{w['max_abs_logit']:.3g}); argmax agrees at {w['argmax_agree']}/"
          f"{w['argmax_positions']} positions (smallest top-2 gap "
          f"{w['smallest_top2_gap']:.2g})")  # fmt: skip
    print(f"web: in the page: {w['chars_per_s']:,.0f} chars/s vs PyTorch batch 1 "
          f"{w['pytorch_chars_per_s']:,.0f} (median ratio {w['ratio_median']:.2f}, "
          f"{args.rounds} alternating rounds); last: {w['status']}")  # fmt: skip


if __name__ == "__main__":
    main()
