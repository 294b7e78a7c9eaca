"""runstate.py: the run's whole mutable state saves itself and comes back the same, and a new
plain field needs no other change."""

from __future__ import annotations

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
