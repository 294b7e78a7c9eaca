"""dynamic.py: dynamic evaluation (scores before it adapts, helps on repetitive text, leaves the
checkpoint alone), its LSTM backward against autograd's, the cached gradient statistics,
`sample --adapt`, and bad options through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import random_checkpoint, word_run

from charlstm.errors import CharLSTMError
from charlstm.evaluation.dynamic import (
    DynamicSettings,
    _forward,
    adapt,
    gradient_rms,
    load_or_compute_rms,
    stats_path,
)
from charlstm.evaluation.scoring import evaluate
from charlstm.model.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """A tokenized folder of word text, a random model 'trained' on it, and a repetitive text."""
    root = tmp_path_factory.mktemp("dyn")
    ckpt, data = word_run(root, 6000, val_frac=0.1, hidden_size=24, seed=1, scale=1.0)
    repetitive = root / "repetitive.txt"
    repetitive.write_text("the old red barn. " * 40, encoding="utf-8")
    return {"data": data, "ckpt": ckpt, "repetitive": repetitive, "root": root}


def test_our_lstm_backward_equals_autograd():
    """The hand-written batch-1 backward gives PyTorch's gradients (float64, exact to rounding)."""
    from charlstm.config import ModelConfig
    from charlstm.model.network import CharLSTM

    torch.manual_seed(0)
    model = CharLSTM(ModelConfig(vocab_size=11, embed_size=6, hidden_size=8, num_layers=2,
                                 dropout=0.0)).double().eval()  # fmt: skip
    for p in model.parameters():
        p.data.mul_(3)
    tokens = torch.randint(0, 11, (13, 1))
    targets = torch.randint(0, 11, (13,))
    state = tuple(torch.randn(2, 1, 8, dtype=torch.float64) for _ in range(2))
    params = list(model.parameters())
    results = []
    for forward in (lambda m, x, s: m(x, s), _forward):
        logits, (h, c) = forward(model, tokens, state)
        loss = torch.nn.functional.cross_entropy(logits[:, 0], targets) + h.sum() + 0.5 * c.sum()
        results.append((logits.detach(), torch.autograd.grad(loss, params)))
    (ref_logits, ref_grads), (logits, grads) = results
    torch.testing.assert_close(logits, ref_logits, rtol=1e-12, atol=1e-12)
    for ref, got in zip(ref_grads, grads, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-12)


def test_dynamic_scores_every_character_once_and_differs_from_static(corpus):
    static = evaluate(corpus["ckpt"], split="val", device="cpu")
    dynamic = evaluate(corpus["ckpt"], split="val", device="cpu", dynamic=True)
    assert dynamic.chars == static.chars
    assert dynamic.loss != pytest.approx(static.loss, abs=1e-4)
    assert (dynamic.mode, static.mode) == ("dynamic", "static")
    out = dynamic.to_dict()
    assert out["mode"] == "dynamic" and out["dynamic"]["segment"] == DynamicSettings().segment
    assert out["chars_per_s"] > 0


def test_dynamic_learns_a_repetitive_text(corpus):
    static = evaluate(corpus["ckpt"], text=corpus["repetitive"], device="cpu")
    settings = DynamicSettings(lr=1e-2)
    dynamic = evaluate(corpus["ckpt"], text=corpus["repetitive"], device="cpu", dynamic=settings)
    assert dynamic.chars == static.chars
    assert dynamic.loss < static.loss - 1.0


def test_no_step_and_no_decay_is_the_static_score(corpus):
    static = evaluate(corpus["ckpt"], split="val", device="cpu")
    frozen = DynamicSettings(lr=0.0, decay=0.0)
    dynamic = evaluate(corpus["ckpt"], split="val", device="cpu", dynamic=frozen)
    assert dynamic.loss == pytest.approx(static.loss, rel=1e-5)


def test_each_segment_is_scored_before_the_model_learns_from_it(corpus):
    """The first segment is scored by the trained weights whatever the step size, and a
    segment's score never depends on the characters after it."""
    ckpt = load_checkpoint(corpus["ckpt"])
    ids = ckpt.vocab.encode(corpus["repetitive"].read_text(encoding="utf-8"))
    rms, _ = load_or_compute_rms(ckpt)
    big = DynamicSettings(segment=10, lr=1.0)
    first, count, _ = adapt(load_checkpoint(corpus["ckpt"]).model, ids[:11], rms, big)
    with torch.no_grad():
        logits, _ = ckpt.model(torch.as_tensor(ids[:10, None]))
    targets = torch.as_tensor(ids[1:11])
    expected = torch.nn.functional.cross_entropy(logits[:, 0], targets, reduction="sum")
    assert count == 10 and first == pytest.approx(float(expected), rel=1e-5)
    other = ids.copy()
    other[41:] = ids[0]  # change everything after the first four segments
    head, _, _ = adapt(load_checkpoint(corpus["ckpt"]).model, ids[:41], rms, big)
    whole_a, _, _ = adapt(load_checkpoint(corpus["ckpt"]).model, ids, rms, big)
    whole_b, _, _ = adapt(load_checkpoint(corpus["ckpt"]).model, other, rms, big)
    head_b, _, _ = adapt(load_checkpoint(corpus["ckpt"]).model, other[:41], rms, big)
    assert head == pytest.approx(head_b, rel=1e-12) and whole_a != whole_b


