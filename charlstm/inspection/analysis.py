"""`inspect_text`: what a model does on a text, character by character.

Three views are built on the arrays this module returns (see `Inspection`):

* surprisal — each character's loss, -log p(char | everything before it), with the model's
  top-k guesses for that position (GLTR, Gehrmann et al. 2019, did this for words);
* neurons — every layer's cell state c and output h after each character, and for a set of
  properties computed from the text alone (inside quotes, bracket depth, position in the line,
  ...) every cell ranked by |Pearson r| with the property (Karpathy, Johnson & Fei-Fei 2015,
  "Visualizing and Understanding Recurrent Networks", found such cells by eye);
* comparison — the per-character loss of a second checkpoint of the same vocabulary.

The text runs through the model once, as one stream with carried state, in windows of the
same length `charlstm eval` uses, so the losses are exactly those `charlstm eval
--batch-size 1` averages: ``inspection.loss == evaluate(ckpt, text=f, batch_size=1).loss``.
`nn.LSTM` only returns the last layer's outputs, so the layers are run one at a time with the
model's own weights (the same kernels, bitwise the same outputs on CPU), and each layer's cell
states are recomputed from its gates: c_t = f_t * c_{t-1} + i_t * g_t (the gate equations are
in model.py).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from charlstm.errors import CharLSTMError, OptionError

DEFAULT_EXCERPT = 3_000  # characters of the val split shown when no text is given
DEFAULT_LIMIT = 10_000  # the most characters of a given text (activations grow with it)
TOP_K = 5
CELLS_PER_PROBE = 5  # the best cells kept per property
KINDS = ("c", "h")  # index 0 of `Probe.corr` is the cell state, 1 the output


@dataclass(frozen=True)
class Cell:
    """One unit of one layer: its cell state (kind "c") or its output (kind "h")."""

    layer: int
    unit: int
    kind: str = "c"

    @property
    def name(self) -> str:
        """Short label, e.g. 'c 1:42' (0-based layer and unit, as in the arrays)."""
        return f"{self.kind} {self.layer}:{self.unit}"


@dataclass(frozen=True)
class RankedCell:
    """A cell and its Pearson correlation with a property over the text."""

    cell: Cell
    r: float


@dataclass
class Probe:
    """A property of the text (one value per character) and the cells that track it best.

    `corr[k, layer, unit]` is the Pearson r between the property and cell kind KINDS[k]; it is
    None when the property is constant over this text (e.g. no quotes at all), so nothing can
    track it.
    """

    name: str
    description: str
    values: np.ndarray  # (chars,) float32
    support: int  # characters where the property is non-zero
    corr: np.ndarray | None = None  # (2, layers, hidden) float32
    best: list[RankedCell] = field(default_factory=list)


@dataclass
class Comparison:
    """The losses of a second checkpoint on the same characters."""

    checkpoint: str
    nats: np.ndarray  # (chars,) float64, nan at position 0
    loss: float
    bpc: float

    def delta_bits(self, nats: np.ndarray) -> np.ndarray:
        """Per-character loss of the inspected checkpoint minus this one's, in bits (< 0 where
        the inspected checkpoint is better)."""
        return (nats - self.nats) / math.log(2)


@dataclass(frozen=True)
class Span:
    """A stretch of text and the bits the model spent on it."""

    start: int
    end: int  # exclusive
    text: str
    bits: float

    @property
    def bits_per_char(self) -> float:
        return self.bits / max(1, self.end - self.start)


@dataclass
class Inspection:
    """Everything the views show, as numpy arrays over the n positions of the text.

    Position i holds the i-th character (`tokens[i]`, its id `ids[i]`). Its loss `nats[i]` and
    the guesses `top_ids[i]`/`top_probs[i]` are the model's prediction of character i from
    characters 0..i-1; position 0 has no prediction (nan, -1). `h[i]` and `c[i]` are every
    layer's output and cell state after reading character i: shape (n, layers, hidden).
    """

    checkpoint: str
    source: str
    tokens: list[str]
    ids: np.ndarray  # (n,) int64
    nats: np.ndarray  # (n,) float64
    rank: np.ndarray  # (n,) int64: 1 when the character was the model's first guess; 0 at 0
    top_ids: np.ndarray  # (n, k) int64
    top_probs: np.ndarray  # (n, k) float32
    h: np.ndarray  # (n, layers, hidden) float32
    c: np.ndarray  # (n, layers, hidden) float32
    symbols: list[str]  # printable name of every vocabulary id
    probes: list[Probe]
    neurons: list[Cell]  # the cells asked for with `neurons=`
    against: Comparison | None = None
    skipped: int = 0  # unknown characters dropped with unknown="skip"
    excerpt: bool = False  # the first characters of a split, not a whole text
    model: str = ""  # e.g. "2 x LSTM(512), 65 symbols"

    @property
    def chars(self) -> int:
        """Characters scored (all but the first)."""
        return max(0, len(self.ids) - 1)

    @property
    def loss(self) -> float:
        """Mean loss in nats per scored character (what `charlstm eval` reports)."""
        return float(np.nansum(self.nats) / max(1, self.chars))

    @property
    def bpc(self) -> float:
        return self.loss / math.log(2)

    @property
    def bits(self) -> np.ndarray:
        return self.nats / math.log(2)

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    def activation(self, cell: Cell) -> np.ndarray:
        """One cell's value after each character, shape (n,)."""
        states = self.c if cell.kind == "c" else self.h
        return states[:, cell.layer, cell.unit]

    def probe(self, name: str) -> Probe:
        for p in self.probes:
            if p.name == name:
                return p
        raise KeyError(name)

    def surprising_spans(self, width: int = 12, count: int = 5) -> list[Span]:
        """The `count` non-overlapping stretches of `width` characters with the most bits."""
        return top_spans(self.bits, self.tokens, width, count)

    def surprising_chars(self, count: int = 10) -> np.ndarray:
        """Positions of the `count` characters with the highest loss, worst first."""
        nats = np.nan_to_num(self.nats, nan=-np.inf)
        order = np.argsort(-nats, kind="stable")
        return order[: min(count, self.chars)]


