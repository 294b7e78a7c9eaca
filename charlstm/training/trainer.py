"""`train`: plan a run (new, or resumed from its folder alone), then the loop. Truncated BPTT
with carried state, AdamW with warm-up and cosine decay, clipping, exact full-stream
validation, atomic checkpoints, exact resume, a NaN guard, and DistributedDataParallel under
torchrun.

Truncated BPTT, done right: the train split is cut into B contiguous streams; step k feeds
characters [kT, kT+T) of every stream and predicts the next ones. The LSTM state at the end of a
window is the start state of the next one, detached: the information flows on through the
whole epoch, the gradient stops at the window. A random offset in [0, T) per epoch moves the
window boundaries. Under torchrun each rank owns B / world_size of the streams (and their
states), so N ranks compute the same gradient as one process with batch B.

Resume: the run folder is the whole truth. `last.pt` holds the run's configuration, the data
it was trained on (folder and sha256) and its `RunState`; the model and optimizer are built
from that configuration before anything else (`charlstm.training.plan`), and options given again
must agree with it, except how long, how often and where (`TrainConfig.resumable()`).
"""

from __future__ import annotations

import math
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from charlstm.config import AUTO_PRESET, CPU_DEFAULT_PRESET, TrainConfig, resolve_config
from charlstm.data.dataset import Dataset, TrainStreams, data_name
from charlstm.errors import CharLSTMError, OptionError
from charlstm.evaluation.scoring import metrics_from_nats, stream_count, stream_nats
from charlstm.model.checkpoint import read_checkpoint, save_checkpoint
from charlstm.model.network import CharLSTM, repackage_state
from charlstm.runtime import autocast, autocast_dtype, resolve_device
from charlstm.training import autopreset, distributed
from charlstm.training.build import build_model, build_optimizer
from charlstm.training.ema import WeightAverage
from charlstm.training.plan import (
    LENGTHS,
    default_out,
    default_preset,
    given_options,
    on_rank0_first,
    rank_device,
    resume_config,
    resume_out,
    run_dataset,
)
from charlstm.training.progress import (
    EvalStats,
    NullReporter,
    Reporter,
    RunInfo,
    StepStats,
    TrainResult,
)
from charlstm.training.rundir import BEST, CURVES, LAST, METRICS, RUN_FILES, RunDir, disk_full_error
from charlstm.training.runstate import RunState
from charlstm.training.schedule import due, lr_at, total_steps

__all__ = ["EvalStats", "NullReporter", "Reporter", "RunInfo", "StepStats", "TrainResult", "train"]