def test_evaluation_leaves_the_checkpoint_unchanged(corpus):
    ckpt = load_checkpoint(corpus["ckpt"])
    before = {k: v.clone() for k, v in ckpt.model.state_dict().items()}
    evaluate(ckpt, text=corpus["repetitive"], device="cpu", dynamic=DynamicSettings(lr=1e-2))
    for k, v in ckpt.model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_gradient_statistics_are_cached_beside_the_checkpoint_and_reused(corpus, tmp_path):
    import shutil

    path = shutil.copy(corpus["ckpt"], tmp_path / "best.pt")
    first = evaluate(path, split="val", device="cpu", dynamic=True)
    cache = stats_path(path)
    assert cache == tmp_path / "best.gradstats.pt" and cache.is_file()
    assert first.dynamic["stats"] == "computed" and first.dynamic["stats_path"] == str(cache)
    second = evaluate(path, split="val", device="cpu", dynamic=True)
    assert second.dynamic["stats"] == "cached" and second.loss == first.loss
    # the cache is keyed by the weights: another model in the same place recomputes
    random_checkpoint(path, load_checkpoint(path).vocab, hidden_size=24, seed=5,
                      extra={"data": {"folder": str(corpus["data"].resolve())}})  # fmt: skip
    third = evaluate(path, split="val", device="cpu", dynamic=True)
    assert third.dynamic["stats"] == "computed"
    # a damaged cache is recomputed too, never trusted
    cache.write_bytes(b"not a cache")
    assert evaluate(path, split="val", device="cpu", dynamic=True).dynamic["stats"] == "computed"


def test_statistics_match_a_direct_computation(corpus):
    """RMS is the root mean square of the gradients of the mean loss over training segments:
    STATS_STREAMS streams side by side, state carried from one segment to the next."""
    from charlstm.data.dataset import load_dataset
    from charlstm.evaluation.dynamic import STATS_SEGMENT, STATS_STREAMS

    ckpt = load_checkpoint(corpus["ckpt"])
    train = np.asarray(load_dataset(corpus["data"]).split("train"), dtype=np.int64)
    stream_len = 2 * STATS_SEGMENT
    ids = train[: STATS_STREAMS * stream_len + 1]
    rms, segments = gradient_rms(ckpt.model, ids)
    assert segments == 2  # the text is long enough for two segments per stream
    params = dict(ckpt.model.named_parameters())
    total = {k: torch.zeros_like(p) for k, p in params.items()}
    columns = torch.as_tensor(ids[:-1]).view(STATS_STREAMS, stream_len).T  # (time, stream)
    nexts = torch.as_tensor(ids[1:]).view(STATS_STREAMS, stream_len).T
    state = None
    for b in range(2):
        rows = slice(b * STATS_SEGMENT, (b + 1) * STATS_SEGMENT)
        logits, state = ckpt.model(columns[rows], state)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), nexts[rows].flatten())
        grads = torch.autograd.grad(loss, list(params.values()))
        state = tuple(s.detach() for s in state)
        for k, g in zip(params, grads, strict=True):
            total[k] += g * g
    for k in params:
        torch.testing.assert_close(rms[k], (total[k] / 2).sqrt(), rtol=1e-4, atol=1e-7)


def test_without_training_data_or_cache_it_says_what_to_pass(corpus, tmp_path):
    from charlstm.data.vocab import Vocab

    vocab = Vocab.load(corpus["data"] / "tokenizer.json")
    path = random_checkpoint(tmp_path / "orphan.pt", vocab, hidden_size=8,
                             extra={"data": {"folder": str(tmp_path / "gone")}})  # fmt: skip
    with pytest.raises(CharLSTMError, match="needs gradient statistics") as e:
        evaluate(path, text=corpus["repetitive"], device="cpu", dynamic=True)
    assert "--data" in str(e.value)
    # given the training data, it works (and leaves the statistics for next time)
    result = evaluate(path, text=corpus["repetitive"], device="cpu", dynamic=True,
                      data=corpus["data"])  # fmt: skip
    assert result.mode == "dynamic" and result.dynamic["stats"] == "computed"
    cached = evaluate(path, text=corpus["repetitive"], device="cpu", dynamic=True)
    assert cached.dynamic["stats"] == "cached"


