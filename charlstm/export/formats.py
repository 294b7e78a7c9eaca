"""`export_onnx` / `export_web` / `export_safetensors`: a checkpoint as ONNX graphs, as a static
page that samples in the browser with no server and no network, or as a model folder
(model.safetensors, config.json, tokenizer.json: `charlstm.model.folder`) that every charlstm
command, and plain PyTorch with safetensors, loads.

ONNX (``--format onnx``): two graphs over one shared weights file,

    prime.onnx   tokens[T, B] int64, h[L, B, H], c[L, B, H] -> logits[T, B, V], h_out, c_out
    step.onnx    token[B] int64,     h[L, B, H], c[L, B, H] -> logits[B, V],    h_out, c_out

(T and B dynamic), plus ``weights.bin`` (the tensors, ONNX external data that both graphs
point into), ``tokenizer.json`` and ``model.json`` (shapes, vocabulary level, the id that
starts a prime-less sample). The graphs are built node by node with ``onnx.helper`` from the
checkpoint's tensors: an ONNX ``LSTM`` op per layer (PyTorch's gate order i, f, g, o becomes
ONNX's i, o, f, c). We do not go through ``torch.onnx.export``: in torch 2.13 its default
(dynamo) exporter needs ``onnxscript`` and bakes the example length T into a Reshape after the
LSTM (the prime graph then fails on any other length), and the TorchScript exporter
(``dynamo=False``) is deprecated. Building the graph directly needs only ``onnx``, works with
any torch, and every export is checked before it is moved into place: the ONNX checker, then
(with onnxruntime installed) `verify_onnx` against PyTorch over a prime and 1,000 steps.

Web (``--format web``): ``index.html`` (the page, with the model's shapes and vocabulary
inline), ``charlstm.js`` (the LSTM step, sampling and streaming in plain JavaScript over
typed arrays), ``weights.safetensors`` (the state dict, fp32, in the safetensors layout),
``weights.js`` (the same bytes as base64) and ``tokenizer.json``. Browsers refuse fetch()/XHR
of file:// URLs, but a <script> tag loads from disk: served over http(s) the page fetches the
binary, opened from disk it loads ``weights.js`` instead.
"""

from __future__ import annotations

import base64
import json
import os
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from charlstm.errors import CharLSTMError
from charlstm.version import __version__

FORMATS = ("onnx", "web", "safetensors")
EXPORT_FORMAT = "charlstm-export"
EXPORT_FORMAT_VERSION = 1
ONNX_OPSET = 17  # ONNX 1.12 (2022): old enough for any maintained runtime
ONNX_IR_VERSION = 8  # the IR that opset 17 shipped with (newer onnx would stamp a newer one)
WEB_ASSETS = Path(__file__).parent / "web"


