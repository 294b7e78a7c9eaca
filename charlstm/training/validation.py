"""Validation during training: the exact full-stream loss of the whole val split with carried
state (the number `charlstm eval` gives), its streams sharded over ranks under torchrun; and a
short greedy sample of what the model writes, for the logs."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch

from charlstm.evaluation.scoring import metrics_from_nats, stream_count, stream_nats
from charlstm.training.distributed import Dist
from charlstm.training.runstate import RunState

# the text logged at each validation: a glance at the model, not a measurement; greedy, so it
# costs no random numbers and a resumed run writes what an unbroken one would
SAMPLE_CHARS = 200


#: characters per stream that `seconds_per_char` times: a glance, not a validation
PROBE_CHARS = 32


class Validator:
    """Scores a model on the val split: `streams` contiguous streams side by side (all of the
    split, unless `limit` cut it to the first characters a time budget can afford)."""

    def __init__(self, val_ids: np.ndarray, batch_size: int, device, amp_dtype, dist: Dist):
        self.val_ids, self.device, self.amp_dtype, self.dist = val_ids, device, amp_dtype, dist
        self.batch_size = batch_size
        self.split_chars = len(val_ids)
        self.streams = stream_count(len(val_ids), batch_size)

    def seconds_per_char(self, model: torch.nn.Module) -> float:
        """What validation costs here per character, from scoring PROBE_CHARS of each stream
        once (rank 0's figure on every rank): a time budget reserves the final validation
        before it has timed one."""
        from charlstm.training.clock import now

        ids = self.val_ids[: self.streams * PROBE_CHARS + 1]
        began = now()
        stream_nats(model, ids, self.streams, self.device, self.amp_dtype, bptt=PROBE_CHARS)
        per_char = (now() - began) / max(1, len(ids) - 1)
        return self.dist.broadcast_object(per_char if self.dist.is_main else None)

    def limit(self, chars: int) -> None:
        """Score only the first `chars` characters of the split from now on."""
        self.val_ids = self.val_ids[: max(2, chars)]
        self.streams = stream_count(len(self.val_ids), self.batch_size)

    def loss(self, model: torch.nn.Module) -> float:
        """Exact full-stream val loss (nats/char) of the model's weights as they are; each rank
        scores its share of the streams and the sums are all-reduced."""
        per_rank = -(-self.streams // self.dist.world_size)
        lo = min(self.streams, self.dist.rank * per_rank)
        hi = min(self.streams, lo + per_rank)
        nats, count = stream_nats(
            model, self.val_ids, self.streams, self.device, self.amp_dtype, shard=(lo, hi)
        )
        # float64 sums on the CPU (no float64 on Apple's MPS), on the GPU only for NCCL
        where = self.device if self.dist.enabled else "cpu"
        totals = self.dist.all_reduce_sum(
            torch.tensor([nats, float(count)], dtype=torch.float64, device=where)
        )
        return metrics_from_nats(float(totals[0]), int(totals[1]))[0]

    def run_losses(self, state: RunState) -> tuple[float, dict]:
        """The run's val loss (of the averaged weights with --ema) and, with --ema, the trained
        weights' too (`{"trained_val_loss": ...}`): whether averaging pays shows in every run."""
        if state.ema is None:
            return self.loss(state.model), {}
        with state.ema.applied():
            averaged = self.loss(state.model)
        return averaged, {"trained_val_loss": self.loss(state.model)}

    def sample(self, state: RunState, vocab) -> str:
        """SAMPLE_CHARS greedy characters after a newline, from the weights validation scores
        (the average with --ema), as `charlstm sample --temperature 0` writes them. The model is
        left in the mode it was in."""
        from charlstm.generation.sampling import generate
        from charlstm.model.checkpoint import Checkpoint

        model = state.model
        was_training = model.training
        try:
            with state.ema.applied() if state.ema is not None else nullcontext():
                ckpt = Checkpoint(model, vocab, {}, None)
                device = str(self.device)
                return generate(ckpt, length=SAMPLE_CHARS, temperature=0.0, device=device)[0]
        finally:
            model.train(was_training)
