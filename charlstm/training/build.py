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
    # one fused kernel per tensor on CUDA and CPU (2x512 on 2 cores: 1.7 ms a step against
    # 9.0 ms for the multi-tensor path, 13.4 ms one tensor at a time)
    fused = torch.device(device).type in ("cuda", "cpu")
    return (FusedAdamW if fused else torch.optim.AdamW)(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(0.9, 0.99),
        fused=True if fused else None,
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


def _undecorated(method):
    """`method` without torch's `_disable_dynamo` wrapper (kept if a torch has none)."""
    return getattr(method, "__wrapped__", method)


class FusedAdamW(torch.optim.AdamW):
    """torch's fused AdamW, the same update to the bit and the same state dict, without the
    wrappers that make a step, zero_grad, state_dict and the constructor import torch._dynamo
    (for torch.compile's sake: this optimizer is never compiled). That import is 2.4 s of every
    `charlstm train` start on a 2-core AVX2 EPYC, a third of a 1-step run of a tiny model."""

    def add_param_group(self, param_group) -> None:
        _undecorated(torch.optim.Optimizer.add_param_group)(self, param_group)

    def state_dict(self):
        return _undecorated(torch.optim.Optimizer.state_dict)(self)

    def load_state_dict(self, state_dict) -> None:
        _undecorated(torch.optim.Optimizer.load_state_dict)(self, state_dict)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self, closure=None):
        """Adam's fused path (torch.optim.adam._fused_adam, no amsgrad, no grad scaler): for
        the parameters of a group with a gradient, by device and dtype, the step counts, then
        the update in one kernel."""
        if closure is not None:
            raise ValueError("FusedAdamW.step takes no closure")
        for group in self.param_groups:
            if group["amsgrad"]:
                raise ValueError("FusedAdamW has no amsgrad: use torch.optim.AdamW")
            params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
            self._init_group(group, params, grads, exp_avgs, exp_avg_sqs, [], steps)
            tensors = [params, grads, exp_avgs, exp_avg_sqs, steps]
            for (p, g, m, v, t), _ in self._group_tensors_by_device_and_dtype(tensors).values():
                torch._foreach_add_(t, 1)
                torch._fused_adamw_(
                    p,
                    g,
                    m,
                    v,
                    [],
                    t,
                    amsgrad=False,
                    lr=group["lr"],
                    beta1=group["betas"][0],
                    beta2=group["betas"][1],
                    weight_decay=group["weight_decay"],
                    eps=group["eps"],
                    maximize=group["maximize"],
                    grad_scale=None,
                    found_inf=None,
                )
