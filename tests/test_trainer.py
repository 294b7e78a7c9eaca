"""trainer.py through the library `train()`: learning, carried state, run files, checkpoints,
determinism, exact resume, and every bad option. Tiny models, a few hundred steps at most."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import TINY_KWARGS, tiny_args, word_text

import charlstm.training.step
import charlstm.training.writer
from charlstm.data.prepare import tokenize
from charlstm.errors import CharLSTMError, OptionError
from charlstm.evaluation.scoring import evaluate
from charlstm.model.checkpoint import load_checkpoint, read_checkpoint
from charlstm.model.network import CharLSTM
from charlstm.training.build import FusedAdamW
from charlstm.training.trainer import train

# small, fast and deterministic: warm-up and decay still apply unless a test turns them off
TINY = dict(
    **TINY_KWARGS,
    lr=1e-2,
    dropout=0.0,
    eval_every=10,
    eval_batch_size=4,
    log_every=5,
    device="cpu",
)


# -- helpers -------------------------------------------------------------------------------------
def make_data(folder: Path, text: str, **options) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "corpus.txt"
    source.write_text(text, encoding="utf-8")
    return tokenize(source, folder / "tok", **options).out


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """~3,000 characters of random words, tokenized (90% train, 10% val)."""
    return make_data(tmp_path_factory.mktemp("data"), word_text(3000))


def records(run: Path, kind: str | None = None) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    all_records = [json.loads(line) for line in lines]
    return [r for r in all_records if kind is None or r["kind"] == kind]


def losses(run: Path) -> list[tuple]:
    """The deterministic content of metrics.jsonl (timings left out)."""
    return [(r["kind"], r["step"], r.get("train_loss"), r.get("val_loss")) for r in records(run)]


def assert_same(a, b, where: str = "") -> None:
    """Recursive exact equality of (nested) state dicts: tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def model_weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)["model"]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# -- learning ------------------------------------------------------------------------------------
def test_train_loss_falls(data, tmp_path):
    result = train(data, tmp_path / "run", steps=60, **TINY)
    train_losses = [r["train_loss"] for r in records(tmp_path / "run", "train")]
    assert len(train_losses) == 12
    assert train_losses[-1] < train_losses[0] - 0.3
    assert max(train_losses[-3:]) < min(train_losses[:3])
    assert result.steps == 60
    assert result.best_val_loss is not None and result.best_val_loss < math.log(20)


def test_small_text_is_memorised(tmp_path):
    """A 2 KB passage repeated four times: the model learns it by heart, and the val split (the
    tail of the same passage) is predicted almost perfectly too."""
    passage = word_text(2000, seed=3)
    folder = make_data(tmp_path, passage * 4)
    run = tmp_path / "run"
    result = train(
        folder,
        run,
        **{
            **TINY,
            "hidden_size": 64,
            "bptt": 64,
            "batch_size": 8,
            "lr": 2e-2,
            "warmup_steps": 0,
            "weight_decay": 0.0,
            "steps": 600,
            "eval_every": 600,
            "log_every": 25,
            "eval_batch_size": 1,
        },
    )
    final_train = records(run, "train")[-1]["train_loss"]
    assert final_train < 0.1
    assert result.last_val_loss < 0.15


def equals_corpus(n_records: int, filler: int, seed: int = 0) -> str:
    """Records like 'A' + `filler` random x/y + '=A' + newline: the character after '=' repeats
    the letter `filler + 2` characters back, the only long-range fact in the text."""
    rng = random.Random(seed)
    out = []
    for _ in range(n_records):
        letter = rng.choice("AB")
        out.append(letter + "".join(rng.choice("xy") for _ in range(filler)) + "=" + letter + "\n")
    return "".join(out)