@dataclass(frozen=True)
class OnnxCheck:
    """onnxruntime against PyTorch on the same tokens: the largest |logit difference|."""

    max_abs_diff: float
    max_abs_logit: float
    prime_len: int
    steps: int
    batch_size: int
    greedy_agree: bool  # onnxruntime's argmax equals PyTorch's at every position

    @property
    def ok(self) -> bool:
        """Within float32 rounding of PyTorch: 1e-4 of the largest logit (at least 1e-4)."""
        return self.max_abs_diff <= 1e-4 * max(1.0, self.max_abs_logit)


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote: the folder, its files and their sizes in bytes, and (ONNX) how
    closely onnxruntime reproduced PyTorch (None when onnxruntime is not installed)."""

    out: Path
    format: str
    files: dict[str, int]
    meta: dict = field(repr=False)
    check: OnnxCheck | None = None

    @property
    def total_bytes(self) -> int:
        return sum(self.files.values())

    def to_dict(self) -> dict:
        return {
            "out": str(self.out),
            "format": self.format,
            "files": self.files,
            "total_bytes": self.total_bytes,
            "check": None if self.check is None else asdict(self.check),
        }


# -- shared: loading, the output folder ---------------------------------------------------------


def _load(checkpoint):
    from charlstm.model.checkpoint import Checkpoint, load_checkpoint

    return checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)


def default_out(checkpoint, fmt: str) -> Path:
    """`<run folder>/export-<format>`: beside the checkpoint it came from."""
    path = checkpoint.path if hasattr(checkpoint, "path") else Path(checkpoint)
    return Path(path).parent / f"export-{fmt}"


def _is_export(folder: Path) -> bool:
    from charlstm.model.folder import is_model_folder

    if is_model_folder(folder):
        return True
    try:
        meta = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == EXPORT_FORMAT


def check_out(out: Path, force: bool, checkpoint_path: Path | None = None) -> None:
    """Refuse an output that would lose something: a file, a non-empty folder (unless --force,
    and even then only an earlier export), a folder holding the checkpoint itself."""
    if out.exists() and not out.is_dir():
        raise CharLSTMError(f"output {out} exists and is not a folder", "choose another --out")
    if checkpoint_path is not None:
        ckpt = checkpoint_path.resolve()
        if out.resolve() == ckpt or out.resolve() in ckpt.parents:
            raise CharLSTMError(
                f"--out {out} holds the checkpoint {checkpoint_path}",
                "export into a folder of its own (the default is export-<format> beside the "
                "checkpoint)",
            )
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise CharLSTMError(
                f"output folder {out} already exists and is not empty",
                "pass --force to replace it, or another --out",
            )
        if not _is_export(out):
            raise CharLSTMError(
                f"output folder {out} is not an earlier charlstm export; --force only replaces "
                "one of those",
                "choose another --out",
            )


def _write_folder(
    out: Path, force: bool, files: dict[str, bytes], ckpt_path: Path, check=None
) -> dict[str, int]:
    """Write `files` into a temporary folder beside `out`, run `check(folder)` on it, then
    rename it into place: the export appears whole or not at all, and an old one is removed
    only once the new one is in."""
    from charlstm.atomic import atomic_folder

    check_out(out, force, ckpt_path)
    with atomic_folder(out) as tmp:
        for name, data in files.items():
            with open(tmp / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        if check is not None:
            check(tmp)
    return {name: len(data) for name, data in files.items()}


def _start_id(vocab) -> int:
    """The id `charlstm sample` feeds as context when there is no prime (a newline, else 0)."""
    from charlstm.generation.sampling import _start_ids

    return int(_start_ids(vocab, None)[0][0])


def _meta(ckpt, fmt: str, files: dict) -> dict:
    cfg, vocab = ckpt.config, ckpt.vocab
    return {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_FORMAT_VERSION,
        "kind": fmt,
        "charlstm_version": __version__,
        "name": Path(ckpt.path).resolve().parent.name,
        "checkpoint": Path(ckpt.path).name,
        "step": ckpt.payload.get("step"),
        "best_val_loss": ckpt.payload.get("best_val"),
        "vocab_size": cfg.vocab_size,
        "embed_size": cfg.embed_size,
        "hidden_size": cfg.hidden_size,
        "num_layers": cfg.num_layers,
        "tie_weights": cfg.tie_weights,
        "level": vocab.level,
        "normalize": vocab.normalize,
        "lowercase": vocab.lowercase,
        "start_id": _start_id(vocab),
        **files,
    }


def _state_arrays(model) -> dict[str, np.ndarray]:
    """The model's state dict as contiguous little-endian float32 numpy arrays."""
    return {
        name: np.ascontiguousarray(t.detach().cpu().float().numpy(), dtype="<f4")
        for name, t in model.state_dict().items()
    }


# -- ONNX -----------------------------------------------------------------------------------------


def _require_onnx():
    try:
        import onnx
    except ImportError:
        raise CharLSTMError(
            "--format onnx needs the onnx package", "pip install 'charlstm[export]'"
        ) from None
    return onnx


