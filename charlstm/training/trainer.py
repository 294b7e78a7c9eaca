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
from dataclasses import replace
from pathlib import Path

import torch

from charlstm.config import AUTO_PRESET, CPU_DEFAULT_PRESET, PRESETS, TrainConfig, resolve_config
from charlstm.data.dataset import Dataset, data_name
from charlstm.errors import CharLSTMError, OptionError
from charlstm.model.checkpoint import read_checkpoint
from charlstm.model.network import CharLSTM
from charlstm.runtime import cpu_threads, resolve_device
from charlstm.training import autopreset, distributed
from charlstm.training import clock as run_clock
from charlstm.training.budget import BUDGET_VALIDATIONS, BudgetPlan
from charlstm.training.clock import RunClock
from charlstm.training.interrupt import Interrupt
from charlstm.training.kernel import choose_kernel
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
from charlstm.training.run import Run
from charlstm.training.rundir import RunDir
from charlstm.training.schedule import due, lr_at
from charlstm.training.sinks import check_extras
from charlstm.training.step import optimizer_step
from charlstm.training.validation import Validator
from charlstm.training.verdict import RunFacts, baselines, diagnose
from charlstm.training.writer import RunWriter

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
    bundled corpus) and write the run to `out` (default `checkpoints/<data name>-<preset>`).

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
        run_dir.check_owns(payload)
        cfg = resume_config(payload, given)
    else:
        cfg = _new_config(config, preset, given, overrides)
    check_extras(cfg, overrides)
    device = resolve_device(rank_device(cfg, dist) if dist.enabled else cfg.device)
    distributed.init(dist, device)
    try:
        dataset = on_rank0_first(dist, lambda: run_dataset(data, payload, allow_data_change))
        began = (
            run_clock.now()
        )  # the budget counts from here: measuring, building, training, the end
        if run_dir is None:
            run_dir = RunDir(out if out is not None else default_out(dataset.name, cfg.preset))
            run_dir.check_new(force)
        choice = None
        if payload is None and cfg.preset == AUTO_PRESET:
            choice = _choose_auto(overrides, dataset, device, dist, reporter)
            cfg = choice.config
        kernel = choose_kernel(cfg, dataset.vocab.size, device, may_measure=not dist.enabled)
        run = Run(cfg, dataset, run_dir, device, dist, kernel)
        if payload is not None:
            warning = run.restore(payload, extended=bool(set(LENGTHS) & set(given)))
            if warning:
                reporter.message(warning)
        if dist.is_main:
            run_dir.preflight(run.checkpoint_bytes() * 2 + (1 << 20))
        dist.barrier()
        # auto threads are timed on the training steps (Trainer.tick_threads); one process only:
        # under torchrun each rank's count is the launcher's business (OMP_NUM_THREADS)
        threads = cfg.threads if cfg.threads or dist.enabled else 0
        start = choice.threads if choice is not None else None  # auto's figures say where to begin
        with cpu_threads(threads, device, ambient=False, start=start) as tuner:
            trainer = Trainer(run, reporter, None if dist.enabled else tuner, began)
            result = trainer.start(resumed=payload is not None)
        result.auto_choice = choice
        if not result.interrupted:
            judge(result, trainer, choice)
        return result
    finally:
        reporter.close()
        distributed.shutdown(dist)


def judge(result: TrainResult, trainer: Trainer, choice) -> None:
    """What the run is worth: the guesses it must beat, and every measured reason it is not a
    useful model, with its fix (`training.verdict`)."""
    run = trainer.run
    vocab_size = run.dataset.vocab.size
    tiny = PRESETS["tiny"]
    result.baselines = baselines(run.streams.ids, run.val_ids, vocab_size)
    if choice is not None:
        reference = choice.rows[choice.chosen].chars_per_s
        where = "--preset auto's measurement at the start"
    else:
        reference = trainer.fastest_chars_per_s
        where = f"its fastest {trainer.cfg.log_every} steps"
    facts = RunFacts(
        steps=result.steps,
        chars_seen=result.chars_seen,
        params=result.params,
        train_chars=len(run.streams.ids),
        train_chars_per_s=trainer.train_chars_per_s,
        reference_chars_per_s=reference if trainer.speed_measured else None,
        reference=where,
        best_val_nats=result.best_val_loss,
        baselines=result.baselines,
        budget_min=run.cfg.time_budget_min,
        minutes_so_far=result.elapsed_s / 60,
        tiny_params=autopreset.parameter_count(
            tiny["num_layers"], tiny["hidden_size"], tiny["embed_size"], vocab_size, tied=False
        ),
        val_history=tuple(trainer.val_history),
    )
    result.warnings = diagnose(facts)


