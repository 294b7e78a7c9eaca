"""runtime.py: which device and precision a command runs with."""

from __future__ import annotations

import pytest
import torch

from charlstm.errors import CharLSTMError, OptionError
from charlstm.runtime import (
    autocast,
    autocast_dtype,
    choose_cuda_precision,
    cuda_precision,
    has_bf16_units,
    lstm_kernel,
    read_cuda_rates,
    record_cuda_rates,
    resolve_device,
)


def test_auto_picks_what_is_there():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available() and torch.backends.mps.is_available():
        expected = "mps"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "cuda:-1", "", "CPU"])
def test_unknown_devices_are_usage_errors(name):
    with pytest.raises(OptionError, match="use auto, cpu, cuda, cuda:N or mps"):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_a_missing_gpu_is_named(name):
    with pytest.raises(CharLSTMError, match="no CUDA GPU is available.*--device cpu"):
        resolve_device(name)


def test_precision_policy():
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, "auto") is None  # fp32 on CPUs
    assert autocast_dtype(cpu, "fp32") is None
    assert autocast_dtype(cpu, "bf16") is None  # a CPU's bf16 is the LSTM kernel instead
    assert lstm_kernel(cpu, "fp32") == "fp32"
    assert lstm_kernel(cpu, "bf16") == "bf16"
    assert lstm_kernel(cpu, "tf32") == "fp32" and autocast_dtype(cpu, "tf32") is None
    assert lstm_kernel(torch.device("meta"), "bf16") == "fp32"  # not a CPU: autocast's job
    assert lstm_kernel(cpu, "auto", hidden_size=128) == "fp32"  # too narrow to pay
    wide = lstm_kernel(cpu, "auto", hidden_size=512)
    assert wide == ("bf16" if has_bf16_units() else "fp32")
    with autocast(cpu, None):
        assert not torch.is_autocast_enabled("cpu")
    with autocast(cpu, torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")


def test_cuda_precision_from_measured_rates():
    """bf16 autocast needs to beat TF32 by BF16_MIN_GAIN; no figures: bf16 where the GPU has
    it; pre-Ampere GPUs (no bf16, no TF32) stay fp32."""
    assert choose_cuda_precision({}, has_bf16=True, has_tf32=True) == "bf16"
    assert choose_cuda_precision({"bf16": 3.0, "tf32": 2.0}, True, True) == "bf16"
    assert choose_cuda_precision({"bf16": 2.04, "tf32": 2.0}, True, True) == "tf32"
    assert choose_cuda_precision({"bf16": 2.0, "fp32": 1.0}, True, False) == "bf16"
    assert choose_cuda_precision({"bf16": 2.0, "tf32": 1.0}, False, True) == "tf32"
    assert choose_cuda_precision({}, has_bf16=False, has_tf32=False) == "fp32"


def test_cuda_rates_are_recorded_per_gpu_and_read_back(monkeypatch):
    record_cuda_rates("Some GPU", 1024, {"fp32": 1.0, "tf32": 2.0, "bf16": 2.05})
    record_cuda_rates("Some GPU", 512, {"tf32": 1.0, "bf16": 3.0})
    record_cuda_rates("Other GPU", 512, {"bf16": 1.0})
    assert read_cuda_rates("Some GPU") == {
        1024: {"fp32": 1.0, "tf32": 2.0, "bf16": 2.05},
        512: {"tf32": 1.0, "bf16": 3.0},
    }
    assert read_cuda_rates("Unmeasured GPU") == {}
    # auto on "Some GPU" reads the figures of the nearest measured width
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some GPU")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    gpu = torch.device("cuda")
    assert cuda_precision(gpu, "auto", hidden_size=1536) == "tf32"  # 2.05 < 1.05 x 2.0
    assert cuda_precision(gpu, "auto", hidden_size=600) == "bf16"
    assert cuda_precision(gpu, "fp32", hidden_size=600) == "fp32"  # asked: no figures read