def _onnx_weights(model) -> dict[str, np.ndarray]:
    """The initializers both graphs share, in ONNX's layouts."""
    cfg = model.config
    sd = _state_arrays(model)

    def onnx_gates(w: np.ndarray) -> np.ndarray:  # PyTorch rows i, f, g, o -> ONNX i, o, f, c
        i, f, g, o = np.split(w, 4, axis=0)
        return np.concatenate([i, o, f, g], axis=0)

    weights = {"embedding": sd["embedding.weight"]}
    for k in range(cfg.num_layers):
        weights[f"lstm{k}.W"] = onnx_gates(sd[f"lstm.weight_ih_l{k}"])[None]
        weights[f"lstm{k}.R"] = onnx_gates(sd[f"lstm.weight_hh_l{k}"])[None]
        bias = [onnx_gates(sd[f"lstm.bias_ih_l{k}"]), onnx_gates(sd[f"lstm.bias_hh_l{k}"])]
        weights[f"lstm{k}.B"] = np.concatenate(bias)[None]
    weights["head.weight_t"] = np.ascontiguousarray(sd["head.weight"].T)
    weights["head.bias"] = sd["head.bias"]
    return weights


def _onnx_graph(onnx, cfg, weights: dict[str, np.ndarray], one_step: bool, offsets: dict):
    """The prime graph (tokens[T, B]) or the one-step graph (token[B]) over shared weights."""
    from onnx import TensorProto, helper

    L, H, V = cfg.num_layers, cfg.hidden_size, cfg.vocab_size
    nodes = []
    inits = []
    for name, arr in weights.items():
        t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=arr.shape)
        offset, length = offsets[name]
        t.data_location = TensorProto.EXTERNAL
        for key, value in (("location", "weights.bin"), ("offset", offset), ("length", length)):
            entry = t.external_data.add()
            entry.key, entry.value = key, str(value)
        inits.append(t)
    if one_step:
        inits.append(helper.make_tensor("axis0", TensorProto.INT64, [1], [0]))
    inits.append(helper.make_tensor("axis1", TensorProto.INT64, [1], [1]))
    inits.append(helper.make_tensor("layer_split", TensorProto.INT64, [L], [1] * L))

    tok_name = "token" if one_step else "tokens"
    tok_shape = ["batch"] if one_step else ["time", "batch"]
    state_shape = [L, "batch", H]
    inputs = [
        helper.make_tensor_value_info(tok_name, TensorProto.INT64, tok_shape),
        helper.make_tensor_value_info("h", TensorProto.FLOAT, state_shape),
        helper.make_tensor_value_info("c", TensorProto.FLOAT, state_shape),
    ]
    logits_shape = ["batch", V] if one_step else ["time", "batch", V]
    outputs = [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, logits_shape),
        helper.make_tensor_value_info("h_out", TensorProto.FLOAT, state_shape),
        helper.make_tensor_value_info("c_out", TensorProto.FLOAT, state_shape),
    ]
    nodes.append(helper.make_node("Gather", ["embedding", tok_name], ["x_embed"]))
    x = "x_embed"
    if one_step:  # [B, E] -> [1, B, E]: a sequence of length one
        nodes.append(helper.make_node("Unsqueeze", [x, "axis0"], ["x_seq"]))
        x = "x_seq"
    h_parts = [f"h_in{k}" for k in range(L)]
    c_parts = [f"c_in{k}" for k in range(L)]
    nodes.append(helper.make_node("Split", ["h", "layer_split"], h_parts, axis=0))
    nodes.append(helper.make_node("Split", ["c", "layer_split"], c_parts, axis=0))
    for k in range(L):
        nodes.append(
            helper.make_node(
                "LSTM",
                [x, f"lstm{k}.W", f"lstm{k}.R", f"lstm{k}.B", "", h_parts[k], c_parts[k]],
                [f"y{k}", f"h_out{k}", f"c_out{k}"],
                hidden_size=H,
                name=f"lstm{k}",
            )
        )
        # Y is [T, num_directions=1, B, H]
        nodes.append(helper.make_node("Squeeze", [f"y{k}", "axis1"], [f"x{k + 1}"]))
        x = f"x{k + 1}"
    nodes.append(helper.make_node("Concat", [f"h_out{k}" for k in range(L)], ["h_out"], axis=0))
    nodes.append(helper.make_node("Concat", [f"c_out{k}" for k in range(L)], ["c_out"], axis=0))
    if one_step:
        nodes.append(helper.make_node("Squeeze", [x, "axis0"], ["x_last"]))
        x = "x_last"
    nodes.append(helper.make_node("MatMul", [x, "head.weight_t"], ["head_mm"]))
    nodes.append(helper.make_node("Add", ["head_mm", "head.bias"], ["logits"]))
    what = "one step" if one_step else "a prime sequence"
    graph = helper.make_graph(nodes, f"charlstm_{'step' if one_step else 'prime'}", inputs,
                              outputs, initializer=inits,
                              doc_string=f"CharLSTM over {what}")  # fmt: skip
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
        producer_name="charlstm",
        producer_version=__version__,
        ir_version=ONNX_IR_VERSION,
    )
    return model


