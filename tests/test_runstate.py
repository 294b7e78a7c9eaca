"""runstate.py: the run's whole mutable state saves itself and comes back the same, and a new
plain field needs no other change."""

from __future__ import annotations

import copy
import dataclasses

import torch

from charlstm.config import ModelConfig, TrainConfig
from charlstm.model.network import CharLSTM
from charlstm.training.build import build_optimizer
from charlstm.training.distributed import Dist
from charlstm.training.runstate import RunState

CPU = torch.device("cpu")


def make_state(seed: int = 0) -> RunState:
    torch.manual_seed(seed)
    model = CharLSTM(ModelConfig(vocab_size=9, embed_size=4, hidden_size=8, num_layers=2))
    state = RunState(model, build_optimizer(model, TrainConfig(), CPU))
    return state


def trained_state() -> RunState:
    state = make_state()
    tokens = torch.randint(0, 9, (5, 3))
    logits, hidden = state.model(tokens)
    logits.sum().backward()
    state.optimizer.step()
    state.hidden = tuple(h.detach() for h in hidden)
    state.step, state.epoch, state.epoch_step, state.elapsed_s = 7, 1, 2, 12.5
    state.best_val, state.last_val, state.skipped_steps = 1.5, 1.6, 1
    state.loss_sum, state.loss_count = 3.0, 2
    return state


def test_round_trip_restores_everything():
    saved = trained_state()
    torch.manual_seed(123)
    payload = {"model_config": {}, **saved.state_dict(Dist(), CPU)}
    expected_draw = torch.rand(3)  # what the RNG gives after the save point
    restored = make_state(seed=99)
    assert restored.load_state_dict(payload, Dist(), CPU) is None
    assert restored.plain() == saved.plain()
    for name, tensor in saved.model.state_dict().items():
        assert torch.equal(tensor, restored.model.state_dict()[name]), name
    for a, b in zip(saved.hidden, restored.hidden, strict=True):
        assert torch.equal(a, b)
    a, b = saved.optimizer.state_dict()["state"], restored.optimizer.state_dict()["state"]
    assert all(torch.equal(a[k]["exp_avg"], b[k]["exp_avg"]) for k in a)
    assert torch.equal(torch.rand(3), expected_draw)  # the RNG continues where it was saved


def test_a_new_plain_field_is_saved_with_no_other_change():
    @dataclasses.dataclass
    class Extended(RunState):
        tokens_seen_by_cache: int = 0

    state = Extended(make_state().model, make_state().optimizer, tokens_seen_by_cache=42)
    payload = state.state_dict(Dist(), CPU)
    assert payload["run"]["tokens_seen_by_cache"] == 42
    fresh = Extended(state.model, state.optimizer)
    fresh.load_state_dict(payload, Dist(), CPU)
    assert fresh.tokens_seen_by_cache == 42


def test_another_process_count_keeps_hidden_states_and_says_so():
    saved = trained_state()
    payload = saved.state_dict(Dist(), CPU)
    payload["run"]["rng"] = payload["run"]["rng"] * 2
    payload["run"]["world_size"] = 2
    restored = make_state()
    warning = restored.load_state_dict(payload, Dist(), CPU)
    assert "2-process run on 1" in warning and "hidden states carry over" in warning
    assert torch.equal(restored.hidden[0], saved.hidden[0])


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
    ours, theirs = make_state(), make_state()
    index = {id(p): i for i, p in enumerate(ours.model.parameters())}
    twins = list(theirs.model.parameters())
    groups = [
        {"params": [twins[index[id(p)]] for p in g["params"]], "weight_decay": g["weight_decay"]}
        for g in ours.optimizer.param_groups
    ]
    defaults = ours.optimizer.defaults
    reference = torch.optim.AdamW(groups, lr=defaults["lr"], betas=defaults["betas"], fused=True)
    _steps(ours.model, ours.optimizer, 4)
    _steps(theirs.model, reference, 4)
    for a, b in zip(ours.model.parameters(), theirs.model.parameters(), strict=True):
        assert torch.equal(a, b)
    # a checkpoint written by torch's AdamW (every run before this class) resumes in ours, and
    # the other way round (copies, as on disk: a loaded state dict shares its tensors), and the
    # next steps still agree
    ours.optimizer.load_state_dict(copy.deepcopy(reference.state_dict()))
    reference.load_state_dict(copy.deepcopy(ours.optimizer.state_dict()))
    _steps(ours.model, ours.optimizer, 3, seed=6)
    _steps(theirs.model, reference, 3, seed=6)
    for a, b in zip(ours.model.parameters(), theirs.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_training_step_does_not_import_torch_dynamo():
    """torch.optim's wrappers import torch._dynamo (2.4 s of every `charlstm train` start on a
    2-core AVX2 EPYC); the run's optimizer does without them."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from tests.test_runstate import trained_state\n"
        "state = trained_state()\n"
        "state.optimizer.load_state_dict(state.optimizer.state_dict())\n"
        "state.optimizer.zero_grad()\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
