"""The GPU check: everything one short GPU loan should tell, unattended, in one call.

Run by `bench/gpu_check.sh OUT_DIR` (see there). Each step is a child process with its own time
box; its status, time, figures and log are recorded in OUT_DIR/gpu_check.json after every step,
so a crash, a hang or a missing GPU costs that step alone and the file is always there. This
driver uses the standard library only: it never imports torch itself (except in the collective
smoke that torchrun starts), so nothing the GPU machine lacks can stop it. The project runs as
`python3 -m charlstm` from the checkout (PYTHONPATH), never installed.

`--device cpu --quick` runs the same steps on a CPU with tiny budgets, in CI, so the first GPU
call is not a debugging session; `tests/test_gpu_check.py` checks the JSON it writes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FORMAT_VERSION = 1
#: the whole check's wall-clock budget: 8 minutes with margin (the loan's call is 10 minutes,
#: machine start included); each step gets at most its own budget and what is left of this
TOTAL_BUDGET_S = {"full": 450, "quick": 170}
#: what the check shows against (docs/gpu.md): the CPU's 10-minute figures measured this turn
GOALS = {
    "train_matmul_share": 0.70,  # whole training loop vs the matmul rate at its shapes
    "sample_bandwidth_share": 0.90,  # batch-1 sampling vs the memory-bandwidth bound
    "static_loss_nats": 1.3825,  # tiny shakespeare in 3 GPU-minutes, at least as good as
    "dynamic_loss_nats": 1.2419,  # 10 CPU-minutes, static and dynamic
}
TRAIN_MINUTES = {"full": 3.0, "quick": 0.15}
QUICK_CHARS = 100_000
#: a step's status: passed, failed, over its time box, no time left in the check's, left out
STATUSES = ("ok", "fail", "timeout", "no time", "not run")


@dataclass
class Step:
    """One step's record in gpu_check.json."""

    name: str
    what: str
    budget_s: float
    status: str = "no time"
    seconds: float = 0.0
    cpu_s: float = 0.0  # CPU time of its processes: what the step costs on an idle machine
    log: str = ""
    figures: dict = field(default_factory=dict)
    error: str = ""


