"""charlstm: character-level language modeling with multi-layer LSTMs.

The library API (every CLI command is a thin layer over one of these)::

    import charlstm
    data = charlstm.tokenize("corpora/tinyshakespeare.txt", out="data/shakespeare")
    run = charlstm.train(data.out, out="checkpoints/demo", steps=200)
    charlstm.evaluate("checkpoints/demo/best.pt")
    charlstm.generate("checkpoints/demo/best.pt", prime="ROMEO:", length=200)
    charlstm.inspect_text("checkpoints/demo/best.pt", "ROMEO: Hark, what light!").bits
    charlstm.export_web("checkpoints/demo/best.pt", out="demo-web")   # or export_onnx,
    charlstm.export_safetensors("checkpoints/demo/best.pt", out="demo-model")  # a model folder

Heavy modules (torch) load on first use, so ``import charlstm`` stays fast. The modules are
named for their job (prepare, trainer, evaluation, sampling) so that they never shadow the
functions of the same verb on the package.
"""

from __future__ import annotations

import importlib
import os

# OpenMP threads that wait at a barrier sleep instead of spinning. Read once, when torch loads
# its OpenMP runtime (which the C cell kernels share), so it is set here, before any torch
# import: with spinning, a thread whose core another program holds keeps its partners burning
# their cores at every barrier of every time step (bf16 `small` on 2 cores beside busy
# processes: 440 chars/s spinning, 3,700 passive; docs/performance.md). The user's setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from typing import TYPE_CHECKING, Any

from charlstm.errors import CharLSTMError
from charlstm.version import __version__

# public name -> module that defines it; resolved lazily by __getattr__
_LAZY = {
    "tokenize": "charlstm.data.prepare",
    "TokenizeResult": "charlstm.data.prepare",
    "Vocab": "charlstm.data.vocab",
    "ModelConfig": "charlstm.config",
    "TrainConfig": "charlstm.config",
    "CharLSTM": "charlstm.model.network",
    "train": "charlstm.training.trainer",
    "TrainResult": "charlstm.training.progress",
    "evaluate": "charlstm.evaluation.scoring",
    "EvalResult": "charlstm.evaluation.scoring",
    "DynamicSettings": "charlstm.evaluation.dynamic",
    "generate": "charlstm.generation.sampling",
    "load_checkpoint": "charlstm.model.checkpoint",
    "Checkpoint": "charlstm.model.checkpoint",
    "bundled_corpus": "charlstm.data.corpus",
    "inspect_text": "charlstm.inspection.analysis",
    "Inspection": "charlstm.inspection.analysis",
    "write_html": "charlstm.inspection.html",
    "export_onnx": "charlstm.export.formats",
    "export_web": "charlstm.export.formats",
    "export_safetensors": "charlstm.export.formats",
    "verify_onnx": "charlstm.export.formats",
    "ExportResult": "charlstm.export.formats",
}

__all__ = ["CharLSTMError", "__version__", *_LAZY]

if TYPE_CHECKING:  # pragma: no cover
    from charlstm.config import ModelConfig, TrainConfig
    from charlstm.data.corpus import bundled_corpus
    from charlstm.data.prepare import TokenizeResult, tokenize
    from charlstm.data.vocab import Vocab
    from charlstm.evaluation.dynamic import DynamicSettings
    from charlstm.evaluation.scoring import EvalResult, evaluate
    from charlstm.export.formats import (
        ExportResult,
        export_onnx,
        export_safetensors,
        export_web,
        verify_onnx,
    )
    from charlstm.generation.sampling import generate
    from charlstm.inspection.analysis import Inspection, inspect_text
    from charlstm.inspection.html import write_html
    from charlstm.model.checkpoint import Checkpoint, load_checkpoint
    from charlstm.model.network import CharLSTM
    from charlstm.training.progress import TrainResult
    from charlstm.training.trainer import train


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'charlstm' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
