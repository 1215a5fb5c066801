#!/usr/bin/env bash
# After a sweep: score the latest checkpoint of every run under a root and merge one point per
# (run, step) into a points file for `moejax fit`. A thin wrapper around `moejax eval --root`.
#   bash launch/eval_sweep.sh runs/                       # -> runs/points.jsonl
#   bash launch/eval_sweep.sh gs-mount/sweep points.csv --steps=all --eval_batches=32
# Extra arguments go to `moejax eval` (--steps, --format, --eval_batches, --eval_capacity_factor).
# Exit status: 0 when every run was scored, 1 when any failed (the others are still written).
# On several hosts, give each its own points file (file locks are not reliable on NFS/FUSE).
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: bash launch/eval_sweep.sh ROOT [POINTS_FILE] [moejax eval flags...]" >&2
  exit 2
fi
root=$1; shift
points="$root/points.jsonl"
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then points=$1; shift; fi
repo="$(cd "$(dirname "$0")/.." && pwd)"
python=${PYTHON:-}
if [ -z "$python" ]; then
  if [ -x "$repo/.venv/bin/python" ]; then python="$repo/.venv/bin/python"; else python=python3; fi
fi
exec "$python" -m moejax.eval.cli --root="$root" --points="$points" "$@"
