"""A model folder: the weights in `model.safetensors`, the architecture in `config.json` and the
vocabulary in `tokenizer.json`, the layout the Hugging Face tools and plain PyTorch read.
`charlstm export --format safetensors` writes one (`folder_files`); every command that takes a
checkpoint takes one too (`charlstm.model.checkpoint.read_model`). Reading one runs no pickle:
safetensors is a JSON header and raw little-endian tensors, the rest is JSON.

config.json:

    format, format_version     "charlstm-model", 1 (a newer version is refused: upgrade charlstm)
    charlstm_version           the charlstm that wrote it
    architectures, model_type  ["CharLSTM"], "charlstm"
    vocab_size, embed_size, hidden_size, num_layers, dropout, tie_weights, weight_drop,
    locked_dropout             `ModelConfig`'s fields, flat (the state dict's names are
                               nn.Embedding `embedding`, nn.LSTM `lstm`, nn.Linear `head`)
    torch_dtype                "float32"
    training                   the run it came from: step, best_val_loss, elapsed_s, train_config
    data                       what it was trained on: name, folder, sha256, chars

Both names of tied weights (`embedding.weight`, `head.weight`) are stored, so a plain
`load_state_dict` needs nothing from charlstm.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from charlstm.atomic import METADATA_MAX_BYTES, read_json, read_regular
from charlstm.config import ModelConfig
from charlstm.data.vocab import Vocab
from charlstm.errors import CharLSTMError
from charlstm.model.network import CharLSTM
from charlstm.version import __version__

FOLDER_FORMAT = "charlstm-model"
FOLDER_FORMAT_VERSION = 1
WEIGHTS, CONFIG, TOKENIZER = "model.safetensors", "config.json", "tokenizer.json"
FOLDER_FILES = (WEIGHTS, CONFIG, TOKENIZER)
EXPORT_AGAIN = "export it again: charlstm export CHECKPOINT --format safetensors --out DIR"


def _safetensors_torch():
    try:
        import safetensors.torch
    except ImportError:
        raise CharLSTMError(
            "a model folder (model.safetensors) needs the safetensors package, which is not "
            "installed",
            "pip install 'charlstm[safetensors]'",
        ) from None
    return safetensors.torch


def is_model_folder(path: Path) -> bool:
    """A folder that is (or was meant to be) a model folder: it holds model.safetensors, or a
    config.json that says so. (A run folder's config.json does not.)"""
    if not path.is_dir():
        return False
    if (path / WEIGHTS).exists():
        return True
    try:
        config = read_json(path / CONFIG)
    except (OSError, CharLSTMError):
        return False
    return isinstance(config, dict) and config.get("format") == FOLDER_FORMAT


def folder_files(model: CharLSTM, vocab: Vocab, payload: dict) -> dict[str, bytes]:
    """The model folder's three files (name -> bytes) for a model, its vocabulary and the
    checkpoint payload it came from (for the run facts in config.json)."""
    st = _safetensors_torch()
    run = payload.get("run") or {}
    config = {
        "format": FOLDER_FORMAT,
        "format_version": FOLDER_FORMAT_VERSION,
        "charlstm_version": __version__,
        "architectures": ["CharLSTM"],
        "model_type": "charlstm",
        **model.config.to_dict(),
        "torch_dtype": "float32",
        "training": {
            "step": run.get("step"),
            "best_val_loss": run.get("best_val"),
            "elapsed_s": run.get("elapsed_s"),
            "train_config": payload.get("train_config"),
        },
        "data": payload.get("data"),
    }
    # separate contiguous fp32 copies: safetensors refuses tensors that share memory (tied)
    tensors = {
        name: t.detach().to("cpu", torch.float32).contiguous().clone()
        for name, t in model.state_dict().items()
    }
    metadata = {"format": "pt", "producer": f"charlstm {__version__}"}
    return {
        WEIGHTS: st.save(tensors, metadata=metadata),
        CONFIG: (json.dumps(config, indent=2, ensure_ascii=False) + "\n").encode("utf-8"),
        TOKENIZER: vocab.to_json().encode("utf-8"),
    }


def read_folder(path: str | Path) -> dict:
    """A model folder as a checkpoint payload (`model_config`, `model`, `vocab`, `run`, `data`,
    `train_config`), every file checked against the others first, with one clear error for
    each way it can be wrong."""
    path = Path(path)
    missing = [name for name in FOLDER_FILES if not (path / name).is_file()]
    if missing:
        raise CharLSTMError(
            f"{path} is not a complete model folder: {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} missing",
            EXPORT_AGAIN,
        )
    config = _read_config(path)
    try:
        model_config = ModelConfig.from_dict(config)
    except (TypeError, CharLSTMError) as e:
        raise CharLSTMError(f"{path / CONFIG} is damaged ({e})", EXPORT_AGAIN) from None
    tokenizer = _read_text(path / TOKENIZER)
    try:
        vocab = Vocab.from_json(tokenizer)
    except CharLSTMError as e:
        raise CharLSTMError(f"{path / TOKENIZER} is damaged ({e.message})", EXPORT_AGAIN) from None
    if vocab.size != model_config.vocab_size:
        raise CharLSTMError(
            f"{path / TOKENIZER} has {vocab.size} symbols but {CONFIG} says vocab_size "
            f"{model_config.vocab_size}: the files come from different models",
            EXPORT_AGAIN,
        )
    tensors = _read_weights(path / WEIGHTS)
    _check_weights(path, tensors, model_config)
    training = config.get("training") if isinstance(config.get("training"), dict) else {}
    return {
        "format_version": 2,  # laid out as a version-2 checkpoint's payload
        "model_config": model_config.to_dict(),
        "model": tensors,
        "vocab": tokenizer,
        "train_config": training.get("train_config"),
        "data": config.get("data"),
        "run": {
            "step": training.get("step"),
            "best_val": training.get("best_val_loss"),
            "elapsed_s": training.get("elapsed_s"),
        },
        "source": {
            "kind": "model folder",
            "format_version": config["format_version"],
            "charlstm_version": config.get("charlstm_version"),
        },  # fmt: skip
    }


def _read_text(path: Path) -> str:
    try:
        return read_regular(path, METADATA_MAX_BYTES, EXPORT_AGAIN).decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or "not UTF-8 text"
        raise CharLSTMError(f"cannot read {path}: {reason}", EXPORT_AGAIN) from None


def _read_config(path: Path) -> dict:
    """config.json, checked to be a charlstm model folder's of a format this charlstm reads."""
    file = path / CONFIG
    try:
        config = json.loads(_read_text(file))
    except ValueError as e:
        raise CharLSTMError(f"{file} is not valid JSON ({e})", EXPORT_AGAIN) from None
    if not isinstance(config, dict) or config.get("format") != FOLDER_FORMAT:
        raise CharLSTMError(
            f'{file} is not a charlstm model\'s config.json (no "format": "{FOLDER_FORMAT}")',
            "pass a folder written by charlstm export --format safetensors",
        )
    version = config.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CharLSTMError(f"{file} has no valid format_version ({version!r})", EXPORT_AGAIN)
    if version > FOLDER_FORMAT_VERSION:
        raise CharLSTMError(
            f"{path} was written by charlstm {config.get('charlstm_version', '(unknown)')} in "
            f"model folder format {version}; this charlstm ({__version__}) reads format "
            f"{FOLDER_FORMAT_VERSION}",
            "upgrade charlstm to read it (pip install -U charlstm)",
        )
    return config


def _read_weights(file: Path) -> dict[str, torch.Tensor]:
    st = _safetensors_torch()
    try:
        return st.load_file(str(file))
    except Exception as e:  # safetensors raises its own error type, and OSError
        detail = (str(e).splitlines() or [type(e).__name__])[0][:160]
        raise CharLSTMError(
            f"{file} is not a readable safetensors file ({detail})", EXPORT_AGAIN
        ) from None


def _check_weights(path: Path, tensors: dict[str, torch.Tensor], config: ModelConfig) -> None:
    """The tensors are the ones config.json's architecture has, with its shapes."""
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        expected = {k: tuple(v.shape) for k, v in CharLSTM(config).state_dict().items()}
    problems = [f"{name} is missing" for name in expected if name not in tensors]
    problems += [f"{name} is not in the model" for name in tensors if name not in expected]
    problems += [  # in the model's order: the first layer that differs comes first
        f"{name} is {list(tensors[name].shape)}, config.json needs {list(shape)}"
        for name, shape in expected.items()
        if name in tensors and tuple(tensors[name].shape) != shape
    ]
    problems += [
        f"{name} is {t.dtype}, not floating point"
        for name, t in tensors.items()
        if not t.is_floating_point()
    ]
    if problems:
        more = f" (and {len(problems) - 2} more)" if len(problems) > 2 else ""
        raise CharLSTMError(
            f"{path / WEIGHTS} does not match {path / CONFIG}: {'; '.join(problems[:2])}{more}",
            EXPORT_AGAIN,
        )
