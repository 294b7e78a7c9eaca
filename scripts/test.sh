#!/usr/bin/env bash
# Set up a virtual environment in .venv (if needed) and run the whole test suite.
# torch is installed first, pinned to the CPU build this project is tested with, so that the
# project's own (normal) torch range is already satisfied; override with TORCH_SPEC=... .
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
.venv/bin/python -m pip install -q -e ".[dev]"
exec .venv/bin/python -m pytest -n "${TEST_WORKERS:-2}" "$@"
