"""Device and precision choices, resolved once per command."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import time
from pathlib import Path

import torch

from charlstm.config import available_cores, cache_root, threads_problem
from charlstm.errors import CharLSTMError, OptionError


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA, then Apple's MPS, then the CPU; an explicit choice (cpu, cuda,
    cuda:N, mps) must exist on this machine."""
    if not isinstance(name, str) or not (
        name in ("auto", "cpu", "cuda", "mps") or (name.startswith("cuda:") and name[5:].isdigit())
    ):
        raise OptionError(f"unknown device {name!r}", "use auto, cpu, cuda, cuda:N or mps")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CharLSTMError(
            "--device cuda was asked for but no CUDA GPU is available", "use --device cpu or auto"
        )
    if name == "mps" and not (
        getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    ):
        raise CharLSTMError(
            "--device mps was asked for but MPS is not available", "use --device cpu or auto"
        )
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise CharLSTMError(
            f"--device {name} was asked for but this machine has "
            f"{torch.cuda.device_count()} CUDA GPU(s)",
            "use cuda:0 .. cuda:N-1, or cuda",
        )
    return torch.device(name)


def autocast_dtype(
    device: torch.device, precision: str = "auto", hidden_size: int = 1024
) -> torch.dtype | None:
    """bf16 autocast on CUDA where `cuda_precision` picks it, fp32 elsewhere unless asked. A CPU
    never autocasts: its bf16 is the LSTM kernel of `lstm_kernel` (autocast made nn.LSTM slower
    there)."""
    if device.type == "cuda":
        chosen = cuda_precision(device, precision, hidden_size)
        return torch.bfloat16 if chosen == "bf16" else None
    if precision == "bf16" and device.type != "cpu":
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """A torch.autocast context for `dtype`, or a no-op one for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def cpu_flags() -> set[str]:
    """The CPU feature flags this machine reports (empty where /proc/cpuinfo is missing)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


#: glibc mallopt() parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc's malloc to serve large blocks from its heap and keep them when freed, so that
    the tens of megabytes a training window allocates and frees (activations, gate buffers,
    oneDNN workspaces) are reused from one step to the next instead of being mapped fresh from
    the kernel, page-faulted and zeroed every step. Measured with `charlstm bench --section
    train`: fp32 `small` 11.4k -> 16.0k chars/s, bf16 18.9k -> 21.9k, kernel time 34 s -> 3 s.
    What jemalloc/tcmalloc do for PyTorch; process-wide, and the memory stays with the process
    until it exits (fine for a training run). False where malloc is not glibc's."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30) and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def lstm_kernel(
    device: torch.device,
    precision: str = "auto",
    hidden_size: int = 512,
    rates: dict[str, float] | None = None,
) -> str:
    """Which LSTM layers train on `device`: "bf16" (charlstm.model.lstm_bf16: bf16 GEMMs, fp32
    weights, state and gates) or "fp32" (nn.LSTM's fused kernel). `auto` on a CPU with bf16
    units picks from this machine's measured `rates` (chars/s by kernel at the run's shape,
    `choose_cpu_kernel`; charlstm.training.kernel measures and caches them); without figures,
    bf16 for models wide enough that GEMMs, not per-step overhead, set the pace. GPUs use
    autocast instead."""
    if device.type != "cpu" or precision in ("fp32", "tf32"):
        return "fp32"
    if precision == "bf16":
        return "bf16"
    if not has_bf16_units():
        return "fp32"
    if rates:
        return choose_cpu_kernel(rates)
    return "bf16" if hidden_size >= BF16_MIN_HIDDEN else "fp32"


#: below this width a step's GEMMs are too small for their bf16 rate to pay for the window
#: kernel's per-step Python work (the tiny preset, 128 wide, stays fp32)
BF16_MIN_HIDDEN = 256


@functools.cache
def has_bf16_units() -> bool:
    """Whether this CPU reports bf16 instructions (avx512_bf16, AMX) that oneDNN's bf16 GEMMs
    use; without them bf16 is emulated and slower than fp32."""
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return (
        bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})
        and torch.backends.mkldnn.is_available()
        and (supported is None or bool(supported()))
    )


