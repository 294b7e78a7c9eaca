#!/usr/bin/env bash
# The GPU check, for a short GPU loan: one call, unattended, at most 8 minutes, and it tells
# everything: environment, the cuda tests, `charlstm bench --device cuda` (training at the
# small/medium/large shapes in fp32/tf32/bf16 against the matmul rate there, sampling against
# the memory-bandwidth bound), 3 minutes of tiny shakespeare with the GPU defaults, static and
# dynamic eval, a sample, a bitwise resume, a one-process torchrun (NCCL) smoke.
#
# usage: bash bench/gpu_check.sh [OUT_DIR] [--device cuda|cpu] [--quick]
#   OUT_DIR defaults to $OUT (the device machine's returned folder), else ./gpu-check. It gets
#   gpu_check.json (every step: status, seconds, figures, log), logs/, the run, and the cache
#   with the precision the figures chose. A summary table goes to stdout.
#   --device cpu --quick: the same steps on a CPU with tiny budgets (< 3 minutes; CI runs it).
#
# Runs from a plain checkout with python3 and torch, typer, rich, tokenizers, numpy (pytest for
# the tests): `python3 -m charlstm` with PYTHONPATH, never pip. Each step has its own time box
# (bench/gpu_check.py, plan()); the whole check stops itself at 450 s (170 s quick), and this
# outer `timeout` is only the safety net. It writes its JSON even if CUDA is absent or a step
# crashes; the exit status is 0 only if every step passed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
quick=0
for a in "$@"; do [ "$a" = --quick ] && quick=1; done
limit=$((quick ? 200 : 470))
timeout -k 10 "$limit" "$PY" bench/gpu_check.py "$@"
rc=$?
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
  echo "gpu_check: stopped by the ${limit} s safety net; the JSON holds the steps done" >&2
fi
exit "$rc"
