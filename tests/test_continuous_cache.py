"""continuous_cache.py: lambda 0 is the static score, the cache only looks back, it helps on a
repetitive text, one character at a time agrees with the chunked computation, bad values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import word_run

from charlstm.errors import CharLSTMError
from charlstm.evaluation.continuous_cache import CacheSettings, cache_position_nats
from charlstm.evaluation.scoring import evaluate
from charlstm.model.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cache")
    ckpt, _ = word_run(root, 3000, val_frac=0.2, hidden_size=16, seed=2, scale=2.0)
    repetitive = root / "repetitive.txt"
    repetitive.write_text("the old red barn. " * 40, encoding="utf-8")
    return {"ckpt": ckpt, "repetitive": repetitive}


def reference_nats(model, ids: np.ndarray, settings: CacheSettings) -> np.ndarray:
    """The formula of the module docstring, one position at a time, from a single forward."""
    x = torch.as_tensor(np.asarray(ids, dtype=np.int64))
    with torch.no_grad():
        h, _ = model.lstm(model.embedding(x[:-1, None]))
        h = h[:, 0].double()
        p_model = torch.softmax(model.head(h.float()).double(), -1)
    out = []
    for t in range(len(ids) - 1):
        p = p_model[t].clone()
        lo = max(0, t - settings.window)
        if t > lo:
            w = torch.softmax(settings.theta * (h[lo:t] @ h[t]), 0)
            p_cache = torch.zeros_like(p).index_add_(0, x[lo + 1 : t + 1], w)
            p = (1 - settings.lam) * p + settings.lam * p_cache
        out.append(-math.log(p[x[t + 1]]))
    return np.array(out)


@pytest.mark.parametrize("window", [1, 7, 300, 5000])
def test_chunked_cache_equals_the_formula(corpus, monkeypatch, window):
    import charlstm.evaluation.continuous_cache as cc

    monkeypatch.setattr(cc, "CACHE_CHUNK", 64)  # several chunks: the cache must carry over
    model = load_checkpoint(corpus["ckpt"]).model
    ids = load_checkpoint(corpus["ckpt"]).vocab.encode(corpus["repetitive"].read_text())[:300]
    settings = CacheSettings(window=window, theta=0.5, lam=0.3)
    got = cache_position_nats(model, ids, settings)
    np.testing.assert_allclose(got, reference_nats(model, ids, settings), rtol=2e-5)


def test_lambda_zero_is_the_static_score(corpus):
    static = evaluate(corpus["ckpt"], split="val", device="cpu")
    off = evaluate(corpus["ckpt"], split="val", device="cpu", cache=CacheSettings(lam=0.0))
    assert off.loss == pytest.approx(static.loss, rel=1e-6) and off.chars == static.chars
    assert off.mode == "cache" and off.to_dict()["cache"]["lam"] == 0.0


def test_cache_helps_on_a_repetitive_text_and_only_looks_back(corpus):
    static = evaluate(corpus["ckpt"], text=corpus["repetitive"], device="cpu")
    default = evaluate(corpus["ckpt"], text=corpus["repetitive"], device="cpu", cache=True)
    strong = CacheSettings(theta=2.0, lam=0.6)
    cached = evaluate(corpus["ckpt"], text=corpus["repetitive"], device="cpu", cache=strong)
    assert default.chars == cached.chars == static.chars
    assert default.loss < static.loss and cached.loss < static.loss - 0.5
    ckpt = load_checkpoint(corpus["ckpt"])
    ids = ckpt.vocab.encode(corpus["repetitive"].read_text())
    other = ids.copy()
    other[200:] = ids[0]
    a = cache_position_nats(ckpt.model, ids, CacheSettings())
    b = cache_position_nats(ckpt.model, other, CacheSettings())
    # the prediction of character t+1 (entry t) depends on characters 0..t only
    np.testing.assert_array_equal(a[:199], b[:199])
    assert a[199] != b[199]


def test_cli_cache_json(corpus, run_cli):
    result = run_cli("eval", corpus["ckpt"], "--split", "val", "--cache", "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["mode"] == "cache" and out["cache"] == {"window": 2000, "theta": 0.3, "lam": 0.2}
    table = run_cli("eval", corpus["ckpt"], "--split", "val", "--cache", "--cache-window", "9")
    assert table.exit_code == 0 and "continuous cache" in table.stderr and "9, 0.3" in table.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cache", "--cache-window", "0"], "--cache-window must be >= 1"),
        (["--cache", "--cache-theta", "0"], "--cache-theta must be > 0"),
        (["--cache", "--cache-theta", "inf"], "--cache-theta must be a finite number"),
        (["--cache", "--cache-lambda", "1"], "--cache-lambda must be in [0, 1)"),
        (["--cache", "--cache-lambda", "-0.1"], "--cache-lambda must be in [0, 1)"),
        (["--cache", "--dynamic"], "--cache does not combine with --window or --dynamic"),
        (["--cache", "--window", "8"], "--cache does not combine with --window or --dynamic"),
        (["--cache", "--batch-size", "4"], "--batch-size does not apply to --cache"),
    ],
)
def test_cli_bad_cache_values_exit_2(corpus, run_cli, args, message):
    result = run_cli("eval", corpus["ckpt"], "--split", "val", *args)
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_library_rejects_a_wrong_cache_argument(corpus):
    with pytest.raises(CharLSTMError, match="cache must be True or a CacheSettings"):
        evaluate(corpus["ckpt"], split="val", device="cpu", cache="yes")
