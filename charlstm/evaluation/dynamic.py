"""Dynamic evaluation: the weights adapt to the text as it is scored.

Krause et al., "Dynamic Evaluation of Neural Sequence Models" (ICML 2018), the RMS variant
with a global prior. The text is read as one stream, cut into segments of `segment`
characters. Each segment is first scored with the current weights theta (its -log p is what
is reported, so every character is predicted before the model has seen it); then the mean
loss of that segment gives a gradient g and every weight moves

    theta <- theta - lr * g / (RMS + epsilon) + decay * clip(RMS / mean(RMS)) * (theta_0 - theta)

where theta_0 are the trained weights and RMS = sqrt(MS_g), MS_g the mean squared gradient of
the trained model over segments of its training data (per weight, computed once). The first
term is an RMSprop-like step normalised by how large that weight's gradients usually are; the
second pulls every weight back toward the trained one, faster for weights whose gradients are
usually large (mean(RMS) is the mean over the parameter tensors of each tensor's mean RMS, and
decay * RMS / mean(RMS) is clipped at 1 so the pull never overshoots). Each RMS counts as at
least `rms_floor` (1.0) times its own tensor's mean RMS: weights the statistics saw almost no
gradient for (rare symbols' rows) would otherwise step hundreds of times further than the rest
and barely decay. The hidden state is carried across segments (detached).

MS_g is cached beside the checkpoint (`best.pt` -> `best.gradstats.pt`), keyed by a hash of
the weights and the recipe, so a second run reuses it.
"""

from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from charlstm.config import option
from charlstm.errors import CharLSTMError, OptionError

if TYPE_CHECKING:  # torch and numpy load inside the functions: the CLI imports this module
    import numpy as np
    import torch

# how MS_g is measured: STATS_STREAMS contiguous streams of the training split, spread evenly
# over it, STATS_BATCHES segments of STATS_SEGMENT characters each, state carried (64,000
# characters, computed once per checkpoint and cached)
STATS_STREAMS = 32
STATS_SEGMENT = 20
STATS_BATCHES = 100
STATS_FORMAT = "charlstm-gradstats"