def train(
    data: str | Path | None = None,
    out: str | Path | None = None,
    *,
    config: TrainConfig | None = None,
    preset: str | None = None,
    resume: bool = False,
    force: bool = False,
    allow_data_change: bool = False,
    reporter: Reporter | None = None,
    **overrides,
) -> TrainResult:
    """Train a CharLSTM on `data` (a tokenized folder, a raw text file/folder, or None for the
    bundled corpus) and write the run to `out` (default checkpoints/<data name>-<preset>).

    `config` gives every setting at once; otherwise `preset` plus keyword overrides named like
    `TrainConfig`'s fields (steps=..., hidden_size=...). With no preset, a CPU run given
    `time_budget_min` and no shape (num_layers, hidden_size) is sized by measuring ("auto");
    other runs get small (medium on CUDA). `resume=True` continues the run in `out` (default:
    the one of this data's auto and small/medium folders that holds a run) from its folder
    alone (data, model and options come from its last.pt; length, cadence and device may be
    given anew); `force=True` starts it over. Returns a `TrainResult`; raises
    `CharLSTMError` for anything the user can fix, before anything is written.
    """
    dist = distributed.from_environment()
    reporter = reporter if (reporter is not None and dist.is_main) else NullReporter()
    if resume and force:
        raise OptionError("--resume and --force contradict each other", "pass one of them")
    given = given_options(config, preset, overrides)
    payload, run_dir = None, None
    if resume:
        run_dir = RunDir(out if out is not None else resume_out(data_name(data), given))
        payload = read_checkpoint(run_dir.check_resumable())
        cfg = resume_config(payload, given)
    elif config is not None:
        if config.preset == AUTO_PRESET:
            raise OptionError(
                "a TrainConfig gives every value itself, so its preset cannot be 'auto'",
                "call train(data, preset='auto', time_budget_min=M, ...) instead",
            )
        cfg = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    elif (preset or default_preset(given)) == AUTO_PRESET:
        autopreset.check_auto_length(given)
        # the user's options, checked now; the shape is measured and chosen once the data is known
        cfg = replace(resolve_config(CPU_DEFAULT_PRESET, **overrides), preset=AUTO_PRESET)
    else:
        cfg = resolve_config(preset, **overrides)
    device = resolve_device(rank_device(cfg, dist) if dist.enabled else cfg.device)
    distributed.init(dist, device)
    try:
        dataset = on_rank0_first(dist, lambda: run_dataset(data, payload, allow_data_change))
        if run_dir is None:
            run_dir = RunDir(out if out is not None else default_out(dataset.name, cfg.preset))
            run_dir.check_new(force)
        choice = None
        if payload is None and cfg.preset == AUTO_PRESET:
            choice = _choose_auto(overrides, dataset, device, dist, reporter)
            cfg = choice.config
        trainer = Trainer(cfg, dataset, run_dir, device, dist, reporter)
        if choice is not None:
            trainer.state.elapsed_s = choice.measure_s  # the measuring was part of the budget
        if payload is not None:
            trainer.restore(payload, extended=bool(set(LENGTHS) & set(given)))
        if dist.is_main:
            run_dir.preflight(trainer.checkpoint_bytes() * 2 + (1 << 20))
        dist.barrier()
        result = trainer.start(resumed=payload is not None)
        result.auto_choice = choice
        return result
    finally:
        reporter.close()
        distributed.shutdown(dist)


def _choose_auto(overrides: dict, dataset: Dataset, device, dist, reporter: Reporter):
    """`--preset auto`: rank 0 times the candidates and chooses; every rank trains its choice.
    The choice is recorded as the run's configuration (preset "auto", the chosen values), so
    a resume rebuilds it without measuring again."""
    given = {k: v for k, v in overrides.items() if v is not None}
    choice = dist.broadcast_object(
        autopreset.choose(
            given, len(dataset.split("train")), dataset.vocab.size, device, dist.world_size
        )
        if dist.is_main
        else None
    )
    if hasattr(reporter, "auto_chosen"):
        reporter.auto_chosen(choice)
    else:  # a Reporter written before auto existed
        reporter.message(choice.reason)
    return choice


