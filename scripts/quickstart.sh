#!/usr/bin/env bash
# Set up .venv, then the main job on the bundled corpus: tokenize, train the default model for a
# few minutes, evaluate it, and sample from it. MINUTES=... changes the training budget.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
.venv/bin/python -m pip install -q -e .
CHARLSTM=.venv/bin/charlstm
$CHARLSTM tokenize --force
