"""charlstm.training.sinks: TensorBoard event files and a Weights & Biases run (offline) hold the
numbers metrics.jsonl holds, read back with TensorBoard's own event reader and W&B's record
format; a resume continues them without duplicated steps; a missing extra or a tb/ that cannot
be written costs one line and nothing of the run."""

from __future__ import annotations

import glob
import json
import math
import struct
import sys
import time
from pathlib import Path

import pytest
from tiny import TINY_KWARGS, tiny_args, word_text

from charlstm.data.prepare import tokenize
from charlstm.training import sinks
from charlstm.training.trainer import train
from charlstm.training.validation import SAMPLE_CHARS

TINY = dict(**TINY_KWARGS, lr=1e-2, dropout=0.0, eval_every=10, eval_batch_size=4, log_every=5,
            device="cpu")  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    (folder / "corpus.txt").write_text(word_text(3000), encoding="utf-8")
    return tokenize(folder / "corpus.txt", folder / "tok").out


def records(run: Path, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def events(run: Path):
    """The reader the TensorBoard server itself uses (every value a tensor, scalars too) over
    the run's tb/, every event kept (no sampling)."""
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator

    reader = EventAccumulator(str(run / "tb"), size_guidance={"tensors": 0})
    reader.Reload()
    return reader


def scalar_series(reader, tag: str) -> list[tuple[int, float]]:
    from tensorboard.util.tensor_util import make_ndarray

    return [(e.step, float(make_ndarray(e.tensor_proto))) for e in reader.Tensors(tag)]


def logged(run: Path, kind: str, field: str) -> list[tuple[int, float]]:
    return [(r["step"], r[field]) for r in records(run, kind) if r.get(field) is not None]


def approx(series: list[tuple[int, float]]):
    """TensorBoard stores float32 scalars."""
    return [(step, pytest.approx(value, rel=1e-6)) for step, value in series]


def samples(reader) -> list[tuple[int, str]]:
    """The text logged at each validation, as written (the code block's indent removed)."""
    out = []
    for event in reader.Tensors(f"{sinks.SAMPLE_TAG}/text_summary"):  # torch adds the suffix
        markdown = event.tensor_proto.string_val[0].decode("utf-8")
        out.append((event.step, "\n".join(line[4:] for line in markdown.split("\n"))))
    return out


# -- TensorBoard ---------------------------------------------------------------------------------
def test_tensorboard_holds_what_metrics_jsonl_holds(data, tmp_path):
    run = tmp_path / "run"
    train(data, run, steps=30, **TINY)
    reader = events(run)
    for field, tag in sinks.SCALARS["train"].items():
        assert scalar_series(reader, tag) == approx(logged(run, "train", field)), tag
    assert scalar_series(reader, "val/loss") == approx(logged(run, "eval", "val_loss"))
    assert scalar_series(reader, "val/bpc") == approx(logged(run, "eval", "bpc"))
    assert [s for s, _ in scalar_series(reader, "train/loss")] == [5, 10, 15, 20, 25, 30]
    assert [s for s, _ in scalar_series(reader, "val/bpc")] == [10, 20, 30]
    # the gradient norm before clipping: positive, and not the clip value itself
    norms = [v for _, v in scalar_series(reader, "train/grad_norm")]
    assert all(v > 0 and math.isfinite(v) for v in norms) and len(set(norms)) > 1
    # the greedy sample at each validation, in metrics.jsonl and in TensorBoard alike
    texts = samples(reader)
    assert texts == [(r["step"], r["sample"]) for r in records(run, "eval")]
    assert all(len(text) == SAMPLE_CHARS for _, text in texts)


def test_validation_sample_is_what_greedy_sampling_of_the_checkpoint_writes(data, tmp_path):
    from charlstm.generation.sampling import generate

    run = tmp_path / "run"
    train(data, run, steps=20, **TINY)
    last = records(run, "eval")[-1]
    assert generate(run / "last.pt", length=SAMPLE_CHARS, temperature=0, device="cpu") == [
        last["sample"]
    ]


def test_resume_continues_the_events_without_duplicated_steps(data, tmp_path):
    """Two runs go to step 20, then are extended to 30. One of them then "dies" before its
    last save and is resumed again from its step-20 last.pt, logging steps 25 and 30 a second
    time. TensorBoard's reader sees each step once, with the numbers of the session that went
    on, which equal the other run's (a resume continues exactly)."""
    runs = {"once": tmp_path / "once", "twice": tmp_path / "twice"}
    for run in runs.values():
        train(data, run, steps=20, **TINY)
        saved_at_20 = (run / "last.pt").read_bytes()
        train(data, run, resume=True, steps=30)
    (runs["twice"] / "last.pt").write_bytes(saved_at_20)  # its last save never happened
    train(data, runs["twice"], resume=True, steps=30)
    assert len(list((runs["twice"] / "tb").glob("events.out.tfevents.*"))) == 3
    reader, reference = events(runs["twice"]), events(runs["once"])
    for tag in ("train/loss", "train/lr", "train/grad_norm", "val/loss", "val/bpc"):
        series = scalar_series(reader, tag)
        assert [s for s, _ in series] == sorted({s for s, _ in series}), tag
        assert series == scalar_series(reference, tag), tag
    assert [s for s, _ in scalar_series(reader, "train/loss")] == [5, 10, 15, 20, 25, 30]
    assert [s for s, _ in samples(reader)] == [10, 20, 30]


def test_force_starts_the_events_over(data, tmp_path):
    run = tmp_path / "run"
    train(data, run, steps=20, **TINY)
    train(data, run, force=True, steps=10, **TINY)
    assert [s for s, _ in scalar_series(events(run), "train/loss")] == [5, 10]


def test_no_tensorboard_writes_no_events(data, tmp_path, run_cli):
    result = run_cli("train", data, "--out", tmp_path / "run", "--steps", 10,
                     "--no-tensorboard", *tiny_args())  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert not (tmp_path / "run" / "tb").exists()
    assert (tmp_path / "run" / "last.pt").is_file()


def test_unwritable_tensorboard_folder_costs_one_line_and_nothing_of_the_run(
    data, tmp_path, run_cli
):
    run = tmp_path / "run"
    run.mkdir()
    (run / "tb").write_text("not a folder\n")  # TensorBoard cannot create tb/ here
    result = run_cli("train", data, "--out", run, "--steps", 20, "--eval-every", 10,
                     *tiny_args())  # fmt: skip
    assert result.exit_code == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "TensorBoard" in line]
    assert len(lines) == 1, result.stderr
    assert "logging is off" in lines[0] and "training goes on" in lines[0]
    assert "Traceback" not in result.stderr
    assert (run / "tb").read_text() == "not a folder\n"
    assert [r["step"] for r in records(run, "eval")] == [10, 20]
    assert (run / "last.pt").is_file() and (run / "best.pt").is_file()


