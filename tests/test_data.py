"""data.py: tokenized folders (checked against meta.json), the cache for raw text, and the
truncated-BPTT streams training reads its windows from."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tiny import word_text

from charlstm.data.dataset import (
    TrainStreams,
    data_name,
    epoch_offset,
    get_batch,
    load_dataset,
    resolve_dataset,
    steps_per_epoch,
    stream_offsets,
)
from charlstm.data.prepare import tokenize
from charlstm.errors import CharLSTMError


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    (root / "story.txt").write_text(word_text(3000), encoding="utf-8")
    return tokenize(root / "story.txt", root / "tok").out


def test_batchify_and_get_batch():
    starts, stream_len = stream_offsets(103, 4, offset=2)
    assert stream_len == 25 and list(starts) == [2, 27, 52, 77]
    ids = np.arange(103)
    window = get_batch(ids, starts, 5, 3)
    assert window.shape == (4, 4)  # bptt + 1 rows: inputs and the targets one ahead
    assert list(window[:, 1]) == [32, 33, 34, 35]


def test_train_streams_are_contiguous_within_an_epoch_and_move_between_epochs():
    ids = np.arange(10_000)
    streams = TrainStreams(ids, batch_size=4, bptt=16, seed=3)
    assert streams.per_epoch == steps_per_epoch(10_000, 4, 16)
    first, second = streams.window(0, 0, 0, 4), streams.window(0, 1, 0, 4)
    assert np.array_equal(first[-1], second[0])  # window k+1 starts where window k ended
    assert np.array_equal(streams.window(0, 1, 1, 3), second[:, 1:3])  # one rank's share
    offsets = {epoch_offset(3, e, 16) for e in range(8)}
    assert len(offsets) > 1 and all(0 <= o < 16 for o in offsets)
    assert epoch_offset(3, 5, 16) == epoch_offset(3, 5, 16)  # a pure function of (seed, epoch)
    assert streams.starts(5)[0] == epoch_offset(3, 5, 16)


def test_a_split_too_short_for_one_window_is_refused():
    with pytest.raises(CharLSTMError, match=r"train split \(100 characters\) is too short"):
        TrainStreams(np.arange(100), batch_size=8, bptt=16, seed=0)


def test_dataset_names(folder, tmp_path):
    assert data_name(None) == "tinyshakespeare"
    assert data_name(folder) == "tok"
    (tmp_path / "notes.txt").write_text("x")
    assert data_name(tmp_path / "notes.txt") == "notes"
    assert load_dataset(folder).name == "tok"


def test_a_corrupt_meta_json_names_the_fix(folder, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in folder.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "meta.json").write_text('{"format": "charlstm-tok')
    with pytest.raises(
        CharLSTMError,
        match="cannot read .*meta.json.*re-run .charlstm tokenize CORPUS --out .*broken --force",
    ):
        load_dataset(broken)
    (broken / "meta.json").unlink()
    with pytest.raises(CharLSTMError, match="not a tokenized folder.*charlstm tokenize"):
        load_dataset(broken)


def test_arrays_that_disagree_with_meta_are_refused(folder, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in folder.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    meta = json.loads((copy / "meta.json").read_text())
    meta["chars"]["val"] += 1
    (copy / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CharLSTMError, match="val.npy does not match meta.json"):
        load_dataset(copy)


def test_raw_text_is_tokenized_into_the_cache_once(tmp_path, monkeypatch):
    monkeypatch.setenv("CHARLSTM_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "story.txt"
    source.write_text(word_text(3000, seed=9), encoding="utf-8")
    first = resolve_dataset(source)
    assert first.name == "story" and first.folder.parent == tmp_path / "cache" / "tokenized"
    stamp = (first.folder / "meta.json").stat().st_mtime_ns
    assert resolve_dataset(source).folder == first.folder
    assert (first.folder / "meta.json").stat().st_mtime_ns == stamp  # reused, not redone
    source.write_text(word_text(3000, seed=10), encoding="utf-8")
    assert resolve_dataset(source).folder != first.folder  # an edit is picked up
