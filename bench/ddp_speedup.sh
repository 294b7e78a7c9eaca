#!/usr/bin/env bash
# Speed of 1 process vs 2 torchrun processes (gloo) on this machine, same global batch.
# usage: bash bench/ddp_speedup.sh [STEPS] [PRESET]
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-40}; PRESET=${2:-small}
PY=${PYTHON:-.venv/bin/python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
$PY -m charlstm -q tokenize --out "$WORK/data" --force
common=("$WORK/data" --preset "$PRESET" --steps "$STEPS" --eval-every 1000000 --log-every 5 --quiet)
rate() {  # steady chars/s: the best logged rate after the first interval
  $PY - "$1" <<'PY'
import json, sys
r = [json.loads(l) for l in open(sys.argv[1] + "/metrics.jsonl") if '"train"' in l]
print(f"{max(x['chars_per_s'] for x in r[1:]):.0f}")
PY
}
$PY -m charlstm train "${common[@]}" --out "$WORK/one"
one=$(rate "$WORK/one")
GLOO_SOCKET_IFNAME=${GLOO_SOCKET_IFNAME:-lo} OMP_NUM_THREADS=1 $PY -m torch.distributed.run \
  --standalone --nproc_per_node 2 -m charlstm train "${common[@]}" --out "$WORK/two"
two=$(rate "$WORK/two")
echo "preset $PRESET, $STEPS steps: 1 process $one chars/s, 2 processes $two chars/s," \
  "speed-up $(python3 -c "print(f'{$two/$one:.2f}')")x on $(nproc) cores"