def test_hidden_state_is_carried_between_windows(tmp_path, monkeypatch):
    """With bptt 8 and records of 8 characters, the letter an answer repeats lies in the previous
    window for most alignments. Carrying the state lets the model predict it; resetting the
    state every window (the bug this guards against) cannot, and its training loss stays
    clearly higher."""
    folder = make_data(tmp_path, equals_corpus(750, filler=4))
    options = {
        **TINY,
        "bptt": 8,
        "batch_size": 16,
        "warmup_steps": 0,
        "steps": 300,
        "eval_every": 300,
        "log_every": 50,
    }

    train(folder, tmp_path / "carried", **options)
    carried = records(tmp_path / "carried", "train")[-1]["train_loss"]

    def reset(state):
        return tuple(torch.zeros_like(s) for s in state)

    monkeypatch.setattr(charlstm.training.step, "repackage_state", reset)
    train(folder, tmp_path / "reset", **options)
    reset_loss = records(tmp_path / "reset", "train")[-1]["train_loss"]

    floor = 5 * math.log(2) / 8  # 5 coin flips per 8-character record
    assert carried < floor + 0.07
    assert reset_loss > carried + 0.1


def test_each_window_starts_from_the_last_ones_detached_state(data, tmp_path, monkeypatch):
    """Within an epoch, step k's input state is step k-1's output state (same values, no
    history) and its tokens continue each stream where step k-1 stopped; a new epoch starts
    from zeros."""
    calls = []
    forward = CharLSTM.forward

    def spy(self, tokens, state=None):
        logits, out = forward(self, tokens, state)
        if self.training:
            calls.append((tokens.clone(), state, tuple(s.detach().clone() for s in out)))
        return logits, out

    monkeypatch.setattr(CharLSTM, "forward", spy)
    options = {**TINY, "batch_size": 8, "bptt": 16, "eval_every": 1000}
    per_epoch = (2700 - 16 - 1) // 8 // 16
    train(data, tmp_path / "run", steps=per_epoch + 3, **options)
    assert len(calls) == per_epoch + 3

    train_ids = np.load(data / "train.npy").astype(np.int64)
    assert len(train_ids) == 2700
    first_state = calls[0][1]
    assert all(not s.any() for s in first_state)
    for k in range(1, per_epoch):
        _, state_in, _ = calls[k]
        _, _, previous_out = calls[k - 1]
        for s_in, s_prev in zip(state_in, previous_out, strict=True):
            assert s_in.grad_fn is None and not s_in.requires_grad
            assert torch.equal(s_in, s_prev)
    # the streams are contiguous text: window k continues window k-1 in every column
    streams = torch.cat([tokens for tokens, _, _ in calls[:per_epoch]]).T.numpy()
    text = train_ids.tobytes()
    for stream in streams:
        assert stream.tobytes() in text
    # a new epoch (new offsets) starts from the zero state
    assert all(not s.any() for s in calls[per_epoch][1])


# -- run files and metrics -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(data, tmp_path_factory):
    """A 30-step run, with every payload the trainer saved captured on its way to disk."""
    saved = []
    real_save = charlstm.training.writer.save_checkpoint
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    def capture(payload, path):
        saved.append((Path(path).name, _clone(payload)))
        real_save(payload, path)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(charlstm.training.writer, "save_checkpoint", capture)
        run = tmp_path_factory.mktemp("finished") / "run"
        result = train(data, run, steps=30, **TINY)
    torch.set_num_threads(threads)
    return run, result, saved


def _clone(value):
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_clone(v) for v in value)
    return value


def test_run_folder_holds_the_run_files(finished_run):
    run, result, _ = finished_run
    for name in ("last.pt", "best.pt", "metrics.jsonl", "config.json"):
        assert (run / name).is_file(), name
        assert result.files[name] == run / name
    assert not list(run.glob(".*.tmp*"))  # no temporary checkpoint left behind
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["hidden_size"] == 32 and config["train"]["steps"] == 30
    assert config["model"] == read_checkpoint(run / "last.pt")["model_config"]