# -- the model, one layer at a time ------------------------------------------------------------
def _layer_modules(model):
    """A single-layer nn.LSTM per layer, holding copies of the model's weights."""
    import torch
    from torch import nn

    lstm = model.lstm
    layers = []
    for k in range(lstm.num_layers):
        layer = nn.LSTM(lstm.input_size if k == 0 else lstm.hidden_size, lstm.hidden_size, 1)
        with torch.no_grad():
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(layer, f"{name}_l0").copy_(getattr(lstm, f"{name}_l{k}"))
        layers.append(layer.to(model.head.weight.device).eval())
    return layers


def _cell_states(layer, x, h_prev0, c_prev0, out):
    """The cell states c_t of one LSTM layer for a window, recomputed from its gates.

    x (T, 1, in) the layer's inputs, out (T, 1, H) its outputs h_t, (h_prev0, c_prev0) the
    state before the window. The gates need h_{t-1}, which `out` provides, so their
    pre-activations for the whole window are two matrix products; only the elementwise
    recurrence c_t = f_t c_{t-1} + i_t g_t is a loop over time (one fused addcmul a step).
    """
    import torch

    h_prev = torch.cat([h_prev0, out[:-1]], 0)[:, 0]  # (T, H)
    gates = torch.addmm(layer.bias_ih_l0, x[:, 0], layer.weight_ih_l0.T)
    gates += torch.addmm(layer.bias_hh_l0, h_prev, layer.weight_hh_l0.T)
    i, f, g, _ = gates.chunk(4, 1)
    i, f, g = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g)
    ig = i * g
    c = torch.empty_like(ig)
    prev = c_prev0[0]
    for t in range(len(c)):
        prev = torch.addcmul(ig[t], f[t], prev)
        c[t] = prev
    return c


