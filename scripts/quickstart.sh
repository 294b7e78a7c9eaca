#!/usr/bin/env bash
# Set up .venv, then the main job on the bundled corpus: tokenize, train the best model a few
# minutes (MINUTES, default 5) buy on this machine, evaluate it, and sample from it. The run goes
# to checkpoints/tinyshakespeare-auto, the folder `charlstm train --time-budget M` writes, which
# the README's examples use; a quick start run again starts that folder over.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
.venv/bin/python -m pip install -q -e .
run() { echo "+ charlstm $*" >&2; .venv/bin/charlstm "$@"; }
run tokenize --out data/tinyshakespeare --force
run train data/tinyshakespeare --time-budget "${MINUTES:-5}" --force
run eval checkpoints/tinyshakespeare-auto/best.pt
run sample checkpoints/tinyshakespeare-auto/best.pt --prime "ROMEO:" --length 400 --temperature 0.8 --seed 1
cat >&2 <<'NEXT'

The model: checkpoints/tinyshakespeare-auto/best.pt. Next, in this shell:
  source .venv/bin/activate        # puts the `charlstm` command on your PATH
  charlstm sample checkpoints/tinyshakespeare-auto/best.pt --prime "ROMEO:" --length 500
  charlstm train --resume --time-budget 10     # 10 minutes more for the same run
Every command's examples: README.md and `charlstm --help`.
NEXT
