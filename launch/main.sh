#!/usr/bin/env bash
# The README's first command: set up, then train the smoke MoE on the embedded corpus.
# Extra arguments go to `moejax train` (e.g. --gin_bindings='TrainConfig.steps = 50').
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
.venv/bin/moejax train --gin_file=configs/smoke.gin --workdir=runs/smoke "$@"
