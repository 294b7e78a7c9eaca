"""docs/serve.md's picture of the `charlstm serve` playground: serve a checkpoint on 127.0.0.1,
open the page in headless Chromium, generate, screenshot.

    python bench/serve_screenshot.py CHECKPOINT [--out docs/serve-playground.png]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from headless import Browser, PageReport, find_chromium  # noqa: E402

WAIT = """new Promise((resolve) => { const t0 = Date.now(); (function poll() {
  const s = document.body.dataset.state;
  if (%s || Date.now() - t0 > 60000) resolve(s); else setTimeout(poll, 50); })(); })"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/serve-playground.png"))
    parser.add_argument("--prompt", default="ROMEO:\n")
    args = parser.parse_args()
    binary = find_chromium()
    if binary is None:
        raise SystemExit("no Chromium found (apt-get install chromium)")
    proc = subprocess.Popen(
        [sys.executable, "-m", "charlstm", "serve", str(args.checkpoint), "--port", "0"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = proc.stderr.readline()
        found = re.search(r"serving (http://\S+)", line)
        if not found:
            raise SystemExit(f"the server did not start: {line}")
        report = PageReport()
        with Browser(binary, 1000, 720, timeout=90) as browser:
            browser.call("Page.navigate", {"url": found.group(1) + "/"}, session=True)
            browser.wait_for_event("Page.loadEventFired")
            browser.evaluate(WAIT % 's !== "loading"')
            fill = {"prompt": args.prompt, "max_tokens": "500", "temperature": "0.7",
                    "seed": "3", "stop": ""}  # fmt: skip
            browser.evaluate(
                f"""(() => {{ for (const [id, v] of Object.entries({json.dumps(fill)}))
                document.getElementById(id).value = v;
                document.getElementById('generate').click(); }})()"""
            )
            state = browser.evaluate(WAIT % 's === "done" || s === "error"')
            png = browser.screenshot()
            browser.report_into(report)
        if state != "done" or report.errors:
            raise SystemExit(f"the page ended in {state!r}: {report.errors}")
        args.out.write_bytes(png)
        print(f"wrote {args.out} ({len(png) / 1e3:.0f} kB)")
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()