def run_model(model, ids: np.ndarray, *, top_k: int = TOP_K, states: bool = True, window=None):
    """One stream over `ids` with carried state, in `window`-character pieces (eval's).

    Returns nats (n,), rank (n,), top ids (n, k), top probs (n, k), and (when `states`) h and
    c (n, layers, hidden) as numpy arrays. Position 0 has no prediction.
    """
    import torch
    import torch.nn.functional as F

    from charlstm.evaluation.scoring import EVAL_BPTT, EVAL_MAX_LOGITS

    cfg = model.config
    # eval's windows (bptt) exactly, so that every number matches it
    window = window or max(1, min(EVAL_BPTT, EVAL_MAX_LOGITS // cfg.vocab_size))
    device = model.head.weight.device
    n, k = len(ids), min(top_k, cfg.vocab_size)
    L, H = cfg.num_layers, cfg.hidden_size
    nats = np.full(n, np.nan)
    rank = np.zeros(n, np.int64)
    top_ids = np.full((n, k), -1, np.int64)
    top_probs = np.zeros((n, k), np.float32)
    h_all = np.zeros((n, L, H), np.float32) if states else None
    c_all = np.zeros((n, L, H), np.float32) if states else None
    layers = _layer_modules(model) if states else None
    was_training = model.training
    model.eval()
    tokens = torch.from_numpy(np.asarray(ids, dtype=np.int64)).to(device)
    state = model.init_state(1, device=device, dtype=torch.float32)
    with torch.no_grad():
        for lo in range(0, n, window):
            hi = min(n, lo + window)
            x = model.embedding(tokens[lo:hi, None])  # (T, 1, E); dropout is off in eval
            if states:
                new_h, new_c = [], []
                for layer_index, layer in enumerate(layers):
                    h0 = state[0][layer_index : layer_index + 1]
                    c0 = state[1][layer_index : layer_index + 1]
                    out, (hn, cn) = layer(x, (h0, c0))
                    c = _cell_states(layer, x, h0, c0, out)
                    h_all[lo:hi, layer_index] = out[:, 0].cpu().numpy()
                    c_all[lo:hi, layer_index] = c.cpu().numpy()
                    new_h.append(hn)
                    new_c.append(cn)
                    x = out
                state = (torch.cat(new_h), torch.cat(new_c))
                logits = model.head(x)
            else:
                out, state = model.lstm(x, state)
                logits = model.head(out)
            # logits[t] predicts character lo + t + 1
            logits = logits[: hi - lo, 0].float()
            if hi == n:
                logits = logits[:-1]  # the guess after the last character has no target
            if len(logits) == 0:
                continue
            targets = tokens[lo + 1 : lo + 1 + len(logits)]
            rows = slice(lo + 1, lo + 1 + len(logits))
            nats[rows] = F.cross_entropy(logits, targets, reduction="none").double().cpu()
            target_logit = logits.gather(1, targets[:, None])
            rank[rows] = ((logits > target_logit).sum(1) + 1).cpu()
            probs, guess = torch.softmax(logits, 1).topk(k, 1)
            top_ids[rows] = guess.cpu()
            top_probs[rows] = probs.cpu()
    model.train(was_training)
    return nats, rank, top_ids, top_probs, h_all, c_all


# -- properties of the text ---------------------------------------------------------------------
PROPERTIES = {  # name -> what it measures; the order is the order of the views
    "in_quotes": 'inside "double quotes" (straight or curly)',
    "in_brackets": "inside (), [] or {}",
    "bracket_depth": "how deeply nested in brackets",
    "line_position": "characters since the line began",
    "first_line": "in the first line of a paragraph (in a play: the speaker's name)",
    "caps_word": "in a word of capitals (NAMES, SHOUTING)",
    "word_position": "letters since the word began (0 outside words)",
    "word_start": "the first letter of a word",
    "vowel": "a vowel (a, e, i, o, u)",
}


def _previous_index(mask: np.ndarray) -> np.ndarray:
    """For each position, the index of the last True at or before it (-1 if none)."""
    return np.maximum.accumulate(np.where(mask, np.arange(len(mask)), -1))


def text_properties(tokens: Sequence[str]) -> dict[str, np.ndarray]:
    """Every property in PROPERTIES, one float32 value per character, as it stands after
    reading that character (an opening quote is inside, a closing one is outside)."""
    if not tokens:
        return {name: np.zeros(0, np.float32) for name in PROPERTIES}
    chars = np.array(list(tokens), dtype=str)
    first = np.array([t[:1] for t in tokens], dtype="<U1")
    idx = np.arange(len(first))

    straight = first == '"'
    curly_depth = np.cumsum(first == "\u201c") - np.cumsum(first == "\u201d")
    in_quotes = (np.cumsum(straight) % 2 == 1) | (curly_depth > 0)

    # bracket depth: a walk of +1/-1 steps, clamped at 0 (a stray ")" does not go negative)
    walk = np.cumsum(np.isin(first, list("([{")).astype(np.int64) - np.isin(first, list(")]}")))
    depth = walk - np.minimum(np.minimum.accumulate(walk), 0)

    newline = first == "\n"
    starts_line = np.concatenate([[True], newline[:-1]])
    line_position = idx - _previous_index(starts_line)

    letter = np.char.isalpha(chars)
    upper = np.char.isupper(chars) & letter
    word_start = letter & ~np.concatenate([[False], letter[:-1]])
    word_position = np.where(letter, idx - _previous_index(word_start) + 1, 0)
    word = np.maximum(np.cumsum(word_start) - 1, 0)  # word number of each letter
    letters_per_word = np.bincount(word[letter], minlength=word[-1] + 1)
    lower_per_word = np.bincount(word[letter & ~upper], minlength=word[-1] + 1)
    caps_word = letter & (letters_per_word[word] >= 2) & (lower_per_word[word] == 0)

    # a line is the first of a paragraph when the line before it is blank (whitespace only)
    line = np.cumsum(starts_line) - 1
    blank = np.char.isspace(chars) | (chars == "")
    blank_line = np.bincount(line[~blank], minlength=line[-1] + 1) == 0
    after_blank = np.concatenate([[False], blank_line[:-1]])
    first_line = after_blank[line] & ~blank_line[line]

    vowel = np.isin(np.char.lower(first), list("aeiou"))

    values = {
        "in_quotes": in_quotes,
        "in_brackets": depth > 0,
        "bracket_depth": depth,
        "line_position": line_position,
        "first_line": first_line,
        "caps_word": caps_word,
        "word_position": word_position,
        "word_start": word_start,
        "vowel": vowel,
    }
    return {name: np.asarray(v, dtype=np.float32) for name, v in values.items()}


def correlations(properties: np.ndarray, c: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Pearson r of each row of `properties` (P, n) with every cell of c and h (n, layers,
    hidden): shape (P, 2, layers, hidden). A constant property or a cell that never changes
    scores 0. The activations are standardized once and met by one matrix product."""
    n = properties.shape[1]
    cells = np.concatenate([c.reshape(n, -1), h.reshape(n, -1)], axis=1)
    cells = cells - cells.mean(0, dtype=np.float64).astype(np.float32)
    cell_norm = np.sqrt(np.einsum("ij,ij->j", cells, cells, dtype=np.float64))
    props = properties.astype(np.float64)
    props -= props.mean(1, keepdims=True)
    prop_norm = np.sqrt((props * props).sum(1, keepdims=True))
    props = (props / np.where(prop_norm > 0, prop_norm, np.inf)).astype(np.float32)
    r = (props @ cells) / np.where(cell_norm > 0, cell_norm, np.inf).astype(np.float32)
    return np.clip(r, -1, 1).reshape(len(properties), 2, *c.shape[1:])


def rank_cells(corr: np.ndarray, count: int = CELLS_PER_PROBE) -> list[RankedCell]:
    """The `count` cells with the largest |r|, best first."""
    flat = np.abs(corr).ravel()
    order = np.argsort(-flat, kind="stable")[:count]
    ranked = []
    for i in order:
        kind, layer, unit = np.unravel_index(i, corr.shape)
        cell = Cell(int(layer), int(unit), KINDS[kind])
        ranked.append(RankedCell(cell, float(corr[kind, layer, unit])))
    return ranked


def probe_cells(tokens: Sequence[str], c: np.ndarray, h: np.ndarray) -> list[Probe]:
    """Every property of PROPERTIES with all cells' correlations and the best cells."""
    values = text_properties(tokens)
    corr = correlations(np.stack(list(values.values())), c, h)
    probes = []
    for (name, v), r in zip(values.items(), corr, strict=True):
        constant = len(v) < 2 or bool((v == v[0]).all())
        probes.append(
            Probe(
                name,
                PROPERTIES[name],
                v,
                int(np.count_nonzero(v)),
                None if constant else r,
                [] if constant else rank_cells(r),
            )
        )
    return probes


def top_spans(bits: np.ndarray, tokens: Sequence[str], width: int, count: int) -> list[Span]:
    """Greedy: the window of `width` characters with the most bits, then the best window not
    overlapping it, and so on."""
    filled = np.nan_to_num(bits, nan=0.0)
    n = len(filled)
    width = max(1, min(width, n))
    if n == 0:
        return []
    sums = np.convolve(filled, np.ones(width), mode="valid")  # sums[s] = bits[s : s + width]
    taken = np.zeros(n, bool)
    spans = []
    for start in np.argsort(-sums, kind="stable"):
        if len(spans) == count:
            break
        if taken[start : start + width].any():
            continue
        taken[start : start + width] = True
        end = int(start) + width
        spans.append(Span(int(start), end, "".join(tokens[start:end]), float(sums[start])))
    return spans


# -- inputs -------------------------------------------------------------------------------------
_NEURON = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*(?::\s*([chCH]))?\s*$")


def parse_neuron(spec: str | tuple | Cell, num_layers: int, hidden_size: int) -> list[Cell]:
    """'L:K' (both c and h of unit K in layer L, 0-based) or 'L:K:c' / 'L:K:h' -> cells,
    checked against the model's size."""
    if isinstance(spec, Cell):
        cells = [spec]
    elif isinstance(spec, tuple):
        layer, unit, *kind = spec
        cells = [Cell(int(layer), int(unit), k) for k in (kind or KINDS)]
    else:
        m = _NEURON.match(str(spec))
        if not m:
            raise OptionError(
                f"--neuron {spec!r} is not LAYER:UNIT",
                "write e.g. --neuron 0:42 (both c and h) or --neuron 1:7:c",
            )
        kind = m.group(3)
        kinds = (kind.lower(),) if kind else KINDS
        cells = [Cell(int(m.group(1)), int(m.group(2)), k) for k in kinds]
    size = f"this model has layers 0-{num_layers - 1} and units 0-{hidden_size - 1}"
    for cell in cells:
        if cell.kind not in KINDS:
            raise OptionError(f"--neuron kind {cell.kind!r} is not c or h")
        if not 0 <= cell.layer < num_layers:
            raise CharLSTMError(f"--neuron {spec}: there is no layer {cell.layer}", size)
        if not 0 <= cell.unit < hidden_size:
            raise CharLSTMError(f"--neuron {spec}: there is no unit {cell.unit}", size)
    return cells


def display_tokens(vocab, ids: np.ndarray) -> list[str]:
    """The text of each position. At byte level a multi-byte character is shown on its first
    byte and its other bytes are empty; a byte that is not valid UTF-8 shows as U+FFFD."""
    if vocab.level == "char":
        return list(vocab.decode(ids))
    data = np.asarray(ids, dtype=np.uint8).tobytes()
    tokens = [""] * len(data)
    i = 0
    while i < len(data):
        lead = data[i]
        size = 1 if lead < 0x80 else 2 if lead >> 5 == 6 else 3 if lead >> 4 == 14 else 4
        size = size if lead >> 3 != 31 and lead >> 6 != 2 else 1
        piece = data[i : i + size]
        try:
            tokens[i] = piece.decode("utf-8")
            i += size
        except UnicodeDecodeError:
            tokens[i] = "\ufffd"
            i += 1
    return tokens


def symbol_names(vocab) -> list[str]:
    """A printable name for every id: the character itself, or <0xNN> for a non-ASCII byte."""
    if vocab.level == "char":
        return list(vocab.chars)
    return [chr(b) if b < 0x80 else f"<0x{b:02x}>" for b in range(256)]


def _check_limit(limit: int | None) -> int:
    if limit is None:
        return DEFAULT_LIMIT
    if not isinstance(limit, int) or limit < 2:
        raise CharLSTMError(f"--limit must be at least 2 characters, got {limit}")
    return limit


def _text_ids(ckpt, text, file, unknown, limit, name) -> tuple[np.ndarray, int, str]:
    """Ids of a given text (a string, or a file read exactly as `charlstm eval --text` does)."""
    from charlstm.data.heldout import encode_text_file

    if file is not None:
        path = Path(file)
        # a huge file is refused unread (UTF-8 has at most 4 bytes a character); a smaller
        # one is read, so that the message can say how many characters it has
        if path.is_file() and path.stat().st_size > max(4 * limit, 16 << 20):
            raise CharLSTMError(
                f"{path} is {path.stat().st_size:,} bytes, more than --limit {limit:,} characters",
                f"pass a larger --limit, or cut the text (e.g. head -c {limit} {path})",
            )
        ids, skipped = encode_text_file(path, ckpt.vocab, unknown)
        source = str(path)
    else:
        content = ckpt.vocab.normalize_text(text)
        ids = ckpt.vocab.encode_raw(content)
        bad = np.flatnonzero(ids < 0)
        if len(bad) and unknown == "error":
            raise CharLSTMError(
                ckpt.vocab.unknown_message(content, bad, name),
                "pass --unknown skip to inspect the rest",
            )
        ids, skipped, source = ids[ids >= 0], int(len(bad)), name
    if len(ids) == 0:
        raise CharLSTMError(
            f"{source} is empty" + (" once unknown characters are skipped" if skipped else ""),
            "give it some text",
        )
    if len(ids) < 2:
        raise CharLSTMError(f"{source} has fewer than 2 characters to score", "give it more text")
    if len(ids) > limit:
        raise CharLSTMError(
            f"{source} has {len(ids):,} characters, more than --limit {limit:,}",
            f"pass --limit {len(ids)} to inspect all of it, or cut the text",
        )
    return ids, skipped, source


def _excerpt_ids(ckpt, data, split, count) -> tuple[np.ndarray, str]:
    """The first `count` ids of a split of the run's data (or of `data`)."""
    from charlstm.data.heldout import split_ids

    ids, folder, split = split_ids(ckpt, data, split, instead="a TEXT file to inspect")
    if len(ids) < 2:
        raise CharLSTMError(f"the {split} split of {folder} is too short", "choose another --split")
    return np.asarray(ids[:count], dtype=np.int64), f"{folder} ({split})"


def _check_same_vocab(ckpt, other, path) -> None:
    if other.vocab.to_json() != ckpt.vocab.to_json():
        a, b = ckpt.vocab, other.vocab
        sizes = f"{b.level} level, {b.size} symbols vs {a.level} level, {a.size} symbols"
        raise CharLSTMError(
            f"--against {path} has another vocabulary ({sizes})",
            "compare checkpoints trained on the same tokenized data",
        )


def inspect_text(
    checkpoint,
    text: str | None = None,
    *,
    file: str | Path | None = None,
    source: str | None = None,
    data: str | Path | None = None,
    split: str = "val",
    limit: int | None = None,
    unknown: str = "error",
    against=None,
    neurons: Iterable[str | tuple | Cell] = (),
    top_k: int = TOP_K,
    device: str = "auto",
    threads: int = 0,
) -> Inspection:
    """Score a text character by character and record every layer's state (see `Inspection`).

    The text is `text` (a string, called `source` in messages), or `file` (read like `charlstm
    eval --text`), or by default
    the first `limit` (default 3,000) characters of a split of the run's data (`data` to point
    elsewhere). A given text longer than `limit` (default 10,000) is refused, not cut.
    `against` (a path or loaded Checkpoint of the same vocabulary) adds its per-character
    losses; `neurons` names cells to show ('L:K', 'L:K:c', (layer, unit)), checked against
    the model's size. `threads`: CPU threads (0: torch's count; one pass has nothing to time).
    """
    from charlstm.model.checkpoint import Checkpoint, load_checkpoint
    from charlstm.runtime import check_threads, cpu_threads, resolve_device

    if unknown not in ("error", "skip"):
        raise CharLSTMError(f"unknown --unknown {unknown!r}", "use error or skip")
    if text is not None and file is not None:
        raise CharLSTMError("give a text or a file to inspect, not both")
    if not isinstance(top_k, int) or top_k < 1:
        raise CharLSTMError(f"top_k must be >= 1, got {top_k}")
    given = text is not None or file is not None
    if given and (data is not None or split != "val"):
        raise CharLSTMError("--data and --split choose the default text; not with a TEXT")
    limit_chars = _check_limit(limit)
    check_threads(threads)
    dev = resolve_device(device)
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint, dev)
    model = ckpt.model.to(dev)
    cfg = model.config
    cells: list[Cell] = []
    for spec in neurons:
        cells += [c for c in parse_neuron(spec, cfg.num_layers, cfg.hidden_size) if c not in cells]
    other = None
    if against is not None:
        try:
            other = against if isinstance(against, Checkpoint) else load_checkpoint(against, dev)
        except CharLSTMError as e:
            raise CharLSTMError(f"--against: {e.message}", e.hint) from None
        _check_same_vocab(ckpt, other, other.path)
    skipped = 0
    if given:
        name = source or "the text"
        ids, skipped, source = _text_ids(ckpt, text, file, unknown, limit_chars, name)
    else:
        ids, source = _excerpt_ids(ckpt, data, split, limit or DEFAULT_EXCERPT)

    with cpu_threads(threads, dev):
        nats, rank, top_ids, top_probs, h, c = run_model(model, ids, top_k=top_k)
        if other is not None:
            other_nats = run_model(other.model.to(dev), ids, top_k=1, states=False)[0]
    tokens = display_tokens(ckpt.vocab, ids)
    comparison = None
    if other is not None:
        other_loss = float(np.nansum(other_nats) / (len(ids) - 1))
        comparison = Comparison(str(other.path), other_nats, other_loss, other_loss / math.log(2))
    return Inspection(
        checkpoint=str(ckpt.path),
        source=source,
        tokens=tokens,
        ids=np.asarray(ids, dtype=np.int64),
        nats=nats,
        rank=rank,
        top_ids=top_ids,
        top_probs=top_probs,
        h=h,
        c=c,
        symbols=symbol_names(ckpt.vocab),
        probes=probe_cells(tokens, c, h),
        neurons=cells,
        against=comparison,
        skipped=skipped,
        excerpt=not given,
        model=f"{cfg.num_layers} x LSTM({cfg.hidden_size}), {ckpt.vocab.size} symbols",
    )


def colour_range(values: np.ndarray) -> float:
    """The |activation| that gets the strongest colour: the 99th percentile, so that a few
    extreme values (a cell state can reach +-10 on a rare character) do not wash out the rest;
    larger values saturate."""
    top = float(np.percentile(np.abs(values), 99)) if len(values) else 0.0
    return top or float(np.abs(values).max(initial=0.0)) or 1.0


def default_cell(result: Inspection) -> tuple[Cell, Probe | None]:
    """The cell a neuron view opens on: the first one asked for; else the best cell of the
    first property (in PROPERTIES order: the long-range ones first) that some cell tracks
    with |r| >= 0.5; else the best-tracked property's best cell."""
    if result.neurons:
        return result.neurons[0], None
    ranked = [p for p in result.probes if p.best]
    for probe in ranked:
        if abs(probe.best[0].r) >= 0.5:
            return probe.best[0].cell, probe
    if ranked:
        probe = max(ranked, key=lambda p: abs(p.best[0].r))
        return probe.best[0].cell, probe
    return Cell(0, 0, "c"), None


def summary(result: Inspection) -> dict:
    """What was inspected and the text's scores (shared by the JSON and the web page)."""
    return {
        "checkpoint": result.checkpoint,
        "source": result.source,
        "model": result.model,
        "chars": result.chars,
        "loss": result.loss,
        "bpc": result.bpc,
        "skipped": result.skipped,
        "excerpt": result.excerpt,
        "tokens": result.tokens,
    }


def to_dict(result: Inspection, decimals: int = 4) -> dict:
    """The numbers as plain JSON-ready data (no activations except the cells asked for)."""

    def rounded(a) -> list:
        return [None if not np.isfinite(x) else round(float(x), decimals) for x in a]

    bits = result.bits
    top = [
        None
        if i == 0
        else [
            [result.symbols[j], round(float(p), decimals)]
            for j, p in zip(result.top_ids[i], result.top_probs[i], strict=True)
        ]
        for i in range(len(result.ids))
    ]
    out = {
        **summary(result),
        "bits": rounded(bits),
        "rank": [int(r) for r in result.rank],
        "top": top,
        "spans": [
            {"start": s.start, "end": s.end, "text": s.text, "bits": round(s.bits, decimals)}
            for s in result.surprising_spans()
        ],
        "probes": [
            {
                "name": p.name,
                "description": p.description,
                "support": p.support,
                "best": [
                    {
                        "layer": rc.cell.layer,
                        "unit": rc.cell.unit,
                        "kind": rc.cell.kind,
                        "r": round(rc.r, decimals),
                    }  # fmt: skip
                    for rc in p.best
                ],
            }
            for p in result.probes
        ],
        "neurons": [
            {
                "layer": cell.layer,
                "unit": cell.unit,
                "kind": cell.kind,
                "values": rounded(result.activation(cell)),
            }  # fmt: skip
            for cell in result.neurons
        ],
    }
    if result.against is not None:
        a = result.against
        out["against"] = {
            "checkpoint": a.checkpoint,
            "loss": a.loss,
            "bpc": a.bpc,
            "bits": rounded(a.nats / math.log(2)),
            "delta_bits": rounded(a.delta_bits(result.nats)),
        }
    return out
