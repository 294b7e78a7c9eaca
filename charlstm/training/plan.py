"""What a run will be, decided before anything is written: its configuration (a new run's from
the preset and options; a resumed run's from its checkpoint, with only the options that may
change on resume applied) and its data (as given, or the folder the run recorded, checked by
sha256 and vocabulary)."""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import torch

from charlstm.atomic import fit_name
from charlstm.config import (
    AUTO_PRESET,
    CPU_DEFAULT_PRESET,
    GPU_DEFAULT_PRESET,
    TrainConfig,
    cuda_requested,
    flag,
)
from charlstm.data.dataset import Dataset, load_dataset, resolve_dataset
from charlstm.errors import CharLSTMError, OptionError
from charlstm.runtime import resolve_device
from charlstm.training import distributed
from charlstm.training.rundir import LAST, RunDir

LENGTHS = ("steps", "epochs", "time_budget_min")


def given_options(config: TrainConfig | None, preset: str | None, overrides: dict) -> dict:
    """The options the caller set explicitly (None means "not given")."""
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise TypeError(f"unknown training option(s): {', '.join(sorted(unknown))}")
    given = config.to_dict() if config is not None else {}
    given.update({k: v for k, v in overrides.items() if v is not None})
    if preset is not None:
        given["preset"] = preset
    return given


def resume_config(payload: dict, given: dict[str, Any]) -> TrainConfig:
    """The checkpoint's configuration with the options that may change on resume applied.

    Any other option given must equal the checkpoint's value. A length given anew replaces
    the run's length: `steps`/`epochs` are totals, `time_budget_min` is minutes more.
    """
    if "run" not in payload:
        raise CharLSTMError(
            "this checkpoint holds weights only, not a run's state: it cannot be resumed",
            "resume from the last.pt of a charlstm train run",
        )
    saved = TrainConfig.from_dict(payload["train_config"])
    resumable = TrainConfig.resumable()
    changed = sorted(k for k, v in given.items() if k not in resumable and getattr(saved, k) != v)
    if changed:
        values = ", ".join(f"{flag(k)} {getattr(saved, k)}" for k in changed)
        raise OptionError(
            f"cannot change {', '.join(flag(k) for k in changed)} when resuming (this run has "
            f"{values})",
            "leave them out: a resumed run keeps its data, model and training options; start "
            "a new run (--force, or another --out) to change them",
        )
    keep = {k: v for k, v in given.items() if k in resumable}
    if set(LENGTHS) & set(keep):
        keep = {**dict.fromkeys(LENGTHS), **keep}
    if keep.get("time_budget_min") is not None:
        keep["time_budget_min"] += payload["run"]["elapsed_s"] / 60
    return replace(saved, **keep)


def run_dataset(data, payload: dict | None, allow_data_change: bool) -> Dataset:
    """The data to train on: as given, or (resuming with no DATA) the run's recorded folder;
    a resumed run's data must be the same text (sha256) and vocabulary."""
    if payload is None:
        return resolve_dataset(data)
    recorded = payload.get("data") or {}
    if data is None:
        folder = recorded.get("folder")
        if not folder or not (Path(folder) / "meta.json").is_file():
            raise CharLSTMError(
                f"the data this run was trained on is no longer at {folder}",
                "pass DATA (the tokenized folder or the text) to continue on it",
            )
        dataset = load_dataset(folder, recorded.get("name"))
    else:
        dataset = resolve_dataset(data)
    if dataset.sha256 != recorded.get("sha256") and not allow_data_change:
        raise CharLSTMError(
            f"the data differs from the data this run was trained on "
            f"({recorded.get('name')}, sha256 {str(recorded.get('sha256'))[:12]}...)",
            "pass the same data, or --allow-data-change to continue on this data",
        )
    if dataset.vocab.to_json() != payload["vocab"]:
        raise CharLSTMError(
            "the data's vocabulary differs from the checkpoint's",
            "resume with the data the run was trained on",
        )
    return dataset


def on_rank0_first(dist: distributed.Dist, make):
    """Rank 0 first (it may tokenize a raw corpus into the cache), then the others."""
    value = make() if dist.is_main else None
    dist.barrier()
    return value if value is not None else make()


#: the options that fix a model's shape: a run given one of them is not sized by measuring
SHAPE_FIELDS = ("num_layers", "hidden_size")


def default_preset(given: dict) -> str:
    """The preset of a new run that names none. On a CPU with a time budget and no shape
    given, `auto`: it beat `small` at 10 minutes by 0.020-0.022 nats/char at two seeds, more
    than the seed noise (bench/RESULTS.md, "Does auto beat small at 10 minutes at a second
    seed"). Otherwise the device's fixed default, `small` on a CPU, `medium` on a GPU (auto is
    not measured on GPUs yet)."""
    device = given.get("device") or "auto"
    on_cpu = device == "cpu" or (device == "auto" and resolve_device("auto").type == "cpu")
    sized = given.get("time_budget_min") is not None and not any(
        given.get(k) is not None for k in SHAPE_FIELDS
    )
    if on_cpu and sized:
        return AUTO_PRESET
    return GPU_DEFAULT_PRESET if cuda_requested(device) else CPU_DEFAULT_PRESET


def default_out(name: str, preset: str) -> Path:
    return Path("checkpoints") / fit_name(name, f"-{preset}")


def resume_out(name: str, given: dict) -> Path:
    """The run folder `--resume` continues when no --out is given: the named preset's, or
    whichever of the default presets' folders for this data holds a run (`auto` or the
    device's fixed default); when both do, the user says which."""
    if given.get("preset") is not None:
        return default_out(name, given["preset"])
    cuda = cuda_requested(given.get("device") or "auto")
    fixed = GPU_DEFAULT_PRESET if cuda else CPU_DEFAULT_PRESET
    folders = [default_out(name, p) for p in (AUTO_PRESET, fixed)]
    found = [f for f in folders if RunDir(f).file(LAST).exists()]
    if len(found) > 1:
        raise OptionError(
            f"both {found[0]} and {found[1]} hold a run of {name}: which to resume is unclear",
            "pass the run's folder with --out",
        )
    if not found:
        raise CharLSTMError(
            f"nothing to resume: neither {folders[0]} nor {folders[1]} holds a run",
            "start a new run without --resume, or pass the run's folder with --out",
        )
    return found[0]


def rank_device(config: TrainConfig, d: distributed.Dist) -> str:
    """One GPU per rank (LOCAL_RANK) under torchrun; CPUs share the machine."""
    if config.device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{d.local_rank}"
    return "cpu" if config.device == "auto" else config.device