def test_a_sink_that_fails_mid_run_is_dropped_with_one_message():
    class Broken:
        name = "Broken"

        def write(self, step, values, texts):
            raise OSError(28, "No space left on device", "tb/events")

        def close(self):
            pass

    class Kept:
        name = "Kept"

        def __init__(self):
            self.steps = []

        def write(self, step, values, texts):
            self.steps.append(step)

        def close(self):
            pass

    messages: list[str] = []
    kept = Kept()
    fan_out = sinks.Sinks([Broken(), kept], messages.append)
    for step in (5, 10):
        fan_out.record({"kind": "train", "step": step, "train_loss": 1.0})
    fan_out.close()
    assert kept.steps == [5, 10]
    assert messages == [
        "Broken logging stopped (No space left on device: tb/events); training goes on, "
        "metrics.jsonl has every number"
    ]


# -- the extras missing --------------------------------------------------------------------------
@pytest.fixture
def without_extras(monkeypatch):
    """tensorboard and wandb cannot be imported (as in an install without the extras)."""
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "wandb", None)


def test_tensorboard_missing_falls_back_saying_so_once(data, tmp_path, run_cli, without_extras):
    result = run_cli("train", data, "--out", tmp_path / "run", "--steps", 10, *tiny_args())
    assert result.exit_code == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "TensorBoard logging" in line]
    assert lines == ["TensorBoard logging is off: tensorboard is not installed (pip install "
                     "'charlstm[tensorboard]')"]  # fmt: skip
    assert not (tmp_path / "run" / "tb").exists()
    assert (tmp_path / "run" / "last.pt").is_file()


