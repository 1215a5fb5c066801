#!/usr/bin/env bash
# Train a design grid on a Cloud TPU VM: a thin wrapper around `moejax sweep --launcher=tpu_vm`
# (moejax/sweep/tpu_vm.py). Needs gcloud, authenticated, on PATH.
#   bash launch/tpu_vm.sh --grid=configs/grids/joint_moe.gin --root=runs/joint_moe \
#       --tpu=my-v4 --zone=us-central2-b [--project=P] [--create [--queued]] [--dry_run]
# --dry_run prints the exact gcloud commands. Re-running skips runs marked done in the manifest.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-}
if [ -z "$python" ]; then
  if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
fi
exec "$python" -m moejax.cli sweep --launcher=tpu_vm "$@"