def onnx_files(ckpt) -> tuple[dict[str, bytes], dict]:
    """The ONNX export's files (name -> bytes) and its model.json content."""
    onnx = _require_onnx()
    weights = _onnx_weights(ckpt.model)
    blob = bytearray()
    offsets = {}
    for name, arr in weights.items():
        blob += b"\0" * (-len(blob) % 64)  # 64-byte aligned: runtimes may map tensors in place
        offsets[name] = (len(blob), arr.nbytes)
        blob += arr.tobytes()
    files: dict[str, bytes] = {}
    cfg = ckpt.config
    for name, one_step in (("prime.onnx", False), ("step.onnx", True)):
        files[name] = _onnx_graph(onnx, cfg, weights, one_step, offsets).SerializeToString()
    files["weights.bin"] = bytes(blob)
    files["tokenizer.json"] = ckpt.vocab.to_json().encode("utf-8")
    L, H, V = cfg.num_layers, cfg.hidden_size, cfg.vocab_size
    meta = _meta(
        ckpt,
        "onnx",
        {
            "opset": ONNX_OPSET,
            "graphs": {
                "prime": {
                    "file": "prime.onnx",
                    "inputs": {
                        "tokens": ["time", "batch"],
                        "h": [L, "batch", H],
                        "c": [L, "batch", H],
                    },
                    "outputs": {
                        "logits": ["time", "batch", V],
                        "h_out": [L, "batch", H],
                        "c_out": [L, "batch", H],
                    },
                },
                "step": {
                    "file": "step.onnx",
                    "inputs": {"token": ["batch"], "h": [L, "batch", H], "c": [L, "batch", H]},
                    "outputs": {
                        "logits": ["batch", V],
                        "h_out": [L, "batch", H],
                        "c_out": [L, "batch", H],
                    },
                },
            },  # fmt: skip
            "dtypes": {"tokens": "int64", "state": "float32", "logits": "float32"},
        },
    )
    files["model.json"] = (json.dumps(meta, indent=2, ensure_ascii=False) + "\n").encode()
    return files, meta


def onnxruntime_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def export_onnx(
    checkpoint, out=None, *, force: bool = False, verify: bool = True, verify_steps: int = 1000
) -> ExportResult:
    """Write `prime.onnx`, `step.onnx`, `weights.bin`, `tokenizer.json` and `model.json` to
    `out` (default: `export-onnx` beside the checkpoint).

    The graphs pass the ONNX checker and, with `verify` and onnxruntime installed, reproduce
    PyTorch's logits over a prime and `verify_steps` steps (`verify_onnx`) before the folder
    is moved into place: it appears whole and checked, or not at all. A non-empty `out` is
    replaced only with `force`, and only if it is an earlier export.
    """
    _require_onnx()
    ckpt = _load(checkpoint)
    out = Path(out) if out is not None else default_out(ckpt.path, "onnx")
    check_out(out, force, Path(ckpt.path))
    files, meta = onnx_files(ckpt)
    checks: list[OnnxCheck] = []

    def check(folder: Path) -> None:
        _check_onnx(folder)
        if verify and onnxruntime_available():
            result = verify_onnx(folder, ckpt, steps=verify_steps)
            if not result.ok:
                raise CharLSTMError(
                    f"onnxruntime's logits differ from PyTorch's by up to "
                    f"{result.max_abs_diff:.3g} (largest logit {result.max_abs_logit:.3g}); "
                    "the export was not written",
                    "please report it with `charlstm info` of the checkpoint",
                )
            checks.append(result)

    sizes = _write_folder(out, force, files, Path(ckpt.path), check=check)
    return ExportResult(out, "onnx", sizes, meta, checks[0] if checks else None)