@dataclass
class Check:
    out: Path
    device: str
    quick: bool
    python: str
    deadline: float
    steps: list[Step] = field(default_factory=list)
    started: float = field(default_factory=time.time)

    @property
    def mode(self) -> str:
        return "quick" if self.quick else "full"

    @property
    def run_dir(self) -> Path:
        return self.out / "run"

    def data(self) -> list[str]:
        """What the runs train on: the bundled tiny shakespeare (no argument); quick, its first
        QUICK_CHARS characters, so that validation and dynamic eval take seconds on a CPU."""
        if not self.quick:
            return []
        path = self.out / "tinyshakespeare-quick.txt"
        text = (REPO / "corpora" / "tinyshakespeare.txt").read_text(encoding="utf-8")
        path.write_text(text[:QUICK_CHARS], encoding="utf-8")
        return [str(path)]

    def env(self, **extra: str) -> dict:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env.setdefault("CHARLSTM_CACHE", str(self.out / "cache"))  # the auto choices come back
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
        if self.quick:  # tiny models on a shared CI machine: more threads only contend
            env.setdefault("OMP_NUM_THREADS", "1")
        env.update(extra)
        return env

    def charlstm(self, *args: str) -> list[str]:
        return [self.python, "-m", "charlstm", *args]

    def run(self, step: Step, argv: list[str], env: dict | None = None) -> tuple[int, str]:
        """Run one command of `step` in its time box (the step's budget, or what is left of
        the whole check's): (exit code, stdout); stderr and stdout go to the step's log too.
        124 means it ran out of time."""
        left = min(step.budget_s - step.seconds, self.deadline - time.time())
        if left < 3:
            raise OutOfTime
        log = self.out / "logs" / f"{step.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        step.log = str(log.relative_to(self.out))
        start = time.time()
        used = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_before = used.ru_utime + used.ru_stime
        with open(log, "a") as f:
            f.write(f"$ {' '.join(argv)}\n")
            f.flush()
            try:
                done = subprocess.run(
                    argv,
                    cwd=REPO,
                    env=env or self.env(),
                    timeout=left,
                    stdout=subprocess.PIPE,
                    stderr=f,
                    text=True,
                )
                rc, stdout = done.returncode, done.stdout
            except subprocess.TimeoutExpired as e:
                rc = 124
                stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout or ""
            f.write(stdout)
            f.write(f"\n[exit {rc} after {time.time() - start:.1f} s]\n")
        step.seconds += time.time() - start
        used = resource.getrusage(resource.RUSAGE_CHILDREN)
        step.cpu_s = round(used.ru_utime + used.ru_stime - cpu_before + step.cpu_s, 1)
        return rc, stdout

    def save(self) -> Path:
        path = self.out / "gpu_check.json"
        doc = {
            "format_version": FORMAT_VERSION,
            "device": self.device,
            "quick": self.quick,
            "started": datetime.datetime.fromtimestamp(self.started).isoformat(timespec="seconds"),
            "elapsed_s": round(time.time() - self.started, 1),
            "budget_s": TOTAL_BUDGET_S[self.mode],
            "commit": git_commit(),
            "goals": GOALS,
            "steps": [asdict(s) for s in self.steps],
            "verdicts": verdicts(self.steps),
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        os.replace(tmp, path)
        return path


class OutOfTime(Exception):
    """The whole check's budget has no room left for this command."""


class StepFailed(Exception):
    """A command of a step failed: the message is the step's error."""


def last_line(log: Path) -> str:
    """The last meaningful line of a log: usually the error."""
    try:
        lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return ""
    lines = [x for x in lines if not x.startswith("[exit ")]
    errors = [x for x in lines if re.match(r"\s*(error:|\w*(Error|Exception)\b)", x)]
    return (errors or lines or [""])[-1].strip()[:300]


def git_commit() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
        return done.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def must(check: Check, step: Step, argv: list[str], env: dict | None = None) -> str:
    rc, stdout = check.run(step, argv, env)
    if rc == 124:
        raise TimeoutError
    if rc != 0:
        raise StepFailed(f"exit {rc}: {last_line(check.out / step.log)}")
    return stdout


# -- the steps ------------------------------------------------------------------------------------
ENV_PROBE = r"""
import importlib.util, json, os, platform, sys
facts = {"python": sys.version.split()[0], "platform": platform.platform(),
         "cpu_count": os.cpu_count()}
def fact(name, get):
    try:
        facts[name] = get()
    except Exception as e:  # one missing fact is recorded, not fatal
        facts[name] = f"unknown ({type(e).__name__}: {e})"
import torch
fact("torch", lambda: torch.__version__)
fact("cuda_build", lambda: torch.version.cuda)
fact("cuda_available", torch.cuda.is_available)
fact("cudnn", torch.backends.cudnn.version)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    fact("device_count", torch.cuda.device_count)
    fact("gpu", lambda: p.name)
    fact("capability", lambda: f"{p.major}.{p.minor}")
    fact("memory_gb", lambda: round(p.total_memory / 1e9, 1))
    fact("memory_free_gb", lambda: round(torch.cuda.mem_get_info(0)[0] / 1e9, 1))
    fact("multiprocessors", lambda: p.multi_processor_count)
    fact("bf16", lambda: torch.cuda.is_bf16_supported())
    fact("tf32", lambda: p.major >= 8)
    fact("nccl", lambda: ".".join(map(str, torch.cuda.nccl.version())))
facts["packages"] = {m: importlib.util.find_spec(m) is not None for m in
    ("typer", "rich", "tokenizers", "numpy", "pytest", "xdist", "hypothesis", "onnx",
     "onnxruntime", "fastapi", "uvicorn", "matplotlib")}
print(json.dumps(facts))
"""


def step_env(check: Check, step: Step) -> None:
    """Python, torch, CUDA, cuDNN, NCCL; the GPU, its memory; which packages are there."""
    step.figures.update(json.loads(must(check, step, [check.python, "-c", ENV_PROBE])))
    if shutil.which("nvidia-smi"):
        rc, smi = check.run(
            step,
            [
                "nvidia-smi",
                "--query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit",
                "--format=csv,noheader",
            ],
        )
        step.figures["nvidia_smi"] = smi.strip()
    if check.device.startswith("cuda") and not step.figures.get("cuda_available"):
        raise StepFailed("no CUDA device visible to torch: the cuda steps will fail")


def step_cuda_tests(check: Check, step: Step) -> None:
    """The tests marked cuda (tests/test_cuda.py), on the device (on a CPU with
    CHARLSTM_CUDA_TESTS_ON=cpu)."""
    xml = check.out / "cuda_tests.xml"
    extra = {"CHARLSTM_CUDA_TESTS_ON": "cpu"} if check.device == "cpu" else {}
    rc, _ = check.run(
        step,
        [
            check.python,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-m",
            "cuda",
            "-rs",
            "--junitxml",
            str(xml),
            "tests/test_cuda.py",
        ],
        check.env(**extra),
    )
    if rc == 124:
        raise TimeoutError
    try:
        suite = ET.parse(xml).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        failed = [
            c.get("name")
            for c in suite.iter("testcase")
            if c.find("failure") is not None or c.find("error") is not None
        ]
    except (OSError, ET.ParseError, AttributeError) as e:
        raise StepFailed(f"no test report ({e}): {last_line(check.out / step.log)}") from None
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    step.figures.update(counts, passed=passed, failed_tests=failed)
    if rc != 0 or failed or step.figures["passed"] == 0:
        raise StepFailed(
            f"{len(failed)} failed ({', '.join(failed)[:200]}), "
            f"{counts['skipped']} skipped, exit {rc}"
        )


def bench_rows(stdout: str) -> dict:
    """`charlstm bench --json` rows by name: value, unit, ratio, target, ok."""
    report = json.loads(stdout)
    keep = ("value", "unit", "ratio", "target", "ok", "note")
    return {r["name"]: {k: r[k] for k in keep} for r in report["rows"]}


def bench_step(sections: list[str], presets: list[str]):
    def step_bench(check: Check, step: Step) -> None:
        args = ["bench", "--device", check.device, "--json", "--workdir", str(check.out / "bench")]
        for s in sections:
            args += ["--section", s]
        for p in presets:
            args += ["--preset", p]
        if check.quick:
            args.append("--quick")
        step.figures["rows"] = bench_rows(must(check, step, check.charlstm(*args)))

    step_bench.__doc__ = f"charlstm bench --device: {', '.join(sections)} {' '.join(presets)}"
    return step_bench


def step_train(check: Check, step: Step) -> None:
    """Tiny shakespeare for the budget with the device's defaults (on a GPU: the medium preset,
    --precision auto); quick: the tiny preset."""
    minutes = TRAIN_MINUTES[check.mode]
    args = [
        "train",
        *check.data(),
        "--device",
        check.device,
        "--time-budget",
        f"{minutes:g}",
        "--out",
        str(check.run_dir),
        "--force",
    ]
    if check.quick:
        args += ["--preset", "tiny"]
    must(check, step, check.charlstm(*args))
    config = json.loads((check.run_dir / "config.json").read_text())
    records = [json.loads(x) for x in (check.run_dir / "metrics.jsonl").open()]
    evals = [r["val_loss"] for r in records if r.get("kind") == "eval"]
    rates = [r["chars_per_s"] for r in records if r.get("kind") == "train"]
    log = (check.out / step.log).read_text(errors="replace")
    speeds = re.findall(r"^\s*speed\s+([\d,]+) chars/s", log, re.M)
    speed = int(speeds[-1].replace(",", "")) if speeds else None
    precision = re.findall(r"^\s*device\s+\S+\s+(\S.*?)\s*$", log, re.M)  # "cuda:0 bf16 autocast"
    step.figures.update(
        minutes=minutes,
        preset=config["train"].get("preset"),
        model=config["model"],
        batch_size=config["train"].get("batch_size"),
        bptt=config["train"].get("bptt"),
        precision=precision[-1] if precision else None,
        steps=max((r.get("step", 0) for r in records), default=0),
        chars_per_s=round(sorted(rates)[len(rates) // 2]) if rates else speed,
        val_losses=evals,
        best_val_loss=min(evals) if evals else None,
    )


def step_eval(check: Check, step: Step) -> None:
    """Static and --dynamic scoring of the run's best.pt (nats/char, bpc, chars/s)."""
    best = str(check.run_dir / "best.pt")
    for mode, extra in (("static", []), ("dynamic", ["--dynamic"])):
        result = json.loads(
            must(
                check,
                step,
                check.charlstm("eval", best, "--device", check.device, "--json", *extra),
            )
        )
        step.figures[mode] = {
            k: result.get(k) for k in ("loss", "bpc", "chars", "chars_per_s", "precision", "split")
        }


def step_sample(check: Check, step: Step) -> None:
    """300 characters from the run's best.pt after a prime."""
    start = time.time()
    text = must(
        check,
        step,
        check.charlstm(
            "sample",
            str(check.run_dir / "best.pt"),
            "--device",
            check.device,
            "--prime",
            "ROMEO:",
            "--length",
            "300",
            "--seed",
            "1",
            "--temperature",
            "0.8",
        ),
    )
    step.figures.update(chars=len(text), seconds=round(time.time() - start, 2), text=text[:400])
    if len(text) < 300:
        raise StepFailed(f"only {len(text)} characters came out")


RESUME_PROBE = r"""
import json, shutil, sys
from pathlib import Path
import torch
sys.path.insert(0, "tests")
from tiny import InterruptAt
from charlstm.model.checkpoint import read_checkpoint
from charlstm.training.trainer import train
run, work, device = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
step = read_checkpoint(run / "last.pt")["run"]["step"]
for name in ("a", "b"):
    shutil.rmtree(work / name, ignore_errors=True)
    shutil.copytree(run, work / name)
more = dict(steps=step + 2, eval_every=10**9, log_every=1, device=device)
train(out=work / "a", resume=True, **more)   # two steps in one go
stopped = train(out=work / "b", resume=True, reporter=InterruptAt(step + 1), **more)
assert stopped.interrupted and stopped.steps == step + 1, stopped
train(out=work / "b", resume=True)           # one step, stopped, resumed, the next step
a, b = (read_checkpoint(work / n / "last.pt") for n in "ab")
diff = max((x - b["model"][k]).abs().max().item() for k, x in a["model"].items())
same = all(torch.equal(x, b["model"][k]) for k, x in a["model"].items())
ha, hb = a["run"]["hidden"], b["run"]["hidden"]  # None when the run ends on an epoch's end
state = (ha is None and hb is None) or (ha is not None and hb is not None
                                         and all(torch.equal(x, y) for x, y in zip(ha, hb)))
print(json.dumps({"from_step": step, "to_step": b["run"]["step"], "bitwise": same,
                  "state_bitwise": state, "max_abs_diff": diff}))
"""


def step_resume(check: Check, step: Step) -> None:
    """The run resumed from its last.pt: two steps in one go against one step, a stop, a
    resume and the next step; bitwise the same weights and carried state?"""
    figures = json.loads(
        must(
            check,
            step,
            [
                check.python,
                "-c",
                RESUME_PROBE,
                str(check.run_dir),
                str(check.out / "resume"),
                check.device,
            ],
        )
    )
    step.figures.update(figures)
    if not (figures["bitwise"] and figures["state_bitwise"]):
        raise StepFailed(f"resume is not bitwise (max |diff| {figures['max_abs_diff']:.3g})")


def collective_smoke(device: str, train: list[str]) -> None:
    """Under torchrun: join the process group (NCCL on CUDA, gloo on a CPU), all-reduce and
    broadcast a tensor, leave; then run `charlstm *train`. Prints one JSON line from rank 0."""
    import torch
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dev = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if device != "cpu" else "cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    start = time.time()
    dist.init_process_group(backend=backend)
    x = torch.full((1 << 20,), float(rank + 1), device=dev)
    dist.all_reduce(x)
    y = torch.arange(8.0, device=dev) * (rank == 0)
    dist.broadcast(y, src=0)
    dist.barrier()
    ok = bool(x[0].item() == world * (world + 1) / 2 and y[7].item() == 7.0)
    dist.destroy_process_group()
    if train:  # then charlstm itself, in this torchrun worker
        from charlstm.cli import main

        try:
            main(train)
        except SystemExit as e:
            if e.code:
                raise
    if rank == 0:
        print(
            json.dumps(
                {
                    "backend": backend,
                    "world_size": world,
                    "collectives_ok": ok,
                    "seconds": round(time.time() - start, 2),
                }
            )
        )


def step_torchrun(check: Check, step: Step) -> None:
    """One-process torchrun: a collective smoke (NCCL on CUDA, gloo on a CPU), then charlstm
    train in the same torchrun worker."""
    train = ["train", *check.data(), "--device", check.device, "--preset", "tiny", "--steps",
             "10", "--eval-every", "1000", "--out", str(check.out / "torchrun"), "--force",
             "--quiet"]  # fmt: skip
    out = must(check, step, [check.python, "-m", "torch.distributed.run", "--standalone",
                             "--nproc_per_node", "1", str(Path(__file__).resolve()),
                             "--collective-smoke", check.device, *train])  # fmt: skip
    step.figures.update(json.loads(out.strip().splitlines()[-1]))
    metrics = (check.out / "torchrun" / "metrics.jsonl").read_text().splitlines()
    step.figures["train_steps"] = max(json.loads(x).get("step", 0) for x in metrics)
    if not step.figures.get("collectives_ok"):
        raise StepFailed("the collectives returned wrong values")


def plan(check: Check) -> list[tuple[Step, object]]:
    """The steps in order, each with its budget (s), full and quick. The bench runs before the
    training so that --precision auto there already reads its figures."""
    gpu = ["small", "medium", "large"]
    quick = check.quick
    steps = [
        ("env", 20, 30, step_env),
        ("cuda_tests", 45, 60, step_cuda_tests),
        ("bench_limits", 25, 30, bench_step(["limits", "sample"], gpu if not quick else ["tiny"])),
        *(
            (f"bench_train_{p}", b, 40, bench_step(["train"], [p]))
            for p, b in (("small", 20), ("medium", 25), ("large", 35))
            if not quick or p == "small"
        ),
        ("train", TRAIN_MINUTES["full"] * 60 + 25, TRAIN_MINUTES["quick"] * 60 + 35, step_train),
        ("eval", 40, 40, step_eval),
        ("sample", 15, 20, step_sample),
        ("resume", 30, 30, step_resume),
        ("torchrun", 25, 40, step_torchrun),
    ]
    if quick:  # the tiny preset on a CPU: the train section's code at CPU speed
        steps = [
            (n, b, q, bench_step(["train"], ["tiny"]))
            if n == "bench_train_small"
            else (n, b, q, fn)
            for n, b, q, fn in steps
        ]
    return [
        (Step(n, (fn.__doc__ or "").strip().splitlines()[0], q if quick else b), fn)
        for n, b, q, fn in steps
    ]


#: the steps of every run (a full one also has bench_train_medium and bench_train_large)
STEP_NAMES = (
    "env",
    "cuda_tests",
    "bench_limits",
    "bench_train_small",
    "train",
    "eval",
    "sample",
    "resume",
    "torchrun",
)


def run_check(check: Check, only: list[str] | None = None) -> None:
    planned = plan(check)
    check.steps = [step for step, _ in planned]
    for step, _ in planned:
        if only and step.name not in only:
            step.status = "not run"
    check.save()  # every step listed ("no time") before the first runs
    for step, fn in planned:
        if step.status == "not run":
            continue
        print(f"[gpu_check] {step.name}: {step.what}", file=sys.stderr, flush=True)
        try:
            fn(check, step)
            step.status = "ok"
        except OutOfTime:
            step.status, step.error = "no time", "the check's total budget was spent"
        except TimeoutError:
            step.status = "timeout"
            step.error = f"over its {step.budget_s:.0f} s: {last_line(check.out / step.log)}"
        except StepFailed as e:
            step.status, step.error = "fail", str(e)
        except Exception as e:  # a bug in a step's reading of its output: the step fails alone
            step.status, step.error = "fail", f"{type(e).__name__}: {e}"
        print(
            f"[gpu_check] {step.name}: {step.status} in {step.seconds:.1f} s {step.error}",
            file=sys.stderr,
            flush=True,
        )
        check.save()


# -- the verdicts against the goals, and the summary table ---------------------------------------
def verdicts(steps: list[Step]) -> dict:
    """Each goal: the figure the check measured, and whether it meets the goal (None: no
    figure)."""
    by_name = {s.name: s for s in steps}

    def figure(step: str, *path: str):
        value = by_name[step].figures if step in by_name else {}
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    shares = [
        row["ratio"]
        for s in steps
        if s.name.startswith("bench_train")
        for row in s.figures.get("rows", {}).values()
        if row.get("target") and row.get("ratio") is not None
    ]
    out = {}
    out["train_matmul_share"] = max(shares) if shares else None
    rows = figure("bench_limits", "rows") or {}
    batch_1 = [row.get("ratio") for name, row in rows.items() if "batch 1" in name]
    out["sample_bandwidth_share"] = batch_1[0] if batch_1 else None
    out["static_loss_nats"] = figure("eval", "static", "loss")
    out["dynamic_loss_nats"] = figure("eval", "dynamic", "loss")
    result = {}
    for goal, value in out.items():
        target = GOALS[goal]
        met = None if value is None else (value >= target if "share" in goal else value <= target)
        result[goal] = {"value": value, "goal": target, "met": met}
    return result


def summary(check: Check) -> str:
    lines = [
        f"charlstm GPU check on {check.device}{' (quick)' if check.quick else ''}: "
        f"{time.time() - check.started:.0f} s of {TOTAL_BUDGET_S[check.mode]} s, "
        f"{check.out / 'gpu_check.json'}",
        "",
    ]
    lines.append(f"{'step':<18} {'status':<8} {'time':>7} {'cpu':>7}  figures")
    for s in check.steps:
        lines.append(
            f"{s.name:<18} {s.status:<8} {s.seconds:>6.1f}s {s.cpu_s:>6.1f}s  {key_figures(s)}"
        )
    lines += ["", f"{'goal':<24} {'measured':>10} {'goal':>8}  met"]
    for goal, v in verdicts(check.steps).items():
        value = "-" if v["value"] is None else f"{v['value']:.4g}"
        sign = ">=" if "share" in goal else "<="
        met = {True: "yes", False: "NO", None: "-"}[v["met"]]
        lines.append(f"{goal:<24} {value:>10} {sign} {v['goal']:<6}  {met}")
    return "\n".join(lines)


def compact(value) -> str:
    """12345 -> 12.3k; None -> -."""
    if not isinstance(value, (int, float)):
        return "-"
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.1f}{unit}"
    return f"{value:.0f}"


def rounded(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "-"


def key_figures(s: Step) -> str:
    f = s.figures
    if s.status != "ok" and s.error:
        return s.error[:110]
    if s.name == "env":
        return f"torch {f.get('torch')} CUDA {f.get('cuda_build')} cuDNN {f.get('cudnn')} " + (
            f"{f.get('gpu')} {f.get('memory_gb')} GB" if f.get("gpu") else "no GPU"
        )
    if s.name == "cuda_tests":
        return f"{f.get('passed')} passed, {f.get('skipped')} skipped of {f.get('tests')}"
    if s.name.startswith("bench"):  # "fp32 41.2k (0.53x)", "batch 1 2.1k (0.20x)", "auto bf16"
        parts = []
        for name, row in f.get("rows", {}).items():
            label = name.split(": ", 1)[-1].replace(" (whole loop)", "").replace(" chars/s", "")
            if row.get("ratio") is not None:
                parts.append(f"{label} {compact(row['value'])} ({row['ratio']:.2f}x)")
            elif "picks" in label:
                parts.append(label.replace("--precision auto picks", "auto"))
        return "; ".join(parts)
    if s.name == "train":
        return (
            f"{f.get('preset')} {f.get('precision')} {f.get('steps')} steps "
            f"{compact(f.get('chars_per_s'))} chars/s, best val {rounded(f.get('best_val_loss'))}"
        )
    if s.name == "eval":
        st, dy = f.get("static", {}), f.get("dynamic", {})
        return f"static {rounded(st.get('loss'))}, dynamic {rounded(dy.get('loss'))} nats/char"
    if s.name == "sample":
        return f"{f.get('chars')} chars in {f.get('seconds')} s"
    if s.name == "resume":
        return f"step {f.get('from_step')} -> {f.get('to_step')}, bitwise {f.get('bitwise')}"
    if s.name == "torchrun":
        return f"{f.get('backend')} collectives ok {f.get('collectives_ok')}, train ok"
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "out",
        nargs="?",
        default=os.environ.get("OUT") or "gpu-check",
        help="output folder (default: $OUT, else ./gpu-check)",
    )
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny budgets (CI, on a CPU)")
    parser.add_argument(
        "--only",
        action="append",
        metavar="STEP",
        help="run only this step (repeat the option); the others are 'not run'",
    )
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--collective-smoke"]:  # inside torchrun: DEVICE, then charlstm's arguments
        collective_smoke(argv[1], argv[2:])
        return 0
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    mode = "quick" if args.quick else "full"
    check = Check(
        out=out,
        device=args.device,
        quick=args.quick,
        python=os.environ.get("PYTHON") or sys.executable,
        deadline=time.time() + TOTAL_BUDGET_S[mode],
    )
    names = [step.name for step, _ in plan(check)]
    unknown = sorted(set(args.only or ()) - set(names))
    if unknown:
        parser.error(f"unknown step {', '.join(unknown)}: the steps are {', '.join(names)}")
    try:
        run_check(check, args.only)
    finally:
        check.save()
        print(summary(check))
    return 0 if all(s.status in ("ok", "not run") for s in check.steps) else 1


if __name__ == "__main__":
    sys.exit(main())