def test_metrics_records_have_their_fields(finished_run):
    run, result, _ = finished_run
    train_records = records(run, "train")
    eval_records = records(run, "eval")
    assert [r["step"] for r in train_records] == [5, 10, 15, 20, 25, 30]
    assert [r["step"] for r in eval_records] == [10, 20, 30]
    for r in train_records:
        assert {"step", "chars", "elapsed_s", "train_loss", "lr", "chars_per_s"} <= set(r)
        assert r["chars"] == r["step"] * 4 * 16
        assert r["chars_per_s"] > 0 and r["elapsed_s"] >= 0 and r["lr"] > 0
        assert math.isfinite(r["train_loss"])
    for r in eval_records:
        assert {"step", "chars", "elapsed_s", "val_loss", "bpc", "perplexity", "lr"} <= set(r)
        assert r["chars"] == r["step"] * 4 * 16
        assert r["bpc"] == pytest.approx(r["val_loss"] / math.log(2), rel=1e-12)
        assert r["perplexity"] == pytest.approx(math.exp(r["val_loss"]), rel=1e-12)
    elapsed = [r["elapsed_s"] for r in records(run)]
    assert elapsed == sorted(elapsed)
    assert result.best_val_loss == min(r["val_loss"] for r in eval_records)
    assert result.last_val_loss == eval_records[-1]["val_loss"]


def test_best_checkpoint_is_the_best_eval_and_scores_what_was_logged(finished_run):
    run, result, _ = finished_run
    eval_records = records(run, "eval")
    best = min(eval_records, key=lambda r: r["val_loss"])
    payload = read_checkpoint(run / "best.pt")
    assert payload["run"]["step"] == best["step"]
    assert payload["run"]["best_val"] == best["val_loss"]
    # evaluating the saved weights the way the trainer did reproduces the logged number
    scored = evaluate(run / "best.pt", split="val", batch_size=best["val_streams"], device="cpu")
    assert scored.loss == pytest.approx(best["val_loss"], rel=1e-6)


def test_checkpoint_round_trips(finished_run):
    run, _, saved = finished_run
    name, payload = saved[-1]
    assert name == "last.pt"
    on_disk = read_checkpoint(run / "last.pt")
    assert_same(on_disk["run"]["optimizer"], payload["run"]["optimizer"], "optimizer")
    assert_same(on_disk["model"], payload["model"], "model")
    assert on_disk["run"]["step"] == 30 and on_disk["format_version"] == 2
    loaded = load_checkpoint(run / "last.pt")
    assert not loaded.model.training
    assert_same(loaded.model.state_dict(), payload["model"], "loaded model")
    assert loaded.vocab.to_json() == payload["vocab"]
    assert loaded.config.hidden_size == 32 and loaded.config.embed_size == 16
    # the optimizer state really is there: AdamW moments for every parameter
    state = on_disk["run"]["optimizer"]["state"]
    assert len(state) == len(list(loaded.model.parameters()))
    assert all(int(s["step"]) == 30 for s in state.values())


def test_same_seed_gives_bitwise_identical_weights(data, tmp_path):
    train(data, tmp_path / "a", steps=15, seed=7, **TINY)
    train(data, tmp_path / "b", steps=15, seed=7, **TINY)
    train(data, tmp_path / "c", steps=15, seed=8, **TINY)
    a, b, c = (read_checkpoint(tmp_path / x / "last.pt") for x in "abc")
    assert_same(a["model"], b["model"], "model")
    assert_same(a["run"]["optimizer"], b["run"]["optimizer"], "optimizer")
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    assert not all(torch.equal(a["model"][k], c["model"][k]) for k in a["model"])


# -- new runs never overwrite old ones -----------------------------------------------------------
def test_existing_run_folder_is_refused_and_left_alone(data, tmp_path):
    run = tmp_path / "run"
    train(data, run, steps=10, **TINY)
    before = snapshot(run)
    with pytest.raises(CharLSTMError, match="already holds a run") as info:
        train(data, run, steps=10, **TINY)
    assert "--resume" in str(info.value) and "--force" in str(info.value)
    assert snapshot(run) == before


