"""Device and precision choices, resolved once per command."""

from __future__ import annotations

import contextlib

import torch

from charlstm.errors import CharLSTMError, OptionError


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA, then Apple's MPS, then the CPU; an explicit choice (cpu, cuda,
    cuda:N, mps) must exist on this machine."""
    if not isinstance(name, str) or not (
        name in ("auto", "cpu", "cuda", "mps") or (name.startswith("cuda:") and name[5:].isdigit())
    ):
        raise OptionError(f"unknown device {name!r}", "use auto, cpu, cuda, cuda:N or mps")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CharLSTMError(
            "--device cuda was asked for but no CUDA GPU is available", "use --device cpu or auto"
        )
    if name == "mps" and not (
        getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    ):
        raise CharLSTMError(
            "--device mps was asked for but MPS is not available", "use --device cpu or auto"
        )
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise CharLSTMError(
            f"--device {name} was asked for but this machine has "
            f"{torch.cuda.device_count()} CUDA GPU(s)",
            "use cuda:0 .. cuda:N-1, or cuda",
        )
    return torch.device(name)


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """bf16 autocast on CUDA by default (where supported), fp32 elsewhere unless asked."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """A torch.autocast context for `dtype`, or a no-op one for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
