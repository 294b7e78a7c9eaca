"""`Batch`: the stepping side of a scheduler, the running streams as rows of one `FastLSTMStep`.

A round (`Batch.round`) samples one character for every row (per-row temperature, top-k,
top-p: one vectorised pass, `sample_rows`; a row that cannot be sampled fails alone), decodes
it, checks it against the stream's stop sequences and length, drops the rows that finished
and advances the rest by one step. Streams join between rounds (`Batch.admit`): a group's
shared prompt runs through the model in one pass (scored, if asked), and its (h, c) rows and
next-character logits are appended.

The sampling runs in numpy: at a vocabulary of a few hundred symbols and a few dozen rows,
each torch call's fixed cost (a few microseconds) is most of the work, and a batch of one pays
it a dozen times per character. The logits are read once per round wherever the model runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from charlstm.generation.logprobs import prompt_scores, score_tokens, text_ends
from charlstm.generation.sampling import FastLSTMStep
from charlstm.generation.streams import MIN_TEMPERATURE, Admission, Stream, StreamEvent


def sample_rows(logits, temperature, top_k, top_p, uniforms, kinds=None) -> np.ndarray:
    """One id per row of `logits` (B, V), each row with its own temperature (below 1e-6:
    argmax), top-k (0: off), top-p and uniform number in [0, 1): the same distribution as
    `sampling.filter_logits`, sampled by inverting the row's CDF at its uniform. Arrays (numpy,
    or CPU tensors) in, int64 ids out.

    The CDF runs over the vocabulary in id order for every row, so a row's character depends
    on its own options and uniform only, never on whether another row of the batch filters;
    the sort that top-k and top-p need happens only in a batch where some row filters.
    `kinds`: (any row greedy, every row greedy, any row filters) when the caller knows them."""
    logits = np.asarray(logits, dtype=np.float32)
    temperature = np.asarray(temperature, dtype=np.float32)
    V = logits.shape[-1]
    greedy = temperature < MIN_TEMPERATURE  # 1/temperature would overflow float32
    top_k, top_p = np.asarray(top_k), np.asarray(top_p, dtype=np.float32)
    k = np.where((top_k > 0) & (top_k < V), top_k, V)
    if kinds is None:
        kinds = (bool(greedy.any()), bool(greedy.all()), bool(((k < V) | (top_p < 1)).any()))
    any_greedy, all_greedy, filtering = kinds
    if all_greedy:
        return logits.argmax(-1)
    scale = np.where(greedy, np.float32(1), temperature) if any_greedy else temperature
    probs = np.exp((logits - logits.max(-1, keepdims=True)) / scale[:, None])  # unnormalized
    if filtering:
        probs = _filtered(probs, k, top_p)
    cdf = np.cumsum(probs, -1)
    target = np.asarray(uniforms, dtype=np.float32) * cdf[:, -1]
    pick = np.minimum((cdf <= target[:, None]).sum(-1), V - 1)  # searchsorted, side="right"
    return np.where(greedy, logits.argmax(-1), pick) if any_greedy else pick


def _filtered(probs: np.ndarray, k: np.ndarray, top_p: np.ndarray) -> np.ndarray:
    """Each row's probabilities after its top-k (ties with the k-th kept) and then its nucleus
    over the renormalized top-k (a symbol is dropped when the mass before it already reaches
    top_p; the top one stays); unnormalized, in id order."""
    order = np.argsort(-probs, axis=-1, kind="stable")
    sorted_p = np.take_along_axis(probs, order, -1)
    kth = np.take_along_axis(sorted_p, (k - 1)[:, None], -1)
    sorted_p = np.where(sorted_p < kth, 0, sorted_p)
    mass_before = np.cumsum(sorted_p, -1) - sorted_p
    keep = mass_before < top_p[:, None] * sorted_p.sum(-1, keepdims=True)
    out = np.zeros_like(probs)
    np.put_along_axis(out, order, np.where(keep, sorted_p, 0), -1)
    return out


Report = Callable[[Stream | None, Exception], None]


class Batch:
    """The running streams of one model as the rows of one batch, with each row's next-character
    logits and sampling options. One thread at a time; streams end through `admission`, and a
    failure is reported to `report(stream, exc)` (None: every row)."""

    def __init__(self, model, vocab, admission: Admission, dtype: torch.dtype, report: Report):
        self.model = model
        self.vocab = vocab
        self.admission = admission
        self.report = report
        self.device = model.head.weight.device
        self.vocab_size = model.config.vocab_size
        self.steps = 0  # batch steps taken
        newline = vocab.encode_raw("\n")
        self._context_only = newline if len(newline) and newline[0] >= 0 else np.zeros(1, np.int64)
        self.step = FastLSTMStep(model, 0, dtype)
        self.logits = torch.empty(0, self.vocab_size, device=self.device)
        self.rows: list[Stream] = []  # in row order
        self.options: list[tuple[float, int, float]] = []  # (temperature, top_k, top_p) per row
        self._params: tuple | None = None  # `options` as arrays, rebuilt when the rows change

    # -- joining ------------------------------------------------------------------------------
    def admit(self, group: Sequence[Stream], events: list[StreamEvent]) -> None:
        """The group's streams join (or end: nothing to generate, or their prompt fails alone)."""
        try:
            self._prime(group, events)
        except Exception as e:  # this request's prompt or options
            for s in group:
                self.fail(s, e, events)

    def _prime(self, group: Sequence[Stream], events: list[StreamEvent]) -> None:
        """Run the group's shared prompt through the model (scoring it, if asked); its live
        streams join the batch (those with max_tokens 0 finish here)."""
        live = [s for s in group if not s.done]
        if not any(s.params.max_tokens or s.params.prompt_logprobs is not None for s in live):
            for s in live:  # nothing to generate or score: no pass
                self._end(s, "length", events)
            return
        logits, state = self._run_prompt(live)
        for s in live:
            if s.params.max_tokens == 0:
                self._end(s, "length", events)
        live = [s for s in live if not s.done]
        if not live:
            return
        p, n = live[0].params, len(live)
        # bounded here, before any array sees them: a top_k beyond the vocabulary means "off"
        options = (float(p.temperature), min(int(p.top_k), self.vocab_size), float(p.top_p))
        joined = torch.cat([self.logits, logits[-1].float().expand(n, -1)])
        self.step.join(tuple(x.expand(-1, n, -1) for x in state))  # last: nothing after it fails
        self.logits = joined
        self.rows = self.rows + live
        self.options = self.options + [options] * n
        self._params = None

    def _run_prompt(self, live: list[Stream]):
        """The prompt in one pass: logits (T, 1, V) and state; its scores go to the streams
        that keep them."""
        prompt_ids = live[0].prompt_ids
        ids = prompt_ids if len(prompt_ids) else self._context_only  # as `charlstm sample`
        tokens = torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64)).to(self.device)
        logits, state = self.model(tokens[:, None])
        scored = [s for s in live if s.params.prompt_logprobs is not None]
        if scored and len(prompt_ids):
            k = max(s.params.prompt_logprobs for s in scored)
            scores = prompt_scores(logits[:, 0], tokens, k, text_ends(prompt_ids, self.vocab.level))
            for s in scored:
                s.prompt_logprobs = scores
        return logits, state

    # -- one round ----------------------------------------------------------------------------
    def round(self, events: list[StreamEvent]) -> None:
        """Sample a character for every row, hand it out, drop the rows that finished, step."""
        ids = self.sample()
        self.emit(ids, events)
        self.advance(ids, events)

    def sample(self) -> np.ndarray:
        """One id per row, all rows in one vectorised pass; if that fails, row by row, so
        that only the rows that fail are lost (they get id -1 and are ended by `emit`)."""
        logits = self.logits.detach().cpu().numpy()
        try:
            uniforms = np.array([s.next_uniform() for s in self.rows], dtype=np.float32)
            *params, kinds = self.params()
            return sample_rows(logits, *params, uniforms, kinds)
        except Exception:
            return np.array([self._sample_row(logits, r) for r in range(len(self.rows))])

    def _sample_row(self, logits: np.ndarray, r: int) -> int:
        s = self.rows[r]
        try:
            t, k, p = ([x] for x in self.options[r])
            return int(sample_rows(logits[r : r + 1], t, k, p, [s.next_uniform()])[0])
        except Exception as e:
            s.error = f"{type(e).__name__}: {e}"
            self.report(s, e)
            return -1

    def params(self) -> tuple:
        """Per-row temperature, top-k and top-p arrays and `sample_rows`'s kinds."""
        if self._params is None:
            t, k, p = (np.array(column) for column in zip(*self.options, strict=True))
            greedy = t < MIN_TEMPERATURE
            filters = bool(((k > 0) & (k < self.vocab_size)).any() or (p < 1).any())
            kinds = (bool(greedy.any()), bool(greedy.all()), filters)
            self._params = (t.astype(np.float32), k.astype(np.int64), p.astype(np.float32), kinds)
        return self._params

    def emit(self, ids: np.ndarray, events: list[StreamEvent]) -> None:
        """Decode each row's character, check its stops and length; a row that fails ends alone."""
        scores = self._scores(ids)
        for r, s in enumerate(self.rows):
            if s.done:  # cancelled since the last round
                continue
            try:
                if ids[r] < 0:
                    raise RuntimeError(s.error or "sampling failed")
                piece = s.decode(ids[r : r + 1])
                if scores is not None and s.logprobs is not None:
                    k = s.params.logprobs
                    lp, top_ids, top_lps = (column[r] for column in scores)
                    s.logprobs.append(int(ids[r]), lp, top_ids[:k], top_lps[:k], len(piece))
                text, finish = s.advance(piece)
            except Exception as e:
                self.fail(s, e, events)
                continue
            if finish is not None:
                self.admission.end(s, finish)
            if text or finish:
                events.append(StreamEvent(s, text, finish))

    def _scores(self, ids: np.ndarray) -> tuple[list, list, list] | None:
        """The sampled ids' log-probabilities and top alternatives, when a row keeps them."""
        ks = [s.params.logprobs for s in self.rows if s.params.logprobs is not None]
        if not ks:
            return None
        chosen = torch.from_numpy(np.maximum(ids, 0)).to(self.device)  # (-1: a failed row)
        return score_tokens(self.logits, chosen, max(ks))

    def advance(self, ids: np.ndarray, events: list[StreamEvent]) -> None:
        """Finished and cancelled rows leave; the rest take one step."""
        rows = self.rows
        keep = [r for r, s in enumerate(rows) if not s.done]
        if len(keep) < len(rows):
            self.step.keep(torch.tensor(keep, dtype=torch.long, device=self.device))
            ids = ids[keep]
            self.rows = [rows[r] for r in keep]
            self.options = [self.options[r] for r in keep]
            self._params = None
        if not self.rows:
            self.logits = self.logits[:0]
            return
        try:
            self.logits = self.step(torch.from_numpy(ids).to(self.device))
            self.steps += 1
        except Exception as e:  # not one row's doing: every running stream ends
            self.fail_all(e, events)

    # -- endings ------------------------------------------------------------------------------
    def _end(self, s: Stream, reason: str, events: list[StreamEvent]) -> None:
        self.admission.end(s, reason)
        events.append(StreamEvent(s, "", reason))

    def fail(self, s: Stream, e: Exception, events: list[StreamEvent]) -> None:
        self.admission.end(s, "error", s.error or f"{type(e).__name__}: {e}")
        events.append(StreamEvent(s, "", "error"))
        self.report(s, e)

    def fail_all(self, e: Exception, events: list[StreamEvent]) -> None:
        """Every row, and every stream waiting to join, ends with "error"; the batch empties."""
        for s in self.rows + [s for g in self.admission.take() for s in g]:
            if not s.done:
                self.admission.end(s, "error", f"{type(e).__name__}: {e}")
                events.append(StreamEvent(s, "", "error"))
            self.admission.end(s, "error")  # frees the slot of a cancelled row too
        self.rows, self.options, self._params = [], [], None
        self.step.keep(torch.zeros(0, dtype=torch.long, device=self.device))
        self.logits = self.logits[:0]
        self.report(None, e)