def test_force_starts_over(data, tmp_path):
    run = tmp_path / "run"
    train(data, run, steps=20, **TINY)
    train(data, run, steps=5, force=True, **{**TINY, "eval_every": 1000})
    assert read_checkpoint(run / "last.pt")["run"]["step"] == 5
    assert max(r["step"] for r in records(run)) == 5  # nothing left from the old run
    assert [r["step"] for r in records(run, "eval")] == [5]


# -- bad options ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"hidden_size": -5}, "--hidden must be a whole number >= 1, got -5"),
        ({"embed_size": 0}, "--embed must be a whole number >= 1"),
        ({"dropout": 1.0}, r"--dropout must be in \[0, 1\)"),
        ({"bptt": 0}, "--bptt must be a whole number >= 1"),
        ({"batch_size": 0}, "--batch-size must be a whole number >= 1"),
        ({"lr": -1.0}, r"--lr must be in \(0, inf\)"),
        ({"steps": 0}, "--steps must be a whole number >= 1"),
        ({"steps": 5, "time_budget_min": 1.0}, "at most one of --steps, --epochs"),
        ({"save_every": "soon"}, "--save-every 'soon' is not a step count"),
        ({"eval_every": "0"}, "--eval-every '0' is not a step count"),
        ({"seed": -1}, "--seed must be a whole number from 0 to 2\\^63-1, got -1"),
        ({"seed": 2**64}, "--seed must be a whole number from 0"),
        ({"device": "gpu"}, "--device 'gpu' is not a device"),
        ({"ema": 1.0}, r"--ema must be in \[0, 1\), got 1.0"),
        ({"ema": -0.5}, r"--ema must be in \[0, 1\), got -0.5"),
    ],
)
def test_bad_options_raise_before_anything_is_written(data, tmp_path, override, message):
    options = {**TINY, "steps": 5, **override}
    with pytest.raises(OptionError, match=message):
        train(data, tmp_path / "run", **options)
    assert not (tmp_path / "run").exists()


def test_unknown_preset_is_refused(data, tmp_path):
    with pytest.raises(OptionError, match="unknown preset 'huge'"):
        train(data, tmp_path / "run", preset="huge", steps=5)


def _empty_val_copy(data: Path, folder: Path, val_chars: int) -> Path:
    """A copy of `data` whose val split keeps only `val_chars` ids (tokenize refuses to write
    an empty split, so this is done by hand, consistently with meta.json)."""
    folder.mkdir()
    for name in ("train.npy", "test.npy", "tokenizer.json"):
        (folder / name).write_bytes((data / name).read_bytes())
    val = np.load(data / "val.npy")
    np.save(folder / "val.npy", val[:val_chars])
    meta = json.loads((data / "meta.json").read_text())
    meta["chars"]["val"] = val_chars
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


@pytest.mark.parametrize("val_chars", [0, 1])
def test_empty_val_split_is_refused(data, tmp_path, val_chars):
    folder = _empty_val_copy(data, tmp_path / "noval", val_chars)
    with pytest.raises(CharLSTMError, match="the val split of .* is empty"):
        train(folder, tmp_path / "run", steps=5, **TINY)