class _Interrupt:
    """First Ctrl-C (or SIGTERM) asks the loop to stop after this step; a second one quits."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def _handler(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


# -- the loop ---------------------------------------------------------------------------------
class Trainer:
    """One run: its configuration, data streams and `RunState`, and the steps that move it."""

    def __init__(
        self, cfg: TrainConfig, dataset: Dataset, run_dir: RunDir, device, dist, reporter: Reporter
    ) -> None:
        self.cfg, self.dataset, self.run_dir = cfg, dataset, run_dir
        self.device, self.dist, self.reporter = device, dist, reporter
        self.val_ids = dataset.split("val")
        if len(self.val_ids) < 2:
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
        model = build_model(self.model_config, cfg.precision, device)
        self.state = RunState(model, build_optimizer(model, cfg, device))
        if cfg.ema > 0:
            self.state.ema = WeightAverage(model, cfg.ema)
        self.forward_model = model
        if dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.forward_model = DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
        if cfg.compile:
            if model.lstm_kernel == "bf16":
                from charlstm.model.lstm_bf16 import make_opaque_to_compile

                make_opaque_to_compile()  # the window kernel stays one node, like nn.LSTM's
            self.forward_model = torch.compile(self.forward_model)
        self.amp_dtype = autocast_dtype(device, cfg.precision)
        torch.manual_seed(cfg.seed + dist.rank)  # dropout masks differ per rank
        self.total_steps = total_steps(cfg, self.streams.per_epoch)
        self.budget_s = cfg.time_budget_min * 60 if cfg.time_budget_min is not None else None
        self.resumed_at: int | None = None

    @property
    def model(self) -> CharLSTM:
        return self.state.model

    def checkpoint_bytes(self) -> int:
        # weights + AdamW's two moments (+ the average)
        return self.model.num_parameters() * 4 * (4 if self.state.ema is not None else 3)

    def restore(self, payload: dict, extended: bool) -> None:
        """Continue exactly where last.pt left off (in memory: nothing is written here)."""
        warning = self.state.load_state_dict(payload, self.dist, self.device)
        if warning:
            self.reporter.message(warning)
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

    def start(self, resumed: bool) -> TrainResult:
        """Create and lock the run folder (only now: every check has passed), then train."""
        main = self.dist.is_main
        if main:
            self.run_dir.create()
        self.dist.barrier()
        with self.run_dir.lock() if main else nullcontext():
            if main:
                if resumed:
                    self.run_dir.metrics.truncate_after(self.state.step)
                    self.reporter.message(
                        f"resuming from step {self.state.step:,} ({self.run_dir.file(LAST)})"
                    )
                else:
                    self.run_dir.clear()
                self.run_dir.write_config(
                    {
                        "train": self.cfg.to_dict(),
                        "model": self.model_config.to_dict(),
                        "data": str(self.dataset.folder),
                    }
                )
            self.dist.barrier()
            return self.run()

    def info(self) -> RunInfo:
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
            precision=self.precision_name(),
            compiled=cfg.compile,
            total_steps=self.total_steps,
            budget_min=cfg.time_budget_min,
            resumed_at=self.resumed_at,
        )

    def precision_name(self) -> str:
        if self.amp_dtype == torch.bfloat16:
            return "bf16 autocast"
        return "bf16 LSTM matmuls" if self.model.lstm_kernel == "bf16" else "fp32"

    def run(self) -> TrainResult:
        self.reporter.start(self.info())
        self._t0 = time.perf_counter()
        self._prior_s = self.state.elapsed_s
        self._session_start = self.state.step
        self._last_eval = self._last_save = self._t0
        self._rate = (self._t0, self.state.step)
        self._bad_in_row = 0
        interrupted = self.loop()
        self.finish(interrupted)
        return self.result(interrupted)

    def elapsed(self) -> float:
        """Wall time of the whole run: earlier sessions and this one."""
        return self._prior_s + time.perf_counter() - self._t0

    def loop(self) -> bool:
        """Train until the run's length is reached (False) or it is interrupted (True)."""
        self.model.train()
        with _Interrupt() as interrupt:
            while True:
                done = self.total_steps is not None and self.state.step >= self.total_steps
                over = self.budget_s is not None and self.elapsed() >= self.budget_s
                # every rank must take the same branch: decide on flags summed over ranks
                flags = self._sum([float(done or over), float(interrupt.requested)])
                if flags[0] > 0 or flags[1] > 0:
                    return flags[1] > 0 and flags[0] == 0
                lr = self.set_lr()
                loss, ok = self.train_step()
                self.count(loss, ok, lr)
                self.advance()
                self.after_step(lr)

    def set_lr(self) -> float:
        if self.total_steps is not None:
            progress = self.state.step / self.total_steps
        else:
            progress = self.elapsed() / self.budget_s
        lr = lr_at(self.cfg, self.state.step, progress, self.total_steps)
        for group in self.state.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def train_step(self) -> tuple[float, bool]:
        """One window of every stream: forward, backward, clip, update. Returns (loss, ok);
        a non-finite loss or gradient skips the update and leaves the weights as they were."""
        st = self.state
        if st.hidden is None:
            st.hidden = self.model.init_state(self.local_streams, self.device, torch.float32)
        lo = self.dist.rank * self.local_streams
        window = self.streams.window(st.epoch, st.epoch_step, lo, lo + self.local_streams)
        window = torch.from_numpy(window).to(self.device, non_blocking=True)
        with autocast(self.device, self.amp_dtype):
            logits, hidden = self.forward_model(window[:-1], st.hidden)
        loss = _loss(logits, window[1:])
        st.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for p in self.model.parameters() if p.grad is not None]
        if self.cfg.clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.clip)
        else:
            grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
        check = self.dist.all_reduce_sum(
            torch.stack([loss.detach().float(), grad_norm.detach().float()])
        )
        mean_loss, norm = float(check[0]) / self.dist.world_size, float(check[1])
        if not (math.isfinite(mean_loss) and math.isfinite(norm)):
            st.optimizer.zero_grad(set_to_none=True)
            if not all(torch.isfinite(s).all() for s in hidden):
                hidden = self.model.init_state(self.local_streams, self.device, torch.float32)
            st.hidden = repackage_state(hidden)
            return mean_loss, False
        st.optimizer.step()
        if st.ema is not None:
            st.ema.update()
        st.hidden = tuple(s.float() for s in repackage_state(hidden))
        return mean_loss, True

    def count(self, loss: float, ok: bool, lr: float) -> None:
        """The NaN guard and the running train loss."""
        st = self.state
        if ok:
            self._bad_in_row = 0
            st.loss_sum += loss
            st.loss_count += 1
            return
        self._bad_in_row += 1
        st.skipped_steps += 1
        if self._bad_in_row >= self.cfg.max_bad_steps:
            raise CharLSTMError(
                f"training diverged: {self._bad_in_row} steps in a row had a non-finite loss "
                f"or gradient (at step {st.step:,}, lr {lr:.3g}); last.pt and best.pt were "
                "left as they were",
                f"lower --lr (try --lr {self.cfg.lr / 3:.2g})",
            )

    def advance(self) -> None:
        st = self.state
        st.step += 1
        st.epoch_step += 1
        if st.epoch_step >= self.streams.per_epoch:
            st.epoch += 1
            st.epoch_step = 0
            st.hidden = None  # new offsets: the streams start afresh
        st.elapsed_s = self.elapsed()

    def after_step(self, lr: float) -> None:
        """Log, validate and save on their cadences."""
        step = self.state.step
        if step % self.cfg.log_every == 0 or step == self.total_steps:
            self.log(lr)
        eval_steps, eval_min = self.cfg.eval_every_parsed(self.total_steps)
        save_steps, save_min = self.cfg.save_every_parsed()
        if step != self.total_steps and self._due(eval_steps, eval_min, self._last_eval):
            self.evaluate_and_save(lr)
        elif self._due(save_steps, save_min, self._last_save):
            self.save()

    def _due(self, every_steps: int | None, every_min: float | None, since: float) -> bool:
        """A cadence of steps (the same on every rank) or minutes (rank 0's clock decides)."""
        fires = due(self.state.step, every_steps, every_min, time.perf_counter() - since)
        if self.dist.enabled and every_min is not None:
            fires = self._sum([float(fires and self.dist.is_main)])[0] > 0
        return fires

    def _sum(self, values: list[float]) -> list[float]:
        return self.dist.all_reduce_sum(torch.tensor(values, device=self.device)).tolist()

    def log(self, lr: float) -> None:
        st, now = self.state, time.perf_counter()
        rate_t, rate_step = self._rate
        cfg = self.cfg
        chars_per_s = (st.step - rate_step) * cfg.batch_size * cfg.bptt / max(now - rate_t, 1e-9)
        self._rate = (now, st.step)
        train_loss = st.loss_sum / st.loss_count if st.loss_count else None
        st.loss_sum, st.loss_count = 0.0, 0
        stats = StepStats(
            step=st.step,
            total_steps=self.total_steps,
            elapsed_s=self.elapsed(),
            budget_s=self.budget_s,
            train_loss=train_loss,
            val_loss=st.last_val,
            lr=lr,
            chars_per_s=chars_per_s,
            skipped=st.skipped_steps,
            eta_s=self._eta(),
        )
        self._record(
            {
                "kind": "train",
                "step": st.step,
                "chars": self.chars_seen,
                "elapsed_s": round(stats.elapsed_s, 3),
                "train_loss": train_loss,
                "lr": lr,
                "chars_per_s": round(chars_per_s, 1),
                "skipped": st.skipped_steps,
            }
        )
        self.reporter.step(stats)

    def _eta(self) -> float | None:
        if self.budget_s is not None:
            return max(0.0, self.budget_s - self.elapsed())
        done = self.state.step - self._session_start
        if not done or self.total_steps is None:
            return None
        pace = (time.perf_counter() - self._t0) / done
        return (self.total_steps - self.state.step) * pace

    @property
    def chars_seen(self) -> int:
        return self.state.step * self.cfg.batch_size * self.cfg.bptt

    def validate(self) -> float:
        """Exact full-stream val loss (of the averaged weights with --ema); streams sharded
        over ranks, sums all-reduced."""
        if self.state.ema is None:
            return self.validate_weights()
        with self.state.ema.applied():
            return self.validate_weights()

    def validate_weights(self) -> float:
        """Exact full-stream val loss of the model's weights as they are."""
        streams = stream_count(len(self.val_ids), self.cfg.eval_batch_size)
        per_rank = -(-streams // self.dist.world_size)
        lo = min(streams, self.dist.rank * per_rank)
        hi = min(streams, lo + per_rank)
        nats, count = stream_nats(
            self.model, self.val_ids, streams, self.device, self.amp_dtype, shard=(lo, hi)
        )
        # float64 sums on the CPU (no float64 on Apple's MPS), on the GPU only for NCCL
        where = self.device if self.dist.enabled else "cpu"
        totals = self.dist.all_reduce_sum(
            torch.tensor([nats, float(count)], dtype=torch.float64, device=where)
        )
        return metrics_from_nats(float(totals[0]), int(totals[1]))[0]

    def evaluate_and_save(self, lr: float) -> None:
        st = self.state
        val = self.validate()
        # with --ema, the trained weights too: whether averaging pays shows in every run
        trained = {} if st.ema is None else {"trained_val_loss": self.validate_weights()}
        improved = st.best_val is None or val < st.best_val
        st.last_val = val
        st.best_val = val if improved else st.best_val
        streams = stream_count(len(self.val_ids), self.cfg.eval_batch_size)
        self._record(
            {
                "kind": "eval",
                "step": st.step,
                "chars": self.chars_seen,
                "elapsed_s": round(self.elapsed(), 3),
                "val_loss": val,
                "val_streams": streams,
                "bpc": val / math.log(2),
                "perplexity": math.exp(min(val, 700)),
                "lr": lr,
                **trained,
            }
        )
        self.reporter.evaluated(EvalStats(st.step, val, improved, streams))
        self.save()
        if improved and self.dist.is_main:
            self._write(self.run_dir.promote_best, self.run_dir.file(BEST))
        self._last_eval = time.perf_counter()

    def save(self) -> None:
        """last.pt, atomically; a full disk is one line that says how much space is needed."""
        self.state.elapsed_s = self.elapsed()
        payload = self.payload()  # a collective under DDP: every rank takes part
        path = self.run_dir.file(LAST)
        if self.dist.is_main:
            self._write(lambda: save_checkpoint(payload, path), path)
        self._last_save = time.perf_counter()

    def _write(self, write, path: Path) -> None:
        try:
            write()
        except OSError as e:
            error = disk_full_error(e, path, self.checkpoint_bytes(), self.state.step)
            if error is None:
                raise
            raise error from None

    def _record(self, record: dict) -> None:
        if self.dist.is_main:
            self._write(lambda: self.run_dir.metrics.append(record), self.run_dir.file(METRICS))

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

    def finish(self, interrupted: bool) -> None:
        """The last save (and, for a run that ran to its end, the final validation)."""
        st = self.state
        if interrupted:
            self.reporter.message("interrupted: saving last.pt")
            self.save()
        elif st.step == self._session_start and st.last_val is not None:
            self.reporter.message(f"the run is already at step {st.step:,}: nothing to do")
        else:
            self.evaluate_and_save(self.state.optimizer.param_groups[0]["lr"])
        if self.dist.is_main:
            self._write_curves()
        # leave together: a rank that tears down its process group while another still works
        # can abort in gloo's background threads
        self.dist.barrier()

    def result(self, interrupted: bool) -> TrainResult:
        st, elapsed = self.state, self.elapsed()
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
        )

    def _write_curves(self) -> None:
        """curves.png beside metrics.jsonl when matplotlib is installed (an optional extra)."""
        from charlstm.training.report import has_matplotlib, read_curves, write_png

        if not has_matplotlib():
            return
        try:
            write_png(read_curves(self.run_dir.path), self.run_dir.file(CURVES), self.run_dir.name)
        except (CharLSTMError, OSError, ValueError) as e:
            self.reporter.message(f"could not draw curves.png: {e}")


def _loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy in nats per character."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))