def test_cli_dynamic_json_and_table(corpus, run_cli):
    result = run_cli("eval", corpus["ckpt"], "--split", "val", "--dynamic", "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["mode"] == "dynamic" and out["dynamic"]["lr"] == DynamicSettings().lr
    table = run_cli("eval", corpus["ckpt"], "--split", "val", "--dynamic-segment", "7", "--dynamic")
    assert table.exit_code == 0 and "dynamic evaluation" in table.stderr
    assert "7 chars" in table.stderr
    window = run_cli("eval", corpus["ckpt"], "--split", "val", "--window", "64")
    assert window.exit_code == 0 and "window 64" in window.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--window", "1"], "--window must be >= 2, got 1"),
        (["--dynamic", "--dynamic-lr", "-1"], "--dynamic-lr must be >= 0"),
        (["--dynamic", "--dynamic-decay", "-0.5"], "--dynamic-decay must be >= 0"),
        (["--dynamic", "--dynamic-decay", "2"], "--dynamic-decay must be <= 1"),
        (["--dynamic", "--dynamic-segment", "0"], "--dynamic-segment must be >= 1"),
        (["--dynamic", "--dynamic-lr", "nan"], "--dynamic-lr must be >= 0"),
        (["--dynamic", "--window", "8"], "--dynamic and --window do not combine"),
        (["--window", "8", "--batch-size", "4"], "--batch-size does not apply to --window"),
        (["--dynamic", "--batch-size", "4"], "--batch-size does not apply to --dynamic"),
    ],
)
def test_cli_bad_values_exit_2_with_one_line(corpus, run_cli, args, message):
    result = run_cli("eval", corpus["ckpt"], "--split", "val", *args)
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""


def test_sample_adapt_generates_in_the_documents_style(corpus, run_cli):
    """A model adapted to a text that repeats one phrase continues that phrase."""
    args = ["--length", "36", "--temperature", "0", "--seed", "1"]
    plain = run_cli("sample", corpus["ckpt"], *args)
    doc = corpus["root"] / "doc.txt"
    doc.write_text("abcab abcab abcab " * 30, encoding="utf-8")
    from charlstm.generation.sampling import generate

    adapted = generate(corpus["ckpt"], length=36, temperature=0, device="cpu", adapt=doc,
                       adapt_settings=DynamicSettings(segment=5, lr=1e-3))  # fmt: skip
    assert plain.exit_code == 0
    assert adapted[0] != plain.stdout.rstrip("\n")
    assert adapted[0].count("abcab") >= 4, adapted[0]
    cli = run_cli("sample", corpus["ckpt"], *args, "--adapt", doc, "--prime", "ab")
    assert cli.exit_code == 0, cli.stderr
    assert cli.stdout.startswith("ab") and len(cli.stdout) == 2 + 36 + 1, repr(cli.stdout)


def test_sample_adapt_missing_file(corpus, run_cli, tmp_path):
    result = run_cli("sample", corpus["ckpt"], "--adapt", tmp_path / "none.txt")
    assert result.exit_code == 1
    assert "not found" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_weight_the_statistics_never_saw_steps_like_its_neighbours(corpus):
    """The update is -lr * g / (max(RMS, rms_floor * mean RMS of its tensor) + eps): a row of
    the embedding whose statistic is 0 (a symbol absent from the sampled training segments)
    moves at most 1/rms_floor times as far per unit gradient as its tensor's average weight, not
    1/epsilon times."""
    ckpt = load_checkpoint(corpus["ckpt"])
    ids = ckpt.vocab.encode(corpus["repetitive"].read_text(encoding="utf-8"))[:11]
    rms, _ = load_or_compute_rms(ckpt)
    rms = {k: v.clone() for k, v in rms.items()}
    rare = int(ids[3])
    rms["embedding.weight"][rare] = 0.0
    settings = DynamicSettings(segment=10, lr=1e-3, decay=0.0)
    model = load_checkpoint(corpus["ckpt"]).model.eval()
    before = model.embedding.weight.detach().clone()
    logits, _ = model(torch.as_tensor(ids[:10, None]))
    loss = torch.nn.functional.cross_entropy(logits[:, 0], torch.as_tensor(ids[1:11]))
    (grad,) = torch.autograd.grad(loss, [model.embedding.weight])
    adapt(model, ids, rms, settings)
    r = rms["embedding.weight"]
    floored = torch.clamp(r, min=settings.rms_floor * float(r.mean()))
    expected = before - settings.lr * grad / (floored + settings.epsilon)
    torch.testing.assert_close(model.embedding.weight.detach(), expected, rtol=1e-4, atol=1e-7)
    moved = (model.embedding.weight.detach() - before)[rare].abs().max()
    bound = settings.lr * grad[rare].abs().max() / (settings.rms_floor * float(r.mean()))
    assert 0 < moved <= bound * 1.001
    with pytest.raises(Exception, match="rms_floor"):
        DynamicSettings(rms_floor=-1.0).validate()
