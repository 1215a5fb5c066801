#!/usr/bin/env bash
# The README's first command: set up, then the whole moejax path on the embedded corpus:
# the smoke design grid (expert count x top-k, 6 tiny MoEs) trained, every checkpoint scored,
# a scaling law fitted, and a report with plots written to runs/smoke_grid/report.md.
# Extra arguments go to `moejax sweep` (e.g. --only='MoEConfig.top_k=2').
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
.venv/bin/moejax sweep --grid=configs/grids/smoke_cpu.gin --root=runs/smoke_grid "$@"
