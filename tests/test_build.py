"""build.py: the run's optimizer is torch's fused AdamW to the bit, shares its state dict (a
checkpoint from before resumes), and never imports torch._dynamo."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import torch

from charlstm.config import ModelConfig, TrainConfig
from charlstm.model.network import CharLSTM
from charlstm.training.build import FusedAdamW, build_optimizer

CPU = torch.device("cpu")


def model_and_optimizer():
    torch.manual_seed(0)
    model = CharLSTM(ModelConfig(vocab_size=9, embed_size=4, hidden_size=8, num_layers=2))
    return model, build_optimizer(model, TrainConfig(), CPU)


def _steps(model, optimizer, n: int, seed: int = 5) -> None:
    torch.manual_seed(seed)
    for _ in range(n):
        logits, _ = model(torch.randint(0, 9, (6, 3)))
        optimizer.zero_grad(set_to_none=True)
        logits.pow(2).mean().backward()
        optimizer.step()
        for group in optimizer.param_groups:
            group["lr"] *= 0.9  # the trainer's schedule sets the rate between steps


def test_the_optimizer_is_torchs_fused_adamw_to_the_bit_and_shares_its_state_dict():
    model, optimizer = model_and_optimizer()
    twin, _ = model_and_optimizer()
    assert isinstance(optimizer, FusedAdamW)
    index = {id(p): i for i, p in enumerate(model.parameters())}
    twins = list(twin.parameters())
    groups = [
        {"params": [twins[index[id(p)]] for p in g["params"]], "weight_decay": g["weight_decay"]}
        for g in optimizer.param_groups
    ]
    defaults = optimizer.defaults
    reference = torch.optim.AdamW(groups, lr=defaults["lr"], betas=defaults["betas"], fused=True)
    _steps(model, optimizer, 4)
    _steps(twin, reference, 4)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)
    # a checkpoint written by torch's AdamW (every run before this class) resumes in ours, and
    # the other way round (copies, as on disk: a loaded state dict shares its tensors), and the
    # next steps still agree
    optimizer.load_state_dict(copy.deepcopy(reference.state_dict()))
    reference.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    _steps(model, optimizer, 3, seed=6)
    _steps(twin, reference, 3, seed=6)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_training_step_does_not_import_torch_dynamo():
    """torch.optim's wrappers import torch._dynamo (2.4 s of every `charlstm train` start on a
    2-core AVX2 EPYC); the run's optimizer does without them."""
    code = (
        "import sys, torch\n"
        "from test_build import model_and_optimizer, _steps\n"
        "model, optimizer = model_and_optimizer()\n"
        "_steps(model, optimizer, 2)\n"
        "optimizer.load_state_dict(optimizer.state_dict())\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parent)  # fmt: skip
    assert out.stdout.strip() == "False"
