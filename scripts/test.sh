#!/usr/bin/env bash
# Set up a virtual environment in .venv (if needed) and run the whole test suite.
# torch is installed first, pinned to the CPU build this project is tested with, so that the
# project's own (normal) torch range is already satisfied; override with TORCH_SPEC=... .
# The installs are skipped while pyproject.toml and TORCH_SPEC are what .venv was made from;
# SETUP_ONLY=1 stops after them. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH=${TORCH_SPEC:-torch==2.13.0}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=".venv/.installed-$( (cat pyproject.toml; echo "$TORCH") | sha256sum | cut -c1-16)"
if [ ! -e "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install -q "$TORCH"
  .venv/bin/python -m pip install -q -e ".[dev]"
  rm -f .venv/.installed-* && touch "$stamp"
fi
[ -n "${SETUP_ONLY:-}" ] && exit 0
exec .venv/bin/python -m pytest -n "${TEST_WORKERS:-2}" "$@"
