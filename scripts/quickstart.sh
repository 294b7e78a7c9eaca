#!/usr/bin/env bash
# Set up .venv, then the main job on the bundled corpus: tokenize, train the default model for a
# few minutes (MINUTES, default 5), evaluate it, and sample from it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
.venv/bin/python -m pip install -q -e .
run() { echo "+ charlstm $*" >&2; .venv/bin/charlstm "$@"; }
run tokenize --out data/tinyshakespeare --force
run train data/tinyshakespeare --out checkpoints/quickstart --time-budget "${MINUTES:-5}" --force
run eval checkpoints/quickstart/best.pt
run sample checkpoints/quickstart/best.pt --prime "ROMEO:" --length 400 --temperature 0.8 --seed 1