def test_unwritable_run_folder_is_a_clean_error(data, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    with pytest.raises(CharLSTMError, match="cannot write to run folder .*afile/run"):
        train(data, afile / "run", steps=5, **TINY)
    with pytest.raises(CharLSTMError, match="exists and is not a folder"):
        train(data, afile, steps=5, **TINY)


def test_read_only_parent_is_a_clean_error(data, tmp_path):
    """A parent folder this user cannot write: mode 0o500; and for root, whom modes do not stop,
    a read-only mount (a tmpfs mounted ro in the child's own user and mount namespaces), with
    the run started through the CLI in that child."""
    parent = tmp_path / "readonly"
    parent.mkdir()
    if os.geteuid() != 0:
        parent.chmod(0o500)
        try:
            with pytest.raises(CharLSTMError, match="cannot write to run folder .*not writable"):
                train(data, parent / "run", steps=5, **TINY)
        finally:
            parent.chmod(0o700)
        return
    mount_then_run = 'mount -t tmpfs -o ro none "$1" && shift && exec "$@"'
    train_cli = [sys.executable, "-m", "charlstm", "train", str(data), "--out", str(parent / "run"),
                 *tiny_args(), "--steps", "5", "--device", "cpu"]  # fmt: skip
    result = subprocess.run(
        [
            "unshare",
            "--map-root-user",
            "--mount",
            "sh",
            "-c",
            mount_then_run,
            "sh",
            str(parent),
            *train_cli,
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert "cannot write to run folder" in result.stderr and "not writable" in result.stderr
    assert "Traceback" not in result.stderr and not (parent / "run").exists()


def test_train_split_too_short_for_one_window(data, tmp_path):
    with pytest.raises(CharLSTMError, match=r"train split \(2,700 characters\) is too short"):
        train(data, tmp_path / "run", steps=5, **{**TINY, "batch_size": 64, "bptt": 64})
    assert not (tmp_path / "run").exists()


def test_data_that_is_not_there_is_a_clean_error(tmp_path):
    with pytest.raises(CharLSTMError, match="corpus not found"):
        train(tmp_path / "missing", tmp_path / "run", steps=5, **TINY)


# -- run length, saving cadence, guards ----------------------------------------------------------
def test_epochs_set_the_number_of_steps(data, tmp_path):
    per_epoch = (2700 - 16 - 1) // 4 // 16
    one = train(data, tmp_path / "one", epochs=1, **{**TINY, "eval_every": 1000})
    assert one.steps == per_epoch
    more = train(data, tmp_path / "more", epochs=1.5, **{**TINY, "eval_every": 1000})
    assert more.steps == math.ceil(1.5 * per_epoch)


def test_time_budget_stops_the_run_and_still_evaluates(data, tmp_path):
    result = train(data, tmp_path / "run", time_budget_min=0.005, **TINY)
    assert result.steps > 0  # when it stops: tests/test_budget.py, on a fake clock
    evals = records(tmp_path / "run", "eval")
    assert evals and evals[-1]["step"] == result.steps
    assert read_checkpoint(tmp_path / "run" / "last.pt")["run"]["step"] == result.steps


def test_save_every_steps(data, tmp_path, monkeypatch):
    saves = []
    real_save = charlstm.training.writer.save_checkpoint

    def spy(payload, path):
        saves.append((Path(path).name, payload["run"]["step"]))
        real_save(payload, path)

    monkeypatch.setattr(charlstm.training.writer, "save_checkpoint", spy)
    train(data, tmp_path / "run", steps=12, save_every="5", **{**TINY, "eval_every": 1000})
    assert saves == [("last.pt", 5), ("last.pt", 10), ("last.pt", 12)]
    assert read_checkpoint(tmp_path / "run" / "best.pt")["run"]["step"] == 12


def _nan_loss_at(monkeypatch, bad_steps: set[int]) -> list[int]:
    """Make the training loss non-finite on the given (0-based) calls."""
    calls = []
    real_loss = charlstm.training.step._loss

    def loss(logits, targets):
        calls.append(len(calls))
        value = real_loss(logits, targets)
        return value * float("nan") if calls[-1] in bad_steps else value

    monkeypatch.setattr(charlstm.training.step, "_loss", loss)
    return calls


def test_a_non_finite_step_is_skipped_and_leaves_the_weights(data, tmp_path, monkeypatch):
    _nan_loss_at(monkeypatch, {3})
    updates = []
    real_step = FusedAdamW.step

    def count_step(self, *args, **kwargs):
        updates.append(1)
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(FusedAdamW, "step", count_step)
    result = train(data, tmp_path / "run", steps=10, **TINY)
    assert result.skipped_steps == 1
    assert len(updates) == 9  # the bad step never reached the optimizer
    assert records(tmp_path / "run", "train")[-1]["skipped"] == 1
    weights = model_weights(tmp_path / "run" / "last.pt")
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_tied_weights_train_and_load_tied(data, tmp_path):
    options = {**TINY, "embed_size": 32, "tie_weights": True}
    train(data, tmp_path / "run", steps=10, **options)
    loaded = load_checkpoint(tmp_path / "run" / "last.pt")
    assert loaded.model.head.weight is loaded.model.embedding.weight
    saved = model_weights(tmp_path / "run" / "last.pt")
    assert torch.equal(saved["head.weight"], saved["embedding.weight"])


class _Recorder:
    """A reporter that keeps what the trainer told it."""

    def __init__(self) -> None:
        self.info, self.steps, self.evals, self.messages = None, [], [], []

    def start(self, info):
        self.info = info

    def step(self, stats):
        self.steps.append(stats)

    def evaluated(self, stats):
        self.evals.append(stats)

    def message(self, text):
        self.messages.append(text)

    def close(self):
        pass


def test_reporter_gets_typed_numbers(data, tmp_path):
    seen = _Recorder()
    train(data, tmp_path / "run", steps=20, reporter=seen, **TINY)
    assert seen.info.total_steps == 20 and seen.info.params > 0 and seen.info.resumed_at is None
    assert [s.step for s in seen.steps] == [5, 10, 15, 20]
    for s in seen.steps:
        assert isinstance(s.train_loss, float) and s.total_steps == 20 and s.budget_s is None
        assert s.chars_per_s > 0 and s.eta_s is not None and s.eta_s >= 0
    assert seen.steps[0].val_loss is None and seen.steps[-1].val_loss is not None
    assert [e.step for e in seen.evals] == [10, 20] and seen.evals[0].improved


# -- data ----------------------------------------------------------------------------------------


# -- --ema: the average of the weights -----------------------------------------------------------
def test_ema_leaves_training_alone_and_is_what_is_validated_and_saved(data, tmp_path):
    """--ema changes no trained weight (same seed, same run as without it); the checkpoints'
    model is the average, val_loss is the average's and trained_val_loss the trained weights'
    (the same as the plain run's val_loss), and `evaluate` of best.pt scores what was logged."""
    train(data, tmp_path / "plain", steps=30, **TINY)
    result = train(data, tmp_path / "ema", steps=30, ema=0.95, **TINY)
    plain, ema = (read_checkpoint(tmp_path / x / "last.pt") for x in ("plain", "ema"))
    assert_same(ema["run"]["trained_model"], plain["model"], "trained weights")
    assert_same(ema["run"]["optimizer"], plain["run"]["optimizer"], "optimizer")
    assert ema["run"]["ema_updates"] == 30 and "trained_model" not in plain["run"]
    assert not any(torch.equal(ema["model"][k], plain["model"][k]) for k in plain["model"])
    evals, plain_evals = records(tmp_path / "ema", "eval"), records(tmp_path / "plain", "eval")
    assert [r["trained_val_loss"] for r in evals] == [r["val_loss"] for r in plain_evals]
    assert all("trained_val_loss" not in r for r in plain_evals)
    assert result.best_val_loss == min(r["val_loss"] for r in evals)
    best = min(evals, key=lambda r: r["val_loss"])
    scored = evaluate(tmp_path / "ema" / "best.pt", split="val", batch_size=4, device="cpu")
    assert scored.loss == pytest.approx(best["val_loss"], rel=1e-6)
    config = json.loads((tmp_path / "ema" / "config.json").read_text())
    assert config["train"]["ema"] == 0.95


def test_ema_with_tied_weights_saves_one_average_for_both_names(data, tmp_path):
    options = {**TINY, "embed_size": 32, "tie_weights": True, "ema": 0.9}
    train(data, tmp_path / "run", steps=10, **options)
    saved = model_weights(tmp_path / "run" / "last.pt")
    assert torch.equal(saved["head.weight"], saved["embedding.weight"])
    loaded = load_checkpoint(tmp_path / "run" / "last.pt")
    assert loaded.model.head.weight is loaded.model.embedding.weight
    assert torch.equal(loaded.model.head.weight, saved["embedding.weight"])
