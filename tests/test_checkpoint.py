"""checkpoint.py: atomic saves, a safe load that runs no code, and one clear error for every way
a file can be wrong."""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import pytest
import torch

import charlstm.model.checkpoint
from charlstm.config import ModelConfig
from charlstm.data.vocab import Vocab
from charlstm.errors import CharLSTMError
from charlstm.model.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from charlstm.model.network import CharLSTM


def model_payload(hidden: int = 16) -> dict:
    vocab = Vocab("char", "\n abcdefgh")
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=vocab.size, embed_size=8, hidden_size=hidden, num_layers=2)
    return {
        "model_config": config.to_dict(),
        "model": CharLSTM(config).state_dict(),
        "vocab": vocab.to_json(),
        "step": 7,
    }


@pytest.fixture
def good(tmp_path) -> Path:
    path = tmp_path / "good.pt"
    save_checkpoint(model_payload(), path)
    return path


class Evil:
    """Unpickling this runs a shell command: the classic malicious checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# -- saving --------------------------------------------------------------------------------------
def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "run" / "last.pt"
    path.parent.mkdir()
    save_checkpoint(model_payload(), path)
    save_checkpoint({**model_payload(), "step": 8}, path)  # over an existing one
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]
    payload = read_checkpoint(path)
    assert payload["step"] == 8
    assert payload["format"] == FORMAT and payload["format_version"] == FORMAT_VERSION


def test_a_failed_save_keeps_the_old_file_and_cleans_up(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(model_payload(), path)
    before = path.read_bytes()

    def disk_full(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(charlstm.model.checkpoint.torch, "save", disk_full)
    with pytest.raises(OSError):
        save_checkpoint({**model_payload(), "step": 99}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_round_trip_through_load_checkpoint(good):
    saved = model_payload()
    loaded = load_checkpoint(good)
    assert not loaded.model.training
    assert loaded.path == good
    assert loaded.config == ModelConfig.from_dict(saved["model_config"])
    assert loaded.vocab == Vocab("char", "\n abcdefgh")
    state = loaded.model.state_dict()
    assert set(state) == set(saved["model"])
    for name, tensor in saved["model"].items():
        assert torch.equal(state[name], tensor), name
    assert loaded.payload["step"] == 7


# -- files that are not checkpoints --------------------------------------------------------------
def test_truncated_checkpoint(good):
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])
    with pytest.raises(CharLSTMError, match=r"not a readable checkpoint \(truncated or corrupt"):
        read_checkpoint(good)
    with pytest.raises(CharLSTMError, match="use last.pt or best.pt"):
        load_checkpoint(good)


@pytest.mark.parametrize("keep", [10, 200, -10])
def test_checkpoint_cut_anywhere(good, keep):
    data = good.read_bytes()
    good.write_bytes(data[:keep])
    with pytest.raises(CharLSTMError, match="not a readable checkpoint"):
        read_checkpoint(good)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pt"
    path.touch()
    with pytest.raises(CharLSTMError, match=r"not a readable checkpoint \(empty"):
        read_checkpoint(path)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_bytes(tmp_path, seed):
    rng = random.Random(seed)
    path = tmp_path / "noise.pt"
    data = bytes(rng.randrange(256) for _ in range(4096))
    path.write_bytes(b"\x07" + data)  # not the start of a zip archive or a pickle
    with pytest.raises(CharLSTMError, match="is not a charlstm checkpoint") as info:
        read_checkpoint(path)
    assert "refusing" not in str(info.value)  # noise is not an attack, and must not say so


@pytest.mark.parametrize(
    "content",
    [b"hello world\n", b'{"kind": "train", "step": 10}\n', b"\x93NUMPY\x01\x00"],
)
def test_other_files(tmp_path, content):
    path = tmp_path / "other.pt"
    path.write_bytes(content)
    with pytest.raises(CharLSTMError, match=r"not a charlstm checkpoint \(not a PyTorch file\)"):
        read_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(CharLSTMError, match="checkpoint not found: .*nothing.pt"):
        read_checkpoint(tmp_path / "nothing.pt")
    with pytest.raises(CharLSTMError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nothing.pt")


def test_folder(tmp_path):
    with pytest.raises(CharLSTMError, match="is a folder, not a checkpoint.*best.pt"):
        read_checkpoint(tmp_path)


# -- malicious pickles ---------------------------------------------------------------------------
def test_torch_saved_pickle_with_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "format_version": 1, "payload": Evil(marker)}, path)
    with pytest.raises(CharLSTMError, match="refusing to load .*pickled code") as info:
        load_checkpoint(path)
    assert "trust" in str(info.value)
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL])
def test_plain_pickle_with_code_is_refused_without_running_it(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(Evil(marker), protocol=protocol))
    with pytest.raises(CharLSTMError, match="refusing to load .*pickled"):
        read_checkpoint(path)
    assert not marker.exists()
    # the control: this file really does run the command when unpickled unsafely
    pickle.loads(path.read_bytes())
    assert marker.exists()


# -- dicts that are not (this version's) checkpoints ---------------------------------------------
def test_newer_format_version_says_upgrade(tmp_path):
    path = tmp_path / "future.pt"
    torch.save({**model_payload(), "format": FORMAT, "format_version": 999}, path)
    with pytest.raises(CharLSTMError, match="format version 999.*reads up to 2.*upgrade charlstm"):
        load_checkpoint(path)


@pytest.mark.parametrize("version", [0, "1", None])
def test_nonsense_format_version(tmp_path, version):
    path = tmp_path / "odd.pt"
    torch.save({**model_payload(), "format": FORMAT, "format_version": version}, path)
    with pytest.raises(CharLSTMError, match="checkpoint format version"):
        read_checkpoint(path)


@pytest.mark.parametrize(
    "obj", [model_payload(), {"format": "something-else", "format_version": 1}, [1, 2, 3]]
)
def test_without_the_format_marker(tmp_path, obj):
    path = tmp_path / "plain.pt"
    torch.save(obj, path)
    with pytest.raises(CharLSTMError, match="is not a charlstm checkpoint.*format marker"):
        load_checkpoint(path)


def test_damaged_payload(tmp_path):
    missing = tmp_path / "missing.pt"
    save_checkpoint({k: v for k, v in model_payload().items() if k != "model_config"}, missing)
    with pytest.raises(CharLSTMError, match="missing.pt is damaged.*use another checkpoint"):
        load_checkpoint(missing)

    mismatched = tmp_path / "mismatched.pt"
    payload = model_payload()
    payload["model_config"] = {**payload["model_config"], "hidden_size": 32}
    save_checkpoint(payload, mismatched)
    with pytest.raises(CharLSTMError, match="mismatched.pt is damaged.*size mismatch"):
        load_checkpoint(mismatched)


def _as_version_1(payload: dict) -> dict:
    """A payload laid out as charlstm 0.1 wrote it: the run state's fields at the top level."""
    old = {k: v for k, v in payload.items() if k != "run"}
    run = dict(payload["run"])
    old["state"] = run.pop("hidden")
    old.update(run)
    old["chars_seen"] = old["step"] * 64
    old["schedule"] = {"kind": "warmup-cosine", "step": old["step"]}
    old["format_version"] = 1
    return old


def test_a_version_1_run_still_evaluates_and_resumes(tmp_path):
    """Checkpoints written by the previous release load (upgraded in memory) and continue."""
    from tiny import TINY_KWARGS, word_text

    from charlstm.data.prepare import tokenize
    from charlstm.training.trainer import train

    (tmp_path / "t.txt").write_text(word_text(3000), encoding="utf-8")
    data = tokenize(tmp_path / "t.txt", tmp_path / "data").out
    run = tmp_path / "run"
    train(data, run, steps=6, eval_every=3, **TINY_KWARGS)
    current = read_checkpoint(run / "last.pt")
    with open(run / "last.pt", "wb") as f:  # as the old release wrote it
        torch.save(_as_version_1({**current, "format": FORMAT}), f)
    upgraded = read_checkpoint(run / "last.pt")
    assert upgraded["format_version"] == 2
    assert upgraded["run"]["step"] == 6 and "step" not in upgraded
    assert torch.equal(upgraded["run"]["hidden"][0], current["run"]["hidden"][0])
    assert load_checkpoint(run / "last.pt").config.hidden_size == TINY_KWARGS["hidden_size"]
    assert train(out=run, resume=True, steps=9).steps == 9
