"""What a run trains: the model on its device with the LSTM kernel its precision picks, and its
optimizer. Shared by the trainer and by `--preset auto`, which times a few steps of each
candidate built exactly as the run would build it."""

from __future__ import annotations

import torch

from charlstm.config import TrainConfig
from charlstm.model.network import CharLSTM
from charlstm.runtime import keep_freed_memory, lstm_kernel


def build_model(
    model_config, precision: str, device: torch.device, kernel: str | None = None
) -> CharLSTM:
    """A CharLSTM on `device` set up to train as `train` does: the LSTM kernel given, else the
    one `precision` picks there without figures, and on a CPU glibc keeping freed blocks
    (charlstm.runtime.keep_freed_memory)."""
    model = CharLSTM(model_config).to(device)
    model.lstm_kernel = kernel or lstm_kernel(device, precision, model_config.hidden_size)
    if device.type == "cpu":
        keep_freed_memory()
    return model


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, device) -> torch.optim.Optimizer:
    """AdamW that decays weight matrices only (biases and the embedding table are left alone)."""
    decay, no_decay, seen = [], [], set()
    for name, p in model.named_parameters():
        if id(p) in seen:  # tied weights appear twice
            continue
        seen.add(id(p))
        (decay if p.ndim >= 2 and "embedding" not in name else no_decay).append(p)
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(0.9, 0.99),
        # one fused kernel per tensor on CUDA and CPU (2x512 on 2 cores: 1.7 ms a step
        # against 9.0 ms for the multi-tensor path, 13.4 ms one tensor at a time)
        fused=True if torch.device(device).type in ("cuda", "cpu") else None,
    )


def forward_model(model: CharLSTM, cfg: TrainConfig, dist, device) -> torch.nn.Module:
    """What the training step calls: the model, wrapped for DistributedDataParallel under
    torchrun and compiled with --compile (the bf16 window kernel stays one node, like
    nn.LSTM's)."""
    wrapped: torch.nn.Module = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.compile:
        if model.lstm_kernel == "bf16":
            from charlstm.model.lstm_bf16 import make_opaque_to_compile

            make_opaque_to_compile()
        wrapped = torch.compile(wrapped)
    return wrapped