@dataclass(frozen=True)
class DynamicSettings:
    """Hyperparameters of dynamic evaluation; the defaults were tuned on tiny shakespeare's
    val split (bench/RESULTS.md) and are meant to be kept across corpora."""

    segment: int = option(
        20, "Characters scored between two weight updates.", flag="--dynamic-segment"
    )
    lr: float = option(  # eta: the step, in units of each weight's RMS training gradient
        6e-5, "Step size, in RMS-normalised units.", flag="--dynamic-lr"
    )
    decay: float = option(
        0.01, "Pull back toward the trained weights per update.", flag="--dynamic-decay"
    )
    epsilon: float = 1e-5  # added to RMS (guards weights whose gradients are ~0)
    rms_floor: float = 1.0  # each RMS counts as at least this fraction of its tensor's mean

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if isinstance(self.segment, bool) or not isinstance(self.segment, int) or self.segment < 1:
            raise OptionError(f"--dynamic-segment must be >= 1, got {self.segment}")
        for name, value in (("lr", self.lr), ("decay", self.decay)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise OptionError(f"--dynamic-{name} must be >= 0, got {value}")
        if self.decay > 1:
            raise OptionError(f"--dynamic-decay must be <= 1, got {self.decay}")
        if not (isinstance(self.rms_floor, (int, float)) and self.rms_floor >= 0):
            raise OptionError(f"rms_floor must be >= 0, got {self.rms_floor}")
        if not (isinstance(self.epsilon, (int, float)) and self.epsilon > 0):
            raise OptionError(f"epsilon must be > 0, got {self.epsilon}")


def weights_sha256(model) -> str:
    """A hash of the model's weights (names, shapes and bytes): what the statistics depend on."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy())
    return digest.hexdigest()


def stats_path(checkpoint_path: str | Path) -> Path:
    """Where the gradient statistics of a checkpoint are cached: beside it (inside a model
    folder)."""
    path = Path(checkpoint_path)
    if path.is_dir():
        return path / "gradstats.pt"
    return path.with_name(f"{path.stem}.gradstats.pt")


def _recipe() -> dict:
    return {"streams": STATS_STREAMS, "segment": STATS_SEGMENT, "batches": STATS_BATCHES}


def gradient_rms(model, train_ids: np.ndarray, device=None) -> tuple[dict[str, torch.Tensor], int]:
    """sqrt(MS_g): per weight, the root mean square gradient of the mean loss over segments of
    `train_ids` (STATS_STREAMS streams side by side, dropout off), and how many segments."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from charlstm.model.network import repackage_state

    device = device or next(model.parameters()).device
    n = len(train_ids) - 1
    streams = max(1, min(STATS_STREAMS, n // STATS_SEGMENT))
    stream_len = n // streams
    batches = max(1, min(STATS_BATCHES, stream_len // STATS_SEGMENT))
    named = dict(model.named_parameters())
    params = list(named.values())
    ms = [torch.zeros_like(p) for p in params]
    starts = np.arange(streams, dtype=np.int64) * stream_len
    was_training = model.training
    model.eval()
    state = model.init_state(streams, device=device, dtype=torch.float32)
    with _backward_ok(device):
        for b in range(batches):
            offs = b * STATS_SEGMENT + np.arange(STATS_SEGMENT + 1, dtype=np.int64)[:, None]
            window = torch.from_numpy(np.asarray(train_ids[starts[None, :] + offs], np.int64))
            window = window.to(device)
            logits, state = model(window[:-1], state)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), window[1:].reshape(-1))
            grads = torch.autograd.grad(loss, params)
            torch._foreach_addcmul_(ms, grads, grads)
            state = repackage_state(state)
    model.train(was_training)
    return {name: (m / batches).sqrt_() for name, m in zip(named, ms, strict=True)}, batches


def load_or_compute_rms(ckpt, data=None, device=None) -> tuple[dict[str, torch.Tensor], dict]:
    """The checkpoint's gradient statistics: from the cache beside it when they match its
    weights and the recipe, else computed from its training split (and cached, when the
    folder can be written). Returns them and a description (for the result)."""
    import torch

    from charlstm.atomic import atomic_open
    from charlstm.data.heldout import split_ids

    key = weights_sha256(ckpt.model)
    path = stats_path(ckpt.path) if ckpt.path is not None else None
    if path is not None and path.is_file():
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a damaged cache is recomputed, never trusted
            cached = None
        if (
            isinstance(cached, dict)
            and cached.get("format") == STATS_FORMAT
            and cached.get("weights_sha256") == key
            and cached.get("recipe") == _recipe()
        ):
            rms = {k: v.to(device) for k, v in cached["rms"].items()}
            return rms, {
                "stats": "cached",
                "stats_path": str(path),
                "stats_segments": cached["segments"],
            }
    try:
        train_ids, folder, _ = split_ids(ckpt, data, "train", instead="--data DIR")
    except CharLSTMError as e:
        raise CharLSTMError(
            f"dynamic evaluation needs gradient statistics from the training data: {e.message}",
            "pass --data DIR, the tokenized folder the model was trained on",
        ) from None
    if len(train_ids) < STATS_SEGMENT + 1:
        raise CharLSTMError(
            f"the train split of {folder} is too short for gradient statistics",
            f"it needs at least {STATS_SEGMENT + 1} characters",
        )
    rms, segments = gradient_rms(ckpt.model, train_ids, device)
    info = {"stats": "computed", "stats_path": None, "stats_segments": segments}
    if path is not None:
        payload = {
            "format": STATS_FORMAT,
            "weights_sha256": key,
            "recipe": _recipe(),
            "segments": segments,
            "data": folder,
            "rms": {k: v.cpu() for k, v in rms.items()},
        }
        try:
            with atomic_open(path) as f:
                torch.save(payload, f)
            info["stats_path"] = str(path)
        except (OSError, CharLSTMError):
            pass  # a read-only folder: the statistics are used, just not kept
    return rms, info


class _backward_ok:
    """cuDNN's RNN backward refuses eval mode; dynamic evaluation needs both (no dropout, and
    gradients), so cuDNN is off on CUDA while it runs. Nothing changes on other devices."""

    def __init__(self, device) -> None:
        import torch

        self.flags = (
            torch.backends.cudnn.flags(enabled=False)
            if torch.device(device).type == "cuda"
            else None
        )

    def __enter__(self):
        if self.flags is not None:
            self.flags.__enter__()

    def __exit__(self, *exc):
        if self.flags is not None:
            self.flags.__exit__(*exc)


def _lstm_layer_function():
    """`torch.autograd.Function` for one LSTM layer whose backward costs about two forwards.

    At batch 1 PyTorch's own LSTM backward adds each time step's outer product into the
    weight gradients (T passes over every weight); here the gates are recomputed for the whole
    segment in two GEMMs, the recurrence is walked back one GEMV per step, and each weight
    gradient is one GEMM over the segment. Forward is the fused kernel itself (the equations
    and gate order are in model.py). Built on first use, so importing this module stays light.
    """
    global _LSTMLayer
    if _LSTMLayer is not None:
        return _LSTMLayer
    import torch

    class LSTMLayer(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh):
            weights = [w_ih, w_hh, b_ih, b_hh]
            out, h, c = torch._VF.lstm(x, (h0[None], c0[None]), weights, True, 1, 0.0, False,
                                       False, False)  # fmt: skip
            ctx.save_for_backward(x, h0, c0, out, w_ih, w_hh, b_ih, b_hh)
            return out, h[0], c[0]

        @staticmethod
        def backward(ctx, d_out, d_h_last, d_c_last):
            x, h0, c0, out, w_ih, w_hh, b_ih, b_hh = ctx.saved_tensors
            T, B, H = out.shape
            h_prev = torch.cat([h0[None], out[:-1]])
            gates = torch.addmm(b_ih + b_hh, x.reshape(T * B, -1), w_ih.T)
            gates = gates.addmm_(h_prev.reshape(T * B, H), w_hh.T).view(T, B, 4 * H)
            i, f, g, o = gates.split(H, dim=-1)
            i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
            ig = i * g
            c = torch.empty_like(ig)
            c_t = c0
            for t in range(T):  # the cell states, elementwise: cheap next to the GEMVs
                c_t = torch.addcmul(ig[t], f[t], c_t)
                c[t] = c_t
            c_prev = torch.cat([c0[None], c[:-1]])
            tanh_c = c.tanh()
            d_o_per_dh = tanh_c * o * (1 - o)
            d_c_per_dh = o * (1 - tanh_c * tanh_c)
            d_ifg_per_dc = torch.stack([g * i * (1 - i), c_prev * f * (1 - f), i * (1 - g * g)], 2)
            d_gates = torch.empty(T, B, 4 * H, dtype=out.dtype, device=out.device)
            d_ifg = d_gates[:, :, : 3 * H].view(T, B, 3, H)
            dh = d_h_last if d_h_last is not None else torch.zeros_like(h0)
            dc = d_c_last if d_c_last is not None else torch.zeros_like(c0)
            for t in range(T - 1, -1, -1):
                dh_t = dh + d_out[t] if d_out is not None else dh
                dc = torch.addcmul(dc, dh_t, d_c_per_dh[t])
                torch.mul(dc[:, None], d_ifg_per_dc[t], out=d_ifg[t])
                torch.mul(dh_t, d_o_per_dh[t], out=d_gates[t, :, 3 * H :])
                dc = dc * f[t]
                dh = d_gates[t] @ w_hh
            flat = d_gates.reshape(T * B, 4 * H)
            d_b = flat.sum(0)
            return (
                (flat @ w_ih).view(T, B, -1),
                dh,
                dc,
                flat.T @ x.reshape(T * B, -1),
                flat.T @ h_prev.reshape(T * B, H),
                d_b,
                d_b,
            )

    _LSTMLayer = LSTMLayer
    return LSTMLayer


_LSTMLayer = None


def _forward(model, tokens, state):
    """`model(tokens, state)` (eval mode), with the LSTM layers as `_lstm_layer_function`."""
    import torch

    layer = _lstm_layer_function()
    x = model.embedding(tokens)
    hs, cs = [], []
    for k in range(model.config.num_layers):
        weights = [getattr(model.lstm, f"{n}_l{k}") for n in ("weight_ih", "weight_hh",
                                                              "bias_ih", "bias_hh")]  # fmt: skip
        x, h, c = layer.apply(x, state[0][k], state[1][k], *weights)
        hs.append(h)
        cs.append(c)
    return model.head(x), (torch.stack(hs), torch.stack(cs))


def adapt(
    model, ids: np.ndarray, rms: dict[str, torch.Tensor], settings: DynamicSettings, state=None
):
    """Run dynamic evaluation over `ids` with `model` (its weights are changed in place):
    returns (sum of -log p over ids[1:], how many, the state after ids[:-1]). Each segment is
    scored before its gradient step, so no character is predicted after it was seen."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from charlstm.model.network import repackage_state
    from charlstm.runtime import work_done

    device = next(model.parameters()).device
    named = dict(model.named_parameters())
    params = list(named.values())
    rms_list = [rms[name].to(device) for name in named]
    # a weight whose training gradients were ~0 in the statistics (the embedding and output
    # rows of a symbol rare in the sampled segments) would otherwise take steps hundreds of
    # times its tensor's typical one and never be pulled back: on an 834-symbol Russian
    # corpus that made dynamic evaluation 0.2-2 bits/char *worse* than static (bench/RESULTS.md)
    rms_list = [torch.clamp(r, min=settings.rms_floor * float(r.mean())) for r in rms_list]
    # Krause et al.'s global decay rates: relative to the mean of the tensors' mean RMS
    rms_mean = sum(float(r.mean()) for r in rms_list) / len(rms_list)
    decay = [(settings.decay * r / max(rms_mean, 1e-30)).clamp_(max=1.0) for r in rms_list]
    # theta += decay * (theta_0 - theta) - lr * g / (RMS + eps), as three in-place passes:
    # theta = theta * (1 - decay) + decay * theta_0 + g * (-lr / (RMS + eps))
    keep = [1.0 - d for d in decay]
    prior = [d * p.detach() for d, p in zip(decay, params, strict=True)]
    step = [-settings.lr / (r + settings.epsilon) for r in rms_list]
    tokens = torch.from_numpy(np.asarray(ids, dtype=np.int64)).to(device)
    n_targets = len(tokens) - 1
    was_training = model.training
    model.eval()
    if state is None:
        state = model.init_state(1, device=device, dtype=torch.float32)
    # on a CPU the batch-1 backward of nn.LSTM is the bottleneck: use our own (same numbers)
    forward = _forward if device.type == "cpu" else (lambda m, x, s: m(x, s))
    total = 0.0
    with _backward_ok(device):
        for lo in range(0, max(0, n_targets), settings.segment):
            hi = min(n_targets, lo + settings.segment)
            logits, state = forward(model, tokens[lo:hi, None], state)
            nats = F.cross_entropy(logits[:, 0].float(), tokens[lo + 1 : hi + 1], reduction="sum")
            total += float(nats.detach())
            grads = torch.autograd.grad(nats / (hi - lo), params)
            state = repackage_state(state)
            with torch.no_grad():
                torch._foreach_mul_(params, keep)
                torch._foreach_add_(params, prior)
                torch._foreach_addcmul_(params, grads, step)
            work_done(hi - lo)
    model.train(was_training)
    return total, max(0, n_targets), state


def dynamic_nats(ckpt, ids: np.ndarray, settings: DynamicSettings, *, data=None, device=None):
    """Dynamic evaluation of `ids` on a copy of the checkpoint's model (the checkpoint is left
    as it was): (sum of -log p, how many, a description of the settings and statistics,
    with the seconds spent getting the statistics)."""
    import time

    settings.validate()
    start = time.perf_counter()
    rms, info = load_or_compute_rms(ckpt, data, device)
    info["stats_seconds"] = time.perf_counter() - start
    model = copy.deepcopy(ckpt.model)
    total, count, _ = adapt(model, ids, rms, settings)
    return total, count, {**asdict(settings), **info}


def adapted_model(ckpt, ids: np.ndarray, settings: DynamicSettings | None = None, *, data=None):
    """A copy of the checkpoint's model adapted to the text `ids` by dynamic evaluation, and its
    state after ids[:-1] (feed ids[-1] next to continue the text)."""
    settings = settings or DynamicSettings()
    settings.validate()
    device = next(ckpt.model.parameters()).device
    rms, _ = load_or_compute_rms(ckpt, data, device)
    model = copy.deepcopy(ckpt.model)
    _, _, state = adapt(model, ids, rms, settings)
    return model.eval(), state
