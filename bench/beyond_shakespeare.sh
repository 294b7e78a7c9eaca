#!/usr/bin/env bash
# Issue #14 item 5: charlstm's `small` preset on three real corpora (and tiny shakespeare)
# against xz -9e.
#
#   apt-get install -y fortunes manpages-ru man-db groff-base bsdextrautils   # once, as root
#   bash bench/beyond_shakespeare.sh [WORK_DIR] [STEPS] [EVAL_EVERY]   # defaults /tmp/c14 600 STEPS/2
#
# Builds the corpora (bench/corpora.py), tokenizes each with charlstm's standard split (first
# 90 % train, last 10 % val), prints xz -9e's bpc of val given train (bench/xz_baseline.py),
# then trains `small` for a FIXED number of steps per corpus, one run at a time on one thread
# (the machine is shared: equal compute, not equal wall time), and scores best.pt on val at
# batch 1 (`charlstm eval`, static) and with dynamic evaluation (`eval --dynamic`, its defaults).
# ~20-25 minutes a corpus at 600 steps on a busy 2-core box; 3120 520 is the 10-minute step
# count of bench/RESULTS.md (~25 minutes of training a corpus on one thread).
set -euo pipefail
WORK=${1:-/tmp/c14}
STEPS=${2:-600}
EVAL_EVERY=${3:-$((STEPS / 2))}
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$REPO/.venv/bin/python}
CHARLSTM=${CHARLSTM:-$REPO/.venv/bin/charlstm}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$WORK"
cd "$WORK"

"$PY" "$REPO/bench/corpora.py" corpora
"$PY" "$REPO/bench/xz_baseline.py" "$REPO/corpora/tinyshakespeare.txt" corpora/{python,prose,russian}.txt \
    | tee xz.txt
cp "$REPO/corpora/tinyshakespeare.txt" corpora/tinyshakespeare.txt  # the calibration run
for c in python prose russian tinyshakespeare; do
    "$CHARLSTM" tokenize "corpora/$c.txt" --out "data/$c" --force
    "$CHARLSTM" train "data/$c" --preset small --steps "$STEPS" --eval-every "$EVAL_EVERY" \
        --out "runs/$c-small-$STEPS" --force > "logs-$c.txt" 2>&1
    "$CHARLSTM" eval "runs/$c-small-$STEPS/best.pt" --batch-size 1 --json | tee "eval-$c.json"
    "$CHARLSTM" eval "runs/$c-small-$STEPS/best.pt" --dynamic --json | tee "dynamic-$c.json"
done
