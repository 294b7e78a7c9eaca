"""charlstm.training.ema.WeightAverage: the update rule with its warm-up, applying the average and
putting the trained weights back, and the state dict with shared tensors."""

from __future__ import annotations

import pytest
import torch

from charlstm.training.ema import WeightAverage


def test_update_follows_the_warmed_up_decay():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    average = WeightAverage(model, decay=0.9)
    expected = [p.detach().clone() for p in model.parameters()]
    decays = []
    for n in range(100):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        d = min(0.9, (1 + n) / (10 + n))
        decays.append(average.current_decay())
        average.update()
        params = model.parameters()
        expected = [d * e + (1 - d) * p.detach() for e, p in zip(expected, params, strict=True)]
    assert decays[0] == pytest.approx(0.1) and decays[-1] == 0.9  # warm-up (to n = 80), then D
    for a, e in zip(average.average, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)
    assert average.updates == 100


def test_applied_swaps_in_the_average_and_restores_bit_for_bit():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    average = WeightAverage(model, decay=0.5)
    with torch.no_grad():
        model.weight.mul_(3.0)
    average.update()
    trained = [p.detach().clone() for p in model.parameters()]
    with average.applied():
        for p, a in zip(model.parameters(), average.average, strict=True):
            assert torch.equal(p, a)
    for p, t in zip(model.parameters(), trained, strict=True):
        assert torch.equal(p, t)
    with pytest.raises(RuntimeError), average.applied():
        raise RuntimeError("validation failed")
    assert torch.equal(model.weight, trained[0])  # put back on an error too


def test_state_dict_round_trips_with_shared_weights():
    model = torch.nn.Sequential(torch.nn.Embedding(5, 4), torch.nn.Linear(4, 5))
    model[1].weight = model[0].weight  # tied, as --tie-weights does
    average = WeightAverage(model, decay=0.9)
    assert len(average.average) == 2  # the shared tensor is averaged once
    with torch.no_grad():
        model[0].weight.add_(1.0)
    average.update()
    weights = average.model_state_dict(model)
    assert set(weights) == set(model.state_dict())
    assert weights["0.weight"].data_ptr() == weights["1.weight"].data_ptr()  # one tensor
    other = WeightAverage(model, decay=0.9)
    other.load_state_dict(weights, updates=average.updates)
    assert other.updates == 1
    for a, b in zip(other.average, average.average, strict=True):
        assert torch.equal(a, b)
