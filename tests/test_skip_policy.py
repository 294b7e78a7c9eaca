"""The suite's skip policy (tests/conftest.py): every skip listed with its reason, a module
skipped at collection included (the README's test command without the `clients` extra skips
tests/test_lm_eval.py that way), and with --strict-skips only GPU-only skips allowed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def _pytest(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
         *args, str(folder)],
        capture_output=True, text=True, cwd=folder, timeout=120,
    )  # fmt: skip


@pytest.mark.slow
def test_a_module_skipped_at_collection_is_listed_and_refused_when_strict(tmp_path):
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_probe.py").write_text(
        "import pytest\n"
        "pytest.importorskip('no_such_module_here', reason='not installed: pip install it')\n"
    )
    (tmp_path / "test_other.py").write_text("def test_runs():\n    pass\n")
    # one run with --strict-skips: the skip is listed with its reason, then refused
    done = _pytest(tmp_path, "--strict-skips")
    out = done.stdout + done.stderr
    assert "INTERNALERROR" not in out, out
    assert "SKIPPED   test_probe.py: not installed: pip install it" in out, out
    assert done.returncode == 1 and "FAILED: 1 skip(s) not GPU-only" in out, out
