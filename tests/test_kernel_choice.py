"""`--precision auto` on a CPU (charlstm.training.kernel): bf16 or fp32 from timings of this
machine, filed per machine key and shape, shown in the run's header. Timings are injected: the
choice is the logic under test, not this machine's speed."""

from __future__ import annotations

import json

import pytest
import torch

from charlstm import runtime
from charlstm.config import TrainConfig
from charlstm.runtime import (
    CPU_RATES_FILE,
    choose_cpu_kernel,
    machine_key,
    read_cpu_rates,
    shape_key,
)
from charlstm.training import kernel as kernel_module
from charlstm.training.kernel import KernelChoice, choose_kernel, time_kernels
from tests.tiny import TINY_KWARGS, word_text

CPU = torch.device("cpu")


def test_bf16_must_win_by_the_margin():
    assert choose_cpu_kernel({"fp32": 9_288.0, "bf16": 5_919.0}) == "fp32"  # the Xeon
    assert choose_cpu_kernel({"fp32": 8_079.0, "bf16": 12_530.0}) == "bf16"
    assert choose_cpu_kernel({"fp32": 10_000.0, "bf16": 10_400.0}) == "fp32"  # < 1.05x
    assert choose_cpu_kernel({"fp32": 10_000.0, "bf16": 10_600.0}) == "bf16"


@pytest.fixture
def bf16_cpu(monkeypatch):
    """A CPU that reports bf16 units, whatever this one does (the flag only opens the choice)."""
    monkeypatch.setattr(kernel_module, "has_bf16_units", lambda: True)
    monkeypatch.setattr(runtime, "has_bf16_units", lambda: True)


class Timer:
    """An injected measurement: the rates given, and how often it was asked."""

    def __init__(self, fp32: float, bf16: float) -> None:
        self.rates, self.calls = {"fp32": fp32, "bf16": bf16}, 0

    def __call__(self, cfg, vocab_size, device):
        self.calls += 1
        return dict(self.rates)


def test_measured_once_then_read_from_the_cache(bf16_cpu, isolated_env):
    cfg = TrainConfig(precision="auto")
    timer = Timer(fp32=9_288.0, bf16=5_919.0)
    first = choose_kernel(cfg, 65, CPU, measure=timer)
    assert first == KernelChoice("fp32", "measured", timer.rates) and timer.calls == 1
    again = choose_kernel(cfg, 65, CPU, measure=timer)
    assert again.how == "cached" and again.kernel == "fp32" and timer.calls == 1
    filed = json.loads((isolated_env / CPU_RATES_FILE).read_text())
    shape = shape_key(2, 512, 128, 32, 128)
    assert filed[machine_key()][shape]["fp32"] == 9_288.0
    assert filed[machine_key()][shape]["threads"] == torch.get_num_threads()
    assert again.describe() == "auto, cached: fp32 9,288 vs bf16 5,919 chars/s"
    # another shape is another measurement
    wide = choose_kernel(TrainConfig(hidden_size=1024), 65, CPU, measure=Timer(1.0, 2.0))
    assert wide.kernel == "bf16" and wide.how == "measured"


@pytest.mark.parametrize("change", ["torch", "kernels", "cpu"])
def test_a_new_torch_new_kernels_or_another_cpu_measure_again(
    bf16_cpu, isolated_env, monkeypatch, change
):
    cfg = TrainConfig()
    choose_kernel(cfg, 65, CPU, measure=Timer(fp32=1.0, bf16=2.0))
    old_key = machine_key()
    if change == "torch":
        monkeypatch.setattr(torch, "__version__", "9.9.9")
    elif change == "kernels":
        monkeypatch.setattr(runtime, "kernel_source_sha", lambda: "0123456789abcdef")
    else:
        monkeypatch.setattr(runtime, "cpu_model", lambda: "Intel(R) Xeon(R) Platinum 8481C")
    assert machine_key() != old_key
    assert read_cpu_rates(shape_key(2, 512, 128, 32, 128)) is None
    timer = Timer(fp32=2.0, bf16=1.0)
    choice = choose_kernel(cfg, 65, CPU, measure=timer)
    assert choice.how == "measured" and choice.kernel == "fp32" and timer.calls == 1
    assert list(json.loads((isolated_env / CPU_RATES_FILE).read_text())) == [machine_key()]


