"""`generate`: text from a checkpoint, with temperature, top-k, nucleus (top-p), a prime, a seed.

The prime runs through the model in one forward pass (cuDNN/oneDNN over the whole sequence);
after that every new character costs exactly one recurrent step with the carried state, never
re-feeding the history.

At batch 1 a step is a matrix-vector product per layer, so its speed is bounded by how fast
the weights can be read: chars/s <= bandwidth / weight bytes (`charlstm bench` measures both).
`FastLSTMStep` gets close to that bound by spending as little as possible besides the reads:
one ATen call per layer (`torch.lstm_cell`: both GEMVs and the gates, no Python in between)
instead of nn.LSTM's per-call setup, and no history re-fed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from charlstm.errors import CharLSTMError, OptionError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def check_options(
    length: int, temperature: float, top_k: int, top_p: float, num_samples: int
) -> None:
    """Reject option values that have no meaning, with the fix in the message."""
    if not isinstance(length, int) or length < 0:
        raise OptionError(f"--length must be >= 0, got {length}")
    if not (
        isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0
    ):
        raise OptionError(f"--temperature must be >= 0 (0 is greedy), got {temperature}")
    if not isinstance(top_k, int) or top_k < 0:
        raise OptionError(f"--top-k must be >= 0 (0 disables it), got {top_k}")
    if not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise OptionError(f"--top-p must be in (0, 1] (1 disables it), got {top_p}")
    if not isinstance(num_samples, int) or num_samples < 1:
        raise OptionError(f"--num-samples must be >= 1, got {num_samples}")


class FastLSTMStep:
    """One step of a CharLSTM (eval mode) for a batch of streams: the least work per character.

    fp32: per layer one `torch.lstm_cell` (both GEMVs and the gate arithmetic in a single
    ATen call, no Python in between), so the step costs little more than reading the weights.
    bf16: the weights are stored in bfloat16 (half the bytes to read); each layer does one
    fused GEMV over [W_ih | W_hh] and [x; h] and keeps the cell state in fp32. Numerically the
    same function as `CharLSTM.forward` on one time step (bf16 up to its rounding).
    """

    def __init__(self, model, batch_size: int, dtype: torch.dtype = torch.float32) -> None:
        cfg = model.config
        lstm = model.lstm
        device = model.head.weight.device
        self.batch_size = batch_size
        self.hidden = cfg.hidden_size
        self.num_layers = cfg.num_layers
        self.dtype = dtype
        H = cfg.hidden_size
        with torch.no_grad():
            self.embedding = model.embedding.weight.detach().to(dtype).contiguous()
            self.cells = []  # (W_ih, W_hh, b_ih, b_hh) per layer, for torch.lstm_cell
            self.fused = []  # ([W_ih | W_hh], b_ih + b_hh) per layer, for the bf16 path
            for k in range(cfg.num_layers):
                w_ih = getattr(lstm, f"weight_ih_l{k}").detach()
                w_hh = getattr(lstm, f"weight_hh_l{k}").detach()
                b = (getattr(lstm, f"bias_ih_l{k}") + getattr(lstm, f"bias_hh_l{k}")).detach()
                if dtype == torch.float32:
                    self.cells.append(
                        (
                            w_ih.contiguous(),
                            w_hh.contiguous(),
                            getattr(lstm, f"bias_ih_l{k}").detach(),
                            getattr(lstm, f"bias_hh_l{k}").detach(),
                        )
                    )
                else:
                    self.fused.append(
                        (torch.cat([w_ih, w_hh], 1).to(dtype).contiguous(), b.float().contiguous())
                    )
            self.head_w = model.head.weight.detach().to(dtype).contiguous()
            self.head_b = model.head.bias.detach().float().contiguous()
        self.h = [torch.zeros(batch_size, H, device=device) for _ in range(cfg.num_layers)]
        self.c = [torch.zeros(batch_size, H, device=device) for _ in range(cfg.num_layers)]
        self.logits = torch.empty(batch_size, cfg.vocab_size, device=device)

    def load_state(self, state) -> None:
        h, c = state
        self.h = [h[k].float().clone() for k in range(self.num_layers)]
        self.c = [c[k].float().clone() for k in range(self.num_layers)]

    def join(self, state) -> None:
        """Append streams: their (h, c), each (num_layers, n, hidden), become the last n rows."""
        h, c = state
        self.h = [torch.cat([self.h[k], h[k].float()]) for k in range(self.num_layers)]
        self.c = [torch.cat([self.c[k], c[k].float()]) for k in range(self.num_layers)]
        self._resize()

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only the streams at these row indices (in this order); the others leave."""
        self.h = [h.index_select(0, rows) for h in self.h]
        self.c = [c.index_select(0, rows) for c in self.c]
        self._resize()

    def _resize(self) -> None:
        self.batch_size = self.h[0].shape[0]
        self.logits = self.logits.new_empty(self.batch_size, self.logits.shape[1])

    @torch.no_grad()
    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B,) -> logits (B, vocab) for the next character; advances the state."""
        x = self.embedding[tokens]
        if self.dtype == torch.float32:
            for k, (w_ih, w_hh, b_ih, b_hh) in enumerate(self.cells):
                x, self.c[k] = torch.lstm_cell(x, (self.h[k], self.c[k]), w_ih, w_hh, b_ih, b_hh)
                self.h[k] = x
            return torch.addmm(self.head_b, x, self.head_w.T, out=self.logits)
        H = self.hidden
        for k, (w, b) in enumerate(self.fused):
            xh = torch.cat([x.to(self.dtype), self.h[k].to(self.dtype)], 1)
            gates = torch.mm(xh, w.T).float().add_(b)
            i, f, g, o = gates.split(H, dim=1)
            self.c[k] = torch.sigmoid(f) * self.c[k] + torch.sigmoid(i) * torch.tanh(g)
            self.h[k] = torch.sigmoid(o) * torch.tanh(self.c[k])
            x = self.h[k]
        return torch.mm(x.to(self.dtype), self.head_w.T).float().add_(self.head_b)


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float):
    """Probabilities after temperature, top-k and nucleus filtering (None for greedy)."""
    if temperature == 0:
        return None
    logits = logits / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1.0:
        sorted_p, order = torch.sort(probs, dim=-1, descending=True)
        # drop a symbol when the mass before it already reaches top_p (the top one always stays)
        drop = (sorted_p.cumsum(-1) - sorted_p) >= top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def _start_ids(vocab, prime: str | None) -> tuple[np.ndarray, bool]:
    """Ids of the prime, or a context-only newline (not printed) when there is none."""
    if prime:
        return vocab.encode(prime, what="the prime text", hint="remove them from the prime"), True
    newline = vocab.encode_raw("\n")
    return (newline if len(newline) and newline[0] >= 0 else np.zeros(1, np.int64)), False


def generate(
    checkpoint,
    *,
    prime: str | None = None,
    length: int = 500,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
    num_samples: int = 1,
    device: str = "auto",
    dtype: str = "fp32",
    on_text: Callable[[int, str], None] | None = None,
    adapt: str | Path | None = None,
    adapt_settings=None,
    data: str | Path | None = None,
    threads: int = 0,
) -> list[str]:
    """Generate `num_samples` texts of `length` new characters (after the prime, which each
    text starts with). `on_text(sample, piece)` receives text as it is produced.

    `adapt=FILE` first reads that document with dynamic evaluation (`charlstm.evaluation.dynamic`,
    `adapt_settings` or its defaults; gradient statistics from the run's training data or
    `data`), then generates with the adapted weights, continuing from the state the document
    left: the prime (if any) follows the document, and the document itself is not printed.
    `threads`: CPU threads (0: chosen by timing the stepping as it goes, `runtime.ThreadTuner`)."""
    from charlstm.model.checkpoint import Checkpoint, load_checkpoint
    from charlstm.runtime import check_threads, cpu_threads, resolve_device, work_done

    check_threads(threads)
    check_options(length, temperature, top_k, top_p, num_samples)
    if dtype not in DTYPES:
        raise OptionError(f"unknown --dtype {dtype!r}", "use fp32 or bf16")
    dev = resolve_device(device)
    with cpu_threads(threads, dev):
        loaded = isinstance(checkpoint, Checkpoint)
        ckpt = checkpoint if loaded else load_checkpoint(checkpoint, dev)
        model, vocab = ckpt.model.to(dev).eval(), ckpt.vocab
        start_ids, printed_prime = _start_ids(vocab, prime)
        prime_ids = start_ids
        state = None
        if adapt is not None:
            from charlstm.data.heldout import encode_text_file
            from charlstm.evaluation.dynamic import adapted_model

            doc, _ = encode_text_file(Path(adapt), vocab, "error")
            if len(doc) < 2:
                raise CharLSTMError(f"--adapt {adapt} has fewer than 2 characters", "give it text")
            model, state = adapted_model(ckpt, doc, adapt_settings, data=data)
            # the state has read all of the document but its last character: that comes next
            start_ids = np.concatenate([doc[-1:], start_ids if printed_prime else start_ids[:0]])
        generator = torch.Generator(device=dev)
        generator.manual_seed(
            seed if seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
        )
        decoders = [vocab.stream_decoder() for _ in range(num_samples)]
        texts = [""] * num_samples

        def emit(sample: int, ids) -> None:
            piece = decoders[sample](ids)
            if piece:
                texts[sample] += piece
                if on_text is not None:
                    on_text(sample, piece)

        if printed_prime:
            for s in range(num_samples):
                emit(s, prime_ids)
        with torch.no_grad():
            tokens = torch.from_numpy(start_ids).to(dev)[:, None].expand(-1, num_samples)
            if state is not None:
                state = tuple(s.expand(-1, num_samples, -1).contiguous() for s in state)
            logits, state = model(tokens.contiguous(), state)  # the whole prime in one pass
            logits = logits[-1].float()
            step = FastLSTMStep(model, num_samples, DTYPES[dtype])
            step.load_state(state)
            for _ in range(length):
                probs = filter_logits(logits, temperature, top_k, top_p)
                if probs is None:
                    next_ids = logits.argmax(-1)
                else:
                    next_ids = torch.multinomial(probs, 1, generator=generator)[:, 0]
                ids = next_ids.cpu().numpy()
                for s in range(num_samples):
                    emit(s, ids[s : s + 1])
                logits = step(next_ids)
                work_done(num_samples)
        return texts


def read_prime_file(path: str | Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CharLSTMError(f"prime file not found: {path}") from None
    except UnicodeDecodeError as e:
        raise CharLSTMError(f"{path} is not valid UTF-8 (byte offset {e.start})") from None
    except OSError as e:
        raise CharLSTMError(f"cannot read prime file {path}: {e.strerror}") from None


def check_output(path: str | Path, force: bool = False) -> Path:
    """Refuse an output file that would lose something (an existing file without `force`, a
    folder) or cannot be written (a missing folder), before any time is spent generating."""
    path = Path(path)
    if path.is_dir():
        raise CharLSTMError(f"--output {path} is a folder", "pass a file path")
    if path.exists() and not force:
        raise CharLSTMError(
            f"--output {path} already exists", "pass --force to replace it, or another path"
        )
    if not path.parent.is_dir():
        raise CharLSTMError(
            f"cannot write {path}: the folder {path.parent} does not exist", "create it first"
        )
    return path


def save_samples(
    texts: list[str], path: str | Path, *, as_json: bool = False, force: bool = False
) -> Path:
    """Write samples to `path` atomically: a JSON list, or the texts separated by a blank line
    (each followed by a newline, as `charlstm sample` prints them)."""
    import json

    path = check_output(path, force)
    from charlstm.atomic import write_text

    content = json.dumps(texts, ensure_ascii=False) + "\n" if as_json else format_samples(texts)
    try:
        write_text(path, content)
    except OSError as e:
        raise CharLSTMError(f"cannot write {path}: {e.strerror}") from None
    return path


def format_samples(texts: list[str]) -> str:
    """Samples as `charlstm sample` prints them: separated by a blank line, a final newline.
    (Samples may contain blank lines themselves: use `--json` to split them reliably.)"""
    return "\n\n".join(texts) + "\n"
