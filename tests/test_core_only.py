"""With only the five core packages (torch, typer, rich, tokenizers, numpy), `python -m charlstm`
from a plain checkout (PYTHONPATH, nothing installed) tokenizes, trains, evaluates, samples and
benchmarks; a command that needs an extra says which, in one line. That is how the GPU machine
runs charlstm: no installer, no registry.

CI runs this file in a venv that holds only those five packages and pytest (with
CHARLSTM_CORE_ONLY=1, which also checks that the venv is that bare); anywhere else the child
processes get a meta-path finder that hides every other package, so the test means the same."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import tiny_args, word_text

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
#: what the core commands must do without: the extras, the test and build tools, and what they
#: pull in
NOT_CORE = ("fastapi", "uvicorn", "starlette", "onnx", "onnxruntime", "matplotlib", "PIL",
            "psutil", "httpx", "openai", "hypothesis", "tensorboard", "safetensors",
            "hatchling", "importlinter", "xdist", "wandb", "pooch", "lm_eval", "datasets",
            "langchain_openai", "litellm")  # fmt: skip

CHILD = f"""
import runpy, sys
from importlib.machinery import PathFinder
class HideExtras(PathFinder):  # finds what PathFinder finds, except those packages
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] in {NOT_CORE!r}:
            return None
        return super().find_spec(name, path, target)
sys.meta_path[:] = [HideExtras if f is PathFinder else f for f in sys.meta_path]
sys.argv[0] = "charlstm"
runpy.run_module("charlstm", run_name="__main__", alter_sys=True)
"""


def charlstm(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m charlstm *args` from the checkout, every package but the core five hidden."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-c", CHILD, *map(str, args)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def test_this_venv_is_the_bare_one_when_ci_says_so():
    if os.environ.get("CHARLSTM_CORE_ONLY") != "1":
        return  # the main venv: the finder above stands in for the bare one
    present = [m for m in NOT_CORE if importlib.util.find_spec(m) is not None]
    assert present == [], f"the core-only venv holds {present}"
    from importlib.metadata import PackageNotFoundError, distribution

    with pytest.raises(PackageNotFoundError):
        distribution("charlstm")  # not installed: run from the checkout


@pytest.fixture(scope="module")
def core_run(tmp_path_factory) -> tuple[Path, dict[str, subprocess.CompletedProcess]]:
    """The core commands, one after the other, in a scratch folder: (folder, results)."""
    folder = tmp_path_factory.mktemp("core")
    (folder / "corpus.txt").write_text(word_text(6000), encoding="utf-8")
    steps = {
        "tokenize": ("corpus.txt", "--out", "data"),
        "train": ("data", *tiny_args(), "--steps", "20", "--eval-every", "10", "--out", "run",
                  "--device", "cpu"),
        "eval": ("run/best.pt", "--json", "--device", "cpu"),
        "sample": ("run/best.pt", "--prime", "the ", "--length", "40", "--seed", "1"),
        "bench": ("--quick", "--section", "limits", "--json", "--workdir", "bench"),
        "inspect": ("run/best.pt", "--prime", "the cat", "--html", "page.html"),
    }  # fmt: skip
    return folder, {name: charlstm(name, *args, cwd=folder) for name, args in steps.items()}


def test_the_core_commands_run_from_a_plain_checkout(core_run):
    folder, results = core_run
    for name, done in results.items():
        assert done.returncode == 0, f"charlstm {name}: {done.stderr[-1500:]}"
        assert "Traceback" not in done.stderr
    assert json.loads(results["eval"].stdout)["chars"] > 0
    assert results["sample"].stdout.startswith("the ")
    assert json.loads(results["bench"].stdout)["rows"]
    assert (folder / "page.html").stat().st_size > 1000


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        (("serve", "run/best.pt", "--port", "0"), "charlstm[serve]"),
        (("export", "run/best.pt", "--format", "onnx", "--no-verify"), "charlstm[export]"),
        (("report", "run", "--png", "curves.png"), "charlstm[plot]"),
    ],
    ids=["serve", "export-onnx", "report-png"],
)
def test_a_command_of_an_extra_names_it_in_one_line(core_run, args, extra):
    folder, _ = core_run
    done = charlstm(*args, cwd=folder)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and extra in errors[0], done.stderr
