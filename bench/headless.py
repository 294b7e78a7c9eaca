"""Drive headless Chromium over the DevTools protocol: load a page, collect its console errors,
uncaught exceptions and network requests, and screenshot views selected by the URL hash.

One browser process serves every view (seconds, not one launch per screenshot). The protocol
runs over `--remote-debugging-pipe`: Chromium reads NUL-terminated JSON commands on fd 3 and
writes replies and events on fd 4, so no port is opened. Used by tests/test_inspection_html.py
(the page must run clean in a real browser) and bench/inspect_screenshots.py (the docs' images).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_chromium() -> str | None:
    """The Chromium/Chrome binary: $CHROMIUM if set, else the first on PATH."""
    env = os.environ.get("CHROMIUM")
    if env:
        return env if shutil.which(env) else None
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageReport:
    """What the browser saw: problems reported by the page, requests it made, screenshots."""

    errors: list[str] = field(default_factory=list)  # exceptions, console.error, log errors
    console: list[str] = field(default_factory=list)  # every console message, as "type: text"
    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    screenshots: dict[str, bytes] = field(default_factory=dict)  # hash -> PNG bytes
    values: dict[str, object] = field(default_factory=dict)  # hash -> result of `probe`


class Browser:
    """One headless Chromium process and one page, over the DevTools pipe."""

    def __init__(self, binary: str, width: int = 1200, height: int = 800, timeout: float = 20):
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="charlstm-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire_pipes() -> None:  # in the child: the protocol's fds 3 (in) and 4 (out)
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        args = [
            binary,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--remote-debugging-pipe",
            f"--user-data-dir={self.profile}",
            f"--window-size={width},{height}",
            "about:blank",
        ]
        self.process = subprocess.Popen(
            args,
            preexec_fn=wire_pipes,
            pass_fds=(3, 4),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        attach = {"targetId": target, "flatten": True}
        self.session = self.call("Target.attachToTarget", attach)["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            self.call(f"{domain}.enable", session=True)
        metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
        self.call("Emulation.setDeviceMetricsOverride", metrics, session=True)

    # -- protocol ---------------------------------------------------------------------------------
    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._from_browser], [], [], max(0.0, left))
            if not ready:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise EOFError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, params: dict | None = None, session: bool = False) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for_event(self, method: str) -> dict:
        deadline = time.monotonic() + self.timeout
        for i, event in enumerate(self.events):
            if event.get("method") == method:
                return self.events.pop(i)
        while True:
            event = self._read_message(deadline)
            if event.get("method") == method:
                return event
            self.events.append(event)

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (promises are awaited)."""
        params = {"expression": expression, "returnByValue": True, "awaitPromise": True}
        result = self.call("Runtime.evaluate", params, session=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def hover(self, selector: str) -> bool:
        """Move the mouse onto the centre of the first element matching `selector` (scrolled
        into view if needed); False if there is none."""
        find = f"""(() => {{
          const e = document.querySelector({json.dumps(selector)});
          if (!e) return null;
          const r = e.getBoundingClientRect();
          if (r.top < 0 || r.bottom > innerHeight) e.scrollIntoView({{block: "center"}});
          const q = e.getBoundingClientRect();
          return [q.left + q.width / 2, q.top + q.height / 2];
        }})()"""
        point = self.evaluate(find)
        if point is None:
            return False
        move = {"type": "mouseMoved", "x": point[0], "y": point[1]}
        self.call("Input.dispatchMouseEvent", move, session=True)
        return True

    def screenshot(self) -> bytes:
        shot = self.call("Page.captureScreenshot", {"format": "png"}, session=True)
        return base64.b64decode(shot["data"])

    def close(self) -> None:
        try:
            if self.process.poll() is None:
                with contextlib.suppress(OSError, TimeoutError, EOFError, RuntimeError):
                    self.call("Browser.close")
                try:
                    self.process.wait(5)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
        finally:
            for fd in (self._to_browser, self._from_browser):
                with contextlib.suppress(OSError):
                    os.close(fd)
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- what the page reported -------------------------------------------------------------------
    def report_into(self, report: PageReport) -> None:
        """Move the console messages, exceptions and requests seen so far into `report`."""
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                text = details.get("exception", {}).get("description") or details.get("text")
                report.errors.append(f"uncaught: {text}")
            elif method == "Runtime.consoleAPICalled":
                text = " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
                report.console.append(f"{params['type']}: {text}")
                if params["type"] in ("error", "assert"):
                    report.errors.append(f"console.{params['type']}: {text}")
            elif method == "Log.entryAdded":
                entry = params.get("entry", {})
                report.console.append(f"{entry.get('level')}: {entry.get('text')}")
                if entry.get("level") == "error":
                    report.errors.append(f"log: {entry.get('text')} {entry.get('url', '')}")
            elif method == "Network.requestWillBeSent":
                report.requests.append(params["request"]["url"])
        self.events.clear()


# the page is ready when its script has drawn the view that the hash names
_WAIT_FOR_VIEW = """new Promise((resolve) => {
  const deadline = Date.now() + %d;
  (function check() {
    const b = document.body;
    if ((b && b.dataset.ready === "1" && b.dataset.view === %s) || Date.now() > deadline) {
      requestAnimationFrame(() => requestAnimationFrame(() => resolve(b ? b.dataset.view : null)));
    } else setTimeout(check, 20);
  })();
})"""


def capture(
    page: str | Path,
    hashes: list[str],
    *,
    width: int = 1200,
    height: int = 800,
    probe: str | None = None,
    hover: dict[str, str] | None = None,
    binary: str | None = None,
    timeout: float = 20,
) -> PageReport:
    """Load the HTML file `page`, then for each hash ("#neurons", ...) switch to it, wait for
    the page to draw it (its body's data-view names it), hover the element `hover[hash]` (a
    CSS selector) if given, evaluate `probe` and screenshot."""
    binary = binary or find_chromium()
    if binary is None:
        raise FileNotFoundError("no Chromium found (apt-get install chromium)")
    url = Path(page).resolve().as_uri()
    report = PageReport()
    with Browser(binary, width, height, timeout) as browser:
        browser.call("Page.navigate", {"url": url + (hashes[0] if hashes else "")}, session=True)
        browser.wait_for_event("Page.loadEventFired")
        for h in hashes:
            browser.evaluate(f"location.hash = {json.dumps(h)}")
            view = h.lstrip("#").split("/")[0]
            wait_ms = int(timeout * 1000 / 2)  # the page gives up before the protocol does
            drawn = browser.evaluate(_WAIT_FOR_VIEW % (wait_ms, json.dumps(view)))
            if drawn != view:
                report.errors.append(f"{h}: the page showed {drawn!r}, not {view!r}")
            if hover and h in hover and not browser.hover(hover[h]):
                report.errors.append(f"{h}: nothing matches {hover[h]!r} to hover")
            if probe is not None:
                report.values[h] = browser.evaluate(probe)
            report.screenshots[h] = browser.screenshot()
        browser.report_into(report)
    return report