def _check_onnx(folder: Path) -> None:
    """The ONNX checker on both graphs, with their external weights in place."""
    onnx = _require_onnx()
    for name in ("prime.onnx", "step.onnx"):
        onnx.checker.check_model(str(folder / name), full_check=True)


def verify_onnx(
    out, checkpoint, *, steps: int = 1000, prime_len: int = 64, batch_size: int = 2, seed: int = 0
) -> OnnxCheck:
    """Run an ONNX export with onnxruntime beside the PyTorch model it came from, on the same
    tokens: a random prime of `prime_len` ids through prime.onnx and `CharLSTM.forward`, then
    `steps` sampled characters through step.onnx and `FastLSTMStep` (the path `charlstm
    sample` takes), with the state carried separately by each. Returns the largest |logit
    difference| seen."""
    import torch

    from charlstm.generation.sampling import FastLSTMStep

    try:
        import onnxruntime as ort
    except ImportError:
        raise CharLSTMError(
            "verifying an ONNX export needs onnxruntime", "pip install 'charlstm[export]'"
        ) from None
    ckpt = _load(checkpoint)
    out = Path(out)
    model = ckpt.model.eval()
    cfg = model.config
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # a step is tiny: a thread pool would only spin
    try:
        prime_sess = ort.InferenceSession(str(out / "prime.onnx"), options)
        step_sess = ort.InferenceSession(str(out / "step.onnx"), options)
    except Exception as e:  # onnxruntime raises its own exception types
        raise CharLSTMError(f"onnxruntime cannot load {out}: {str(e).splitlines()[0]}") from None
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, cfg.vocab_size, size=(prime_len, batch_size), dtype=np.int64)
    zeros = np.zeros((cfg.num_layers, batch_size, cfg.hidden_size), np.float32)
    worst = top = 0.0
    agree = True

    def compare(ours: np.ndarray, theirs: torch.Tensor) -> None:
        nonlocal worst, top, agree
        ref = theirs.float().numpy()
        worst = max(worst, float(np.abs(ours - ref).max()))
        top = max(top, float(np.abs(ref).max()))
        agree = agree and bool((ours.argmax(-1) == ref.argmax(-1)).all())

    with torch.no_grad():
        logits_o, h, c = prime_sess.run(None, {"tokens": tokens, "h": zeros, "c": zeros})
        logits_t, state = model(torch.from_numpy(tokens))
        compare(logits_o, logits_t)
        step = FastLSTMStep(model, batch_size)
        step.load_state(state)
        last_t = logits_t[-1]
        for _ in range(steps):
            probs = torch.softmax(last_t.double(), -1).numpy()
            token = np.array([rng.choice(cfg.vocab_size, p=p / p.sum()) for p in probs])
            logits_o, h, c = step_sess.run(None, {"token": token, "h": h, "c": c})
            last_t = step(torch.from_numpy(token)).clone()
            compare(logits_o, last_t)
    return OnnxCheck(worst, top, prime_len, steps, batch_size, agree)


# -- web ------------------------------------------------------------------------------------------


