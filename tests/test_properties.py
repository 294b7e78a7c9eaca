"""Property tests (hypothesis): round trips on arbitrary Unicode, option validation on arbitrary
values, evaluation of arbitrary short texts."""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charlstm.data.prepare import tokenize
from charlstm.data.vocab import Vocab, codepoints
from charlstm.errors import CharLSTMError
from charlstm.evaluation.scoring import evaluate
from charlstm.generation.sampling import check_options

# any Unicode text a file can hold (hypothesis already leaves out lone surrogates)
texts = st.text(min_size=4, max_size=200)
FAST = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FAST
@given(texts)
def test_char_vocab_round_trip_on_arbitrary_unicode(text):
    vocab = Vocab.from_codepoints(np.unique(codepoints(text)))
    ids = vocab.encode(text)
    assert len(ids) == len(text)
    assert vocab.decode(ids) == text
    assert vocab.to_tokenizer().decode(ids.tolist()) == text
    assert vocab.to_tokenizer().encode(text).ids == ids.tolist()


@FAST
@given(texts, st.sampled_from(["char", "byte"]))
def test_tokenize_then_decode_is_the_identity(text, level):
    work = Path(tempfile.mkdtemp())
    try:
        src = work / "t.txt"
        src.write_bytes(text.encode("utf-8"))
        n = len(text) if level == "char" else len(text.encode("utf-8"))
        if int(n * 0.5) == 0:
            return
        result = tokenize(src, work / "out", level=level, val_frac=0.5)
        ids = np.concatenate([np.load(result.out / f"{s}.npy") for s in ("train", "val", "test")])
        assert result.vocab.decode(ids) == text
        assert Vocab.load(result.out / "tokenizer.json") == result.vocab
    finally:
        shutil.rmtree(work)


numbers = st.one_of(st.integers(-5, 5), st.floats(allow_nan=True, allow_infinity=True))


@settings(max_examples=300, deadline=None)
@given(
    length=st.integers(-3, 3),
    temperature=numbers,
    top_k=st.integers(-3, 3),
    top_p=numbers,
    num_samples=st.integers(-2, 3),
)
def test_sample_option_validation_accepts_exactly_the_valid_values(
    length, temperature, top_k, top_p, num_samples
):
    valid = (
        length >= 0
        and math.isfinite(temperature)
        and temperature >= 0
        and top_k >= 0
        and 0 < top_p <= 1
        and num_samples >= 1
    )
    if valid:
        check_options(length, temperature, top_k, top_p, num_samples)
    else:
        with pytest.raises(CharLSTMError):
            check_options(length, temperature, top_k, top_p, num_samples)


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    from charlstm.training.trainer import train

    work = tmp_path_factory.mktemp("prop")
    src = work / "c.txt"
    src.write_text("abc def, ghi.\nJKL mno!\n" * 40, encoding="utf-8")
    data = tokenize(src, work / "data").out
    return (
        train(
            data,
            work / "run",
            preset="tiny",
            hidden_size=16,
            embed_size=8,
            steps=3,
            bptt=8,
            batch_size=2,
        ).run_dir
        / "last.pt"
    )


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    text=st.text(max_size=60),
    unknown=st.sampled_from(["error", "skip"]),
    batch_size=st.integers(1, 5),
)
def test_eval_on_arbitrary_short_text_never_crashes(small_checkpoint, text, unknown, batch_size):
    work = Path(tempfile.mkdtemp())
    try:
        path = work / "t.txt"
        path.write_text(text, encoding="utf-8")
        try:
            result = evaluate(
                small_checkpoint, text=path, unknown=unknown, batch_size=batch_size, device="cpu"
            )
        except CharLSTMError:
            return  # a clear error (unknown characters, too short) is a fine answer
        assert math.isfinite(result.loss) and result.loss >= 0
        assert result.chars >= 1
        assert math.isclose(result.bpc, result.loss / math.log(2))
    finally:
        shutil.rmtree(work)
