"""Shared fixtures: a tiny corpus, an isolated cache and working folder, and two ways to run the
real CLI (in process with Typer's runner, or as a child process like a user would). Also the
`cuda` marker's skip and the skip policy: every skip is listed with its reason, and with
--strict-skips (CI) a skip that is not GPU-only fails the run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import charlstm.cli.app

#: CHARLSTM_CUDA_TESTS_ON=cpu runs the `cuda` tests on the CPU (bench/gpu_check.sh --device cpu)
CUDA_TESTS_ON = os.environ.get("CHARLSTM_CUDA_TESTS_ON", "cuda")


def pytest_addoption(parser):
    parser.addoption(
        "--strict-skips",
        action="store_true",
        help="fail the run if a test is skipped for any reason but a missing GPU (marker cuda)",
    )


def pytest_configure(config):
    import signal

    import torch

    torch.set_num_threads(1)
    # A shell starts a background job (`bash .ci/run &`, cron, nohup ... &) with SIGINT ignored,
    # every child inherits that, and Python then installs no Ctrl-C handler: the children that
    # tests/test_interrupts.py stops with SIGINT would run on to the end (seen in CI launched
    # that way: 10 failures). Those tests mean a Ctrl-C at a terminal, so the suite's children
    # start with Python's own handler, as a terminal's would.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if not hasattr(config, "workerinput"):  # the controller (or a run without xdist) judges
        config.pluginmanager.register(SkipPolicy(config), "charlstm-skip-policy")


def pytest_collection_modifyitems(config, items):
    import torch

    # the slow tests first (the order is otherwise kept): xdist hands out tests in this order,
    # and a 40 s test begun last keeps one worker busy while the other has nothing left to do
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)

    no_gpu = pytest.mark.skip(reason="needs a CUDA GPU (bench/gpu_check.sh runs these on one)")
    skip = CUDA_TESTS_ON != "cpu" and not torch.cuda.is_available()
    for item in (i for i in items if i.get_closest_marker("cuda")):
        item.user_properties.append(("gpu_only", True))  # what the reports carry to SkipPolicy
        if skip:
            item.add_marker(no_gpu)


REPO = Path(__file__).resolve().parent.parent
BUNDLED = REPO / "corpora" / "tinyshakespeare.txt"

TINY_TEXT = (
    "First Citizen:\n"
    "Before we proceed any further, hear me speak.\n"
    "\n"
    "All:\n"
    "Speak, speak.\n"
    "Café naïve — 東京 😀\n"
)


class SkipPolicy:
    """Lists every skip with its reason after the run; with --strict-skips, a skip of a test
    not marked `cuda` (run on a machine without a GPU) fails the run."""

    def __init__(self, config) -> None:
        self.strict = config.getoption("--strict-skips")
        self.skips: list[tuple[str, str, bool]] = []  # (test, reason, GPU-only)

    def _record(self, report) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):
            longrepr = report.longrepr
            reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
            # a module skipped at collection (importorskip) has no user_properties
            properties = getattr(report, "user_properties", ())
            gpu_only = ["gpu_only", True] in [list(p) for p in properties]
            self.skips.append((report.nodeid, reason.removeprefix("Skipped: "), gpu_only))

    def pytest_runtest_logreport(self, report):
        if report.when in ("setup", "call"):
            self._record(report)

    def pytest_collectreport(self, report):
        self._record(report)  # a whole module skipped (pytestmark, importorskip)

    @property
    def refused(self) -> list[tuple[str, str, bool]]:
        return [s for s in self.skips if not s[2]] if self.strict else []

    def pytest_sessionfinish(self, session):
        if self.refused and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter):
        if not self.skips:
            return
        terminalreporter.section(f"{len(self.skips)} skipped, each with its reason")
        for test, reason, gpu_only in self.skips:
            terminalreporter.write_line(
                f"{'GPU-only' if gpu_only else 'SKIPPED '}  {test}: {reason}"
            )
        if self.refused:
            terminalreporter.write_line(
                f"FAILED: {len(self.refused)} skip(s) not GPU-only, and --strict-skips (CI) "
                "allows only tests marked cuda to skip: install what the reasons name",
                red=True,
                bold=True,
            )


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory, monkeypatch) -> Path:
    """Point $CHARLSTM_CACHE at a fresh folder and run from a scratch folder, so no test writes
    into the user's home or the checkout (default outputs go to ./data)."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("CHARLSTM_CACHE", str(cache))
    # one thread per process (children inherit it): the suite runs 2 workers on 2 cores, and
    # tiny models only lose time to thread hand-offs
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    return cache


@pytest.fixture
def tiny_text(tmp_path) -> Path:
    """A few lines of text, mostly ASCII with a handful of multi-byte characters."""
    path = tmp_path / "tiny.txt"
    path.write_text(TINY_TEXT, encoding="utf-8")
    return path


@pytest.fixture
def run_cli():
    """Run the real CLI in process: ``run_cli("tokenize", path)`` -> click Result, whose
    ``stdout``, ``stderr`` and ``exit_code`` are separate."""
    runner = CliRunner()

    def run(*args: object):
        return runner.invoke(charlstm.cli.app.app, [str(a) for a in args])

    return run


@pytest.fixture
def run_cli_subprocess():
    """Run ``python -m charlstm *args`` as a child process -> CompletedProcess (text mode)."""

    def run(*args: object, extra_python_args: tuple[str, ...] = (), timeout: float = 60):
        return subprocess.run(
            [sys.executable, *extra_python_args, "-m", "charlstm", *map(str, args)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run
