"""sampling.py: seeds, greedy decoding against an independent reference, FastLSTMStep against
nn.LSTM, the one-pass prime and one step per character, filtering, and option checks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import random_checkpoint

import charlstm.generation.sampling
from charlstm.data.vocab import Vocab
from charlstm.errors import CharLSTMError
from charlstm.generation.sampling import FastLSTMStep, check_options, filter_logits, generate
from charlstm.model.checkpoint import load_checkpoint
from charlstm.model.network import CharLSTM

CHARS = "\n !,.:?ABCDEFGHIJKLMNOPRSTUVWabcdefghijklmnoprstuvwy"


def make_checkpoint(path: Path, num_layers: int = 2, seed: int = 0) -> Path:
    """A random model over CHARS saved as a checkpoint."""
    vocab = Vocab("char", "".join(sorted(CHARS)))
    return random_checkpoint(path, vocab, hidden_size=32, num_layers=num_layers, seed=seed)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("sampling") / "model.pt")


@pytest.fixture(scope="module")
def ckpt_1layer(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("sampling1") / "model.pt", num_layers=1)


def greedy_reference(path: Path, prime: str, length: int) -> str:
    """Greedy decoding with the model's own nn.LSTM forward, one character at a time."""
    loaded = load_checkpoint(path)
    model, vocab = loaded.model, loaded.vocab
    state, logits = None, None
    out = []
    with torch.no_grad():
        for i in vocab.encode(prime):
            logits, state = model(torch.tensor([[int(i)]]), state)
        for _ in range(length):
            nxt = int(logits[0, 0].argmax())
            out.append(nxt)
            logits, state = model(torch.tensor([[nxt]]), state)
    return prime + vocab.decode(out)


# -- seeds and determinism -----------------------------------------------------------------------
def test_same_seed_same_text_different_seed_different_text(ckpt):
    a = generate(ckpt, prime="The ", length=200, seed=1, device="cpu")
    b = generate(ckpt, prime="The ", length=200, seed=1, device="cpu")
    c = generate(ckpt, prime="The ", length=200, seed=2, device="cpu")
    assert a == b
    assert a != c
    assert len(a) == len(c) == 1
    assert len(a[0]) == len(c[0]) == 4 + 200


def test_temperature_zero_is_greedy(ckpt):
    greedy = generate(ckpt, prime="Hello", length=120, temperature=0, seed=1, device="cpu")
    again = generate(ckpt, prime="Hello", length=120, temperature=0, seed=99, device="cpu")
    assert greedy == again  # no randomness at all
    assert greedy[0] == greedy_reference(ckpt, "Hello", 120)
    assert len(set(greedy[0][5:])) > 1  # not a degenerate constant string


def test_greedy_matches_reference_for_one_layer(ckpt_1layer):
    text = generate(ckpt_1layer, prime="a", length=80, temperature=0, device="cpu")[0]
    assert text == greedy_reference(ckpt_1layer, "a", 80)


def test_top_k_one_is_greedy(ckpt):
    top1 = generate(ckpt, prime="Hello", length=120, top_k=1, temperature=1.3, seed=5, device="cpu")
    assert top1[0] == greedy_reference(ckpt, "Hello", 120)


# -- the prime -----------------------------------------------------------------------------------
def test_text_starts_with_the_prime(ckpt):
    prime = "ROMEO:\nWhat light"
    (text,) = generate(ckpt, prime=prime, length=50, seed=3, device="cpu")
    assert text.startswith(prime)
    assert len(text) == len(prime) + 50
    assert set(text) <= set(CHARS)


def test_length_zero_returns_just_the_prime(ckpt):
    assert generate(ckpt, prime="Hi there", length=0, seed=1, device="cpu") == ["Hi there"]
    assert generate(ckpt, prime="Hi", length=0, num_samples=2, device="cpu") == ["Hi", "Hi"]


def test_no_prime_generates_exactly_length_characters(ckpt):
    (text,) = generate(ckpt, length=60, seed=4, device="cpu")
    assert len(text) == 60


def test_prime_with_unknown_characters_names_them(ckpt):
    with pytest.raises(CharLSTMError) as info:
        generate(ckpt, prime="Hi Zoë", length=5, device="cpu")
    message = str(info.value)
    assert "the prime text" in message
    assert "'ë' at 5" in message
    assert "remove them from the prime" in message


