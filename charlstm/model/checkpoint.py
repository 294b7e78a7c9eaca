"""Checkpoints: self-contained, written atomically, loaded without running code.

A checkpoint is a plain dict of tensors, numbers and strings saved with `torch.save`, loaded
with ``torch.load(weights_only=True)`` so a file carrying a pickled callable is refused before
anything in it runs. It holds everything `eval`, `sample` and an exact `--resume` need:

    format, format_version   "charlstm-checkpoint", 2
    model_config, model      the architecture and its weights (all eval/sample need); with
                             --ema, the averaged weights
    vocab                    tokenizer.json text
    train_config             the run's TrainConfig as a dict
    data                     name, folder, sha256 and split sizes of the training data
    run                      the RunState: step, epoch, window position, carried hidden state,
                             RNG states, optimizer, best/last val, loss sums, elapsed time;
                             with --ema also the trained weights (trained_model) and the
                             average's update count (ema_updates)

Version 1 (charlstm 0.1) kept the run state's fields at the top level; `read_checkpoint`
upgrades such a file in memory, so old runs still evaluate, sample and resume.

Every command that loads a model takes either such a file or a model folder (model.safetensors,
config.json, tokenizer.json: `charlstm.model.folder`); `read_model` is the one place that tells
them apart, and `load_checkpoint` and `describe` go through it.
"""

from __future__ import annotations

import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from charlstm.atomic import CHECKPOINT_MAX_BYTES, atomic_open, open_regular
from charlstm.config import ModelConfig
from charlstm.data.vocab import Vocab
from charlstm.errors import CharLSTMError
from charlstm.model.folder import is_model_folder, read_folder
from charlstm.model.network import CharLSTM

