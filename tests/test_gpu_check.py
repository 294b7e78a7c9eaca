"""bench/gpu_check.sh: what one short GPU loan runs, proven on the CPU. The JSON of a quick CPU
run has every step, each ok with its figures; a crash, a time-out or a missing GPU costs one
step and the JSON is still written.

CI runs `bench/gpu_check.sh --device cpu --quick` in a venv holding only the five core
packages and points CHARLSTM_GPU_CHECK_JSON at the JSON it wrote; without it this file runs the
same quick check itself (about a minute on an idle 2-core machine)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.append(str(Path(__file__).resolve().parent.parent / "bench"))  # bench/gpu_check.py
import gpu_check  # noqa: E402

pytestmark = pytest.mark.slow

SCRIPT = Path(gpu_check.__file__)


@pytest.fixture(scope="module")
def quick_check(tmp_path_factory) -> tuple[dict, Path]:
    """(the JSON, its folder) of a quick CPU check: CI's, or one run here."""
    given = os.environ.get("CHARLSTM_GPU_CHECK_JSON")
    if given:
        return json.loads(Path(given).read_text()), Path(given).parent
    out = tmp_path_factory.mktemp("gpu-check")
    done = subprocess.run(
        ["bash", str(SCRIPT.with_suffix(".sh")), str(out), "--device", "cpu", "--quick"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHON=sys.executable),
    )  # fmt: skip
    assert (out / "gpu_check.json").exists(), done.stderr[-2000:]
    return json.loads((out / "gpu_check.json").read_text()), out


def test_every_step_ran_and_passed_in_time(quick_check):
    doc, folder = quick_check
    assert doc["format_version"] == gpu_check.FORMAT_VERSION
    assert doc["device"] == "cpu" and doc["quick"] is True and doc["commit"]
    steps = {s["name"]: s for s in doc["steps"]}
    assert set(gpu_check.STEP_NAMES) <= set(steps)
    for name, step in steps.items():
        problem = f"{name}: {step['status']} {step['error']}"
        assert step["status"] == "ok", problem
        assert 0 < step["seconds"] <= step["budget_s"] and step["cpu_s"] > 0, problem
        assert (folder / step["log"]).is_file() and isinstance(step["figures"], dict), problem
    assert doc["elapsed_s"] <= doc["budget_s"] < 180  # quick: under 3 minutes in all


def test_each_step_has_its_figures(quick_check):
    steps = {s["name"]: s["figures"] for s in quick_check[0]["steps"]}
    env = steps["env"]
    assert env["torch"] and env["cuda_available"] is False and env["packages"]["typer"]
    assert steps["cuda_tests"]["passed"] >= 6 and steps["cuda_tests"]["failed_tests"] == []
    limits = steps["bench_limits"]["rows"]
    assert any("matmul" in n and r["value"] > 0 for n, r in limits.items())
    assert limits["memory read"]["value"] > 0
    batch_1 = next(r for n, r in limits.items() if "batch 1" in n)
    assert batch_1["ratio"] > 0 and batch_1["target"] == 0.9
    train_rows = steps["bench_train_small"]["rows"]
    assert train_rows and all(r["ratio"] > 0 and r["target"] == 0.7 for r in train_rows.values())
    train = steps["train"]
    assert train["steps"] > 0 and train["chars_per_s"] > 0 and train["precision"]
    assert math.isfinite(train["best_val_loss"]) and train["model"]["hidden_size"] > 0
    static, dynamic = steps["eval"]["static"], steps["eval"]["dynamic"]
    # one exact stream here, 64 streams in training's validation: close, not equal
    assert static["loss"] == pytest.approx(train["best_val_loss"], abs=0.05)
    assert dynamic["chars"] == static["chars"] and dynamic["loss"] < static["loss"] + 0.05
    assert steps["sample"]["chars"] >= 300 and steps["sample"]["text"].startswith("ROMEO:")
    resume = steps["resume"]
    assert resume["bitwise"] and resume["state_bitwise"] and resume["max_abs_diff"] == 0
    assert resume["to_step"] == resume["from_step"] + 2
    torchrun = steps["torchrun"]
    assert torchrun["backend"] == "gloo" and torchrun["collectives_ok"]
    assert torchrun["train_steps"] == 10


def test_every_goal_has_a_measured_figure(quick_check):
    verdicts = quick_check[0]["verdicts"]
    assert set(verdicts) == set(gpu_check.GOALS)
    for goal, v in verdicts.items():
        assert v["value"] is not None and v["goal"] == gpu_check.GOALS[goal], goal
        assert isinstance(v["met"], bool), goal


def test_without_a_gpu_the_cuda_check_still_writes_its_json(tmp_path):
    """`--device cuda` on a machine without one: the steps fail one by one, naming why, the
    JSON lists every step and the summary prints; the exit status says it failed."""
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path), "--only", "env", "--only", "sample"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    doc = json.loads((tmp_path / "gpu_check.json").read_text())
    status = {s["name"]: (s["status"], s["error"]) for s in doc["steps"]}
    assert status["env"] == ("fail", "no CUDA device visible to torch: the cuda steps will fail")
    assert status["sample"][0] == "fail" and status["sample"][1]
    assert status["train"] == ("not run", "") and doc["device"] == "cuda"
    assert "bench_train_large" in status and "goal" in done.stdout


def test_a_crash_a_hang_and_a_spent_budget_cost_one_step_each(tmp_path, monkeypatch):
    def crashes(check, step):
        raise KeyError("no such figure")

    def hangs(check, step):
        gpu_check.must(check, step, [sys.executable, "-c", "import time; time.sleep(30)"])

    def fine(check, step):
        step.figures["x"] = 1

    steps = [("crash", crashes, 10), ("hang", hangs, 4), ("fine", fine, 10), ("late", fine, 10)]
    monkeypatch.setattr(gpu_check, "plan", lambda check: [
        (gpu_check.Step(name, "a step", budget), fn) for name, fn, budget in steps])  # fmt: skip
    check = gpu_check.Check(tmp_path, "cpu", True, sys.executable, deadline=time.time() + 8)
    gpu_check.run_check(check)
    monkeypatch.setattr(time, "time", lambda: check.deadline + 1)  # all time spent
    late = gpu_check.Step("late", "a step", 10)
    with pytest.raises(gpu_check.OutOfTime):
        check.run(late, ["true"])
    doc = json.loads((tmp_path / "gpu_check.json").read_text())
    status = {s["name"]: s["status"] for s in doc["steps"]}
    assert status == {"crash": "fail", "hang": "timeout", "fine": "ok", "late": "ok"}
    assert "KeyError" in doc["steps"][0]["error"] and doc["steps"][2]["figures"] == {"x": 1}
