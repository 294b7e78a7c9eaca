"""Shared fixtures: a tiny corpus, an isolated cache and working folder, and two ways to run the
real CLI (in process with Typer's runner, or as a child process like a user would)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import charlstm.cli.app


def pytest_configure(config):
    import torch

    torch.set_num_threads(1)


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