def test_prime_runs_in_one_forward_pass_and_each_character_costs_one_step(ckpt, monkeypatch):
    forward_calls, step_calls = [], []
    forward = CharLSTM.forward
    step = FastLSTMStep.__call__

    def count_forward(self, tokens, state=None):
        forward_calls.append(tuple(tokens.shape))
        return forward(self, tokens, state)

    def count_step(self, tokens):
        step_calls.append(tuple(tokens.shape))
        return step(self, tokens)

    monkeypatch.setattr(CharLSTM, "forward", count_forward)
    monkeypatch.setattr(FastLSTMStep, "__call__", count_step)
    for prime, length, samples in [("a", 30, 1), ("ROMEO: " * 20, 30, 1), ("Hey", 17, 3)]:
        forward_calls.clear()
        step_calls.clear()
        generate(ckpt, prime=prime, length=length, num_samples=samples, seed=1, device="cpu")
        assert forward_calls == [(len(prime), samples)]  # the whole prime, once
        assert step_calls == [(samples,)] * length  # one step per new character


# -- FastLSTMStep --------------------------------------------------------------------------------
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("batch", [1, 3])
def test_fast_step_equals_nn_lstm(tmp_path, num_layers, batch):
    model = load_checkpoint(make_checkpoint(tmp_path / "m.pt", num_layers, seed=7)).model
    gen = torch.Generator().manual_seed(0)
    prime = torch.randint(0, model.config.vocab_size, (6, batch), generator=gen)
    steps = torch.randint(0, model.config.vocab_size, (12, batch), generator=gen)
    with torch.no_grad():
        _, state = model(prime)
        fast = FastLSTMStep(model, batch)
        fast.load_state(state)
        for t in range(len(steps)):
            expected, state = model(steps[t : t + 1], state)
            got = fast(steps[t])
            torch.testing.assert_close(got, expected[0], rtol=1e-5, atol=1e-5)
        # a step from a freshly loaded state gives the same logits: load_state is the state
        again = FastLSTMStep(model, batch)
        again.load_state(state)
        token = steps[-1]
        torch.testing.assert_close(
            again(token), model(token[None], state)[0][0], rtol=1e-5, atol=1e-5
        )


def test_fast_step_bf16_is_close_to_fp32(ckpt):
    model = load_checkpoint(ckpt).model
    tokens = torch.tensor([3, 9, 14])
    fp32 = FastLSTMStep(model, 3)
    bf16 = FastLSTMStep(model, 3, torch.bfloat16)
    for _ in range(3):
        a, b = fp32(tokens).clone(), bf16(tokens).clone()
        assert b.dtype == torch.float32
        torch.testing.assert_close(b, a, rtol=0.05, atol=0.1)
    (text,) = generate(ckpt, prime="Hi", length=40, dtype="bf16", seed=1, device="cpu")
    assert len(text) == 42


# -- several samples, streaming ------------------------------------------------------------------
def test_num_samples_returns_that_many_texts(ckpt):
    texts = generate(ckpt, prime="The ", length=100, num_samples=3, seed=11, device="cpu")
    assert len(texts) == 3
    assert all(t.startswith("The ") and len(t) == 104 for t in texts)
    assert len(set(texts)) == 3  # independent streams


def test_on_text_streams_the_same_text(ckpt):
    pieces: dict[int, list[str]] = {0: [], 1: []}
    texts = generate(
        ckpt,
        prime="Ab",
        length=30,
        num_samples=2,
        seed=3,
        device="cpu",
        on_text=lambda s, piece: pieces[s].append(piece),
    )
    assert ["".join(pieces[s]) for s in (0, 1)] == texts
    assert pieces[0][0] == "Ab"  # the prime comes first


# -- filtering -----------------------------------------------------------------------------------
def logits_of(probs: list[float]) -> torch.Tensor:
    return torch.log(torch.tensor([probs], dtype=torch.float64))


def test_top_p_keeps_only_the_nucleus():
    logits = logits_of([0.05, 0.5, 0.15, 0.3])
    probs = filter_logits(logits, 1.0, 0, 0.7)
    # 0.5 alone is short of 0.7; 0.5 + 0.3 reaches it: those two stay, renormalised
    torch.testing.assert_close(probs, torch.tensor([[0.0, 0.625, 0.0, 0.375]], dtype=torch.float64))
    only_top = filter_logits(logits, 1.0, 0, 0.4)
    torch.testing.assert_close(only_top, torch.tensor([[0.0, 1.0, 0.0, 0.0]], dtype=torch.float64))
    everything = filter_logits(logits, 1.0, 0, 1.0)
    torch.testing.assert_close(everything, torch.exp(logits))


