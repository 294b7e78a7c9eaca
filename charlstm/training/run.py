"""`Run`: what a training run is — its configuration, data streams, model, optimizer and
`RunState` on its device and ranks — built and checked before its folder is touched, and what
it saves (`payload`) and returns (`result`)."""

from __future__ import annotations

import secrets

import torch

from charlstm.config import TrainConfig
from charlstm.data.dataset import Dataset, TrainStreams
from charlstm.errors import CharLSTMError, OptionError
from charlstm.model.network import CharLSTM
from charlstm.runtime import autocast_dtype, cuda_precision, use_tf32
from charlstm.training.build import build_model, build_optimizer, forward_model
from charlstm.training.ema import WeightAverage
from charlstm.training.progress import RunInfo, TrainResult
from charlstm.training.rundir import RUN_FILES, RunDir
from charlstm.training.runstate import RunState
from charlstm.training.schedule import total_steps


class Run:
    """What a training run is: its configuration, data streams, model and `RunState`, on its
    device and ranks. Built (and checked) before its folder is touched."""

    def __init__(
        self, cfg: TrainConfig, dataset: Dataset, run_dir: RunDir, device, dist, kernel=None
    ) -> None:
        self.cfg, self.dataset, self.run_dir = cfg, dataset, run_dir
        self.kernel_choice = kernel  # a training.kernel.KernelChoice, or None
        self.device, self.dist = device, dist
        val_ids = dataset.split("val")
        if len(val_ids) < 2:
            raise CharLSTMError(
                f"the val split of {dataset.folder} is empty", "re-tokenize with a --val-frac > 0"
            )
        if cfg.batch_size % dist.world_size:
            raise OptionError(
                f"--batch-size {cfg.batch_size} does not divide among {dist.world_size} processes",
                "make it a multiple of the number of processes",
            )
        self.streams = TrainStreams(dataset.split("train"), cfg.batch_size, cfg.bptt, cfg.seed)
        self.local_streams = cfg.batch_size // dist.world_size
        self.model_config = cfg.model_config(dataset.vocab.size)
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        model = build_model(
            self.model_config, cfg.precision, device, kernel.kernel if kernel else None
        )
        # a new run's id (a resume restores the run's own): what ties last.pt to its folder
        run_id = dist.broadcast_object(secrets.token_hex(8) if dist.is_main else None)
        self.state = RunState(model, build_optimizer(model, cfg, device), run_id=run_id)
        if cfg.ema > 0:
            self.state.ema = WeightAverage(model, cfg.ema)
        self.forward_model = forward_model(model, cfg, dist, device)
        self.amp_dtype = autocast_dtype(device, cfg.precision, cfg.hidden_size)
        if device.type == "cuda":  # TF32 tensor cores unless the run asked for strict fp32
            use_tf32(cuda_precision(device, cfg.precision, cfg.hidden_size) != "fp32")
        torch.manual_seed(cfg.seed + dist.rank)  # dropout masks differ per rank
        self.val_ids = val_ids
        self.total_steps = total_steps(cfg, self.streams.per_epoch)
        self.budget_s = cfg.time_budget_min * 60 if cfg.time_budget_min is not None else None
        self.resumed_at: int | None = None

    @property
    def model(self) -> CharLSTM:
        return self.state.model

    def checkpoint_bytes(self) -> int:
        # weights + AdamW's two moments (+ the average)
        return self.model.num_parameters() * 4 * (4 if self.state.ema is not None else 3)

    def restore(self, payload: dict, extended: bool) -> str | None:
        """Continue exactly where last.pt left off (in memory: nothing is written here);
        returns a warning for the user, if any."""
        warning = self.state.load_state_dict(payload, self.dist, self.device)
        self.resumed_at = self.state.step
        if extended and self.total_steps is not None and self.total_steps < self.state.step:
            asked = (
                f"--steps {self.cfg.steps}" if self.cfg.steps else f"--epochs {self.cfg.epochs:g}"
            )
            raise OptionError(
                f"{asked} is {self.total_steps:,} steps, fewer than the {self.state.step:,} "
                "this run has done",
                "give a larger length to extend it, or leave it out to continue the run as is",
            )
        return warning

    def info(self, elapsed_s: float = 0.0) -> RunInfo:
        cfg = self.cfg
        return RunInfo(
            run_dir=self.run_dir.path,
            data=str(self.dataset.folder),
            train_chars=len(self.streams.ids),
            val_chars=len(self.val_ids),
            vocab_size=self.dataset.vocab.size,
            model=self.model_config,
            params=self.model.num_parameters(),
            batch_size=cfg.batch_size,
            bptt=cfg.bptt,
            lr=cfg.lr,
            processes=self.dist.world_size,
            device=str(self.device),
            precision=self.precision_name()
            + (f" ({self.kernel_choice.describe()})" if self.kernel_choice else ""),
            compiled=cfg.compile,
            total_steps=self.total_steps,
            budget_min=cfg.time_budget_min,
            resumed_at=self.resumed_at,
            elapsed_s=elapsed_s,
        )

    def precision_name(self) -> str:
        if self.amp_dtype == torch.bfloat16:
            return "bf16 autocast"
        if self.device.type == "cuda":
            return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "fp32"
        return "bf16 LSTM matmuls" if self.model.lstm_kernel == "bf16" else "fp32"

    @property
    def chars_seen(self) -> int:
        return self.state.step * self.cfg.batch_size * self.cfg.bptt

    def payload(self) -> dict:
        return {
            "model_config": self.model_config.to_dict(),
            "train_config": self.cfg.to_dict(),
            "vocab": self.dataset.vocab.to_json(),
            "data": {
                "name": self.dataset.name,
                "folder": str(self.dataset.folder.resolve()),
                "sha256": self.dataset.sha256,
                "chars": self.dataset.meta["chars"],
            },
            **self.state.state_dict(self.dist, self.device),
        }

    def result(self, interrupted: bool, elapsed: float) -> TrainResult:
        st = self.state
        files = {n: self.run_dir.file(n) for n in RUN_FILES if self.run_dir.file(n).exists()}
        return TrainResult(
            run_dir=self.run_dir.path,
            steps=st.step,
            chars_seen=self.chars_seen,
            elapsed_s=elapsed,
            params=self.model.num_parameters(),
            chars_per_s=max(1, st.step) * self.cfg.batch_size * self.cfg.bptt / max(elapsed, 1e-9),
            best_val_loss=st.best_val,
            last_val_loss=st.last_val,
            interrupted=interrupted,
            skipped_steps=st.skipped_steps,
            files=files,
            data_name=self.dataset.name,
            budget_min=self.cfg.time_budget_min,
        )