def safetensors_bytes(arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    """float32 arrays in the safetensors layout: an 8-byte header length, a JSON header (padded
    with spaces so the data starts 8-byte aligned), then the raw little-endian tensors."""
    header: dict = {"__metadata__": metadata}
    offset = 0
    for name, arr in arrays.items():
        header[name] = {"dtype": "F32", "shape": list(arr.shape),
                        "data_offsets": [offset, offset + arr.nbytes]}  # fmt: skip
        offset += arr.nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-(8 + len(text)) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(a.tobytes() for a in arrays.values())


def _vocab_for_js(vocab) -> list[int] | None:
    """Char level: the code point of each id; byte level: None (id = byte value)."""
    if vocab.level == "byte":
        return None
    return [ord(ch) for ch in vocab.chars]


def _inline_json(data) -> str:
    """JSON safe inside a <script> element (no '</' that would close it)."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")


def web_files(ckpt) -> tuple[dict[str, bytes], dict]:
    """The web export's files (name -> bytes) and its model.json content."""
    import html

    arrays = _state_arrays(ckpt.model)
    weights = safetensors_bytes(arrays, {"format": "pt", "producer": f"charlstm {__version__}"})
    meta = _meta(
        ckpt,
        "web",
        {
            "weights": "weights.safetensors",
            "weights_js": "weights.js",
            "tensors": {name: list(a.shape) for name, a in arrays.items()},
        },  # fmt: skip
    )
    page_model = {**meta, "codepoints": _vocab_for_js(ckpt.vocab)}
    template = (WEB_ASSETS / "index.html").read_text(encoding="utf-8")
    page = template.replace("{{TITLE}}", html.escape(f"charlstm · {meta['name']}"))
    page = page.replace("{{MODEL_JSON}}", _inline_json(page_model))
    b64 = base64.b64encode(weights).decode("ascii")
    weights_js = (
        "// The bytes of weights.safetensors as base64, for a page opened from disk (file://),\n"
        "// where browsers refuse fetch(); served over http(s) the page fetches the binary.\n"
        f'window.CHARLSTM_WEIGHTS_B64 = "{b64}";\n'
    )
    files = {
        "index.html": page.encode("utf-8"),
        "charlstm.js": (WEB_ASSETS / "charlstm.js").read_bytes(),
        "weights.safetensors": weights,
        "weights.js": weights_js.encode("ascii"),
        "tokenizer.json": ckpt.vocab.to_json().encode("utf-8"),
        "model.json": (json.dumps(meta, indent=2, ensure_ascii=False) + "\n").encode(),
    }
    return files, meta


def export_web(checkpoint, out=None, *, force: bool = False) -> ExportResult:
    """Write a static page that samples from the checkpoint in the browser (index.html,
    charlstm.js, weights.safetensors, weights.js, tokenizer.json, model.json) to `out`
    (default: `export-web` beside the checkpoint). Same folder rules as `export_onnx`."""
    ckpt = _load(checkpoint)
    out = Path(out) if out is not None else default_out(ckpt.path, "web")
    check_out(out, force, Path(ckpt.path))
    files, meta = web_files(ckpt)
    sizes = _write_folder(out, force, files, Path(ckpt.path))
    return ExportResult(out, "web", sizes, meta)


# -- safetensors ----------------------------------------------------------------------------------


def export_safetensors(checkpoint, out=None, *, force: bool = False) -> ExportResult:
    """Write a model folder (model.safetensors, config.json, tokenizer.json) to `out` (default:
    `export-safetensors` beside the checkpoint). It is read back and checked to hold the
    checkpoint's weights bit for bit before it is moved into place; same folder rules as
    `export_onnx`."""
    import torch

    from charlstm.model.folder import CONFIG, folder_files, read_folder

    ckpt = _load(checkpoint)
    out = Path(out) if out is not None else default_out(ckpt.path, "safetensors")
    check_out(out, force, Path(ckpt.path))
    files = folder_files(ckpt.model, ckpt.vocab, ckpt.payload)

    def check(folder: Path) -> None:
        written = read_folder(folder)["model"]
        for name, tensor in ckpt.model.state_dict().items():
            if not torch.equal(written[name], tensor.detach().cpu().float()):
                raise CharLSTMError(
                    f"the exported {name} differs from the checkpoint's; nothing was written",
                    "please report it with `charlstm info` of the checkpoint",
                )

    sizes = _write_folder(out, force, files, Path(ckpt.path), check=check)
    return ExportResult(out, "safetensors", sizes, json.loads(files[CONFIG]))