FORMAT = "charlstm-checkpoint"
FORMAT_VERSION = 2
# version 1 kept these run-state fields at the top level of the payload
_V1_RUN_FIELDS = (
    "step",
    "epoch",
    "epoch_step",
    "elapsed_s",
    "best_val",
    "last_val",
    "skipped_steps",
    "loss_sum",
    "loss_count",
    "optimizer",
    "rng",
    "world_size",
)


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`.

    A crash at any instant leaves either the old file or the new one, never a torn one.
    """
    with atomic_open(path) as f:
        torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **payload}, f)


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint's dict safely, with one clear error for every way it can be wrong."""
    path = Path(path)
    if not path.exists():
        raise CharLSTMError(f"checkpoint not found: {path}", "pass the path of a .pt file")
    if path.is_dir():
        raise CharLSTMError(
            f"{path} is a folder, not a checkpoint or a model folder",
            f"pass {path / 'best.pt'} or last.pt, or a folder written by charlstm export "
            "--format safetensors",
        )
    try:
        with open_regular(path, CHECKPOINT_MAX_BYTES, "use a run's last.pt or best.pt") as f:
            head = f.read(4)
    except OSError as e:
        raise CharLSTMError(f"cannot read checkpoint {path}: {e.strerror}") from None
    # torch.save writes a zip archive (or, in the legacy format, a pickle: PROTO opcode 0x80);
    # anything else (a text file, random bytes) must not reach the unpickler, which fails on
    # it with arbitrary exceptions or reports it as a forbidden pickle
    if head and not (head == b"PK\x03\x04" or head[:1] == b"\x80"):
        raise CharLSTMError(
            f"{path} is not a charlstm checkpoint (not a PyTorch file)",
            "use last.pt or best.pt from a charlstm run",
        )
    try:
        with warnings.catch_warnings():  # torch warns about legacy pickles; we explain below
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower() or "weights_only" in str(e).lower():
            raise CharLSTMError(
                f"refusing to load {path}: it carries pickled code or objects, not plain data",
                "only load checkpoints written by charlstm from sources you trust",
            ) from None
        raise CharLSTMError(f"{path} is not a charlstm checkpoint (unreadable pickle)") from None
    except Exception as e:  # a damaged file makes the unpickler fail in many ways
        reason = "truncated or corrupt" if path.stat().st_size else "empty"
        detail = (str(e).splitlines() or [type(e).__name__])[0][:120]  # EOFError() is blank
        raise CharLSTMError(
            f"{path} is not a readable checkpoint ({reason}: {detail})",
            "use last.pt or best.pt from a charlstm run",
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CharLSTMError(f"{path} is not a charlstm checkpoint", "it lacks the format marker")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise CharLSTMError(
            f"{path} has checkpoint format version {version!r}; this charlstm reads up to "
            f"{FORMAT_VERSION}",
            "upgrade charlstm to read it",
        )
    return upgrade(payload)


def read_model(path: str | Path) -> dict:
    """What `eval`, `sample`, `serve`, `inspect`, `info` and `export` load: a checkpoint file's
    payload, or a model folder's (`charlstm.model.folder.read_folder`), laid out alike."""
    path = Path(path)
    return read_folder(path) if is_model_folder(path) else read_checkpoint(path)


def upgrade(payload: dict) -> dict:
    """A payload of any readable format version, as the current version lays it out."""
    if payload["format_version"] == 1:
        run = {k: payload.pop(k) for k in _V1_RUN_FIELDS if k in payload}
        if "state" in payload:
            run["hidden"] = payload.pop("state")
        for stale in ("chars_seen", "schedule"):
            payload.pop(stale, None)
        if "step" in run:  # a run's checkpoint, not weights only
            payload["run"] = run
        payload["format_version"] = 2
    return payload


@dataclass
class Checkpoint:
    """A loaded model with its vocabulary and the run facts stored beside it."""

    model: CharLSTM
    vocab: Vocab
    payload: dict
    path: Path

    @property
    def config(self) -> ModelConfig:
        return self.model.config


def build_model(payload: dict, path: str | Path = "checkpoint") -> CharLSTM:
    try:
        config = ModelConfig.from_dict(payload["model_config"])
        model = CharLSTM(config)
        model.load_state_dict(payload["model"])
    except (KeyError, TypeError, ValueError, RuntimeError, CharLSTMError) as e:
        detail = " ".join(str(e).split())[:200] or type(e).__name__
        raise CharLSTMError(
            f"{path} is damaged ({detail})", "use another checkpoint, e.g. the run's last.pt"
        ) from None
    bad = [n for n, t in model.state_dict().items() if not torch.isfinite(t).all()]
    if bad:
        raise CharLSTMError(
            f"{path} has non-finite weights ({', '.join(bad[:3])}): the run it comes from diverged",
            "use an earlier checkpoint (best.pt), or retrain with a lower --lr",
        )
    return model


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Model (in eval mode, on `device`) and vocabulary from a checkpoint file or a model
    folder."""
    payload = read_model(path)
    model = build_model(payload, path).to(device).eval()
    vocab = _vocab(payload, path)
    return Checkpoint(model, vocab, payload, Path(path))


def describe(path: str | Path) -> dict:
    """What a checkpoint holds, as plain data: format, model, vocabulary, training progress,
    best validation, and the data it was trained on (no weights are built)."""
    import math

    payload = read_model(path)
    vocab = _vocab(payload, path)
    run = payload.get("run") or {}
    train_config = payload.get("train_config") or {}
    params = sum(t.numel() for k, t in payload["model"].items())
    if payload["model_config"].get("tie_weights"):
        params -= payload["model"]["head.weight"].numel()  # the same tensor as the embedding
    preview = vocab.chars[:80] if vocab.level == "char" else "(256 byte values)"
    best = run.get("best_val")
    step = run.get("step")
    chars = None
    if step is not None and train_config:
        chars = step * train_config["batch_size"] * train_config["bptt"]
    source = payload.get("source") or {"kind": "checkpoint"}
    return {
        "path": str(path),
        "kind": source["kind"],  # a checkpoint file, or a model folder
        "format_version": source.get("format_version", payload["format_version"]),
        "model": payload["model_config"],
        "parameters": params,
        "vocab": {
            "level": vocab.level,
            "size": vocab.size,
            "normalize": vocab.normalize,
            "lowercase": vocab.lowercase,
            "preview": preview,
        },
        "steps": step,
        "chars_seen": chars,
        "elapsed_s": run.get("elapsed_s"),
        "best_val": None
        if best is None
        else {"loss": best, "bpc": best / math.log(2), "perplexity": math.exp(min(best, 700))},
        "train": {
            k: train_config.get(k)
            for k in ("preset", "bptt", "batch_size", "lr", "dropout", "seed")
        },
        "data": payload.get("data"),
        "world_size": run.get("world_size", 1),
    }


def _vocab(payload: dict, path: str | Path) -> Vocab:
    try:
        return Vocab.from_json(payload["vocab"])
    except (KeyError, TypeError, ValueError, CharLSTMError) as e:
        raise CharLSTMError(
            f"{path} is damaged (its vocabulary is unreadable: {type(e).__name__})",
            "use another checkpoint, e.g. the run's last.pt",
        ) from None
