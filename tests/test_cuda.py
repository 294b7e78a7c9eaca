"""The CUDA path: train, resume, score, sample and the precision policy on a GPU. Marked `cuda`:
skipped on a machine without one (the only skip CI allows). `bench/gpu_check.sh` runs them on the
GPU, and on a CPU with CHARLSTM_CUDA_TESTS_ON=cpu (CI), so their code is known to run before a
GPU is lent: device-generic, tiny models, seconds."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import TINY_KWARGS, InterruptAt, word_text

from charlstm.data.prepare import tokenize
from charlstm.evaluation.scoring import evaluate, stream_nats
from charlstm.generation.sampling import FastLSTMStep, generate
from charlstm.model.checkpoint import load_checkpoint, read_checkpoint
from charlstm.runtime import autocast_dtype, cuda_precision
from charlstm.training.trainer import train

pytestmark = pytest.mark.cuda

DEVICE = "cpu" if os.environ.get("CHARLSTM_CUDA_TESTS_ON") == "cpu" else "cuda"
OPTIONS = dict(**TINY_KWARGS, lr=1e-2, dropout=0.1, eval_every=10, log_every=5, device=DEVICE)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cuda-data")
    (root / "corpus.txt").write_text(word_text(6000), encoding="utf-8")
    return tokenize(root / "corpus.txt", root / "data").out


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    """40 steps of the tiny model on the device, precision auto (bf16 autocast on most GPUs)."""
    run = tmp_path_factory.mktemp("cuda-run") / "run"
    result = train(data, run, steps=40, **OPTIONS)
    assert result.steps == 40 and math.isfinite(result.best_val_loss)
    return run


def test_training_on_the_device_learns(trained):
    records = [json.loads(line) for line in (trained / "metrics.jsonl").open()]
    losses = [r["val_loss"] for r in records if r["kind"] == "eval"]
    assert losses[-1] < losses[0] < math.log(len(set(word_text(6000))) + 1)
    # the checkpoint is device-free: it loads on a CPU and scores there
    assert math.isfinite(evaluate(trained / "best.pt", device="cpu").loss)


def test_scoring_on_the_device_matches_the_cpu_in_fp32(trained):
    on_device = evaluate(trained / "best.pt", device=DEVICE, precision="fp32")
    on_cpu = evaluate(trained / "best.pt", device="cpu", precision="fp32")
    assert on_device.precision == "fp32" and on_device.chars == on_cpu.chars
    assert on_device.loss == pytest.approx(on_cpu.loss, abs=1e-5)
    auto = evaluate(trained / "best.pt", device=DEVICE)  # bf16 autocast or TF32 on a GPU
    assert auto.loss == pytest.approx(on_cpu.loss, abs=0.02)


def test_dynamic_evaluation_runs_on_the_device(trained):
    static = evaluate(trained / "best.pt", device=DEVICE, precision="fp32")
    dynamic = evaluate(trained / "best.pt", device=DEVICE, dynamic=True)
    assert dynamic.mode == "dynamic" and dynamic.chars == static.chars
    assert dynamic.loss < static.loss + 0.05  # it adapts; it does not fall apart


def test_resume_on_the_device_is_exact(data, tmp_path):
    """12 steps in one go == 6, a stop, a resume, 6 more: bitwise, with dropout (the device's
    RNG state is restored; two layers, so cuDNN's own dropout between them too) and a constant
    learning rate."""
    common = dict(OPTIONS, num_layers=2, warmup_steps=0, min_lr_ratio=1.0, steps=12)
    train(data, tmp_path / "one", **common)
    stopped = train(data, tmp_path / "two", reporter=InterruptAt(5), **dict(common, log_every=1))
    assert stopped.interrupted
    train(out=tmp_path / "two", resume=True)
    a, b = (read_checkpoint(tmp_path / n / "last.pt") for n in ("one", "two"))
    assert b["run"]["step"] == 12
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


def test_sampling_on_the_device(trained):
    """Seeded samples repeat; the one-step sampler agrees with the model's forward there."""
    first = generate(trained / "best.pt", prime="the ", length=80, seed=3, device=DEVICE)
    again = generate(trained / "best.pt", prime="the ", length=80, seed=3, device=DEVICE)
    assert first == again and len(first[0]) == len("the ") + 80
    model = load_checkpoint(trained / "best.pt", DEVICE).model
    ids = torch.from_numpy(np.arange(12) % model.config.vocab_size).to(DEVICE)
    step = FastLSTMStep(model, 1)
    with torch.no_grad():
        stepped = torch.stack([step(ids[t : t + 1])[0].clone() for t in range(len(ids))])
        whole, _ = model(ids[:, None], None)
    torch.testing.assert_close(stepped, whole[:, 0], atol=1e-4, rtol=1e-4)
    assert math.isfinite(stream_nats(model, np.arange(200) % model.config.vocab_size, 2, DEVICE)[0])


def test_precision_policy_on_the_device():
    dev = torch.device(DEVICE)
    if dev.type != "cuda":  # the CPU's own policy: never autocast
        assert autocast_dtype(dev, "auto") is None
        return
    picked = cuda_precision(dev, "auto", 512)
    assert picked in ("fp32", "tf32", "bf16")
    assert (autocast_dtype(dev, "auto", 512) == torch.bfloat16) == (picked == "bf16")
    assert autocast_dtype(dev, "fp32") is None and autocast_dtype(dev, "tf32") is None