@pytest.mark.parametrize(
    "option, extra",
    [(("--tensorboard",), "charlstm[tensorboard]"), (("--wandb", "proj"), "charlstm[wandb]")],
)
def test_an_extra_asked_for_by_name_and_missing_is_one_line(
    data, tmp_path, run_cli, without_extras, option, extra
):
    result = run_cli("train", data, "--out", tmp_path / "run", "--steps", 10, *option,
                     *tiny_args())  # fmt: skip
    assert result.exit_code == 2
    assert extra in result.stderr and "not installed" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_wandb_project_names_are_checked(data, tmp_path, run_cli):
    result = run_cli("train", data, "--out", tmp_path / "run", "--wandb", "a/b", *tiny_args())
    assert result.exit_code == 2 and "project name" in result.stderr
    assert not (tmp_path / "run").exists()


# -- Weights & Biases, offline ---------------------------------------------------------------
def wandb_records(path: Path):
    """The protobuf records of a .wandb file: a 7-byte header, then LevelDB-log records in
    32 KiB blocks (checksum, length, type: 1 full, 2 first, 3 middle, 4 last). wandb 0.31
    has no Python reader of its own; its record type is public (`wandb_internal_pb2`)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            break
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def wandb_history(path: Path) -> tuple[list[dict], object]:
    """The history rows and the run record of a finished run's .wandb file. wandb-core closes
    the file a moment after `run.finish()` returns (its stream shuts down asynchronously), so
    this waits (up to 30 s) for the exit record that ends every finished run."""
    deadline = time.monotonic() + 30
    while "exit" not in {r.WhichOneof("record_type") for r in wandb_records(path)}:
        assert time.monotonic() < deadline, f"{path} never got its exit record"
        time.sleep(0.1)
    history, run = [], None
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                            for i in record.history.item})  # fmt: skip
        elif kind == "run":
            run = record.run
    return history, run


def test_wandb_offline_logs_the_same_scalars_and_resumes_the_same_run(data, tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="the wandb extra: pip install 'charlstm[wandb]'")
    monkeypatch.setenv("WANDB_MODE", "offline")  # no network: the run stays on disk
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    train(data, run, steps=20, wandb="charlstm-tests", **TINY)
    run_id = (run / "wandb-id.txt").read_text().strip()
    first = Path(glob.glob(str(run / "wandb" / f"offline-run-*-{run_id}" / "*.wandb"))[0])
    history, _ = wandb_history(first)
    by_step = {}
    for row in history:
        by_step.setdefault(row["_step"], {}).update(row)
    for kind, names in sinks.SCALARS.items():
        for field, tag in names.items():
            expected = logged(run, kind, field)
            got = [(s, by_step[s][tag]) for s in sorted(by_step) if tag in by_step[s]]
            assert got == [(s, pytest.approx(v, rel=1e-12)) for s, v in expected], tag
    assert [s for s in sorted(by_step) if sinks.SAMPLE_TAG + "/_type" in by_step[s]] == [10, 20]

    train(data, run, resume=True, steps=30)
    files = sorted(glob.glob(str(run / "wandb" / f"offline-run-*-{run_id}" / "*.wandb")))
    assert len(files) == 2
    history, resumed = wandb_history(Path(files[-1]))  # the folders are named by start time
    # the same W&B run, rewound to the checkpoint's step: nothing after it is kept twice
    assert (resumed.branch_point.run, resumed.branch_point.value) == (run_id, 20)
    assert resumed.branch_point.metric == "_step"
    assert sorted({row["_step"] for row in history}) == [25, 30]
