"""evaluation.py: the exact full-stream loss, checked against an independent computation, plus
batching, sharding, unknown characters, the default split and bad inputs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import random_checkpoint, word_text

from charlstm.data.prepare import tokenize
from charlstm.errors import CharLSTMError
from charlstm.evaluation.scoring import (
    EVAL_BPTT,
    evaluate,
    metrics_from_nats,
    stream_count,
    stream_nats,
)
from charlstm.model.checkpoint import load_checkpoint
from charlstm.model.network import CharLSTM


def make_checkpoint(path: Path, data: Path, num_layers: int = 2, seed: int = 0) -> Path:
    """A random model saved as a checkpoint of a run on the tokenized folder `data`."""
    from charlstm.data.vocab import Vocab

    vocab = Vocab.load(data / "tokenizer.json")
    extra = {"data": {"folder": str(data.resolve())}}
    return random_checkpoint(path, vocab, hidden_size=24, num_layers=num_layers, seed=seed,
                             scale=4.0, extra=extra)  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """Two tokenized folders of the same text (with and without a test split), a checkpoint
    trained (so to speak) on the one with a test split, and a text file to score."""
    root = tmp_path_factory.mktemp("eval")
    source = root / "corpus.txt"
    source.write_text(word_text(4000, seed=0), encoding="utf-8")
    with_test = tokenize(source, root / "with_test", val_frac=0.1, test_frac=0.1).out
    no_test = tokenize(source, root / "no_test", val_frac=0.1).out
    text = root / "score.txt"
    text.write_text(word_text(700, seed=1), encoding="utf-8")
    return {
        "with_test": with_test,
        "no_test": no_test,
        "ckpt": make_checkpoint(root / "model.pt", with_test),
        "ckpt_no_test": make_checkpoint(root / "model_no_test.pt", no_test),
        "text": text,
    }


def reference_nats(model: CharLSTM, ids: np.ndarray) -> np.ndarray:
    """-log p(ids[t+1] | ids[..t]) for every t, from one forward pass over the whole sequence
    (batch 1, zero start state): what the exact evaluation promises."""
    x = torch.as_tensor(np.asarray(ids, dtype=np.int64))
    with torch.no_grad():
        logits, _ = model.eval()(x[:-1, None])
    logp = torch.log_softmax(logits[:, 0].double(), dim=-1)
    return -logp.gather(1, x[1:, None]).squeeze(1).numpy()


def encode_file(ckpt_path: Path, path: Path) -> np.ndarray:
    vocab = load_checkpoint(ckpt_path).vocab
    return vocab.encode(path.read_text(encoding="utf-8"))


# -- the exact loss ------------------------------------------------------------------------------
def test_text_loss_equals_independent_computation(corpus):
    ids = encode_file(corpus["ckpt"], corpus["text"])
    n = len(ids)
    assert n == 700 > 2 * EVAL_BPTT  # several windows: the state must carry across them
    model = load_checkpoint(corpus["ckpt"]).model
    expected = reference_nats(model, ids).mean()

    result = evaluate(corpus["ckpt"], text=corpus["text"], device="cpu")
    assert result.loss == pytest.approx(expected, rel=1e-5)
    assert result.chars == n - 1
    assert result.bpc == pytest.approx(result.loss / math.log(2), rel=1e-12)
    assert result.perplexity == pytest.approx(math.exp(result.loss), rel=1e-12)
    assert result.skipped == 0
    assert result.source == str(corpus["text"]) and result.split is None
    assert result.seconds > 0 and result.chars_per_s > 0


def test_one_token_at_a_time_agrees(corpus):
    """A second, independent reference: step the model one character at a time."""
    ids = encode_file(corpus["ckpt"], corpus["text"])[:80]
    short = corpus["text"].with_name("short.txt")
    short.write_text(load_checkpoint(corpus["ckpt"]).vocab.decode(ids), encoding="utf-8")
    model = load_checkpoint(corpus["ckpt"]).model
    state, nats = None, []
    with torch.no_grad():
        for t in range(len(ids) - 1):
            logits, state = model(torch.tensor([[int(ids[t])]]), state)
            nats.append(-torch.log_softmax(logits[0, 0].double(), -1)[int(ids[t + 1])].item())
    result = evaluate(corpus["ckpt"], text=short, device="cpu")
    assert result.chars == 79
    assert result.loss == pytest.approx(sum(nats) / len(nats), rel=1e-5)


def test_context_matters_for_this_model(corpus):
    """Guards the tests above: scoring every character from a fresh state gives a different
    loss, so agreeing with the reference really does require the carried state."""
    ids = encode_file(corpus["ckpt"], corpus["text"])
    model = load_checkpoint(corpus["ckpt"]).model
    with torch.no_grad():
        x = torch.as_tensor(ids.astype(np.int64))
        logits, _ = model(x[:-1][None, :])  # T=1, B=n-1: every character without context
    context_free = -torch.log_softmax(logits[0].double(), -1).gather(1, x[1:, None]).mean()
    assert abs(context_free.item() - reference_nats(model, ids).mean()) > 0.05


@pytest.mark.parametrize("batch_size", [2, 7, 64])
def test_batched_eval_scores_every_character_once(corpus, batch_size):
    ids = encode_file(corpus["ckpt"], corpus["text"])
    n_targets = len(ids) - 1
    model = load_checkpoint(corpus["ckpt"]).model
    # independent: contiguous streams over the targets, each from a zero state
    stream_len = -(-n_targets // batch_size)
    total = 0.0
    for start in range(0, n_targets, stream_len):
        end = min(start + stream_len, n_targets)
        total += reference_nats(model, ids[start : end + 1]).sum()
    nats, count = stream_nats(model, ids, batch_size)
    assert count == n_targets
    assert nats / count == pytest.approx(total / n_targets, rel=1e-5)
    single = evaluate(corpus["ckpt"], text=corpus["text"], device="cpu")
    assert nats / count == pytest.approx(single.loss, rel=0.25)


def test_eval_caps_streams_so_each_is_long_enough(corpus, tmp_path):
    """--batch-size 100000 on a short text once scored thousands of 2-character streams from a
    fresh state; streams are now capped at one per 1,000 characters, and the result says so."""
    long_text = tmp_path / "long.txt"
    long_text.write_text(corpus["text"].read_text(encoding="utf-8") * 6, encoding="utf-8")
    n_chars = len(long_text.read_text(encoding="utf-8"))
    result = evaluate(corpus["ckpt"], text=long_text, batch_size=100_000, device="cpu")
    assert result.streams == stream_count(n_chars, 100_000) == (n_chars - 1) // 1000
    assert result.streams_asked == 100_000 and result.chars == n_chars - 1
    ids = encode_file(corpus["ckpt"], long_text)
    model = load_checkpoint(corpus["ckpt"]).model
    nats, count = stream_nats(model, ids, result.streams)
    assert result.loss == pytest.approx(nats / count, rel=1e-9)
    assert stream_count(500, 64) == 1 and stream_count(64_001, 64) == 64


def test_sharded_sums_add_up_to_the_whole(corpus):
    ids = encode_file(corpus["ckpt"], corpus["text"])
    model = load_checkpoint(corpus["ckpt"]).model
    whole_nats, whole_count = stream_nats(model, ids, batch_size=7, bptt=64)
    shards = [(0, 2), (2, 3), (3, 7)]
    parts = [stream_nats(model, ids, batch_size=7, bptt=64, shard=s) for s in shards]
    assert sum(c for _, c in parts) == whole_count == len(ids) - 1
    assert sum(n for n, _ in parts) == pytest.approx(whole_nats, rel=1e-6)
    assert stream_nats(model, ids, batch_size=7, shard=(7, 7)) == (0.0, 0)
    # and the window length does not change the result
    assert stream_nats(model, ids, batch_size=7, bptt=5)[0] == pytest.approx(whole_nats, rel=1e-6)


def test_more_streams_than_targets(corpus):
    model = load_checkpoint(corpus["ckpt"]).model
    ids = np.array([1, 2, 3, 4], dtype=np.int64)
    nats, count = stream_nats(model, ids, batch_size=50)
    assert count == 3
    assert nats == pytest.approx(
        sum(reference_nats(model, ids[i : i + 2]).sum() for i in range(3)), rel=1e-6
    )
    assert stream_nats(model, ids[:1], batch_size=4) == (0.0, 0)


def test_metrics_from_nats():
    loss, bpc, ppl = metrics_from_nats(6.0, 4)
    assert (
        loss == 1.5
        and bpc == pytest.approx(1.5 / math.log(2))
        and ppl == pytest.approx(math.exp(1.5))
    )
    assert metrics_from_nats(1e6, 1)[2] == math.inf


def test_accepts_a_loaded_checkpoint(corpus):
    loaded = load_checkpoint(corpus["ckpt"])
    by_object = evaluate(loaded, text=corpus["text"], device="cpu")
    by_path = evaluate(corpus["ckpt"], text=corpus["text"], device="cpu")
    assert by_object.loss == by_path.loss and by_object.chars == by_path.chars


# -- unknown characters --------------------------------------------------------------------------
def test_unknown_characters_are_named_with_positions(corpus, tmp_path):
    path = tmp_path / "odd.txt"
    path.write_text("the cat Zat on # mat", encoding="utf-8")
    with pytest.raises(CharLSTMError) as info:
        evaluate(corpus["ckpt"], text=path, device="cpu")
    message = str(info.value)
    assert "2 character(s) the vocabulary lacks" in message
    assert "'Z' at 8" in message and "'#' at 15" in message
    assert "--unknown skip" in message
    assert str(path) in message


def test_unknown_skip_scores_the_rest(corpus, tmp_path):
    path = tmp_path / "odd.txt"
    path.write_text("the cat Zat on # mat and the dog", encoding="utf-8")
    result = evaluate(corpus["ckpt"], text=path, unknown="skip", device="cpu")
    kept = "the cat at on  mat and the dog"
    assert result.skipped == 2
    assert result.chars == len(kept) - 1
    model = load_checkpoint(corpus["ckpt"]).model
    ids = load_checkpoint(corpus["ckpt"]).vocab.encode(kept)
    assert result.loss == pytest.approx(reference_nats(model, ids).mean(), rel=1e-5)


def test_many_unknown_characters_are_summarised(corpus, tmp_path):
    path = tmp_path / "odd.txt"
    path.write_text("the " + "QRSTUVWXYZ", encoding="utf-8")
    with pytest.raises(CharLSTMError, match=r"10 character\(s\).*'Q' at 4.*and 5 more"):
        evaluate(corpus["ckpt"], text=path, device="cpu")


# -- splits --------------------------------------------------------------------------------------
def test_default_split_is_test_when_there_is_one(corpus):
    result = evaluate(corpus["ckpt"], device="cpu")
    assert result.split == "test"
    test_ids = np.load(corpus["with_test"] / "test.npy")
    assert result.chars == len(test_ids) - 1
    model = load_checkpoint(corpus["ckpt"]).model
    assert result.loss == pytest.approx(reference_nats(model, test_ids).mean(), rel=1e-5)
    assert result.source == str(corpus["with_test"])


def test_default_split_is_val_without_a_test_split(corpus):
    result = evaluate(corpus["ckpt_no_test"], device="cpu")
    assert result.split == "val"
    assert result.chars == len(np.load(corpus["no_test"] / "val.npy")) - 1


def test_explicit_split_and_data(corpus):
    val = evaluate(corpus["ckpt"], split="val", device="cpu")
    assert val.split == "val"
    assert val.chars == len(np.load(corpus["with_test"] / "val.npy")) - 1
    train = evaluate(
        corpus["ckpt"], data=corpus["with_test"], split="train", batch_size=16, device="cpu"
    )
    assert train.chars == len(np.load(corpus["with_test"] / "train.npy")) - 1


def test_empty_split_is_an_error(corpus):
    with pytest.raises(CharLSTMError, match="the test split of .* is empty"):
        evaluate(corpus["ckpt_no_test"], split="test", device="cpu")


def test_missing_training_data_is_an_error(corpus, tmp_path):
    ckpt = make_checkpoint(tmp_path / "m.pt", corpus["no_test"])
    payload = torch.load(ckpt, weights_only=True)
    payload["data"]["folder"] = str(tmp_path / "gone")
    torch.save(payload, ckpt)
    with pytest.raises(CharLSTMError, match="is not available here.*--data DIR"):
        evaluate(ckpt, device="cpu")


def test_data_with_another_vocabulary_is_an_error(corpus, tmp_path):
    source = tmp_path / "other.txt"
    source.write_text("completely different symbols 0123456789 " * 20, encoding="utf-8")
    other = tokenize(source, tmp_path / "other").out
    with pytest.raises(CharLSTMError, match="different vocabulary"):
        evaluate(corpus["ckpt"], data=other, device="cpu")


# -- bad inputs ----------------------------------------------------------------------------------
def test_missing_text_file(corpus, tmp_path):
    with pytest.raises(CharLSTMError, match="text file not found: .*nope.txt"):
        evaluate(corpus["ckpt"], text=tmp_path / "nope.txt", device="cpu")


def test_text_that_is_a_folder(corpus, tmp_path):
    with pytest.raises(CharLSTMError, match="is a folder"):
        evaluate(corpus["ckpt"], text=tmp_path, device="cpu")


def test_text_that_is_not_utf8(corpus, tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("the café".encode("latin-1"))
    with pytest.raises(CharLSTMError, match=r"not valid UTF-8 \(byte offset 7\)"):
        evaluate(corpus["ckpt"], text=path, device="cpu")


def test_text_too_short_to_score(corpus, tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("t", encoding="utf-8")
    with pytest.raises(CharLSTMError, match="fewer than 2 characters"):
        evaluate(corpus["ckpt"], text=path, device="cpu")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch_size": 0}, "--batch-size must be >= 1"),
        ({"unknown": "maybe"}, "unknown --unknown 'maybe'"),
        ({"split": "val"}, "does not combine with --data or --split"),
    ],
)
def test_bad_options(corpus, options, message):
    with pytest.raises(CharLSTMError, match=message):
        evaluate(corpus["ckpt"], text=corpus["text"], device="cpu", **options)


@pytest.mark.parametrize("window", [None, 16])
def test_precision_bf16_on_a_cpu_is_the_bf16_kernel_and_reported(corpus, window):
    """`precision="bf16"` scores through training's bf16 LSTM kernel: the same characters,
    a loss within bf16 rounding of the exact fp32 one, the result saying which ran; the
    default stays the exact fp32 number and the model is left on the fp32 kernel."""
    ckpt = load_checkpoint(corpus["ckpt"])
    exact = evaluate(ckpt, text=corpus["text"], device="cpu", window=window)
    bf16 = evaluate(ckpt, text=corpus["text"], device="cpu", window=window, precision="bf16")
    forced = evaluate(ckpt, text=corpus["text"], device="cpu", window=window, precision="fp32")
    assert exact.precision == forced.precision == "fp32" and exact.loss == forced.loss
    assert bf16.precision == "bf16 LSTM matmuls" and bf16.to_dict()["precision"] == bf16.precision
    assert bf16.chars == exact.chars
    assert bf16.loss != exact.loss and abs(bf16.loss - exact.loss) < 0.02 * exact.loss
    assert ckpt.model.eval_kernel == "fp32"


def test_bf16_scoring_does_not_import_the_compiler(corpus):
    """Forward-only bf16 scoring must not pay for importing torch._dynamo (~1.7 s, more than
    scoring tiny shakespeare's val split takes): only training makes the layer opaque to
    torch.compile. A child process, so that no other test's import counts."""
    import subprocess
    import sys

    code = (
        "import sys; from charlstm.evaluation.scoring import evaluate; "
        f"r = evaluate({str(corpus['ckpt'])!r}, text={str(corpus['text'])!r}, device='cpu', "
        "precision='bf16'); assert r.precision == 'bf16 LSTM matmuls', r.precision; "
        "print('torch._dynamo' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"precision": "fp16"}, "unknown --precision 'fp16'"),
        ({"precision": "bf16", "dynamic": True}, "--precision bf16 applies to static"),
        ({"precision": "bf16", "cache": True}, "--precision bf16 applies to static"),
    ],
)
def test_bad_precision(corpus, options, message):
    with pytest.raises(CharLSTMError, match=message):
        evaluate(corpus["ckpt"], text=corpus["text"], device="cpu", **options)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CharLSTMError, match="checkpoint not found"):
        evaluate(tmp_path / "none.pt", device="cpu")


