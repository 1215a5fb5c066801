#!/usr/bin/env bash
# The README's second command (and .ci/run): set up with the test tools, then run the fast suite.
# Extra arguments go to pytest (e.g. -m slow for the slow tests, -k resume).
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh dev
.venv/bin/python -m pytest "$@"