def _new_config(config: TrainConfig | None, preset: str | None, given: dict, overrides: dict):
    """A new run's configuration: `config` as given, the preset with the user's options, or,
    for --preset auto, the user's options checked now (the shape is measured and chosen once
    the data is known)."""
    if config is not None:
        if config.preset == AUTO_PRESET:
            raise OptionError(
                "a TrainConfig gives every value itself, so its preset cannot be 'auto'",
                "call train(data, preset='auto', time_budget_min=M, ...) instead",
            )
        return replace(config, **{k: v for k, v in overrides.items() if v is not None})
    if (preset or default_preset(given)) == AUTO_PRESET:
        autopreset.check_auto_length(given)
        return replace(resolve_config(CPU_DEFAULT_PRESET, **overrides), preset=AUTO_PRESET)
    return resolve_config(preset, **overrides)


def _choose_auto(overrides: dict, dataset: Dataset, device, dist, reporter: Reporter):
    """`--preset auto`: rank 0 times the candidates and chooses; every rank trains its choice.
    The choice is recorded as the run's configuration (preset "auto", the chosen values), so
    a resume rebuilds it without measuring again."""
    given = {k: v for k, v in overrides.items() if v is not None}
    cap_s = autopreset.measure_cap_s(given["time_budget_min"])
    reporter.message(
        f"--preset auto: timing model shapes on {device} for up to {cap_s:.3g} s of the budget"
    )
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