# -- bounded context: --window N ---------------------------------------------------------------
def reference_window_nats(model: CharLSTM, ids: np.ndarray, window: int, hop=None) -> float:
    """The documented scheme, one character at a time: character p (1..n-1) is predicted from
    a zero state after reading ids[start..p-1], start = 0 for p <= N, else the start kS of the
    window (S = N // 2 by default) whose scored part (N + (k-1)S, N + kS] holds p."""
    hop, total = hop or window // 2, 0.0
    for p in range(1, len(ids)):
        k = 0 if p <= window else -(-(p - window) // hop)
        start = k * hop
        assert 1 <= p - start <= window and (p <= window or p - start > window - hop)
        total += reference_nats(model, ids[start : p + 1])[-1]
    return total


@pytest.mark.parametrize("window", [2, 3, 16, 17])
def test_window_scores_each_character_once_with_its_documented_context(corpus, window):
    from charlstm.evaluation.scoring import window_nats

    model = load_checkpoint(corpus["ckpt"]).model
    ids = encode_file(corpus["ckpt"], corpus["text"])[:150]
    nats, count = window_nats(model, ids, window)
    assert count == len(ids) - 1
    assert nats == pytest.approx(reference_window_nats(model, ids, window), rel=1e-5)


@pytest.mark.parametrize(("window", "hop"), [(16, 16), (16, 1), (17, 5)])
def test_window_hop(corpus, window, hop):
    from charlstm.evaluation.scoring import window_nats

    model = load_checkpoint(corpus["ckpt"]).model
    ids = encode_file(corpus["ckpt"], corpus["text"])[:120]
    nats, count = window_nats(model, ids, window, hop=hop)
    assert count == len(ids) - 1
    assert nats == pytest.approx(reference_window_nats(model, ids, window, hop), rel=1e-5)


def test_window_at_least_the_text_is_the_full_stream(corpus):
    full = evaluate(corpus["ckpt"], text=corpus["text"], device="cpu")
    whole = evaluate(corpus["ckpt"], text=corpus["text"], device="cpu", window=700)
    assert whole.loss == pytest.approx(full.loss, rel=1e-6) and whole.chars == full.chars
    assert (whole.mode, whole.window, full.mode) == ("window", 700, "static")


def test_window_is_deterministic_and_bounds_context(corpus):
    full = evaluate(corpus["ckpt"], text=corpus["text"], device="cpu")
    runs = [evaluate(corpus["ckpt"], text=corpus["text"], device="cpu", window=32) for _ in "ab"]
    assert runs[0].loss == runs[1].loss and runs[0].chars == full.chars
    assert runs[0].loss != full.loss  # this model reads more than 32 characters back
    assert runs[0].to_dict()["mode"] == "window" and runs[0].to_dict()["window"] == 32


def test_window_batches_never_change_the_result(corpus, monkeypatch):
    import charlstm.evaluation.scoring as evaluation

    one = evaluate(corpus["ckpt"], text=corpus["text"], device="cpu", window=40)
    vocab = load_checkpoint(corpus["ckpt"]).vocab.size
    monkeypatch.setattr(evaluation, "EVAL_MAX_LOGITS", 40 * vocab * 3)  # 3 windows a batch
    batched = evaluate(corpus["ckpt"], text=corpus["text"], device="cpu", window=40)
    assert batched.loss == pytest.approx(one.loss, rel=1e-6) and batched.chars == one.chars


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"window": 1}, "--window must be >= 2, got 1"),
        ({"window": 0}, "--window must be >= 2"),
        ({"window": 8, "batch_size": 4}, "--batch-size does not apply to --window"),
        ({"window": 8, "window_hop": 9}, "--window-hop must be in 1..N"),
        ({"window": 8, "window_hop": 0}, "--window-hop must be in 1..N"),
        ({"window_hop": 4}, "--window-hop must be in 1..N with --window N"),
        ({"window": 8, "dynamic": True}, "--dynamic and --window do not combine"),
        ({"dynamic": True, "batch_size": 4}, "--batch-size does not apply to --dynamic"),
    ],
)
def test_bad_window_options(corpus, options, message):
    with pytest.raises(CharLSTMError, match=message) as e:
        evaluate(corpus["ckpt"], text=corpus["text"], device="cpu", **options)
    assert e.value.exit_code == 2