def test_top_k_and_temperature():
    logits = logits_of([0.05, 0.5, 0.15, 0.3])
    top2 = filter_logits(logits, 1.0, 2, 1.0)
    torch.testing.assert_close(top2, torch.tensor([[0.0, 0.625, 0.0, 0.375]], dtype=torch.float64))
    hot = filter_logits(logits, 2.0, 0, 1.0)
    expected = torch.sqrt(torch.tensor([0.05, 0.5, 0.15, 0.3], dtype=torch.float64))
    torch.testing.assert_close(hot, (expected / expected.sum())[None])
    assert filter_logits(logits, 0, 0, 1.0) is None  # greedy
    assert torch.equal(filter_logits(logits, 1.0, 10, 1.0), filter_logits(logits, 1.0, 0, 1.0))


def test_filtered_sampling_never_leaves_the_nucleus(ckpt, monkeypatch):
    """Every character drawn with top_p is one the filter allowed at that step."""
    seen = []
    real_multinomial = torch.multinomial

    def spy(probs, n, generator=None):
        drawn = real_multinomial(probs, n, generator=generator)
        seen.append(bool((probs.gather(1, drawn) > 0).all()))
        assert ((probs > 0).sum(-1) < probs.shape[-1]).all()  # the filter did cut something
        return drawn

    monkeypatch.setattr(charlstm.generation.sampling.torch, "multinomial", spy)
    generate(ckpt, prime="Hi", length=40, top_p=0.5, seed=2, device="cpu")
    assert len(seen) == 40 and all(seen)


# -- options -------------------------------------------------------------------------------------
GOOD = dict(length=10, temperature=1.0, top_k=0, top_p=1.0, num_samples=1)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("temperature", -1.0, "--temperature must be >= 0"),
        ("temperature", math.nan, "--temperature must be >= 0"),
        ("temperature", math.inf, "--temperature must be >= 0"),
        ("top_p", 0.0, r"--top-p must be in \(0, 1\]"),
        ("top_p", 1.5, r"--top-p must be in \(0, 1\]"),
        ("top_p", -0.2, r"--top-p must be in \(0, 1\]"),
        ("top_k", -1, "--top-k must be >= 0"),
        ("length", -1, "--length must be >= 0"),
        ("num_samples", 0, "--num-samples must be >= 1"),
    ],
)
def test_check_options_rejects(option, value, message, tmp_path):
    with pytest.raises(CharLSTMError, match=message):
        check_options(**{**GOOD, option: value})
    # generate checks its options before it looks at the checkpoint
    with pytest.raises(CharLSTMError, match=message):
        generate(tmp_path / "missing.pt", device="cpu", **{**GOOD, option: value})


def test_check_options_accepts_the_edges():
    check_options(length=0, temperature=0, top_k=0, top_p=1.0, num_samples=1)
    check_options(length=5, temperature=2.5, top_k=3, top_p=1e-6, num_samples=8)


def test_unknown_dtype_is_refused(ckpt):
    with pytest.raises(CharLSTMError, match="unknown --dtype 'fp8'"):
        generate(ckpt, length=5, dtype="fp8", device="cpu")


def test_generate_accepts_a_loaded_checkpoint(ckpt):
    loaded = load_checkpoint(ckpt)
    by_object = generate(loaded, prime="Hi", length=30, seed=1, device="cpu")
    assert by_object == generate(ckpt, prime="Hi", length=30, seed=1, device="cpu")


def test_sampled_characters_follow_the_model_distribution(ckpt):
    """Many independent one-character samples: their frequencies match softmax(logits)."""
    loaded = load_checkpoint(ckpt)
    ids = loaded.vocab.encode("Hello")
    with torch.no_grad():
        logits, _ = loaded.model(torch.as_tensor(ids.astype(np.int64))[:, None])
    expected = torch.softmax(logits[-1, 0].double(), -1).numpy()
    texts = generate(ckpt, prime="Hello", length=1, num_samples=3000, seed=0, device="cpu")
    counts = np.zeros(loaded.vocab.size)
    for t in texts:
        counts[int(loaded.vocab.encode(t[-1])[0])] += 1
    freq = counts / counts.sum()
    assert np.abs(freq - expected).max() < 0.04
