"""`charlstm bench`: its building blocks and the command, on the cheapest sections."""

from __future__ import annotations

import json

import pytest

from charlstm.benchmark.suite import lstm_flops_per_char, matmul_gflops, peak_rss_mb, run_bench
from charlstm.config import ModelConfig


def test_flop_count_of_a_known_model():
    cfg = ModelConfig(vocab_size=10, embed_size=4, hidden_size=8, num_layers=2)
    forward, recurrent = lstm_flops_per_char(cfg)
    # layer 0 input 2*32*4, layer 1 input 2*32*8, recurrence 2 layers * 2*32*8, head 2*8*10
    assert forward == 256 + 512 + 1024 + 160
    assert recurrent == 1024


def test_machine_limits_are_measured(tmp_path):
    assert matmul_gflops(64, 64, 64, min_time=0.01) > 0
    report = run_bench(sections={"limits"}, quick=True, workdir=tmp_path)
    names = [r.name for r in report.rows]
    assert any("fp32 matmul" in n for n in names) and any("memory read" in n for n in names)
    assert all(r.value > 0 for r in report.rows)


def test_peak_rss_of_a_child(tmp_path):
    import sys

    grow = "x = bytearray(64 << 20); x[::4096] = b'1' * len(x[::4096])"
    assert peak_rss_mb([sys.executable, "-c", grow]) > 60


def test_bench_command_json_and_bad_section(run_cli, tmp_path):
    result = run_cli("bench", "--section", "limits", "--quick", "--json", "--workdir", tmp_path)
    assert result.exit_code == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["machine"]["cpu_count"] >= 1
    assert {r["section"] for r in figures["rows"]} == {"limits"}
    bad = run_cli("bench", "--section", "everything")
    assert bad.exit_code == 2 and "unknown --section everything" in bad.stderr


def test_device_bench_limits_and_floor(tmp_path):
    """`bench --device`: the matmuls of a step and their floor, and the limits section on the
    CPU (the same code a GPU runs; tests/test_gpu_check.py covers train and sample)."""
    from charlstm.benchmark.device import floor_seconds_per_char, model_shapes, run_device_bench

    cfg = ModelConfig(vocab_size=10, embed_size=4, hidden_size=8, num_layers=2)
    shapes = model_shapes(cfg, batch=2, bptt=3)
    assert shapes["recurrent"] == (2, 8, 32, 6) and shapes["input_proj_hh"] == (6, 8, 32, 1)
    one_gflops = dict.fromkeys(shapes, 1.0)
    forward, _ = lstm_flops_per_char(cfg)
    assert floor_seconds_per_char(cfg, 2, 3, one_gflops) == pytest.approx(3 * forward / 1e9)
    report = run_device_bench("cpu", presets=["tiny"], sections={"limits"}, quick=True,
                              workdir=tmp_path)  # fmt: skip
    assert report.machine["device"] == "cpu"
    assert all(r.value > 0 for r in report.rows) and any(
        "fp32 matmul" in r.name for r in report.rows
    )


def test_device_bench_bad_section(run_cli):
    bad = run_cli("bench", "--device", "cpu", "--section", "memory")
    assert bad.exit_code == 2 and "unknown --section memory with --device" in bad.stderr
