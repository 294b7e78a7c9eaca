"""`RunState`: everything about a training run that changes as it trains, in one object that
saves itself into a checkpoint and restores itself from one.

The weights, the optimizer, the position in the data (step, epoch, step within the epoch), the
carried hidden state of every stream, the random-number generators, the best and last
validation loss, the running loss sums, the skipped steps and the elapsed time: with all of
them restored, a resumed run continues bit for bit where it stopped. A new plain field (a
number, a string, a list) is saved and restored with no other change.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch

from charlstm.training.distributed import Dist
from charlstm.training.ema import WeightAverage

# fields that are live objects, saved by a method of their own; every other field is plain data
_LIVE = ("model", "optimizer", "hidden", "ema")


@dataclass
class RunState:
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    step: int = 0
    epoch: int = 0
    epoch_step: int = 0  # windows done in the current epoch
    elapsed_s: float = 0.0  # wall time of all sessions of the run
    best_val: float | None = None
    last_val: float | None = None
    skipped_steps: int = 0  # non-finite steps that were not applied
    run_id: str = ""  # made when the run starts; config.json beside last.pt records it too
    loss_sum: float = 0.0  # train loss since the last log line (so a resume logs the same)
    loss_count: int = 0
    grad_norm_sum: float = 0.0  # gradient norms (before clipping) of those same steps
    hidden: tuple[torch.Tensor, torch.Tensor] | None = None  # this rank's carried (h, c)
    ema: WeightAverage | None = None  # --ema: the average of the weights

    def plain(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _LIVE}

    def state_dict(self, dist: Dist, device: torch.device) -> dict:
        """`{"model": weights, "run": everything else}` for a checkpoint. A collective under
        DDP: every rank must call it (hidden states and RNG states are gathered). With --ema
        the `model` weights are the average (what eval and sample load) and the trained ones
        are in the run state."""
        rng = {"torch": torch.get_rng_state()}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(device)
        hidden = None
        if self.hidden is not None:
            hidden = [dist.all_gather(s.float(), dim=1).cpu() for s in self.hidden]
        trained = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        averaged = {}
        if self.ema is not None:
            averaged = {"trained_model": trained, "ema_updates": self.ema.updates}
        return {
            "model": trained if self.ema is None else self.ema.model_state_dict(self.model),
            "run": {
                **self.plain(),
                **averaged,
                "optimizer": self.optimizer.state_dict(),
                "hidden": hidden,
                "rng": dist.all_gather_object(rng),
                "world_size": dist.world_size,
            },
        }

    def load_state_dict(self, payload: dict, dist: Dist, device: torch.device) -> str | None:
        """Restore from a checkpoint's payload; returns a warning to show, if any."""
        run = payload["run"]
        if self.ema is not None:
            self.model.load_state_dict(run["trained_model"])
            self.ema.load_state_dict(payload["model"], run["ema_updates"])
        else:
            self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(run["optimizer"])
        for name, value in self.plain().items():
            setattr(self, name, run.get(name, value))
        if run.get("hidden") is not None:  # all streams; this rank takes its slice
            local = run["hidden"][0].shape[1] // dist.world_size
            lo = dist.rank * local
            self.hidden = tuple(s[:, lo : lo + local].to(device) for s in run["hidden"])
        rngs = run.get("rng") or []
        if len(rngs) == dist.world_size:
            torch.set_rng_state(rngs[dist.rank]["torch"])
            if device.type == "cuda" and "cuda" in rngs[dist.rank]:
                torch.cuda.set_rng_state(rngs[dist.rank]["cuda"], device)
            return None
        return (
            f"resuming a {run.get('world_size')}-process run on {dist.world_size}: dropout "
            "random streams restart from the seed (hidden states carry over)"
        )
