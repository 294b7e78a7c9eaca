"""What a training run writes into its folder, from rank 0 only: the folder itself (created and
locked once every check has passed), config.json, last.pt, best.pt, metrics.jsonl and curves.png,
and every metrics record to the sinks (TensorBoard's tb/, W&B: `charlstm.training.sinks`).
A full disk is one line that says how much space is needed and what is intact."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from charlstm.config import TrainConfig
from charlstm.errors import CharLSTMError
from charlstm.model.checkpoint import save_checkpoint
from charlstm.training.distributed import Dist
from charlstm.training.progress import Reporter
from charlstm.training.rundir import BEST, CURVES, LAST, METRICS, RunDir, disk_full_error
from charlstm.training.sinks import Sinks, open_sinks


class RunWriter:
    """The run folder's writes. Every method may be called on every rank; only rank 0 writes."""

    def __init__(
        self, run_dir: RunDir, dist: Dist, checkpoint_bytes: int, cfg: TrainConfig | None = None
    ) -> None:
        self.run_dir, self.dist, self.checkpoint_bytes = run_dir, dist, checkpoint_bytes
        self.cfg = cfg  # which sinks to open (none without it)
        self.sinks = Sinks([], lambda _: None)

    @contextmanager
    def opened(self, config: dict, resumed_at: int | None, reporter: Reporter) -> Iterator[None]:
        """Create and lock the folder (only now: every check has passed); a new run clears an
        old run's files (--force), a resumed one drops metrics logged after its checkpoint.
        The sinks are open inside, and closed (flushed) however the run ends."""
        main = self.dist.is_main
        if main:
            self.run_dir.create()
        self.dist.barrier()
        if not main:
            self.dist.barrier()
            yield
            return
        with self.run_dir.lock():
            if resumed_at is not None:
                self.run_dir.metrics.truncate_after(resumed_at)
                reporter.message(f"resuming from step {resumed_at:,} ({self.run_dir.file(LAST)})")
            else:
                self.run_dir.clear()
            self.run_dir.write_config(config)
            if self.cfg is not None:
                self.sinks = open_sinks(
                    self.cfg, self.run_dir.path, config, resumed_at, reporter.message
                )
            self.dist.barrier()
            try:
                yield
            finally:
                self.sinks.close()

    def save_last(self, payload: dict, step: int) -> None:
        """last.pt, atomically."""
        path = self.run_dir.file(LAST)
        self._write(lambda: save_checkpoint(payload, path), path, step)

    def promote_best(self, step: int) -> None:
        """best.pt: a durable copy of the last.pt just saved."""
        self._write(self.run_dir.promote_best, self.run_dir.file(BEST), step)

    def record(self, record: dict) -> None:
        """One line of metrics.jsonl, then the same record to the sinks."""
        path = self.run_dir.file(METRICS)
        self._write(lambda: self.run_dir.metrics.append(record), path, record.get("step", 0))
        self.sinks.record(record)  # empty on ranks other than 0

    def write_curves(self, message: Callable[[str], None]) -> None:
        """curves.png beside metrics.jsonl when matplotlib is installed (an optional extra)."""
        from charlstm.training.report import has_matplotlib, read_curves, write_png

        if not self.dist.is_main or not has_matplotlib():
            return
        try:
            path = self.run_dir.file(CURVES)
            write_png(read_curves(self.run_dir.path), path, self.run_dir.name)
        except (CharLSTMError, OSError, ValueError) as e:
            message(f"could not draw curves.png: {e}")

    def _write(self, write: Callable[[], None], path: Path, step: int) -> None:
        if not self.dist.is_main:
            return
        try:
            write()
        except OSError as e:
            error = disk_full_error(e, path, self.checkpoint_bytes, step)
            if error is None:
                raise
            raise error from None
