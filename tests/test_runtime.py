"""runtime.py: which device and precision a command runs with."""

from __future__ import annotations

import pytest
import torch

from charlstm.errors import CharLSTMError, OptionError
from charlstm.runtime import (
    autocast,
    autocast_dtype,
    has_bf16_units,
    lstm_kernel,
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
    assert lstm_kernel(torch.device("meta"), "bf16") == "fp32"  # not a CPU: autocast's job
    assert lstm_kernel(cpu, "auto", hidden_size=128) == "fp32"  # too narrow to pay
    wide = lstm_kernel(cpu, "auto", hidden_size=512)
    assert wide == ("bf16" if has_bf16_units() else "fp32")
    with autocast(cpu, None):
        assert not torch.is_autocast_enabled("cpu")
    with autocast(cpu, torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")