@functools.cache
def bf16_gemm_speedup() -> float:
    """bf16 over fp32 GEMM throughput on this CPU at the small preset's LSTM shapes, weighted
    like one training window (one input GEMM, 128 recurrent ones), measured once per process
    (~1 s); 0.0 where the CPU has no bf16 units. `charlstm bench` reports it."""
    if not has_bf16_units():
        return 0.0
    shapes = ((4096, 512, 2048), (32, 512, 2048))  # the window's input GEMM, one recurrent step
    seconds = {torch.float32: 0.0, torch.bfloat16: 0.0}
    for dtype in seconds:
        for m, k, n in shapes:
            a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
            out = torch.empty(m, n, dtype=dtype)
            torch.mm(a, b, out=out)
            calls = max(1, 200_000_000 // (m * k * n))
            best = float("inf")
            for _ in range(3):  # the best of three: robust to a neighbour on a shared machine
                start = time.perf_counter()
                for _ in range(calls):
                    torch.mm(a, b, out=out)
                best = min(best, (time.perf_counter() - start) / calls)
            seconds[dtype] += best * 4096 / m  # 1 input GEMM : 128 recurrent ones, as in a window
    return seconds[torch.float32] / seconds[torch.bfloat16]


# -- CUDA precision: chosen from the GPU check's figures where they exist -------------------------
#: what `charlstm bench --device cuda` records (per GPU model: training chars/s by precision at
#: each measured hidden size), in the cache folder; `--precision auto` on that GPU reads it
CUDA_RATES_FILE = "cuda-precision.json"
#: bf16 autocast must beat TF32 by this much to be chosen: it rounds every matmul input to 8
#: significant bits, TF32 to 11, and a few percent of speed is not worth the difference
BF16_MIN_GAIN = 1.05


def choose_cuda_precision(rates: dict[str, float], has_bf16: bool, has_tf32: bool) -> str:
    """The precision a CUDA run takes from measured training rates (chars/s by precision, any
    of fp32/tf32/bf16, possibly none): bf16 autocast if it beats TF32 (else fp32) by
    BF16_MIN_GAIN, else TF32 where the GPU has it, else fp32. With no figures: bf16 where the
    GPU has it natively, the documented default (docs/gpu.md)."""
    best_fp32 = "tf32" if has_tf32 else "fp32"
    if not has_bf16:
        return best_fp32
    if "bf16" not in rates or not (rates.get(best_fp32) or rates.get("fp32")):
        return "bf16"
    baseline = rates.get(best_fp32) or rates["fp32"]
    return "bf16" if rates["bf16"] >= BF16_MIN_GAIN * baseline else best_fp32


def cuda_precision(device: torch.device, precision: str = "auto", hidden_size: int = 1024) -> str:
    """fp32, tf32 or bf16 for a run on this CUDA device: as asked, or for `auto` chosen from
    this GPU's recorded figures at the measured hidden size nearest `hidden_size`
    (`choose_cuda_precision`)."""
    if precision != "auto":
        return precision
    # bf16 and TF32 tensor cores both came with Ampere (sm_80); before it bf16 is emulated
    major, _ = torch.cuda.get_device_capability(device)
    by_hidden = read_cuda_rates(torch.cuda.get_device_name(device))
    rates = by_hidden[min(by_hidden, key=lambda h: abs(h - hidden_size))] if by_hidden else {}
    return choose_cuda_precision(rates, has_bf16=major >= 8, has_tf32=major >= 8)


def read_cuda_rates(gpu_name: str) -> dict[int, dict[str, float]]:
    """This GPU model's recorded training rates: {hidden size: {precision: chars/s}}."""
    try:
        recorded = json.loads((cache_root() / CUDA_RATES_FILE).read_text())
        return {int(h): dict(r) for h, r in recorded[gpu_name]["rates"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def record_cuda_rates(gpu_name: str, hidden_size: int, rates: dict[str, float]) -> Path:
    """Add one shape's measured training rates by precision to this GPU model's record."""
    from charlstm.atomic import write_text

    path = cache_root() / CUDA_RATES_FILE
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        recorded = {}
    entry = recorded.setdefault(gpu_name, {})
    entry.update(torch=torch.__version__, cuda=torch.version.cuda)
    entry.setdefault("rates", {})[str(hidden_size)] = rates
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(recorded, indent=2) + "\n")
    return path


def use_tf32(enabled: bool) -> None:
    """TF32 tensor-core matmuls in cuBLAS and cuDNN (its LSTM too), process-wide: on for
    `tf32`, off for a strict `fp32` (PyTorch leaves cuDNN's on by default)."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


# -- CPU threads: chosen by timing the work itself ------------------------------------------------
def check_threads(threads) -> int:
    """`threads` as --threads takes it (`config.threads_problem`); else an OptionError."""
    problem = threads_problem(threads)
    if problem:
        cores = available_cores()
        raise OptionError(
            f"--threads {problem}",
            f"use 0 (auto: chosen by timing) or 1..{cores} (this machine has {cores} cores)",
        )
    return threads


def apply_threads(threads: int) -> None:
    """torch's intra-op threads (and so the C cell kernels', which read torch's count)."""
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def thread_candidates() -> tuple[int, ...]:
    """What auto tries: torch's current count (all cores, unless OMP_NUM_THREADS or the caller
    set fewer), then 1. One candidate means there is nothing to choose."""
    n = torch.get_num_threads()
    return (n, 1) if n > 1 else (1,)


#: fewer threads must be at least this much faster to be chosen over more. With threads that
#: sleep at barriers, all cores lose little beside a busy program (bench/contention.py), while
#: a short trial on a shared machine is noisy: a 2-thread trial was seen to measure 0.94x the
#: 1-thread one in a minute where 2 threads ran 1.6x faster. Where one thread truly wins it
#: wins by far more (1.5-3x with spinning threads, issue 36).
FEWER_THREADS_GAIN = 1.10
#: ...but a trial whose counts came within FEWER_THREADS_GAIN of each other runs a second
#: turn, and on twice the timing a smaller margin suffices: beside one busy process, eval
#: --dynamic measured 2: 820 / 1: 876 chars/s (1.07x), kept 2 threads and ran 0.92x of
#: --threads 1 (bench/contention.py)
CLOSE_THREADS_GAIN = 1.03
#: ...and one whose first A and B pieces already differ by this much is decided there: a trial
#: of training steps (~1 s each) ran 3 of a 20-step run at 1 thread, 0.56x of 2 threads' rate
#: idle, and cost the run 10 % (bench/contention.py); the worst gaps noise made were 1.2-1.3x
CLEAR_THREADS_GAIN = 1.5


def choose_threads(rates: dict[int, float], gain: float = FEWER_THREADS_GAIN) -> int:
    """The thread count to run with from measured rates ({threads: units per second}): the
    most threads, unless fewer are `gain` x faster (then the fastest of those)."""
    most = max(rates)
    faster = {t: r for t, r in rates.items() if r >= gain * rates[most]}
    return max(faster, key=faster.get) if faster else most


def threads_too_close(rates: dict[int, float]) -> bool:
    """Whether the measured counts came too close to call on one turn: fewer threads within
    FEWER_THREADS_GAIN of the most, either way."""
    most = max(rates)
    return any(
        rates[most] / FEWER_THREADS_GAIN <= r < FEWER_THREADS_GAIN * rates[most]
        for t, r in rates.items()
        if t != most
    )


class ThreadTuner:
    """Chooses the CPU thread count by timing the real work, and keeps choosing.

    Each time step opens parallel regions (torch's and the C cell's), and each region waits for
    its slowest thread: when another program holds one of the cores, a thread that is switched
    out holds every other one up, and N threads can run several times slower than 1. Which is
    faster depends on what else runs right now, so it is measured, on the work itself: the
    caller calls `tick(units)` after each piece of work (a training step, an evaluation
    window); the first piece (allocations, weight packing), the first after each `recheck()`
    and the first after each switch to more threads are not timed. A trial runs each
    candidate twice, A B B A, each time for at least `trial_ticks` pieces and `trial_s`
    seconds, then the faster is kept (`choose_threads`); when the first A and B already differ
    by CLEAR_THREADS_GAIN, the trial ends there; when the counts came within
    FEWER_THREADS_GAIN of each other, a second A B B A turn is timed first, and the sum of
    both turns decides with the smaller CLOSE_THREADS_GAIN margin. A new trial starts when
    the observed rate falls below `recheck_below` x the one measured for the choice, when
    `recheck()` is called (training: at each validation), and periodically (a load that went
    away, a machine whose speed drifts): first `recheck_every_s` after a trial, twice as long
    after each trial that kept the count (up to `recheck_max_s`), back to `recheck_every_s`
    after one that changed it, and never sooner than `trial_share` of the time (a trial runs
    part of its time at the slower count).
    `skip()` says that the time since the last tick was spent on something else;
    `on_choice(tuner)` is called after each trial."""

    def __init__(
        self,
        candidates: tuple[int, ...] | None = None,
        *,
        rates: dict[int, float] | None = None,
        start: int | None = None,
        trial_ticks: int = 1,
        trial_s: float = 0.2,
        recheck_below: float = 0.7,
        recheck_every_s: float = 10.0,
        recheck_max_s: float = 120.0,
        trial_share: float = 0.1,
        window_s: float = 2.0,
        clock=time.perf_counter,
        apply=apply_threads,
        on_choice=None,
    ) -> None:
        self.candidates = tuple(candidates or thread_candidates())
        self.trial_ticks, self.trial_s = trial_ticks, trial_s
        self.recheck_below, self.recheck_every_s, self.window_s = (
            recheck_below, recheck_every_s, window_s,
        )  # fmt: skip
        self.recheck_max_s, self.trial_share = recheck_max_s, trial_share
        self.clock, self.apply, self.on_choice = clock, apply, on_choice
        self.rates: dict[int, float] = dict(rates or {})
        self.trials = 0  # how many trials have run (the first included)
        first = start if start in self.candidates else self.candidates[0]
        self.threads = choose_threads(self.rates) if self.rates else first
        self._set(self.threads)
        self._last = self._trial_end = self._trial_start = clock()
        self._interval = recheck_every_s  # until the next periodic trial
        self._queue: list[int] = [] if self.rates or len(self.candidates) < 2 else self._order()
        self._warm = bool(self.rates)  # the first piece (allocations, packing) is not timed
        self._units = self._seconds = 0.0
        self._ticks = 0
        self._trial_work: dict[int, list[float]] = {}  # threads: [units, seconds] in this trial
        self._second_turn = False  # this trial's counts came close: it is timed twice
        if self._queue:
            self._begin(self._queue[0])

    # -- what the caller calls --------------------------------------------------------------
    def tick(self, units: float) -> None:
        """`units` of work (characters) were done since the last tick (or skip)."""
        now = self.clock()
        seconds, self._last = now - self._last, now
        if not self._warm:
            self._warm = True
            return
        self._units += units
        self._seconds += seconds
        self._ticks += 1
        if self._queue:
            if self._ticks >= self.trial_ticks and self._seconds >= self.trial_s:
                work = self._trial_work.setdefault(self._queue.pop(0), [0.0, 0.0])
                work[0] += self._units
                work[1] += self._seconds
                if self._queue and not self._clear():
                    self._begin(self._queue[0])
                else:
                    self._settle(now)
            return
        if len(self.candidates) < 2 or self._seconds < self.window_s:
            return
        observed = self._units / max(self._seconds, 1e-9)
        self._units = self._seconds = 0.0
        self._ticks = 0
        slow = observed < self.recheck_below * self.rates.get(self.threads, 0.0)
        if slow or now - self._trial_end >= self._interval:
            self.recheck()

    def skip(self) -> None:
        """The time since the last tick was not this work (validation, a save)."""
        self._last = self.clock()

    def recheck(self) -> None:
        """Start a new trial at the next tick (nothing to do with a single candidate)."""
        if len(self.candidates) < 2 or self._queue:
            return
        self._queue = self._order()
        self._trial_start = self.clock()
        self._begin(self._queue[0])
        # the first piece after a pause (a validation: caches cold, buffers re-made) runs
        # slower than any count's rate, and would fall on the current count's figure alone
        self._warm = False

    def describe(self) -> str:
        """'1 thread (2: 3,659, 1: 5,398 chars/s)': the choice and what it was chosen from."""
        unit = "thread" if self.threads == 1 else "threads"
        if len(self.rates) < 2:
            return f"{self.threads} {unit}"
        figures = ", ".join(f"{t}: {r:,.0f}" for t, r in self.rates.items())
        return f"{self.threads} {unit} ({figures} chars/s)"

    # -- the trial ----------------------------------------------------------------------------
    def _order(self) -> list[int]:
        """Each count twice, in the order A B B A (the current count first: no switch before
        its figure): a load that rises or falls during the trial lands on both alike."""
        first = [self.threads] + [t for t in self.candidates if t != self.threads]
        return first + first[::-1]

    def _clear(self) -> bool:
        """Whether the first turn's A and B already differ by CLEAR_THREADS_GAIN (no second
        B and A: where one count is far slower, each piece of it costs the run)."""
        if self._second_turn or len(self._trial_work) < len(self.candidates):
            return False
        rates = self._trial_rates().values()
        return max(rates) >= CLEAR_THREADS_GAIN * min(rates)

    def _trial_rates(self) -> dict[int, float]:
        """{threads: units per second} over what this trial has timed so far."""
        return {t: u / max(s, 1e-9) for t, (u, s) in self._trial_work.items()}

    def _begin(self, threads: int) -> None:
        if threads > self._applied:
            # the first piece after a switch to more threads wakes a thread that slept at a
            # barrier, which on a busy machine first waits for a core: it would be charged to
            # the new count alone. Fewer threads wake nothing: their first piece is timed.
            self._warm = False
        self._set(threads)
        self._units = self._seconds = 0.0
        self._ticks = 0

    def _set(self, threads: int) -> None:
        self.apply(threads)
        self._applied = threads

    def _settle(self, now: float) -> None:
        rates = self._trial_rates()
        if not self._second_turn and threads_too_close(rates):
            self._second_turn = True  # the work timed so far counts in the sum
            self._queue = self._order()
            self._begin(self._queue[0])
            return
        gain = CLOSE_THREADS_GAIN if self._second_turn else FEWER_THREADS_GAIN
        self._trial_work, self._second_turn, self._queue = {}, False, []
        self.rates = rates
        before, self.threads = self.threads, choose_threads(self.rates, gain)
        kept = before == self.threads and self.trials > 0
        self._set(self.threads)
        self.trials += 1
        self._trial_end = now
        # a machine that gave the same answer twice is re-asked less often; one whose answer
        # changed, soon. Beside 2 busy programs on 2 cores, batch-1 eval at 2 threads moved
        # between 1,400 and 3,500 chars/s from one half-minute to the next, 1 thread at 2,100-
        # 2,900: a choice made once in a 25 s run was the slower one for all of it.
        interval = min(2 * self._interval, self.recheck_max_s) if kept else self.recheck_every_s
        self._interval = max(interval, (now - self._trial_start) / self.trial_share)
        if self.on_choice is not None:
            self.on_choice(self)
        self._units = self._seconds = 0.0
        self._ticks = 0


_tuner: contextvars.ContextVar[ThreadTuner | None] = contextvars.ContextVar(
    "charlstm_thread_tuner", default=None
)


@contextlib.contextmanager
def cpu_threads(
    threads: int, device: torch.device | None = None, *, ambient: bool = True, start=None
):
    """The CPU threads for a command's work, and torch's count restored afterwards: `threads`
    > 0 as given; 0 (auto) on a CPU a `ThreadTuner` (yielded; its first trial begins at
    `start` threads where given), which the work loops reach through `work_done` when
    `ambient`. Elsewhere (a GPU) nothing changes and None is yielded."""
    check_threads(threads)
    before = torch.get_num_threads()
    if device is not None and torch.device(device).type != "cpu":
        yield None
        return
    tuner = None
    if threads:
        apply_threads(threads)
    else:
        tuner = ThreadTuner(start=start)
    token = _tuner.set(tuner) if ambient else None
    try:
        yield tuner
    finally:
        if token is not None:
            _tuner.reset(token)
        apply_threads(before)


def work_done(units: float) -> None:
    """A loop's piece of work is done (`units` characters): the command's `ThreadTuner`, if
    any, times it."""
    tuner = _tuner.get()
    if tuner is not None:
        tuner.tick(units)


# -- CPU precision: bf16 or fp32 LSTM kernel, chosen by timing this machine, cached -------------
#: what `--precision auto` measured on this machine (per machine key: the CPU model, torch's
#: version and the kernels' source; per model shape: chars/s by kernel), in the cache folder
CPU_RATES_FILE = "cpu-precision.json"
#: the sources whose speed the figures are of: a change to either measures again
KERNEL_SOURCES = ("model/lstm_cell.c", "model/lstm_bf16.py")


def cpu_model() -> str:
    """The CPU's model name as /proc/cpuinfo (or the platform) gives it."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


@functools.cache
def kernel_source_sha() -> str:
    """A hash of the bf16 kernel's sources (KERNEL_SOURCES)."""
    import hashlib

    root = Path(__file__).parent
    digest = hashlib.sha256()
    for name in KERNEL_SOURCES:
        digest.update((root / name).read_bytes())
    return digest.hexdigest()[:16]


def machine_key() -> str:
    """What the CPU figures are valid for: 'CPU model | torch version | kernel source hash'."""
    return f"{cpu_model()} | torch {torch.__version__} | kernels {kernel_source_sha()}"


def shape_key(num_layers: int, hidden_size: int, embed_size: int, batch: int, bptt: int) -> str:
    """A training shape as the figures are filed: '2x512 embed 128, 32 x 128'."""
    return f"{num_layers}x{hidden_size} embed {embed_size}, {batch} x {bptt}"


def read_cpu_rates(shape: str) -> dict | None:
    """This machine's recorded figures for `shape` ({"fp32": chars/s, "bf16": chars/s,
    "threads": n, "measured": date}), or None: never measured, or measured under another
    machine key (a new torch, changed kernels, another CPU)."""
    try:
        recorded = json.loads((cache_root() / CPU_RATES_FILE).read_text())
        entry = dict(recorded[machine_key()][shape])
        float(entry["fp32"]), float(entry["bf16"])
        return entry
    except (OSError, ValueError, KeyError, TypeError):
        return None


def record_cpu_rates(shape: str, rates: dict[str, float], threads: int) -> Path:
    """File one shape's measured chars/s by kernel under this machine's key (figures of other
    keys, stale after an upgrade, are dropped)."""
    from datetime import datetime, timezone

    from charlstm.atomic import write_text

    path = cache_root() / CPU_RATES_FILE
    try:
        recorded = json.loads(path.read_text())
        entry = recorded[machine_key()] if isinstance(recorded, dict) else {}
    except (OSError, ValueError, KeyError):
        entry = {}
    entry = dict(entry) if isinstance(entry, dict) else {}
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    entry[shape] = {**{k: round(v, 1) for k, v in rates.items()}, "threads": threads,
                    "measured": when}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps({machine_key(): entry}, indent=2) + "\n")
    return path


def choose_cpu_kernel(rates: dict[str, float]) -> str:
    """The LSTM kernel `--precision auto` trains with on a CPU from measured chars/s: bf16 where
    it beats fp32 by BF16_MIN_GAIN (it rounds the matmul inputs), else fp32."""
    return "bf16" if rates["bf16"] >= BF16_MIN_GAIN * rates["fp32"] else "fp32"