class Trainer:
    """The loop that moves a `Run`: `loop()` is the whole of it, and each step is a method named
    for what it does: `set_lr` → `train_step` (`training.step.optimizer_step`) → `guard` →
    `advance` → `after_step` (log, validate, save). A time-budgeted run follows a `BudgetPlan`:
    its clock starts at `began` (once the data is ready), and it stops training early enough
    for the final validation and save to end inside the budget."""

    def __init__(
        self, run: Run, reporter: Reporter, threads=None, began: float | None = None
    ) -> None:
        self.run, self.reporter = run, reporter
        self.began = began
        self.threads = threads  # a runtime.ThreadTuner (auto threads on a CPU), or None
        self.val_history: list[tuple[int, float]] = []  # (step, val loss) of this session
        if threads is not None:
            threads.on_choice = self._threads_chosen
        self.cfg, self.state, self.dist, self.device = run.cfg, run.state, run.dist, run.device
        self.streams, self.local_streams = run.streams, run.local_streams
        self.total_steps, self.budget_s = run.total_steps, run.budget_s
        self.validator = Validator(
            run.val_ids, run.cfg.eval_batch_size, run.device, run.amp_dtype, run.dist
        )
        self.writer = RunWriter(run.run_dir, run.dist, run.checkpoint_bytes(), run.cfg)
        self.clock = RunClock(0.0, 0)
        self.plan: BudgetPlan | None = None
        self._bad_in_row = 0
        self._last_eval_step: int | None = None
        self._train_s = 0.0  # this session's steps, their own time (the first one left out)
        self._timed_steps = 0
        self.fastest_chars_per_s = 0.0  # of a logged interval

    @property
    def model(self) -> CharLSTM:
        return self.state.model

    def start(self, resumed: bool) -> TrainResult:
        """Open the run folder (created and locked only now: every check has passed), train."""
        config = {
            "train": self.cfg.to_dict(),
            "model": self.run.model_config.to_dict(),
            "data": str(self.run.dataset.folder),
            "run_id": self.state.run_id,
        }
        with self.writer.opened(config, self.state.step if resumed else None, self.reporter):
            return self.loop()

    # -- the loop -----------------------------------------------------------------------------
    def loop(self) -> TrainResult:
        """Train until the run's length is reached or Ctrl-C; then the last save."""
        self.clock = RunClock(self.state.elapsed_s, self.state.step, self.began)
        info = self.run.info(self.clock.elapsed())
        if self.device.type == "cpu":
            threads = torch.get_num_threads()
            if self.threads is not None and len(self.threads.candidates) > 1:
                counts = " and ".join(str(t) for t in self.threads.candidates)
                how = f"auto: {counts} timed on the first steps and at each validation"
            else:
                how = "--threads" if self.cfg.threads else "torch's count"
            info = replace(info, threads=f"{threads} ({how})")
        self.reporter.start(info)
        if self.budget_s is not None:
            marks = BUDGET_VALIDATIONS if self.cfg.eval_every == "auto" else None
            self.plan = BudgetPlan(self.clock.elapsed(), self.budget_s, marks)
            self.plan_validation()
            if self.threads is not None:
                self.threads.skip()  # the probe's time was not a step's
        self._last_eval = self._last_save = self.clock.now()
        self._bad_in_row = 0
        self.model.train()
        with Interrupt() as interrupt:
            while not self.should_stop(interrupt):
                lr = self.set_lr()
                began = self.clock.now()
                loss, ok, grad_norm = self.train_step()
                if self.threads is not None:
                    self.threads.tick(self.cfg.batch_size * self.cfg.bptt)
                self.note_step_time(self.clock.since(began))
                self.guard(loss, ok, lr, grad_norm)
                self.advance()
                self.after_step(lr)
        interrupted = self._interrupted
        self.finish(interrupted)
        return self.run.result(interrupted, self.clock.elapsed())

    def note_step_time(self, seconds: float) -> None:
        """A step's own time: for the budget plan, and for the run's training speed (its first
        step, which allocates and packs weights, left out)."""
        if self.plan is not None:
            self.plan.note_step(seconds)
        if self.state.step > self.clock.session_start_step:
            self._train_s += seconds
            self._timed_steps += 1

    @property
    def train_chars_per_s(self) -> float:
        """This session's training speed: its steps over their own time (no validation)."""
        chars = self._timed_steps * self.cfg.batch_size * self.cfg.bptt
        return chars / self._train_s if self._train_s > 0 else 0.0

    @property
    def speed_measured(self) -> bool:
        """Enough training to judge the machine's speed by: 10 timed steps and 30 s."""
        return self._timed_steps >= 10 and self._train_s >= 30.0

    def plan_validation(self) -> None:
        """Before a budgeted run's first step, a glance at what validation costs here: the
        final one is reserved from the start, and a budget too short to score the whole val
        split scores its first characters (said once)."""
        per_char = self.validator.seconds_per_char(self.model)
        split = self.validator.split_chars
        chars = self.plan.validation_chars(per_char, split)
        if chars is not None:
            self.validator.limit(chars)
            self.reporter.message(
                f"validating on the first {chars:,} of the {split:,} val chars: all of them "
                f"would take ~{per_char * split:.0f} s here, and one validation may take "
                f"{self.plan.validation_allowance_s:.1f} s of this budget "
                f"(charlstm eval {self.run.run_dir.path / 'best.pt'} scores them all)"
            )
        self.plan.note_validation(per_char * len(self.validator.val_ids))

    def should_stop(self, interrupt: Interrupt) -> bool:
        """The run's length is reached, or it was interrupted; every rank takes the same branch
        (the flags are summed over ranks)."""
        done = self.total_steps is not None and self.state.step >= self.total_steps
        stepped = self.state.step > self.clock.session_start_step  # a budget trains one step
        over = self.plan is not None and stepped and self.plan.should_stop(self.clock.elapsed())
        ended, asked = self._sum([float(done or over), float(interrupt.requested)])
        self._interrupted = asked > 0 and ended == 0
        return ended > 0 or asked > 0

    def set_lr(self) -> float:
        if self.total_steps is not None:
            progress = self.state.step / self.total_steps
        else:
            progress = self.plan.progress(self.clock.elapsed())
        lr = lr_at(self.cfg, self.state.step, progress, self.total_steps)
        for group in self.state.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def train_step(self) -> tuple[float, bool, float]:
        """The next window of this rank's streams through `optimizer_step`."""
        st = self.state
        if st.hidden is None:
            st.hidden = self.model.init_state(self.local_streams, self.device, torch.float32)
        lo = self.dist.rank * self.local_streams
        window = self.streams.window(st.epoch, st.epoch_step, lo, lo + self.local_streams)
        window = torch.from_numpy(window).to(self.device, non_blocking=True)
        return optimizer_step(
            st, self.run.forward_model, window, self.cfg.clip, self.run.amp_dtype, self.dist
        )

    def guard(self, loss: float, ok: bool, lr: float, grad_norm: float) -> None:
        """The NaN guard (too many non-finite steps in a row end the run) and the running
        train loss and gradient norm."""
        st = self.state
        if ok:
            self._bad_in_row = 0
            st.loss_sum += loss
            st.grad_norm_sum += grad_norm
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
        """The next window; at an epoch's end the streams start afresh at new offsets."""
        st = self.state
        st.step += 1
        st.epoch_step += 1
        if st.epoch_step >= self.streams.per_epoch:
            st.epoch += 1
            st.epoch_step = 0
            st.hidden = None
        st.elapsed_s = self.clock.elapsed()

    def after_step(self, lr: float) -> None:
        """Log, validate and save on their cadences."""
        step = self.state.step
        if step % self.cfg.log_every == 0 or step == self.total_steps:
            self.log(lr)
        save_steps, save_min = self.cfg.save_every_parsed()
        if step != self.total_steps and self._validation_due():
            self.validate_and_save(lr)
        elif self._due(save_steps, save_min, self._last_save):
            self.save()

    def _validation_due(self) -> bool:
        """At the budget plan's marks (a budgeted run with `--eval-every auto`), else on the
        `--eval-every` cadence."""
        if self.plan is not None and self.plan.by_marks:  # the same branch on every rank
            return self._rank0_decides(self.plan.validation_due(self.clock.elapsed()))
        every_steps, every_min = self.cfg.eval_every_parsed(self.total_steps)
        return self._due(every_steps, every_min, self._last_eval)

    def _due(self, every_steps: int | None, every_min: float | None, since: float) -> bool:
        """A cadence of steps (the same on every rank) or minutes (rank 0's clock decides)."""
        fires = due(self.state.step, every_steps, every_min, self.clock.since(since))
        return self._rank0_decides(fires) if every_min is not None else fires

    def _rank0_decides(self, fires: bool) -> bool:
        """A decision taken on a clock: rank 0's, so that every rank takes the same branch."""
        if self.dist.enabled:
            return self._sum([float(fires and self.dist.is_main)])[0] > 0
        return fires

    def _sum(self, values: list[float]) -> list[float]:
        return self.dist.all_reduce_sum(torch.tensor(values, device=self.device)).tolist()

    # -- what the steps report and write ------------------------------------------------------
    def log(self, lr: float) -> None:
        """A train line: to metrics.jsonl and to the reporter."""
        st = self.state
        chars_per_s = self.clock.steps_per_s(st.step) * self.cfg.batch_size * self.cfg.bptt
        self.fastest_chars_per_s = max(self.fastest_chars_per_s, chars_per_s)
        train_loss = st.loss_sum / st.loss_count if st.loss_count else None
        grad_norm = st.grad_norm_sum / st.loss_count if st.loss_count else None
        st.loss_sum, st.grad_norm_sum, st.loss_count = 0.0, 0.0, 0
        stats = StepStats(
            step=st.step,
            total_steps=self.total_steps,
            elapsed_s=self.clock.elapsed(),
            budget_s=self.budget_s,
            train_loss=train_loss,
            val_loss=st.last_val,
            lr=lr,
            chars_per_s=chars_per_s,
            skipped=st.skipped_steps,
            eta_s=self.clock.eta(st.step, self.total_steps, self.budget_s),
        )
        self.writer.record(
            {
                "kind": "train",
                "step": st.step,
                "chars": self.run.chars_seen,
                "elapsed_s": round(stats.elapsed_s, 3),
                "train_loss": train_loss,
                "grad_norm": grad_norm,
                "lr": lr,
                "chars_per_s": round(chars_per_s, 1),
                "skipped": st.skipped_steps,
            }
        )
        self.reporter.step(stats)

    def validate_and_save(self, lr: float) -> None:
        """Validate, record it, save last.pt and promote it to best.pt if it is the best. A
        budgeted run also redraws curves.png each time, and times all of it: that is what its
        end will need."""
        st = self.state
        began = self.clock.now()
        if hasattr(self.reporter, "validating"):  # a Reporter written before it existed may not
            self.reporter.validating(st.step)
        val, trained = self.validator.run_losses(st)
        improved = st.best_val is None or val < st.best_val
        st.last_val = val
        st.best_val = val if improved else st.best_val
        self.val_history.append((st.step, val))
        # what the model writes now, for the logs (rank 0 only; inside the time budget)
        sample = self.validator.sample(st, self.run.dataset.vocab) if self.dist.is_main else None
        self.writer.record(
            {
                "kind": "eval",
                "step": st.step,
                "chars": self.run.chars_seen,
                "elapsed_s": round(self.clock.elapsed(), 3),
                "val_loss": val,
                "val_streams": self.validator.streams,
                "val_chars": len(self.validator.val_ids),
                "bpc": val / math.log(2),
                "perplexity": math.exp(min(val, 700)),
                "lr": lr,
                **trained,
                "sample": sample,
            }
        )
        self.reporter.evaluated(EvalStats(st.step, val, improved, self.validator.streams))
        self.save()
        if improved:
            self.writer.promote_best(st.step)
        if self.plan is not None:
            self.writer.write_curves(self.reporter.message)
        self._last_eval = self.clock.now()
        self._last_eval_step = st.step
        if self.plan is not None:
            self.plan.note_validation(self.clock.since(began))
        if self.threads is not None:  # time the thread counts again: the load may have changed
            self.threads.recheck()

    def _threads_chosen(self, tuner) -> None:
        """A thread trial ended: say what it chose, the first time and on a change."""
        if tuner.trials == 1 or tuner.threads != self._threads_said:
            self.reporter.message(f"threads: {tuner.describe()}")
        self._threads_said = tuner.threads

    _threads_said: int | None = None

    def save(self) -> None:
        """last.pt, atomically; a full disk is one line that says how much space is needed."""
        self.state.elapsed_s = self.clock.elapsed()
        payload = self.run.payload()  # a collective under DDP: every rank takes part
        self.writer.save_last(payload, self.state.step)
        self._last_save = self.clock.now()
        if self.threads is not None:
            self.threads.skip()  # the time since the last step was not a step's

    def finish(self, interrupted: bool) -> None:
        """The last save (and, for a run that ran to its end, the final validation, unless
        the last step was just validated)."""
        st = self.state
        if interrupted:
            self.reporter.message("interrupted: saving last.pt")
            self.save()
        elif st.step == self.clock.session_start_step and st.last_val is not None:
            self.reporter.message(f"the run is already at step {st.step:,}: nothing to do")
        elif st.step != self._last_eval_step:
            self.validate_and_save(self.state.optimizer.param_groups[0]["lr"])
        if self.plan is None or interrupted:
            self.writer.write_curves(self.reporter.message)
        # leave together: a rank that tears down its process group while another still works
        # can abort in gloo's background threads
        self.dist.barrier()
