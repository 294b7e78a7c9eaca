"""charlstm: character-level language modeling with multi-layer LSTMs.

The library API (every CLI command is a thin layer over one of these)::

    import charlstm
    data = charlstm.tokenize("corpora/tinyshakespeare.txt", out="data/shakespeare")
    run = charlstm.train(data.out, out="checkpoints/demo", steps=200)
    charlstm.evaluate("checkpoints/demo/best.pt")
    charlstm.generate("checkpoints/demo/best.pt", prime="ROMEO:", length=200)
    charlstm.inspect_text("checkpoints/demo/best.pt", "ROMEO: \"Hark!\"").bits
    charlstm.export_web("checkpoints/demo/best.pt", out="demo-web")   # or export_onnx

Heavy modules (torch) load on first use, so ``import charlstm`` stays fast. The modules are
named for their job (prepare, trainer, evaluation, sampling) so that they never shadow the
functions of the same verb on the package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from charlstm.errors import CharLSTMError

__version__ = "0.1.0"

# public name -> module that defines it; resolved lazily by __getattr__
_LAZY = {
    "tokenize": "charlstm.prepare",
    "TokenizeResult": "charlstm.prepare",
    "Vocab": "charlstm.vocab",
    "ModelConfig": "charlstm.config",
    "TrainConfig": "charlstm.config",
    "CharLSTM": "charlstm.model",
    "train": "charlstm.trainer",
    "TrainResult": "charlstm.progress",
    "evaluate": "charlstm.evaluation",
    "EvalResult": "charlstm.evaluation",
    "DynamicSettings": "charlstm.dynamic",
    "generate": "charlstm.sampling",
    "load_checkpoint": "charlstm.checkpoint",
    "Checkpoint": "charlstm.checkpoint",
    "bundled_corpus": "charlstm.corpus",
    "inspect_text": "charlstm.inspection",
    "Inspection": "charlstm.inspection",
    "write_html": "charlstm.inspection_html",
    "export_onnx": "charlstm.export",
    "export_web": "charlstm.export",
    "verify_onnx": "charlstm.export",
    "ExportResult": "charlstm.export",
}

__all__ = ["CharLSTMError", "__version__", *_LAZY]

if TYPE_CHECKING:  # pragma: no cover
    from charlstm.checkpoint import Checkpoint, load_checkpoint
    from charlstm.config import ModelConfig, TrainConfig
    from charlstm.corpus import bundled_corpus
    from charlstm.dynamic import DynamicSettings
    from charlstm.evaluation import EvalResult, evaluate
    from charlstm.export import ExportResult, export_onnx, export_web, verify_onnx
    from charlstm.inspection import Inspection, inspect_text
    from charlstm.inspection_html import write_html
    from charlstm.model import CharLSTM
    from charlstm.prepare import TokenizeResult, tokenize
    from charlstm.progress import TrainResult
    from charlstm.sampling import generate
    from charlstm.trainer import train
    from charlstm.vocab import Vocab


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'charlstm' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