def test_the_key_names_the_cpu_torch_and_kernel_source():
    key = machine_key()
    assert runtime.cpu_model() in key and torch.__version__ in key
    assert runtime.kernel_source_sha() in key and len(runtime.kernel_source_sha()) == 16


def test_a_broken_cache_file_is_measured_over(bf16_cpu, isolated_env):
    (isolated_env / CPU_RATES_FILE).write_text("{not json")
    choice = choose_kernel(TrainConfig(), 65, CPU, measure=Timer(fp32=1.0, bf16=2.0))
    assert choice.how == "measured" and read_cpu_rates(shape_key(2, 512, 128, 32, 128))


def test_asked_no_units_and_not_measuring(monkeypatch, isolated_env):
    never = Timer(1.0, 1.0)
    assert choose_kernel(TrainConfig(precision="fp32"), 65, CPU, measure=never).how == "asked"
    assert choose_kernel(TrainConfig(precision="bf16"), 65, CPU, measure=never).kernel == "bf16"
    monkeypatch.setattr(kernel_module, "has_bf16_units", lambda: False)
    assert choose_kernel(TrainConfig(), 65, CPU, measure=never).how == "no bf16 units"
    monkeypatch.setattr(kernel_module, "has_bf16_units", lambda: True)
    assert choose_kernel(TrainConfig(), 65, CPU, measure=never, may_measure=False).how == (
        "not measured"
    )
    narrow = choose_kernel(TrainConfig(hidden_size=128), 65, CPU, measure=never)
    assert narrow.kernel == "fp32" and "narrower than 256" in narrow.how
    assert never.calls == 0


def test_time_kernels_times_both_on_a_tiny_shape():
    cfg = TrainConfig(**{**TINY_KWARGS, "preset": "tiny"})
    rates = time_kernels(cfg, 20, CPU)
    assert set(rates) == {"fp32", "bf16"} and all(r > 0 for r in rates.values())


@pytest.mark.parametrize("faster", ["fp32", "bf16"])
def test_the_header_shows_the_choice_and_its_figures(bf16_cpu, isolated_env, tmp_path, faster):
    """Figures filed for the run's shape decide its kernel, and the header says so."""
    from charlstm import tokenize, train

    (tmp_path / "c.txt").write_text(word_text(3000), encoding="utf-8")
    data = tokenize(tmp_path / "c.txt", tmp_path / "tok").out
    k = TINY_KWARGS
    shape = shape_key(1, k["hidden_size"], k["embed_size"], k["batch_size"], k["bptt"])
    slow, fast = 3_000.0, 6_000.0
    rates = {"fp32": slow, "bf16": fast} if faster == "bf16" else {"fp32": fast, "bf16": slow}
    runtime.record_cpu_rates(shape, rates, 1)

    class Capture:
        info = None

        def start(self, info):
            self.info = info

        def __getattr__(self, name):
            return lambda *a, **kw: None

    reporter = Capture()
    train(data, tmp_path / "run", **k, steps=2, device="cpu", reporter=reporter)
    expected = "bf16 LSTM matmuls" if faster == "bf16" else "fp32"
    figures = "fp32 3,000 vs bf16 6,000" if faster == "bf16" else "fp32 6,000 vs bf16 3,000"
    assert reporter.info.precision == f"{expected} (auto, cached: {figures} chars/s)"


@pytest.mark.parametrize("units", [True, False])
def test_precision_bf16_on_a_cpu_without_bf16_units_says_it_is_emulated(monkeypatch, units):
    """--precision bf16 is honoured everywhere (the kernel runs, emulated, where oneDNN has no
    bf16 path), and the run's header says when the CPU cannot run it fast."""
    monkeypatch.setattr(kernel_module, "has_bf16_units", lambda: units)
    cfg = TrainConfig(precision="bf16", hidden_size=512)
    choice = kernel_module.choose_kernel(cfg, 60, torch.device("cpu"))
    assert choice.kernel == "bf16"
    if units:
        assert choice.describe() == "asked"
    else:
        assert "no bf16 units" in choice.describe() and "--precision fp32" in choice.describe()
