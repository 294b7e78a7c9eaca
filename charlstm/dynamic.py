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
decay * RMS / mean(RMS) is clipped at 1 so the pull never overshoots). The hidden state is
carried across segments (detached).

MS_g is cached beside the checkpoint (`best.pt` -> `best.gradstats.pt`), keyed by a hash of
the weights and the recipe, so a second run reuses it.
"""

from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from charlstm.errors import CharLSTMError, OptionError

# how MS_g is measured: STATS_STREAMS contiguous streams of the training split, spread evenly
# over it, STATS_BATCHES segments of STATS_SEGMENT characters each, state carried (64,000
# characters; more changes the result by little, see README)
STATS_STREAMS = 32
STATS_SEGMENT = 20
STATS_BATCHES = 100
STATS_FORMAT = "charlstm-gradstats"


@dataclass(frozen=True)
class DynamicSettings:
    """Hyperparameters of dynamic evaluation; the defaults were tuned on tiny shakespeare's
    val split (README) and are meant to be kept across corpora."""

    segment: int = 20  # characters scored between two weight updates
    lr: float = 2e-4  # eta: the step, in units of each weight's RMS training gradient
    decay: float = 0.01  # lambda: pull back toward the trained weights per update
    epsilon: float = 1e-5  # added to RMS (guards weights whose gradients are ~0)

    def validate(self) -> None:
        if isinstance(self.segment, bool) or not isinstance(self.segment, int) or self.segment < 1:
            raise OptionError(f"--dynamic-segment must be >= 1, got {self.segment}")
        for name, value in (("lr", self.lr), ("decay", self.decay)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise OptionError(f"--dynamic-{name} must be >= 0, got {value}")
        if self.decay > 1:
            raise OptionError(f"--dynamic-decay must be <= 1, got {self.decay}")
        if not (isinstance(self.epsilon, (int, float)) and self.epsilon > 0):
            raise OptionError(f"epsilon must be > 0, got {self.epsilon}")


def weights_sha256(model) -> str:
    """A hash of the model's weights (names, shapes and bytes): what the statistics depend on."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy())
    return digest.hexdigest()


def stats_path(checkpoint_path: str | Path) -> Path:
    """Where the gradient statistics of a checkpoint are cached: beside it."""
    path = Path(checkpoint_path)
    return path.with_name(f"{path.stem}.gradstats.pt")


def _recipe() -> dict:
    return {"streams": STATS_STREAMS, "segment": STATS_SEGMENT, "batches": STATS_BATCHES}


def gradient_rms(model, train_ids: np.ndarray, device=None) -> tuple[dict[str, torch.Tensor], int]:
    """sqrt(MS_g): per weight, the root mean square gradient of the mean loss over segments of
    `train_ids` (STATS_STREAMS streams side by side, dropout off), and how many segments."""
    from charlstm.model import repackage_state

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
    from charlstm.atomic import atomic_open
    from charlstm.evaluation import split_ids

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


def adapt(
    model, ids: np.ndarray, rms: dict[str, torch.Tensor], settings: DynamicSettings, state=None
):
    """Run dynamic evaluation over `ids` with `model` (its weights are changed in place):
    returns (sum of -log p over ids[1:], how many, the state after ids[:-1]). Each segment is
    scored before its gradient step, so no character is predicted after it was seen."""
    from charlstm.model import repackage_state

    device = next(model.parameters()).device
    named = dict(model.named_parameters())
    params = list(named.values())
    rms_list = [rms[name].to(device) for name in named]
    # Krause et al.'s global decay rates: relative to the mean of the tensors' mean RMS
    rms_mean = sum(float(r.mean()) for r in rms_list) / len(rms_list)
    decay = [(settings.decay * r / max(rms_mean, 1e-30)).clamp_(max=1.0) for r in rms_list]
    inverse = [1.0 / (r + settings.epsilon) for r in rms_list]
    theta0 = [p.detach().clone() for p in params]
    tokens = torch.from_numpy(np.asarray(ids, dtype=np.int64)).to(device)
    n_targets = len(tokens) - 1
    was_training = model.training
    model.eval()
    if state is None:
        state = model.init_state(1, device=device, dtype=torch.float32)
    total = 0.0
    with _backward_ok(device):
        for lo in range(0, max(0, n_targets), settings.segment):
            hi = min(n_targets, lo + settings.segment)
            logits, state = model(tokens[lo:hi, None], state)
            nats = F.cross_entropy(logits[:, 0].float(), tokens[lo + 1 : hi + 1], reduction="sum")
            total += float(nats.detach())
            grads = torch.autograd.grad(nats / (hi - lo), params)
            state = repackage_state(state)
            with torch.no_grad():
                pull = torch._foreach_sub(theta0, params)
                torch._foreach_mul_(pull, decay)
                torch._foreach_add_(params, pull)
                torch._foreach_addcmul_(params, grads, inverse, value=-settings.lr)
    model.train(was_training)
    return total, max(0, n_targets), state


def dynamic_nats(ckpt, ids: np.ndarray, settings: DynamicSettings, *, data=None, device=None):
    """Dynamic evaluation of `ids` on a copy of the checkpoint's model (the checkpoint is left
    as it was): (sum of -log p, how many, a description of the settings and statistics)."""
    settings.validate()
    rms, info = load_or_compute_rms(ckpt, data, device)
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
